"""Runs and the config reaching inference: `Run.open`, object-built Sampler / Scorer, `prm-jax score`
on three meshes against one device, a run's saved settings honoured."""

import json
import math
import os
import pathlib
import shutil
import subprocess
import sys

import jax
import numpy as np
import pytest
from jax.sharding import PartitionSpec as P

from prm_jax import sharding
from prm_jax.configs import base, derive
from prm_jax.model import CausalLM, RewardModel
from prm_jax.records import Problem, read_solutions, write_jsonl
from prm_jax.runs import Run, RunDir
from prm_jax.sampling import Sampler
from prm_jax.scoring import PACKED_KEYS, Scorer
from tests.conftest import compiled_programs

PRM_JAX = str(pathlib.Path(sys.executable).parent / "prm-jax")
MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2)]


def prm_jax(*args, devices: int = 8, timeout: int = 600):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", XLA_FLAGS=f"--xla_force_host_platform_device_count={devices}")
  return subprocess.run([PRM_JAX, *args], capture_output=True, text=True, timeout=timeout, env=env)


def mesh_config(shape, **score):
  c = base.get_config()
  c.mesh.update(dict(zip(("data", "fsdp", "tensor"), shape)))
  c.score.update(dict(dict(seq_len=64, rows=8), **score))
  return c


def test_run_open_restores_each_task_onto_the_configured_mesh(runs):
  mesh = sharding.make_mesh((2, 2, 2))
  gen, prm = Run.open(runs["sft"], mesh, base.RULES), Run.open(runs["prm"], mesh, base.RULES)
  assert (gen.task, type(gen.model), prm.task, type(prm.model)) == (
      "sft", CausalLM, "prm", RewardModel)
  assert gen.model_config.dim == 32 and gen.tokenizer.vocab_size == 300
  assert prm.model.transformer.layers[0].mlp.up[...].sharding.spec == P("fsdp", "tensor")
  with pytest.raises(ValueError, match="holds a 'prm' model; sampling needs 'sft'"):
    prm.require("sampling", "sft")
  with pytest.raises(FileNotFoundError, match="not a prm_jax run.*config.json is missing"):
    Run.open(os.path.dirname(runs["sft"]), mesh, base.RULES)
  with pytest.raises(FileNotFoundError, match="hf:/nope: /nope/config.json is missing"):
    Run.open("hf:/nope", mesh, base.RULES)


def test_sampler_and_scorer_take_objects_and_the_configs_mesh(runs):
  """A notebook samples from the model object it holds; from_run builds the mesh of config.mesh."""
  c = mesh_config((2, 2, 2))
  c.sample.update(dict(batch_size=8, max_new_tokens=16, temperature=0.0))
  run = Run.open(runs["sft"], sharding.make_mesh((8, 1, 1)), base.RULES)
  in_memory = Sampler(run.model, run.tokenizer, c)  # resharded onto c.mesh
  from_run = Sampler.from_run(runs["sft"], c)
  assert dict(in_memory.mesh.shape) == dict(from_run.mesh.shape) == {"data": 2, "fsdp": 2,
                                                                      "tensor": 2}
  assert in_memory.batch_size == 8  # a multiple of data x fsdp = 4
  problems = [Problem(f"p{i}", "Add.", "3") for i in range(3)]
  a, b = in_memory.sample(problems, 2), from_run.sample(problems, 2)
  assert [s.steps for s in a] == [s.steps for s in b] and len(a) == 6
  scorer = Scorer.from_run(runs["prm"], c)
  leaves = [x.sharding.spec for x in jax.tree.leaves(scorer.params)]
  want = [s.spec for s in jax.tree.leaves(
      sharding.state_shardings(scorer.params, scorer.mesh, base.RULES))]
  assert leaves == want and P("fsdp", "tensor") in leaves  # parameters follow the rules table
  with pytest.raises(ValueError, match="scoring needs an orm or prm model, got CausalLM"):
    Scorer(run.model, run.tokenizer, c)
  with pytest.raises(ValueError, match="sampling needs a generator"):
    Sampler(Run.open(runs["prm"], sharding.make_mesh((8, 1, 1)), base.RULES).model,
            run.tokenizer, c)


