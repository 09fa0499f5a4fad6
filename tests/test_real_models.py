"""Real models in: `hf:PATH` everywhere a run is named, with the checkpoint's own byte-level BPE
tokenizer (tests/fixtures/hf/qwen2_bpe, made by the real transformers): train a PRM from it on
PRM800K rows, score ProcessBench items with that run, sample from the Hugging Face folder, and a
generator SFT'd on PRM800K-format solutions whose samples keep their answers."""

import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from prm_jax.configs import base
from prm_jax.records import Problem, Solution, read_solutions, write_jsonl
from prm_jax.runs import Run
from prm_jax.sampling import Sampler
from prm_jax.scoring import Scorer
from prm_jax import sharding
from prm_jax.tokenizer import HFTokenizer, load_tokenizer
from prm_jax.train.loop import train
from tests.conftest import FIXTURES, HF_FIXTURES, forward

PRM_JAX = str(pathlib.Path(sys.executable).parent / "prm-jax")
QWEN = HF_FIXTURES / "qwen2_bpe"
PRM800K = FIXTURES / "prm800k" / "phase2_train.thirdparty_examples.jsonl"
PROCESSBENCH = FIXTURES / "processbench" / "math.sample.json"


def prm_jax(*args, timeout=600):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=4")
  return subprocess.run([PRM_JAX, *args], capture_output=True, text=True, timeout=timeout, env=env)


@pytest.fixture(scope="module")
def prm_run(tmp_path_factory):
  """`prm-jax train` of a PRM from hf:qwen2_bpe on the PRM800K sample rows (a few steps)."""
  run = tmp_path_factory.mktemp("real") / "prm"
  p = prm_jax("train", f"--config.workdir={run}", "--config.train.task=prm",
              f"--config.train.init_from=hf:{QWEN}", f"--config.train.data={PRM800K}",
              "--config.train.steps=3", "--config.train.batch_size=4", "--config.train.seq_len=512",
              "--config.train.warmup_steps=1", "--config.train.log_every=1",
              "--config.train.save_every=3")
  assert p.returncode == 0, p.stderr[-3000:]
  return run


def test_train_from_hf_adopts_its_shape_and_tokenizer(prm_run):
  config = json.loads((prm_run / "config.json").read_text())
  hf = json.loads((QWEN / "config.json").read_text())
  assert config["model"]["dim"] == hf["hidden_size"] and config["model"]["vocab_size"] == 704
  assert config["model"]["qkv_bias"] and config["model"]["tie_embeddings"]
  assert config["format"]["preset"] == "newline"  # the run records its step format
  assert (prm_run / "tokenizer" / "tokenizer.json").exists()  # self-contained: the files copied
  tok = load_tokenizer(str(prm_run))
  assert isinstance(tok, HFTokenizer) and tok.vocab_size == 701
  text = "We have $x = 2$.\n\n# Answer\n\n2"
  assert tok.encode(text) == load_tokenizer(str(QWEN)).encode(text)
  run = Run.open(str(prm_run), sharding.make_mesh((8, 1, 1)), base.RULES)
  assert run.task == "prm" and run.model.transformer.layers[0].attn.q_bias[...].shape == (6, 8)


def test_score_processbench_items_with_the_run(prm_run, tmp_path):
  out = tmp_path / "scored.jsonl"
  p = prm_jax("score", f"--checkpoint={prm_run}", f"--input={PROCESSBENCH}", f"--output={out}",
              "--config.score.seq_len=1024", "--config.score.rows=4")
  assert p.returncode == 0, p.stderr[-3000:]
  items = json.loads(PROCESSBENCH.read_text())
  got = list(read_solutions(str(out)))
  assert [s.problem_id for s in got] == [x["id"] for x in items]  # every item once, in order
  for s, item in zip(got, items):
    assert s.steps == item["steps"] and s.meta["subset"] == "math"
    label = item["label"]
    assert s.step_labels == ([1] * len(s.steps) if label < 0 else
                             [1] * label + [-1] + [None] * (len(s.steps) - label - 1))
    scored = s.meta.get("scored_steps", len(s.steps))
    assert len(s.scores["prm_steps"]) == scored >= 1
    assert all(0.0 <= x <= 1.0 for x in s.scores["prm_steps"])
    assert s.scores["prm"] == pytest.approx(float(np.prod(s.scores["prm_steps"])), rel=1e-4)


