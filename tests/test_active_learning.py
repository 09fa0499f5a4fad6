"""Two generations of active learning, end to end on the tiny config, against the uniform control."""

import dataclasses
import json
import os
import pathlib
import subprocess
import sys

import pytest

from prm_jax.active_learning import (ActiveLearning, select_convincing_wrong_answers,
                                     select_uniform)
from prm_jax.data import synthetic
from prm_jax.records import Solution, read_solutions, write_jsonl
from tests.conftest import ROOT, tiny_train_config

PRM_JAX = str(pathlib.Path(sys.executable).parent / "prm-jax")


def al_config(workdir):
  c = tiny_train_config(workdir, "prm", 40)
  c.active.update(dict(generations=2, problems_per_generation=8, samples_per_problem=4, budget=16,
                       eval_n="1,2,4", eval_samples=4, eval_trials=50))
  return c


@pytest.fixture(scope="module")
def run(synthetic_generator, tmp_path_factory):
  generator, _, train_problems = synthetic_generator
  out = tmp_path_factory.mktemp("al")
  eval_problems = synthetic.make_problems(8, 77, levels=(1,),
                                          exclude={p.problem for p in train_problems})
  al = ActiveLearning(al_config(out / "cfg"), generator, train_problems[:16], eval_problems,
                      str(out), log=lambda _: None)
  return al, al.run(), out


@pytest.mark.slow
def test_two_generations_with_the_uniform_control(run):
  al, summary, out = run
  assert set(summary["strategies"]) == {"active", "uniform"}
  for strategy, gens in summary["strategies"].items():
    assert [g["generation"] for g in gens] == [0, 1]
    assert 0 < gens[0]["labelled_new"] <= 16 and 0 < gens[1]["labelled_new"] <= 16
    assert gens[1]["labelled_total"] == gens[0]["labelled_new"] + gens[1]["labelled_new"]
    for g in gens:
      assert len(g["prm_mean"]) == 3 and all(0 <= x <= 1 for x in g["prm_mean"])
      assert g["process"] is not None and 0 <= g["process"]["step_auroc"] <= 1
  assert summary["strategies"]["active"][0] == dict(summary["strategies"]["uniform"][0],
                                                    strategy="active")  # generation 0 is shared
  for name in ("active_learning.json", "active_learning.md", "active_learning.png",
               "eval_samples.jsonl", "pools/gen0.jsonl", "pools/gen1.jsonl"):
    assert (out / name).exists(), name
  # every generation's data and checkpoint are kept
  for d in ("gen0", "active/gen1", "uniform/gen1"):
    for name in ("selected.jsonl", "labelled.jsonl", "eval.json", "eval_scored.jsonl"):
      assert (out / d / name).exists(), (d, name)
    assert (out / d / "prm" / "params").is_dir()
  labelled = list(read_solutions(str(out / "active" / "gen1" / "labelled.jsonl")))
  assert all(s.step_labels is not None and s.meta["labeller"] == "oracle" for s in labelled)
  assert "| active | 1 |" in (out / "active_learning.md").read_text()


@pytest.mark.slow
def test_active_generation_picks_convincing_wrong_answers_from_the_shared_pool(run):
  al, _, out = run
  pool = list(read_solutions(str(out / "pools" / "gen1.jsonl")))
  active = list(read_solutions(str(out / "active" / "gen1" / "selected.jsonl")))
  uniform = list(read_solutions(str(out / "uniform" / "gen1" / "selected.jsonl")))
  gen0 = {(s.problem_id, tuple(s.steps)) for s in read_solutions(str(out / "gen0" / "labelled.jsonl"))}
  pool_keys = {(s.problem_id, tuple(s.steps)) for s in pool}
  k = 16 // len({s.problem_id for s in pool})
  for picked in (active, uniform):
    keys = [(s.problem_id, tuple(s.steps)) for s in picked]
    assert set(keys) <= pool_keys and not set(keys) & gen0 and len(set(keys)) == len(keys)
  assert all(s.scores and "prm" in s.scores for s in active)  # ranked by generation 0's PRM
  # the fresh pool as generation 0's PRM scores it (what the selection ranked)
  from prm_jax.scoring import Scorer
  fresh_all = [dataclasses.replace(s, scores=None, step_labels=None) for s in pool
               if (s.problem_id, tuple(s.steps)) not in gen0]
  scored = {(s.problem_id, tuple(s.steps)): s.scores["prm"]
            for s in Scorer.from_run(str(out / "gen0" / "prm"), al.config).score(fresh_all)}
  quota, available = round(0.8 * 16), 0  # the wrong-answer share is of the whole budget
  for pid in {s.problem_id for s in pool}:
    fresh = {tuple(s.steps): s for s in pool if s.problem_id == pid and (pid, tuple(s.steps)) not in gen0}
    wrong = {steps for steps, s in fresh.items() if s.is_correct is False and s.answer is not None}
    available += min(k, len(wrong))
    mine = [s for s in active if s.problem_id == pid]
    assert len(mine) == min(k, len(fresh))
    for s in mine:  # the scores it kept are generation 0's PRM's
      assert s.scores["prm"] == pytest.approx(scored[pid, tuple(s.steps)], abs=1e-5)
    picked = {tuple(s.steps) for s in mine}
    # the most convincing wrong answers first: none left out scores above one taken
    taken = [scored[pid, t] for t in wrong & picked]
    left = [scored[pid, t] for t in wrong - picked]
    if taken and left:
      assert min(taken) >= max(left) - 1e-5, (taken, left)
  assert sum(s.is_correct is False for s in active) >= min(quota, available)
  # the control: the seeded uniform draw from the same fresh pool, labelled by the oracle
  from prm_jax.labellers import OracleLabeller
  want = select_uniform(fresh_all, k, seed=al.config.seed + 7919)[:16]
  assert [(s.problem_id, s.steps) for s in uniform] == [(s.problem_id, s.steps) for s in want]
  labelled = list(read_solutions(str(out / "uniform" / "gen1" / "labelled.jsonl")))
  assert [s.step_labels for s in labelled] == [s.step_labels for s in OracleLabeller().label(want)]


