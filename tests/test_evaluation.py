"""Best-of-N (closed form), step-level metrics on hand-made cases, and selection."""

import json
import math
import os
import subprocess
import sys

import numpy as np
import pytest

from prm_jax.active_learning import select_convincing_wrong_answers
from prm_jax.evaluation import (ProblemPool, best_of_n, build_pools, group_answers, process_eval,
                                processbench_f1, run_bon_eval)
from prm_jax.records import Solution, write_jsonl
from tests.conftest import FIXTURES, ROOT

PRM_JAX = os.path.join(os.path.dirname(sys.executable), "prm-jax")


def sol(pid, answer, correct, prm=None, orm=None, steps=None, labels=None, prm_steps=None):
  scores = {k: v for k, v in (("prm", prm), ("orm", orm), ("prm_steps", prm_steps)) if v is not None}
  return Solution(problem_id=pid, problem="q", steps=steps or [f"{answer}"], answer=answer,
                  ground_truth_answer="1", is_correct=correct, step_labels=labels,
                  scores=scores or None)


def test_best_of_n_matches_the_closed_form():
  """The correct samples always score highest -> solve rate = P(a correct one among N draws)."""
  rng = np.random.default_rng(0)
  m, full, pools, ks = 24, 40, [], []
  for i in range(60):
    k = int(rng.integers(0, 5))
    ks.append(k)
    correct = np.zeros(m, bool)
    correct[rng.choice(m, k, replace=False)] = True
    score = np.where(correct, 0.6 + 0.4 * rng.random(m), 0.5 * rng.random(m))
    pools.append(ProblemPool(f"p{i}", correct, np.ones(m, bool), np.arange(m), {"prm": score}))
  ns = [1, 2, 4, 8, 16, 32, 40]
  r = best_of_n(pools, ns, trials=1000, seed=1, pool_size=full)
  assert set(r["methods"]) == {"prm", "majority", "weighted"}  # no ORM scores -> no ORM entry
  for i, n in enumerate(ns):
    want = np.mean([1 - math.comb(full - k, n) / math.comb(full, n) for k in ks])
    assert r["methods"]["prm"]["mean"][i] == pytest.approx(want, abs=0.01)
  assert r["methods"]["prm"]["std"][-1] == pytest.approx(0.0, abs=1e-12)  # N = pool: no variance


def test_within_problem_auroc_ignores_problem_difficulty():
  """A score that only knows which problem is easy ranks well globally but at chance within a
  problem; one that ranks right above wrong inside each problem scores 1.0."""
  rng = np.random.default_rng(0)
  easy = lambda i: i % 2 == 0
  pools = []
  for i in range(40):
    correct = rng.random(8) < (0.8 if easy(i) else 0.2)
    correct[:2] = [True, False]  # every problem mixed
    difficulty = np.full(8, 0.9 if easy(i) else 0.1) + 0.01 * rng.random(8)
    verifier = correct + 0.1 * rng.random(8)
    pools.append(ProblemPool(f"p{i}", correct, np.ones(8, bool), np.arange(8),
                             {"prm": verifier, "orm": difficulty}))
  r = best_of_n(pools, [1, 8], trials=50, seed=0)
  assert r["within_problem_auroc"]["prm"] == {"mean": 1.0, "problems": 40}
  assert abs(r["within_problem_auroc"]["orm"]["mean"] - 0.5) < 0.15
  flat = lambda k: np.concatenate([p.scores[k] for p in pools])
  from prm_jax.evaluation import auroc
  assert auroc(flat("orm"), np.concatenate([p.correct for p in pools])) > 0.7  # global: looks good
  assert r["methods"]["prm"]["mean"][-1] == 1.0


