"""PRM-guided search: the step end, beam search toward what a PRM prefers, independent DVTS
subtrees, cache reuse vs re-prefilling, and `prm-jax search` resumed after SIGKILL."""

import json
import os
import re
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from prm_jax.configs import base
from prm_jax.records import Problem, read_solutions
from prm_jax.search import ANSWER, RUNNING, STEP, Searcher, pick, step_tables
from prm_jax.step_format import StepFormat

PRM_JAX = os.path.join(os.path.dirname(sys.executable), "prm-jax")
SUM = re.compile(r"^(\d)\+(\d)=(\d+)$")


class Chars:
  """A tokenizer stand-in for the automaton: one token per text."""

  def __init__(self, texts):
    self.texts = texts

  def token_texts(self):
    return list(self.texts)


@pytest.mark.parametrize("preset", ["newline", "double_newline"])
def test_a_step_ends_at_its_separator_and_the_answer_line_ends_the_solution(preset):
  texts = ["", "\n", "7+5=12", "# Answer", "32", " ", "a\nb", ".\n\n"]
  nxt, kind = step_tables(StepFormat(preset), Chars(texts))

  def run(ids):
    s = 0
    for i in ids:
      s = nxt[s, i]
    return kind[s]
  nl = [1] if preset == "newline" else [1, 1]
  assert run([2]) == RUNNING and run([2] + nl) == STEP
  assert run([1, 1, 2] + nl) == STEP                  # leading blank lines start no step
  assert run([3, 1]) == RUNNING                       # "# Answer" runs on to its answer ...
  assert run([3, 1, 1, 4]) == RUNNING and run([3, 1, 1, 4, 1]) == ANSWER   # ... and ends there
  assert run([3, 5, 1, 4, 1]) == ANSWER
  assert run([6]) == (STEP if preset == "newline" else RUNNING)
  assert run([2, 7]) == STEP                          # a merged ".\n\n" token closes either way


def test_pick_best_and_weighted_vote():
  answers, scores = ["3", "4", "4", None], [0.9, 0.6, 0.5, 0.95]
  assert pick(answers, scores, "best", "last") == 3
  assert pick(answers, scores, "weighted_vote", "last") == 1   # 1.1 for "4" beats 0.9 for "3"
  assert pick([None, None], [0.1, 0.2], "weighted_vote", "min") == 1


class TextPRM:
  """A hand-made PRM: P(ok) of a step by its text, no model (PRMRows's interface)."""

  def __init__(self, rows, sc, ok):
    self.processed, self.ok = np.zeros(rows, np.int64), ok

  def start(self, problems):
    pass

  def room(self, steps):
    return True

  def score(self, new_steps):
    return {r: [self.ok(s) for s in steps] for r, steps in new_steps.items()}

  def select(self, parents):
    pass

  mark = restore = lambda self: None


def right_sum(step: str) -> float:
  m = SUM.match(step.strip())
  return 0.99 if m and int(m[1]) + int(m[2]) == int(m[3]) else 0.01


def search_config(**search):
  c = base.get_config()
  c.sample.update(dict(temperature=1.0))
  c.search.update({**dict(n=8, beam_width=4, batch_size=16, max_step_tokens=12, max_new_tokens=64,
                          max_steps=6, aggregate="min", pick="best"), **search})
  return c


@pytest.fixture(scope="module")
def sampler(runs):
  from prm_jax.sampling import Sampler
  return Sampler.from_run(runs["sft"], search_config())


@pytest.fixture(scope="module")
def scorer(runs):
  from prm_jax.scoring import Scorer
  return Scorer.from_run(runs["prm"], search_config())


PROBLEMS = [Problem(f"q{i}", "Add.", str(i % 9)) for i in range(4)]


def test_beam_search_finds_the_path_a_hand_made_prm_prefers(sampler):
  # the tiny generator writes a right sum about a third of the time: 16 candidates a round
  prm = lambda rows, sc: TextPRM(rows, sc, right_sum)
  beam = Searcher(sampler, prm, search_config(method="beam", n=16, batch_size=64)).search(PROBLEMS)
  best = Searcher(sampler, prm, search_config(method="best_of_n")).search(PROBLEMS)
  good = lambda s: bool(s.steps) and all(right_sum(x) > 0.5 for x in s.steps)
  assert all(good(s) for s in beam), [s.steps for s in beam]
  # the generator alone rarely writes such a solution: the search found it
  pool = [f for s in best for f in s.meta["search"]["finished"]]
  assert np.mean([f["score"] > 0.5 for f in pool]) < 0.8
  for s in beam:
    m = s.meta["search"]
    assert m["method"] == "beam" and m["trace"][0]["step"] == 0
    assert all(len(t["kept"]) <= 4 for t in m["trace"])          # n / beam_width prefixes kept
    assert m["tokens"]["generated"] > 0 and s.scores["prm_min"] > 0.5