def test_sample_from_hf_and_format_errors(tmp_path):
  problems = tmp_path / "problems.jsonl"
  write_jsonl(str(problems), [Problem(f"p{i}", f"What is {i} + 1?", str(i + 1)) for i in range(3)])
  out = tmp_path / "samples.jsonl"
  p = prm_jax("sample", f"--checkpoint=hf:{QWEN}", f"--input={problems}", f"--output={out}",
              "--config.sample.n=2", "--config.sample.max_new_tokens=12",
              "--config.sample.batch_size=4")
  assert p.returncode == 0, p.stderr[-3000:]
  rows = list(read_solutions(str(out)))
  assert [(s.problem_id, s.meta["sample_idx"]) for s in rows] == [
      (f"p{i}", k) for i in range(3) for k in range(2)]
  assert all(s.finish_reason in ("eos", "answer", "stop", "length") for s in rows)
  p = prm_jax("sample", f"--checkpoint=hf:{QWEN}", f"--input={problems}",
              f"--output={tmp_path / 'x.jsonl'}", "--config.format.preset=tag",
              "--config.format.tag=<step>")
  assert p.returncode == 1 and "format.tag='<step>' is not a token of the tokenizer" in p.stderr
  grown = tmp_path / "grown"  # the same weights, a tokenizer with more tokens than the table
  shutil.copytree(QWEN, grown)
  tok = load_tokenizer(str(QWEN))
  tok.hf.add_tokens([f"<t{i}>" for i in range(10)])
  tok.hf.save_pretrained(str(grown))
  p = prm_jax("sample", f"--checkpoint=hf:{grown}", f"--input={problems}",
              f"--output={tmp_path / 'y.jsonl'}")
  assert p.returncode == 1
  assert "its tokenizer has 711 tokens but the model's embedding table only 704" in p.stderr


def prm800k_style(n: int, seed: int) -> list[Solution]:
  """Two-step solutions in PRM800K's convention: the last step is "# Answer\\n\\n<answer>"."""
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    a, b = (int(x) for x in rng.integers(0, 10, 2))
    out.append(Solution(f"s{i}", f"What is {a} plus {b}?", [f"{a} + {b} = {a + b}.",
                                                          f"# Answer\n\n{a + b}"],
                        answer=str(a + b), is_correct=True))
  return out


@pytest.mark.slow
def test_a_generator_sft_on_prm800k_format_keeps_its_answers(tmp_path):
  """The sampler stops after the line that follows `# Answer` (not at the blank line before it), so
  samples of a generator trained on PRM800K-format solutions carry a graded answer."""
  c = base.get_config()
  c.workdir = str(tmp_path / "gen")
  c.train.update(dict(task="sft", init_from=f"hf:{QWEN}", steps=150, batch_size=16, seq_len=64,
                      learning_rate=3e-3, warmup_steps=10, weight_decay=0.0, log_every=150,
                      save_every=150))
  train(c, records=prm800k_style(400, 0))
  c.sample.update(dict(batch_size=16, max_new_tokens=32, temperature=0.0))
  sampler = Sampler.from_run(c.workdir, c)
  tests = [Problem(s.problem_id, s.problem, s.answer) for s in prm800k_style(16, 1)]
  samples = sampler.sample(tests, 1)
  answered = [s for s in samples if s.answer]
  assert len(answered) >= 14, [s.steps for s in samples]
  assert all(s.finish_reason == "answer" and s.steps[-1].startswith("# Answer\n\n")
             for s in answered)
  assert all(isinstance(s.is_correct, bool) for s in samples)


