"""TFDS builders over manual_dir (array_record, no TensorFlow) and the grain pipeline."""

import json
import shutil
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from prm_jax.data.pipeline import PipelineStats, make_dataset, tokenize
from prm_jax.data.prm800k import expand_alternatives, read_prm800k
from prm_jax.data.tfds_builders import MathProblems, Prm800k, decode_problem, decode_solution
from prm_jax.data.math import read_math
from prm_jax.records import Solution
from prm_jax.tokenizer import IGNORE, train_sentencepiece
from tests.conftest import FIXTURES


@pytest.fixture(scope="module")
def built(tmp_path_factory):
  manual = tmp_path_factory.mktemp("manual")
  shutil.copy(FIXTURES / "prm800k" / "phase1_train.thirdparty_examples.jsonl",
              manual / "phase1_train.jsonl")
  shutil.copy(FIXTURES / "prm800k" / "phase2_train.thirdparty_examples.jsonl",
              manual / "phase2_train.jsonl")
  shutil.copy(FIXTURES / "math_test.sample.jsonl", manual / "test.jsonl")
  data_dir = tmp_path_factory.mktemp("tfds")
  cfg = tfds.download.DownloadConfig(manual_dir=str(manual))
  prm, math = Prm800k(data_dir=str(data_dir)), MathProblems(data_dir=str(data_dir))
  prm.download_and_prepare(download_config=cfg)
  math.download_and_prepare(download_config=cfg)
  return prm, math


@pytest.fixture(scope="module")
def tok():
  texts = [s.problem + "\n" + s.text for p in ("phase1", "phase2") for s in expand_alternatives(
      read_prm800k(str(FIXTURES / "prm800k" / f"{p}_train.thirdparty_examples.jsonl")))]
  return train_sentencepiece(texts, vocab_size=600)


def test_tfds_builders_read_back_the_records_without_tensorflow(built):
  prm, math = built
  assert "tensorflow" not in sys.modules
  assert set(prm.info.splits) == {"phase1_train", "phase2_train"}
  src = prm.as_data_source(split="phase2_train")
  direct = list(read_prm800k(str(FIXTURES / "prm800k" / "phase2_train.thirdparty_examples.jsonl")))
  assert sorted(json.dumps(decode_solution(src[i]).to_dict()) for i in range(len(src))) == sorted(
      json.dumps(s.to_dict()) for s in direct)
  msrc = math.as_data_source(split="test")
  assert len(msrc) == 50
  ids = {decode_problem(msrc[i]).problem_id for i in range(len(msrc))}
  assert ids == {p.problem_id for p in read_math(str(FIXTURES / "math_test.sample.jsonl"))}


def test_missing_manual_files_are_reported(tmp_path):
  with pytest.raises(FileNotFoundError, match="none of"):
    Prm800k(data_dir=str(tmp_path / "d")).download_and_prepare(
        download_config=tfds.download.DownloadConfig(manual_dir=str(tmp_path)))


def records(built):
  src = built[0].as_data_source(split="phase2_train")
  return [decode_solution(src[i]) for i in range(len(src))]


def test_tfds_source_batches_keep_labels_on_step_ends(built, tok):
  stats = PipelineStats()
  ds = make_dataset(built[0].as_data_source(split="phase2_train"), tok, decode=decode_solution,
                    seq_len=256, global_batch=4, seed=1, stats=stats)
  batch = next(iter(ds))
  assert set(batch) == {"tokens", "loss_mask", "step_label", "outcome", "segment_ids", "positions"}
  assert all(v.shape == (4, 256) and v.dtype == np.int32 for v in batch.values())
  labelled = batch["step_label"] != IGNORE
  assert labelled.any()
  assert (batch["tokens"][labelled] == tok.nl_id).all()          # labels sit on closing newlines
  assert (batch["segment_ids"][labelled] > 0).all()              # never on padding
  assert set(np.unique(batch["step_label"][labelled])) <= {-1, 0, 1}
  assert (batch["loss_mask"][batch["segment_ids"] == 0] == 0).all()
  assert stats.truncated_steps > 0 and stats.truncated_examples > 0  # long solutions cut, counted