def test_a_second_sampler_and_scorer_of_the_same_shape_compile_nothing(runs, tmp_path):
  """The next PRM of an active-learning loop, another search method: a Sampler or Scorer over a
  model of the same shape on the same mesh reuses the compiled programs of the first."""
  c = mesh_config((2, 2, 2))
  c.sample.update(dict(batch_size=8, max_new_tokens=16, temperature=0.7))
  problems = [Problem(f"p{i}", "Add.", "3") for i in range(3)]
  sols = list(read_solutions(runs["solutions"]))[:24]
  first = Sampler.from_run(runs["sft"], c).sample(problems, 2, seed=1)
  scores = [s.scores["prm_steps"] for s in Scorer.from_run(runs["prm"], c).score(sols)]
  other_prm = tmp_path / "prm_copy"  # another run's weights of the same shape
  shutil.copytree(runs["prm"], other_prm)
  with compiled_programs() as compiled:
    again = Sampler.from_run(runs["sft"], c).sample(problems, 2, seed=1)
    rescored = [s.scores["prm_steps"] for s in Scorer.from_run(str(other_prm), c).score(sols)]
  assert [s.steps for s in again] == [s.steps for s in first]
  for a, b in zip(rescored, scores):
    np.testing.assert_array_equal(a, b)
  assert [n for n in compiled if n == "jit(wrapped)"] == [], compiled
  with compiled_programs() as compiled:  # a different setting is a different program
    list(Scorer.from_run(runs["prm"], derive(c, {"score.neutral_is_positive": False})).score(sols))
  assert "jit(wrapped)" in compiled


def test_a_few_solutions_run_on_the_fewest_rows_that_hold_them(runs):
  """A call with a few solutions (the N candidates of one problem), or a job's last batch, runs on
  the smallest row count that holds its packed rows, a multiple of the mesh's batch split, and
  scores as it does inside a full batch."""
  from prm_jax.scoring import pack_for_scoring
  c = mesh_config((2, 2, 2), rows=16, chunk=64)  # the batch splits 4 ways: buckets 4, 8, 16
  sols = list(read_solutions(runs["solutions"]))[:40]
  scorer = Scorer.from_run(runs["prm"], c)
  assert scorer.row_buckets == [4, 8, 16]
  full = [s.scores for s in scorer.score(sols)]
  enc = [scorer.format.encode(scorer.tok, s.problem, s.steps, max_len=scorer.seq_len)
         for s in sols]

  def rows_used(n):  # how many rows the packer fills with the first n solutions
    (pb,) = pack_for_scoring([(e.tokens, e.step_ends) for e in enc[:n]], scorer.seq_len,
                             scorer.rows, max_steps=scorer.cap, max_solutions=scorer.cap)
    return int((pb.arrays["solution_id"] >= 0).any(axis=1).sum()), scorer._bucket(pb)
  few = next(n for n in range(1, 40) if rows_used(n)[0] == 5)  # 5 rows: the 8-row bucket
  assert rows_used(few) == (5, 8) and rows_used(1) == (1, 4)
  assert rows_used(40)[0] > 8 and rows_used(40)[1] == 16  # the full batch really is 16 rows
  alone = [s.scores for s in scorer.score(sols[:few])]
  one = [s.scores for s in scorer.score(sols[:1])]
  assert {4, 8, 16} == set(scorer._programs)  # each call ran its own bucket's program
  for got, want in zip(alone + one, full[:few] + full[:1]):
    assert got.keys() == want.keys()
    for k in got:
      np.testing.assert_allclose(got[k], want[k], rtol=1e-5, atol=1e-7)


def test_scoring_on_a_data_mesh_moves_only_logits_between_devices(runs):
  """Split 8 ways over `data`, the scoring program keeps every activation on its rows' device:
  the last layer's reads are gathered row by row and the head runs before the step gather, so no
  collective moves as much as one device's share of one layer's activations (a [steps, dim]
  gather of hidden states would)."""
  import re
  scorer = Scorer.from_run(runs["prm"], mesh_config((8, 1, 1), rows=16))
  fn, row = scorer._program(scorer.rows)
  zeros = np.zeros((scorer.rows, scorer.seq_len), np.int32)
  batch = {k: sharding.put_global(zeros, row) for k in PACKED_KEYS}
  hlo = fn.lower(scorer.params, batch).compile().as_text()
  moved = [math.prod(int(d) for d in shape.split(",") if d) for shape in re.findall(
      r"= \(?[a-z0-9]+\[([0-9,]*)\][^ ]* (?:all-gather|all-reduce|all-to-all|collective-permute)\(",
      hlo)]
  assert moved  # the step gather does cross devices
  share = scorer.rows * scorer.seq_len * scorer.cfg.dim // 8
  assert max(moved) < share, (max(moved), share)
  assert scorer.cap * scorer.cfg.dim >= share  # what the old gather of hidden states moved