def test_majority_groups_equivalent_answers():
  assert group_answers(["1/2", "0.5", "\\frac{1}{2}", "3", None, "x=3"]).tolist() == [0, 0, 0, 1, -1, 1]
  # 3 samples say "\\frac12" (wrong: truth 3), 4 say equivalent forms of 3 -> majority right once grouped
  sols = ([sol("a", "\\frac12", False) for _ in range(3)] +
          [sol("a", a, True) for a in ("3", "3.0", "x = 3", "\\text{3}")])
  r = best_of_n(build_pools(sols), [7], trials=10, seed=0)
  assert r["methods"]["majority"]["mean"] == [1.0]
  assert "prm" not in r["methods"]


def test_no_answer_entries_are_dropped_and_padding_counts():
  # one correct sample in a pool of 4 (padded with discarded entries) -> N=1 solves 1/4 of the time
  sols = [sol("a", "1", True, prm=0.9, orm=0.2), sol("a", None, False, prm=1.0, orm=1.0)]
  r = best_of_n(build_pools(sols), [1, 4], trials=4000, seed=0, pool_size=4)
  assert r["methods"]["prm"]["mean"][0] == pytest.approx(0.25, abs=0.03)
  assert r["methods"]["prm"]["mean"][1] == 1.0  # the no-answer sample never wins, though scored 1.0
  assert r["methods"]["orm"]["mean"][1] == 1.0
  # the votes drop it too: a draw of only the no-answer sample (or padding) solves nothing
  for m in ("orm", "majority", "weighted"):
    assert r["methods"][m]["mean"][0] == pytest.approx(0.25, abs=0.03), m
  assert r["methods"]["majority"]["mean"][1] == r["methods"]["weighted"]["mean"][1] == 1.0