def test_export_round_trips_a_prm_and_shards_past_the_limit(prm_run, tmp_path):
  """`prm-jax export` writes a token classifier with 3 labels, the tokenizer and the step format;
  opened as hf:DIR it scores exactly as the run did. A small shard limit gives several files and
  an index."""
  out = tmp_path / "export"
  p = prm_jax("export", f"--checkpoint={prm_run}", f"--output={out}",
              "--config.export.max_shard_mb=0.2")
  assert p.returncode == 0, p.stderr[-3000:]
  config = json.loads((out / "config.json").read_text())
  assert config["architectures"] == ["Qwen2ForTokenClassification"]
  assert config["id2label"] == {"0": "neg", "1": "neutral", "2": "pos"}
  index = json.loads((out / "model.safetensors.index.json").read_text())
  files = sorted(set(index["weight_map"].values()))
  assert len(files) >= 2 and all((out / f).exists() for f in files)
  assert (out / "tokenizer.json").exists()
  assert json.loads((out / "prm_jax.json").read_text())["format"]["preset"] == "newline"
  c = base.get_config()
  c.score.update(dict(seq_len=1024, rows=4))
  sols = list(read_solutions_of(PROCESSBENCH))[:4]
  ours = [s.scores["prm_steps"] for s in Scorer.from_run(str(prm_run), c).score(sols)]
  again = [s.scores["prm_steps"] for s in Scorer.from_run(f"hf:{out}", c).score(sols)]
  for a, b in zip(ours, again):
    np.testing.assert_allclose(a, b, atol=1e-6)
  p = prm_jax("export", f"--checkpoint={prm_run}", f"--output={QWEN}")
  assert p.returncode == 1 and "already holds a model that prm_jax did not export" in p.stderr


def read_solutions_of(path):
  from prm_jax.data.commands import open_records
  return open_records(str(path))


def test_export_round_trips_a_generator_and_an_orm(tmp_path):
  """A generator's export gives transformers-layout weights whose logits equal the run's; an ORM
  exports as a sequence classifier and its bias (which transformers' lacks) comes back."""
  from prm_jax.model.hf_export import export
  from prm_jax.model.hf_import import load_hf_causal_lm
  mesh = sharding.make_mesh((8, 1, 1))
  gen = Run.open(f"hf:{QWEN}", mesh, base.RULES)
  summary = export(gen.model, gen.tokenizer, str(tmp_path / "gen"))
  assert summary["architecture"] == "Qwen2ForCausalLM" and summary["files"] == ["model.safetensors"]
  x = np.asarray(gen.tokenizer.encode("What is 2 plus 3?\n2 + 3 = 5."))[None]
  np.testing.assert_allclose(forward(load_hf_causal_lm(str(tmp_path / "gen"), mesh=mesh), x),
                             forward(gen.model, x), atol=1e-5)
  orm = Run.open(f"hf:{HF_FIXTURES / 'llama_seq_cls_orm'}", mesh, base.RULES)
  orm.model.head_b.value = orm.model.head_b.value + 0.7  # as if trained by prm_jax
  summary = export(orm.model, orm.tokenizer, str(tmp_path / "orm"))
  assert summary["architecture"] == "LlamaForSequenceClassification"
  c = base.get_config()
  c.score.update(dict(seq_len=128, rows=8))
  sols = prm800k_style(8, 3)
  want = [s.scores["orm"] for s in Scorer(orm.model, orm.tokenizer, c).score(sols)]
  got = [s.scores["orm"] for s in Scorer.from_run(f"hf:{tmp_path / 'orm'}", c).score(sols)]
  np.testing.assert_allclose(got, want, atol=1e-6)


def _files(folder) -> dict[str, bytes]:
  return {p.name: p.read_bytes() for p in sorted(pathlib.Path(folder).iterdir())
          if p.name.startswith("model")}