def test_dvts_subtrees_stay_independent(sampler):
  prm = lambda rows, sc: TextPRM(rows, sc, right_sum)
  two = Searcher(sampler, prm, search_config(method="dvts", n=8, beam_width=4)).search(PROBLEMS)
  one = Searcher(sampler, prm, search_config(method="dvts", n=4, beam_width=4)).search(PROBLEMS)
  for a, b in zip(two, one):
    trace = a.meta["search"]["trace"]
    for t in trace:   # a subtree keeps or finishes at most one prefix, always one of its own rows
      for g in (range(0, 4), range(4, 8)):
        assert len([r for r in t["kept"] + t["finished"] if r in g]) <= 1
    key = lambda f: (f["answer"], f["score"], f["num_tokens"], f["steps"])
    # subtree 0 of the two-subtree search is the one-subtree search, row for row
    assert {key(f) for f in b.meta["search"]["finished"]} <= {
        key(f) for f in a.meta["search"]["finished"]}
    assert len(a.meta["search"]["finished"]) == 2 and len(b.meta["search"]["finished"]) == 1


def test_cache_reuse_gives_the_same_search_as_re_prefilling(sampler, scorer):
  out = {}
  for reuse in (True, False):
    c = search_config(method="beam", lookahead=1, aggregate="last", pick="weighted_vote",
                      reuse_cache=reuse)
    out[reuse] = Searcher(sampler, scorer, c).search(PROBLEMS, seed=5)
  for a, b in zip(out[True], out[False]):
    assert a.steps == b.steps and a.problem_id == b.problem_id
    np.testing.assert_allclose(a.scores["prm_steps"], b.scores["prm_steps"], atol=1e-5)
    ta, tb = a.meta["search"], b.meta["search"]
    assert [t["kept"] for t in ta["trace"]] == [t["kept"] for t in tb["trace"]]
    assert ta["tokens"]["generated"] == tb["tokens"]["generated"]
    # the same search, fewer tokens run: prompts once, every prefix extended, never re-read
    assert ta["tokens"]["generator_prefill"] < tb["tokens"]["generator_prefill"]
    assert ta["tokens"]["prm"] < tb["tokens"]["prm"]
  # the PRM's step scores are the scorer's own on the picked solutions (same encoding)
  rescored = list(scorer.score(out[True]))
  for s, r in zip(out[True], rescored):
    if len(s.steps) == len(s.scores["prm_steps"]):
      np.testing.assert_allclose(s.scores["prm_steps"], r.scores["prm_steps"], atol=1e-4)



def test_a_second_search_over_reopened_runs_compiles_nothing(runs, sampler, scorer):
  """Another search method's Searcher, the next PRM of a loop: a Searcher over a Sampler and a
  Scorer opened again (new objects, same shapes, same mesh) reuses every compiled program."""
  from prm_jax.sampling import Sampler
  from prm_jax.scoring import Scorer
  from tests.conftest import compiled_programs
  c = search_config(method="beam", lookahead=1, aggregate="last", reuse_cache=True)
  first = Searcher(sampler, scorer, c).search(PROBLEMS, seed=3)
  again_sampler, again_scorer = Sampler.from_run(runs["sft"], c), Scorer.from_run(runs["prm"], c)
  with compiled_programs() as compiled:
    again = Searcher(again_sampler, again_scorer, c).search(PROBLEMS, seed=3)
  assert [s.steps for s in again] == [s.steps for s in first]
  ours = ("wrapped", "take", "rewind", "grow")
  assert [n for n in compiled if any(w in n for w in ours)] == [], compiled