def test_bon_eval_cli_on_the_papers_scored_samples_format(tmp_path):
  src = json.loads((FIXTURES / "prm800k" / "scored_test_sample.thirdparty_example.jsonl").read_text())
  rows = []
  for k in range(6):
    r = dict(src, prm_score=0.1 * k, orm_score=0.5, is_correct=k % 2 == 0, answer=str(k))
    rows.append(json.dumps(r))
  inp = tmp_path / "scored.jsonl"
  inp.write_text("\n".join(rows) + "\n")
  out = tmp_path / "bon"
  p = subprocess.run([PRM_JAX, "bon-eval", f"--input={inp}", f"--output={out}",
                      "--config.eval.n=1,2,4", "--config.eval.trials=4000", "--config.seed=0"],
                      capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  bon = json.loads((out / "bon.json").read_text())
  assert bon["n"] == [1, 2, 4] and bon["num_problems"] == 1
  assert set(bon["methods"]) == {"prm", "orm", "majority", "weighted"}
  for m in bon["methods"].values():
    assert len(m["mean"]) == 3 and all(0 <= x <= 1 for x in m["mean"])
  # scores 0.0..0.5, even k correct: the top score (k=5) is wrong, so N=4 of 6 solves when 5 is
  # not drawn (1/3) and 4 is (4/5): 4/15
  assert bon["methods"]["prm"]["mean"][2] == pytest.approx(4 / 15, abs=0.03)
  # right answers score 0.0, 0.2, 0.4 and wrong ones 0.1, 0.3, 0.5: 3 of 9 pairs ordered right
  assert bon["within_problem_auroc"]["prm"] == {"mean": pytest.approx(1 / 3), "problems": 1}
  assert bon["within_problem_auroc"]["orm"]["mean"] == pytest.approx(0.5)  # all tied
  assert (out / "bon.md").read_text().count("|") > 10
  assert "prm: right vs wrong answers to the same problem, AUROC 0.333" in (out / "bon.md").read_text()
  assert (out / "bon.png").stat().st_size > 10_000


def test_processbench_f1_hand_made():
  assert processbench_f1([2, -1, 0, -1], [2, -1, 1, 0]) == pytest.approx(
      {"f1": 0.5, "acc_erroneous": 0.5, "acc_correct": 0.5, "n_erroneous": 2, "n_correct": 2})
  perfect = processbench_f1([1, -1], [1, -1])
  assert perfect["f1"] == 1.0


def test_process_eval_threshold_auroc_calibration(tmp_path):
  sols = []
  for i in range(40):  # step probs separate ok (0.9) from wrong (0.2) perfectly
    labels = [1, 1, -1] if i % 2 else [1, 1, 1]
    probs = [0.9, 0.85, 0.2] if i % 2 else [0.9, 0.95, 0.8]
    sols.append(sol(f"p{i}", "1", i % 2 == 0, steps=["a", "b", "c"], labels=labels,
                    prm_steps=probs))
  r = process_eval(sols, dev_fraction=0.5)
  assert r["test"]["f1"] == 1.0 and r["step_auroc"] == 1.0
  # F1 is 1 for every threshold in (0.2, 0.8]: the first of the grid's maxima is chosen
  assert r["threshold"] == pytest.approx(0.21)
  assert r["num_steps"] == 120
  # no bin mixes ok and wrong steps, so ECE = mean |P(ok) - ok| over the 120 steps:
  # 40 x 0.1 (0.9, ok) + 20 x 0.15 (0.85) + 20 x 0.05 (0.95) + 20 x 0.2 (0.8) + 20 x 0.2 (0.2, wrong)
  assert r["calibration"]["ece"] == pytest.approx(16 / 120)
  assert sum(b["count"] for b in r["calibration"]["bins"]) == 120
  with pytest.raises(ValueError, match="no solutions with both step_labels"):
    process_eval([sol("a", "1", True)])


def test_select_convincing_wrong_answers():
  pool = [sol("a", "2", False, prm=0.9, steps=["x", "2"]),
          sol("a", "2", False, prm=0.9, steps=["x", "2"]),      # duplicate of the first
          sol("a", "1", True, prm=0.95, steps=["y", "1"]),
          sol("a", "3", False, prm=0.5, steps=["z", "3"]),
          sol("a", None, False, prm=0.99, steps=["no answer"]),  # not a wrong *answer*
          sol("a", "4", False, prm=0.1, steps=["w", "4"]),
          sol("b", "1", True, prm=0.7, steps=["b1"]),
          sol("b", "1", True, prm=0.6, steps=["b2"])]
  got = select_convincing_wrong_answers(pool, k=4, frac_wrong=0.5)
  a = [s.steps[0] for s in got if s.problem_id == "a"]
  # half of all 6 picks are wrong answers, and only problem a has them: 3 wrong + the top other
  assert sorted(a) == sorted(["x", "z", "w", "no answer"])
  assert [s.steps[0] for s in got if s.problem_id == "b"] == ["b1", "b2"]  # no wrong: filled
  only_wrong = select_convincing_wrong_answers(pool, k=2, frac_wrong=1.0)
  assert [s.steps[0] for s in only_wrong if s.problem_id == "a"] == ["x", "z"]
  with pytest.raises(ValueError, match="has no scores.prm"):
    select_convincing_wrong_answers([sol("c", "1", True)], k=1)


def _first_right_pools(num: int, m: int, seed: int, prm=None):
  """Pools whose right answer comes first and whose wrong answers are all distinct: a tie between
  one right and one wrong sample is what a fair vote must break without looking at the pool."""
  rng = np.random.default_rng(seed)
  pools, ks = [], []
  for i in range(num):
    k = int(rng.integers(1, 4))
    ks.append(k)
    answers = ["1"] * k + [str(10 + j) for j in range(m - k)]
    sols = [sol(f"p{i}", a, a == "1", prm=prm) for a in answers]
    pools.extend(sols)
  return build_pools(pools), ks


def _fair_vote(ks, m, n):
  """P(c >= 2) + P(c = 1) / n, c = right samples among n drawn without replacement."""
  out = []
  for k in ks:
    p = lambda c: math.comb(k, c) * math.comb(m - k, n - c) / math.comb(m, n)
    out.append(1 - p(0) - p(1) + p(1) / n)
  return float(np.mean(out))


@pytest.mark.parametrize("method", ["majority", "weighted"])
def test_voting_breaks_ties_without_the_rest_of_the_pool(method):
  m, ns = 8, [1, 2, 4, 8]
  pools, ks = _first_right_pools(40, m, seed=3, prm=0.5)  # equal weights: weighted ties too
  r = best_of_n(pools, ns, trials=2000, seed=0)
  for i, n in enumerate(ns):
    # 2000 trials over 40 problems: the mean's standard error is below 0.003
    assert r["methods"][method]["mean"][i] == pytest.approx(_fair_vote(ks, m, n), abs=0.012), n


def test_prm_ranks_by_log_score_when_products_underflow():
  """Long solutions' products underflow to 0.0 and tie; `prm_log` still orders them."""
  sols = []
  for i in range(30):
    for j, right in enumerate([False, True, False]):
      s = sol(f"p{i}", str(j), right, prm=0.0)
      s.scores["prm_log"] = -900.0 + (50.0 if right else -float(j))
      sols.append(s)
  sols.append(sol("q", "9", True, prm=0.0))
  sols[-1].scores["prm_log"] = float("-inf")  # a step with P(ok) = 0
  sols.append(sol("q", "8", False, prm=0.0))
  sols[-1].scores["prm_log"] = -5.0
  r = best_of_n(build_pools(sols), [3], trials=20, seed=0)
  assert r["methods"]["prm"]["mean"] == [pytest.approx(30 / 31)]
  assert r["within_problem_auroc"]["prm"] == {"mean": pytest.approx(30 / 31), "problems": 31}


def test_group_answers_compares_each_normal_form_once(monkeypatch):
  from prm_jax import grading
  calls = []
  real = grading.grade_answer
  monkeypatch.setattr(grading, "grade_answer", lambda *a, **k: calls.append(a) or real(*a, **k))
  answers = [str(v) for v in range(150)] * 4 + ["0.5", "\\frac12", "1/2", "x=0.5", None]
  g = group_answers(answers)
  assert g[:150].tolist() == list(range(150)) and (g[150:600] == g[:450]).all()
  assert len(set(g[600:604].tolist())) == 1 and g[604] == -1
  assert len(calls) < 20  # distinct numbers never reach the symbolic check (today: ~11,000)


def test_process_eval_reports_nan_with_a_reason():
  sols = [sol(f"p{i}", "1", True, steps=["a", "b"], labels=[1, 1], prm_steps=[0.9, 0.8])
          for i in range(6)]
  r = process_eval(sols, dev_fraction=0.999)  # every problem lands in dev: no test split
  assert math.isnan(r["test"]["f1"]) and r["num_test"] == 0
  assert "test split" in r["test"]["reason"]
  only_ok = processbench_f1([-1, -1], [-1, -1])  # no erroneous solution: F1 is undefined
  assert math.isnan(only_ok["f1"]) and "erroneous" in only_ok["reason"]
  assert processbench_f1([1, -1], [0, -1])["f1"] == 0.0  # defined and zero stays zero


def test_bon_eval_pads_pools_to_eval_pool_size(tmp_path):
  """eval.py pads every pool to 1860; `eval.pool_size` does the same (0: the largest pool)."""
  scored = FIXTURES / "prm800k" / "scored_test_sample.thirdparty_example.jsonl"
  src = json.loads(scored.read_text())
  src.pop("answer")  # some released files name it `given_answer`, as eval.py reads it
  rows = [json.dumps(dict(src, prm_score=0.1 * k, orm_score=0.5, is_correct=k == 0,
                          given_answer=str(k))) for k in range(4)]
  inp = tmp_path / "scored.jsonl"
  inp.write_text("\n".join(rows) + "\n")
  out = tmp_path / "bon"
  p = subprocess.run([PRM_JAX, "bon-eval", f"--input={inp}", f"--output={out}",
                      "--config.eval.n=1,4", "--config.eval.trials=4000",
                      "--config.eval.pool_size=16", "--config.seed=0"],
                     capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  bon = json.loads((out / "bon.json").read_text())
  assert bon["pool_size"] == 16
  # one right answer among 16 entries (12 discarded): N=1 finds it 1/16 of the time, and majority
  # sees the four distinct `given_answer`s (not four missing answers)
  assert bon["methods"]["majority"]["mean"][0] == pytest.approx(1 / 16, abs=0.015)
  # N=4: each drawn answer is a one-vote tie, broken uniformly: P(any drawn) / 4 answers
  some = 1 - math.comb(12, 4) / math.comb(16, 4)
  assert bon["methods"]["majority"]["mean"][1] == pytest.approx(some / 4, abs=0.015)


def _exact_vote(answers, correct, weights, n, full):
  """The expected solve rate of a vote over every size-n draw from the pool padded to `full`
  entries (padding and answerless entries do not vote; a tie is a uniform pick among the tied)."""
  import itertools
  total, draws = 0.0, 0
  for idx in itertools.combinations(range(full), n):
    tally = {}
    for i in idx:
      if i < len(answers) and answers[i] is not None:
        tally[answers[i]] = tally.get(answers[i], 0.0) + weights[i]
    draws += 1
    if tally:
      top = max(tally.values())
      tied = [a for a, v in tally.items() if math.isclose(v, top, rel_tol=1e-12)]
      right = {a for a, c in zip(answers, correct) if c}
      total += sum(a in right for a in tied) / len(tied)
  return total / draws


def test_weighted_voting_sums_prm_scores_per_answer():
  """PRM-weighted voting against an exact enumeration of every draw. Problem a: three confident
  wrong "7"s outvote two right answers by count, not by PRM mass; b: the reverse."""
  problems = {
      "a": [("7", False, 0.1), ("7", False, 0.1), ("7", False, 0.1), ("1", True, 0.45),
            ("1", True, 0.4)],
      "b": [("5", False, 0.9), ("5", False, 0.8), ("1", True, 0.2), ("1", True, 0.15),
            ("1", True, 0.1)],
      "c": [("1", True, 0.3), (None, False, 0.99), ("2", False, 0.5), ("3", False, 0.25)],
  }
  sols = [sol(pid, a, c, prm=w) for pid, rows in problems.items() for a, c, w in rows]
  full, ns = 6, [1, 2, 3, 4, 6]
  r = best_of_n(build_pools(sols), ns, trials=4000, seed=0, pool_size=full)
  for i, n in enumerate(ns):
    for method, weigh in (("majority", False), ("weighted", True)):
      want = np.mean([_exact_vote([a for a, _, _ in rows], [c for _, c, _ in rows],
                                  [w if weigh else 1.0 for _, _, w in rows], n, full)
                      for rows in problems.values()])
      # 4000 trials over 3 problems: the standard error is below 0.005
      assert r["methods"][method]["mean"][i] == pytest.approx(want, abs=0.02), (method, n)
  # every sample drawn (N = 6): no randomness left but the tie-breaks, and the methods disagree
  assert r["methods"]["majority"]["mean"][-1] == pytest.approx((0 + 1 + 1 / 3) / 3, abs=0.02)
  assert r["methods"]["weighted"]["mean"][-1] == pytest.approx((1 + 0 + 0) / 3)


def test_best_of_n_refuses_n_larger_than_the_pool():
  sols = [sol("a", str(k), k == 0, prm=0.5) for k in range(5)]
  with pytest.raises(ValueError, match="N=8 exceeds the pool size 5"):
    best_of_n(build_pools(sols), [1, 8], trials=10)
  with pytest.raises(ValueError, match="N=8 exceeds the pool size 6"):
    best_of_n(build_pools(sols), [8], trials=10, pool_size=6)
  with pytest.raises(ValueError, match="problem a has 5 samples > pool size 4"):
    best_of_n(build_pools(sols), [2], trials=10, pool_size=4)