@pytest.mark.slow
def test_resume_redoes_only_the_unfinished_generation(run, synthetic_generator):
  al, summary, out = run
  kept = os.path.getmtime(out / "active" / "gen1" / "eval.json")
  kept_files = {name: (out / "uniform" / "gen1" / name).read_bytes()
                for name in ("selected.jsonl", "labelled.jsonl")}
  # a run killed during uniform generation 1's training: no eval.json, no final params
  os.remove(out / "uniform" / "gen1" / "eval.json")
  subprocess.run(["rm", "-rf", str(out / "uniform" / "gen1" / "prm")], check=True)
  again = ActiveLearning(al.config, al.generator, al.pool_problems, al.eval_problems, str(out),
                         log=lambda _: None).run()
  assert os.path.getmtime(out / "active" / "gen1" / "eval.json") == kept
  assert (out / "uniform" / "gen1" / "prm" / "params").is_dir()
  same = lambda a, b: json.dumps(a, sort_keys=True) == json.dumps(b, sort_keys=True)  # NaN == NaN
  assert same(again["strategies"]["active"], summary["strategies"]["active"])
  u0, u1 = summary["strategies"]["uniform"][1], again["strategies"]["uniform"][1]
  for key in ("labelled_new", "labelled_total", "wrong_answer_fraction"):
    assert u1[key] == u0[key], key
  # same selection and labels, retrained: the files the killed run wrote are read, not redone
  for name in ("selected.jsonl", "labelled.jsonl"):
    assert (out / "uniform" / "gen1" / name).read_bytes() == kept_files[name], name

  # the command line: everything is finished, so it only reads and reports
  probs, evals = out / "problems.jsonl", out / "eval_problems.jsonl"
  write_jsonl(str(probs), al.pool_problems)
  write_jsonl(str(evals), al.eval_problems)
  p = subprocess.run(
      [PRM_JAX, "active-learn", f"--checkpoint={al.generator}", f"--input={probs}",
       f"--eval-input={evals}", f"--output={out}", "--config.active.generations=2",
       "--config.active.problems_per_generation=8", "--config.active.samples_per_problem=4",
       "--config.active.budget=16", "--config.active.eval_n=1,2,4",
       "--config.active.eval_samples=4"], capture_output=True, text=True, cwd=ROOT, timeout=300)
  assert p.returncode == 0, p.stderr[-3000:]
  assert "| uniform | 1 |" in p.stdout and "active_learning.json" in p.stdout


def test_bad_settings_fail_clearly(synthetic_generator, tmp_path):
  generator, _, probs = synthetic_generator
  c = al_config(tmp_path)
  c.active.eval_n = "1,2,8"
  with pytest.raises(ValueError, match="exceeds active.eval_samples=4"):
    ActiveLearning(c, generator, probs[:4], probs[4:8], str(tmp_path))
  from prm_jax.labellers import make_labeller
  with pytest.raises(ValueError, match="unknown labeller 'crowd'"):
    make_labeller("crowd", str(tmp_path))
  with pytest.raises(ValueError, match="only knows the synthetic domain"):
    make_labeller("oracle", str(tmp_path)).label(
        [Solution(problem_id="m", problem="What is 2+2?", steps=["4"])])