def launch(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.Popen([PRM_JAX, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


@pytest.mark.slow
def test_search_resumes_after_sigkill_and_loses_nothing(runs, tmp_path):
  args = ["search", f"--checkpoint={runs['sft']}", f"--prm={runs['prm']}",
          f"--input={runs['problems']}", "--config.search.method=beam", "--config.search.n=4",
          "--config.search.beam_width=2", "--config.search.batch_size=8",
          "--config.search.max_step_tokens=12", "--config.search.max_new_tokens=48",
          "--config.search.max_steps=5", "--config.seed=3"]
  ref = launch(*args, f"--output={tmp_path / 'ref.jsonl'}")
  assert ref.wait(timeout=300) == 0, ref.communicate()[1][-3000:]
  out = tmp_path / "out.jsonl"
  p = launch(*args, f"--output={out}")
  t = time.time()
  while not (out.exists() and out.read_text().count("\n") >= 4):
    assert p.poll() is None, p.communicate()[1][-3000:]
    assert time.time() - t < 240
    time.sleep(0.02)
  p.send_signal(signal.SIGKILL)
  p.wait()
  partial = out.read_text().count("\n")
  assert 4 <= partial < 40
  p = launch(*args, f"--output={out}")
  stdout, stderr = p.communicate(timeout=300)
  assert p.returncode == 0, stderr[-3000:]
  got, want = list(read_solutions(str(out))), list(read_solutions(str(tmp_path / "ref.jsonl")))
  assert [s.problem_id for s in got] == [f"q{i}" for i in range(40)]   # once each, in order
  assert [s.to_dict() for s in got] == [s.to_dict() for s in want]     # the uninterrupted rows
  assert f"({partial} already in" in stdout


def test_bad_settings_and_inputs_are_one_line_errors(tmp_path):
  bad = tmp_path / "bad.jsonl"
  bad.write_text('{"problem_id": "a", "problem": "Add.", "answer": "1"}\n{"problem_id": \n')
  base_args = ["search", "--checkpoint=nowhere", "--prm=nowhere", f"--input={bad}",
               f"--output={tmp_path / 'o.jsonl'}"]
  for extra, text in (("--config.search.method=greedy", "config.search.method='greedy'"),
                      ("--config.search.n=6", "config.search.n=6 must be a multiple of"),
                      ("--config.search.aggregate=mean", "config.search.aggregate='mean'"),
                      ("--config.search.lookahead=-1", "config.search.lookahead=-1"),
                      ("--config.search.max_steps=0", "config.search.max_steps=0"),
                      ("--config.seed=0", f"{bad}:2")):
    p = launch(*base_args, extra)
    _, stderr = p.communicate(timeout=120)
    lines = stderr.strip().splitlines()
    assert p.returncode == 1 and len(lines) == 1 and "Traceback" not in stderr, stderr[-2000:]
    assert text in lines[0], lines[0]
  assert not (tmp_path / "o.jsonl").exists()


def test_search_eval_writes_one_table_and_one_plot(sampler, scorer, tmp_path):
  from prm_jax.search_eval import markdown_table, run_search_eval
  c = search_config(max_steps=4, eval_problems=3, pick="weighted_vote")
  problems = [Problem(f"e{i}", "Add.", str(i)) for i in range(5)]
  r = run_search_eval(sampler, scorer, problems, str(tmp_path), c, [2, 4],
                      ["best_of_n", "beam", "dvts"])
  assert r["problems"] == 3 and sorted(r["runs"]) == sorted(
      f"{m}_n{n}" for m in ("best_of_n", "beam", "dvts") for n in (2, 4))
  for key, run in r["runs"].items():
    assert len(list(read_solutions(run["output"]))) == 3
    assert all(0.0 <= a <= 1.0 for a in run["accuracy"].values())
    assert run["tokens_per_problem"]["generated"] > 0 and run["tokens_per_problem"]["prm"] > 0
  # best-of-N's budget grows with N: twice the rows, about twice the tokens
  t2, t4 = (r["runs"][f"best_of_n_n{n}"]["tokens_per_problem"]["generated"] for n in (2, 4))
  assert 1.3 < t4 / t2 < 3.0
  assert set(r["runs"]["best_of_n_n4"]["accuracy"]) == {"majority", "best", "weighted_vote"}
  table = markdown_table(r)
  assert table == (tmp_path / "search_eval.md").read_text().strip()
  assert all(x in table for x in ("| majority vote |", "| beam search (weighted) |",
                                  "| DVTS (best) |", "N=4"))
  assert (tmp_path / "search_eval.png").stat().st_size > 1000
  assert json.loads((tmp_path / "search_eval.json").read_text())["runs"].keys() == r["runs"].keys()


def test_bench_search_compares_the_same_search_with_and_without_the_cache(sampler, scorer):
  from scripts.bench_search import bench
  r = bench(sampler, scorer, PROBLEMS[:2], search_config(method="beam", max_steps=4), repeats=1)
  assert r["same_solutions"] and r["problems"] == 2
  assert r["cached"]["generated"] == r["from_scratch"]["generated"] > 0
  assert r["tokens_ratio"] > 1.0 and r["prm_tokens_ratio"] > 1.0 and r["wall_ratio"] > 0