def test_export_streams_one_tensor_at_a_time(tmp_path):
  """Host memory the export allocates (tracemalloc, which sees NumPy's buffers) peaks near its
  largest tensor, not near the model: each tensor is gathered from its shardings, written and
  dropped, and the parameters keep no host copy. A scan_layers model (one layer's slice gathered at
  a time) writes the same bytes as the unscanned one."""
  import tracemalloc
  from flax import nnx
  from prm_jax.model import ModelConfig
  from prm_jax.model.heads import build_model
  from prm_jax.model.hf_export import export
  from prm_jax.model.hf_import import load_hf_causal_lm
  tok = load_tokenizer(str(QWEN))
  cfg = ModelConfig(vocab_size=704, dim=256, num_layers=8, num_heads=4, num_kv_heads=2,
                    mlp_dim=1024, max_seq_len=128)
  ref = export(build_model("sft", cfg, nnx.Rngs(0)), tok, str(tmp_path / "ref"),
               max_shard_bytes=4 * 2**20)
  want = _files(tmp_path / "ref")
  largest = 256 * 1024 * 4
  assert ref["bytes"] > 25 * largest and len(ref["files"]) >= 7
  mesh = sharding.make_mesh((1, 4, 2))  # fsdp x tensor: every matrix split over the devices
  for scan in (False, True):
    model = load_hf_causal_lm(str(tmp_path / "ref"), mesh=mesh, rules=base.RULES,
                              scan_layers=scan)
    export(model, tok, str(tmp_path / f"warm{scan}"), max_shard_bytes=4 * 2**20)  # compiles
    tracemalloc.start()
    try:
      export(model, tok, str(tmp_path / f"out{scan}"), max_shard_bytes=4 * 2**20)
      peak = tracemalloc.get_traced_memory()[1]
    finally:
      tracemalloc.stop()
    assert _files(tmp_path / f"out{scan}") == want, scan
    assert peak < 3 * largest, (scan, peak, ref["bytes"])


def test_a_sentencepiece_run_exports_as_llama(runs, tmp_path):
  """Runs trained from scratch with the project's sentencepiece tokenizer export as Llama: the PRM
  a LlamaForTokenClassification that `hf:DIR` scores exactly as the run, the generator a
  LlamaForCausalLM with the run's logits."""
  from prm_jax.model.hf_export import export_run
  from prm_jax.model.hf_import import load_hf_causal_lm
  from prm_jax.tokenizer import SentencePieceTokenizer
  from tests.conftest import one_digit_sums
  c = base.get_config()
  c.score.update(dict(seq_len=64, rows=8))
  summary = export_run(runs["prm"], str(tmp_path / "prm"), c)
  assert summary["architecture"] == "LlamaForTokenClassification"
  config = json.loads((tmp_path / "prm" / "config.json").read_text())
  assert config["architectures"] == ["LlamaForTokenClassification"] and config["num_labels"] == 3
  assert (tmp_path / "prm" / "tokenizer.json").exists()
  assert isinstance(load_tokenizer(str(tmp_path / "prm")), SentencePieceTokenizer)
  sols = one_digit_sums(12, 5)
  want = [s.scores["prm_steps"] for s in Scorer.from_run(runs["prm"], c).score(sols)]
  got = [s.scores["prm_steps"] for s in Scorer.from_run(f"hf:{tmp_path / 'prm'}", c).score(sols)]
  for a, b in zip(want, got):
    np.testing.assert_allclose(b, a, atol=1e-6)
  summary = export_run(runs["sft"], str(tmp_path / "sft"), c)
  assert summary["architecture"] == "LlamaForCausalLM"
  mesh = sharding.make_mesh(c.mesh)
  gen = Run.open(runs["sft"], mesh, base.RULES)
  x = np.asarray(gen.tokenizer.encode("Add.\n3+4=7\n"))[None]
  np.testing.assert_allclose(forward(load_hf_causal_lm(str(tmp_path / "sft"), mesh=mesh), x),
                             forward(gen.model, x), atol=1e-5)