def test_uniform_selection_is_seeded_and_distinct():
  pool = [Solution(problem_id=f"p{i % 3}", problem="x", steps=[str(i % 5)]) for i in range(30)]
  a, b = select_uniform(pool, 2, seed=1), select_uniform(pool, 2, seed=1)
  assert [s.steps for s in a] == [s.steps for s in b]
  assert len(a) == 6 and all(len({tuple(s.steps) for s in a if s.problem_id == p}) == 2
                             for p in ("p0", "p1", "p2"))


def _scored_pool(problems: int, right: int, wrong: int):
  """Per problem: `right` right answers scored above `wrong` distinct wrong answers."""
  out = []
  for p in range(problems):
    for j in range(right + wrong):
      ok = j < right
      out.append(Solution(problem_id=f"p{p}", problem="x", steps=[f"s{j}"], answer=str(j),
                          is_correct=ok, scores={"prm": (0.9 if ok else 0.5) - 0.01 * j}))
  return out


@pytest.mark.parametrize("k,problems", [(1, 10), (2, 10), (3, 7), (4, 5)])
def test_wrong_answer_share_is_of_the_whole_budget_at_small_k(k, problems):
  """The paper's 80/20 split, at 2 per problem: 16 of 20 wrong, not round(1.6) = 2 of 2 each."""
  pool = _scored_pool(problems, right=4, wrong=4)
  got = select_convincing_wrong_answers(pool, k, frac_wrong=0.8)
  assert len(got) == k * problems
  assert sum(s.is_correct is False for s in got) == round(0.8 * k * problems)
  for p in range(problems):
    mine = [s for s in got if s.problem_id == f"p{p}"]
    assert len(mine) == k
    wrong = sorted((s for s in mine if not s.is_correct), key=lambda s: -s.scores["prm"])
    all_wrong = [s for s in pool if s.problem_id == f"p{p}" and not s.is_correct]
    assert [s.steps for s in wrong] == [s.steps for s in all_wrong[:len(wrong)]]  # the top ones
  per = [sum(not s.is_correct for s in got if s.problem_id == f"p{p}") for p in range(problems)]
  assert max(per) - min(per) <= 1  # spread evenly


def test_wrong_answer_quota_moves_to_problems_that_have_wrong_answers():
  pool = _scored_pool(2, right=4, wrong=0) + [
      s for s in _scored_pool(4, right=4, wrong=4) if s.problem_id in ("p2", "p3")]
  got = select_convincing_wrong_answers(pool, 2, frac_wrong=0.5)
  assert sum(s.is_correct is False for s in got) == 4  # p2 and p3 take the quota p0, p1 cannot
  assert all(len([s for s in got if s.problem_id == f"p{p}"]) == 2 for p in range(4))


@pytest.mark.slow
def test_the_file_labeller_pauses_the_command_with_exit_3(synthetic_generator, tmp_path):
  """`active.labeller=file`: the selected solutions are exported for humans and the command stops
  with exit status 3 (not an error) and one line saying where to put the rated file."""
  generator, _, train_problems = synthetic_generator
  probs, evals = tmp_path / "problems.jsonl", tmp_path / "eval.jsonl"
  write_jsonl(str(probs), train_problems[:2])
  write_jsonl(str(evals), train_problems[2:4])
  out = tmp_path / "al"
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  p = subprocess.run(
      [PRM_JAX, "active-learn", f"--checkpoint={generator}", f"--input={probs}",
       f"--eval-input={evals}", f"--output={out}", "--config.active.labeller=file",
       "--config.active.problems_per_generation=2", "--config.active.samples_per_problem=4",
       "--config.active.budget=4", "--config.active.eval_n=1,2", "--config.active.eval_samples=2",
       "--config.sample.max_new_tokens=48", "--config.sample.batch_size=8"],
      capture_output=True, text=True, cwd=ROOT, timeout=300, env=env)
  gen0 = out / "gen0"
  assert p.returncode == 3, p.stderr[-3000:]
  selected = list(read_solutions(str(gen0 / "selected.jsonl")))
  assert 2 <= len(selected) <= 4  # up to 2 distinct samples of each of the 2 problems
  assert p.stderr.strip().splitlines()[-1] == (
      f"prm-jax active-learn: paused: {len(selected)} solutions exported to "
      f"{gen0 / 'to_label.jsonl'} for labelling; save the rated file as "
      f"{gen0 / 'labelled_by_humans.jsonl'} and run again")
  from prm_jax.data.prm800k import parse_prm800k_row
  rows = [json.loads(l) for l in (gen0 / "to_label.jsonl").read_text().splitlines()]
  assert [parse_prm800k_row(r, grade=False).steps for r in rows] == [s.steps for s in selected]
  assert not (gen0 / "labelled.jsonl").exists() and not (gen0 / "prm").exists()