def test_a_runs_neutral_is_positive_is_honoured(runs, tmp_path):
  """The run says P(ok) = P(pos) (neutral is not ok): its scores are then P(pos), below the default
  1 - P(neg); `score.neutral_is_positive` overrides the run."""
  run = tmp_path / "prm_strict"
  shutil.copytree(runs["prm"], run)
  cfg = json.loads((run / "config.json").read_text())
  cfg["train"]["neutral_is_positive"] = False
  (run / "config.json").write_text(json.dumps(cfg))
  sols = list(read_solutions(runs["solutions"]))[:40]
  c = mesh_config((8, 1, 1))
  lenient = Scorer.from_run(runs["prm"], c)
  strict = Scorer.from_run(str(run), c)
  forced = Scorer.from_run(str(run), derive(c, {"score.neutral_is_positive": True}))
  assert (lenient.neutral_is_positive, strict.neutral_is_positive, forced.neutral_is_positive) == (
      True, False, True)
  lo = np.concatenate([s.scores["prm_steps"] for s in strict.score(sols)])
  hi = np.concatenate([s.scores["prm_steps"] for s in lenient.score(sols)])
  again = np.concatenate([s.scores["prm_steps"] for s in forced.score(sols)])
  assert (lo <= hi + 1e-6).all() and (hi - lo).max() > 1e-3  # P(pos) <= P(pos) + P(neutral)
  np.testing.assert_array_equal(again, hi)


def test_score_on_three_meshes_equals_one_device(runs, tmp_path):
  """`prm-jax score` on 8 devices as (8,1,1), (2,2,2), (1,4,2) gives the 1-device scores within
  1e-5; each run prints its mesh and writes it into the output summary."""
  src = tmp_path / "in.jsonl"
  write_jsonl(str(src), list(read_solutions(runs["solutions"]))[:200])
  common = ["score", f"--checkpoint={runs['prm']}", f"--input={src}", "--config.score.seq_len=64",
            "--config.score.rows=8", "--config.score.chunk=64"]
  p = prm_jax(*common, f"--output={tmp_path / 'one.jsonl'}", devices=1)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "mesh (data=1, fsdp=1, tensor=1) over 1 cpu device(s)" in p.stdout
  want = list(read_solutions(str(tmp_path / "one.jsonl")))
  for shape in MESHES:
    out = tmp_path / f"{'x'.join(map(str, shape))}.jsonl"
    d, f, t = shape
    p = prm_jax(*common, f"--output={out}", f"--config.mesh.data={d}", f"--config.mesh.fsdp={f}",
                f"--config.mesh.tensor={t}")
    assert p.returncode == 0, p.stderr[-3000:]
    assert f"mesh (data={d}, fsdp={f}, tensor={t}) over 8 cpu device(s)" in p.stdout
    summary = json.loads(pathlib.Path(str(out) + ".summary.json").read_text())
    assert summary["mesh"] == {"data": d, "fsdp": f, "tensor": t} and summary["devices"] == 8
    got = list(read_solutions(str(out)))
    assert [s.problem_id for s in got] == [s.problem_id for s in want]
    for g, w in zip(got, want):
      for k in ("prm", "prm_min", "prm_last"):
        assert abs(g.scores[k] - w.scores[k]) <= 1e-5, (shape, k)
      np.testing.assert_allclose(g.scores["prm_steps"], w.scores["prm_steps"], atol=1e-5)


def test_run_dir_layout_is_what_train_wrote(runs):
  run = RunDir(runs["prm"])
  assert run.finished() and os.path.isdir(run.checkpoints_path)
  summary = json.loads(open(run.summary_path).read())
  assert summary["task"] == "prm" and summary["mesh"] == {"data": 8, "fsdp": 1, "tensor": 1}
  assert run.read_config("params", "tokenizer")["train"]["task"] == "prm"