def short_solutions(n=40, seed=0):
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    k = int(rng.integers(1, 4))
    steps = [f"{a} + {a} = {2 * a}" for a in rng.integers(1, 99, size=k)]
    out.append(Solution(problem_id=f"s{i}", problem=f"Double twice {i}.", steps=steps,
                        step_labels=[int(x) for x in rng.integers(-1, 2, size=k)],
                        is_correct=bool(rng.integers(0, 2))))
  return out


def test_packing_puts_whole_solutions_in_segments(tok):
  sols = short_solutions()
  want = {tuple(tokenize(tok, s, 128)["tokens"]): tokenize(tok, s, 128) for s in sols}
  batch = next(iter(make_dataset(sols, tok, seq_len=128, global_batch=4, seed=0)))
  assert batch["segment_ids"].max() >= 3  # several solutions share a row
  for row in range(4):
    seg = batch["segment_ids"][row]
    for sid in set(seg[seg > 0].tolist()):
      at = seg == sid
      ex = want[tuple(batch["tokens"][row][at])]  # each segment is exactly one solution
      for k in ("loss_mask", "step_label", "outcome"):
        np.testing.assert_array_equal(batch[k][row][at], ex[k])
      np.testing.assert_array_equal(batch["positions"][row][at], np.arange(at.sum()))
  outcome = batch["outcome"][batch["outcome"] != IGNORE]
  assert len(outcome) >= 3 and set(outcome.tolist()) <= {0, 1}
  unpacked = next(iter(make_dataset(sols, tok, seq_len=128, global_batch=4, seed=0, pack=False)))
  assert unpacked["segment_ids"].max() == 1


def test_nothing_fits_is_an_error_not_a_hang(tok):
  with pytest.raises(ValueError, match="raise seq_len"):
    next(iter(make_dataset(short_solutions(4), tok, seq_len=8, global_batch=2)))


def test_iterator_state_resumes_at_the_exact_next_batch(built, tok):
  def make():
    return make_dataset(short_solutions(), tok, seq_len=96, global_batch=2, seed=3)
  it = iter(make())
  for _ in range(3):
    next(it)
  state = json.loads(json.dumps(it.get_state()))  # it must survive serialisation
  want = [next(it) for _ in range(4)]
  again = iter(make())
  again.set_state(state)
  got = [next(again) for _ in range(4)]
  for w, g in zip(want, got):
    for k in w:
      np.testing.assert_array_equal(w[k], g[k])


def test_processes_read_disjoint_shards(built, tok):
  recs = records(built)

  def rows(**kw):
    ds = make_dataset(recs, tok, seq_len=512, global_batch=2, seed=5, pack=False, num_epochs=1, **kw)
    return [tuple(r[r != 0]) for b in ds for r in b["tokens"]]
  p0 = rows(process_index=0, process_count=2)
  p1 = rows(process_index=1, process_count=2)
  assert len(p0) == 5 and len(p1) == 4  # 9 records, per-process batch 1
  every = [tuple(tokenize(tok, s, 512)["tokens"]) for s in recs]
  assert sorted(p0 + p1) == sorted(every)  # disjoint, and together exactly the records
  assert rows(process_index=0, process_count=2) == p0  # deterministic for a seed
  assert rows(process_index=0, process_count=2) != rows(process_index=1, process_count=2)
  with pytest.raises(ValueError, match="not divisible by 2 processes"):
    make_dataset(recs, tok, seq_len=64, global_batch=3, process_count=2)


def test_tfds_training_source_expands_rated_alternatives(built):
  """`train.expand_alternatives` holds for `tfds:prm800k/...` as for a JSONL file: phase 2's rated
  alternatives are training examples too."""
  import pathlib
  from prm_jax.train.loop import load_records
  data_dir = str(pathlib.Path(built[0].data_dir).parents[1])
  path = str(FIXTURES / "prm800k" / "phase2_train.thirdparty_examples.jsonl")
  want = sorted(json.dumps(s.to_dict()) for s in expand_alternatives(read_prm800k(path)))
  assert len(want) > 9  # the fixture has rated alternatives
  records, decode = load_records("tfds:prm800k/phase2_train", True, data_dir)
  got = [(decode or (lambda r: r))(records[i]) for i in range(len(records))]
  assert sorted(json.dumps(s.to_dict()) for s in got) == want
  records, decode = load_records("tfds:prm800k/phase2_train", False, data_dir)
  assert len(records) == 9 and decode is decode_solution
