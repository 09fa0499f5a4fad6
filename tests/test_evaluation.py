"""Best-of-N (closed form), step-level metrics on hand-made cases, and selection."""

import dataclasses
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
  # equal normal forms share a class by hashing and distinct numbers differ in their fingerprints:
  # the symbolic check never runs here (it ran ~11,000 times before the fingerprints)
  assert calls == []


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


# ----------------------------------------------------------------------------- reports, in process

def _png_size(path):
  """(width, height) from a PNG's IHDR chunk."""
  head = path.read_bytes()[:24]
  assert head[:8] == b"\x89PNG\r\n\x1a\n"
  return int.from_bytes(head[16:20], "big"), int.from_bytes(head[20:24], "big")


def test_run_bon_eval_writes_bon_json_md_and_png(tmp_path):
  """N = the pool draws every sample, so each method's pick is fixed: prm and orm pick a's and b's
  top score, majority the most frequent answer, weighted the answer with the most PRM mass."""
  rows = {"a": [("1", True, 0.9, 0.1), ("2", False, 0.2, 0.8), ("1", True, 0.1, 0.05)],
          "b": [("1", True, 0.3, 0.6), ("3", False, 0.7, 0.1), ("1", True, 0.35, 0.2)]}
  sols = [sol(pid, a, c, prm=p, orm=o) for pid, rs in rows.items() for a, c, p, o in rs]
  out = tmp_path / "bon"
  r = run_bon_eval(sols, [1, 3], 50, 0, str(out))
  assert (r["n"], r["num_problems"], r["pool_size"], r["trials"]) == ([1, 3], 2, 3, 50)
  assert "repeated_samples" not in r
  # a: prm 0.9 right, orm 0.8 wrong; b: prm 0.7 wrong, orm 0.6 right; "1" wins both votes by
  # count, and by PRM mass in a (1.0 vs 0.2) but not in b (0.65 vs 0.7)
  want = {"prm": 0.5, "orm": 0.5, "majority": 1.0, "weighted": 0.5}
  assert list(r["methods"]) == ["prm", "orm", "majority", "weighted"]
  for m, v in want.items():
    assert r["methods"][m]["mean"][1] == v and r["methods"][m]["std"][1] == 0.0, m
  # right over wrong pairs within a problem: prm a 1/2, b 0/2; orm a 0/2, b 2/2
  assert r["within_problem_auroc"] == {"prm": {"mean": 0.25, "problems": 2},
                                       "orm": {"mean": 0.5, "problems": 2}}
  assert json.loads((out / "bon.json").read_text()) == r
  cell = lambda m: (f"{100 * r['methods'][m]['mean'][0]:.1f} ± "
                    f"{100 * r['methods'][m]['std'][0]:.1f}")
  assert (out / "bon.md").read_text() == (
      "Best-of-N solve rate (%), mean ± std over 50 trials, 2 problems, pool size 3\n\n"
      "| N | prm | orm | majority | weighted |\n|---|---|---|---|---|\n"
      f"| 1 | {cell('prm')} | {cell('orm')} | {cell('majority')} | {cell('weighted')} |\n"
      "| 3 | 50.0 ± 0.0 | 50.0 ± 0.0 | 100.0 ± 0.0 | 50.0 ± 0.0 |\n"
      "\nprm: right vs wrong answers to the same problem, AUROC 0.250 (over 2 problems with both)\n"
      "\norm: right vs wrong answers to the same problem, AUROC 0.500 (over 2 problems with both)\n")
  assert _png_size(out / "bon.png") == (720, 504)  # 6 x 4.2 inches at 120 dpi
  # N = 1 draws one sample of three: a third of a's draws and two thirds of b's are right for
  # majority; the mean over 50 trials of two problems is near (2/3 + 2/3) / 2
  assert 0.45 < r["methods"]["majority"]["mean"][0] < 0.85
  assert r["methods"]["majority"]["std"][0] > 0
  with pytest.raises(ValueError, match="no solutions to evaluate"):
    run_bon_eval([], [1], 10, 0, str(tmp_path / "none"))


def test_run_bon_eval_pads_to_pool_size_and_warns_of_repeated_samples(tmp_path):
  from prm_jax.evaluation import describe_repeats, repeated_samples
  meta = lambda i, **kw: dict({"sample_idx": i, "seed": 0}, **kw)
  sols = [Solution("a", "q", ["s"], answer=str(i), ground_truth_answer="0", is_correct=i == 0,
                   scores={"prm": 0.5 - 0.1 * i}, meta=meta(i)) for i in range(3)]
  again = dataclasses.replace(sols[1], meta=meta(1))
  out = tmp_path / "bon"
  r = run_bon_eval(sols + [again], [4], 20, 0, str(out), pool_size=6)
  assert r["pool_size"] == 6 and r["repeated_samples"] == 1
  md = (out / "bon.md").read_text()
  assert md.startswith("Best-of-N solve rate (%)")
  assert md.endswith(f"\nWarning: {describe_repeats(1)}.\n")
  assert describe_repeats(2) == ("2 rows repeat an earlier row's (problem_id, sample_idx, seed): the "
                                 "input holds samples twice, and they are counted in the pools as drawn")
  # the same index under another problem, seed or prefix is another sample; no index: not counted
  others = [dataclasses.replace(sols[1], problem_id="b"), dataclasses.replace(sols[1], meta=meta(1, seed=1)),
            dataclasses.replace(sols[1], meta=meta(1, prefix_steps=2)),
            dataclasses.replace(sols[1], meta={}), dataclasses.replace(sols[1], meta={})]
  assert repeated_samples(sols + others) == 0
  assert repeated_samples(sols + [again, again]) == 2


def test_best_of_n_defaults_and_seed_reproduce_the_draw():
  pools, _ = _first_right_pools(6, 8, seed=0, prm=0.5)
  r = best_of_n(pools, [1, 2])
  assert r["trials"] == 400 and r == best_of_n(pools, [1, 2], trials=400, seed=0)
  assert best_of_n(pools, [1, 2], seed=5) == best_of_n(pools, [1, 2], seed=5)
  assert best_of_n(pools, [1, 2], seed=5) != r


def test_best_of_n_std_over_trials_is_the_binomial_one():
  """N = 1 picks one sample per trial: problem i is solved with p_i = k_i / pool, independently
  per trial, so the std over trials of the mean over P problems is sqrt(sum p(1-p)) / P."""
  rng = np.random.default_rng(2)
  pools, ps = [], []
  for i in range(30):
    k = int(rng.integers(1, 8))
    correct = np.arange(8) < k
    ps.append(k / 8)
    pools.append(ProblemPool(f"p{i}", correct, np.ones(8, bool), np.arange(8),
                             {"prm": rng.random(8), "orm": rng.random(8)}))
  r = best_of_n(pools, [1], trials=3000, seed=0)
  want = math.sqrt(sum(p * (1 - p) for p in ps)) / len(ps)
  for m in ("prm", "orm", "majority", "weighted"):
    assert r["methods"][m]["mean"][0] == pytest.approx(np.mean(ps), abs=0.01), m
    assert r["methods"][m]["std"][0] == pytest.approx(want, rel=0.08), m


def test_orm_ranks_by_its_own_scores():
  """The ORM picks its top-scored sample, which here is the right one, while the PRM's is wrong."""
  sols = [sol("a", "1", True, prm=0.1, orm=0.9), sol("a", "2", False, prm=0.8, orm=0.2),
          sol("a", "3", False, prm=0.7, orm=0.3)]
  r = best_of_n(build_pools(sols), [3], trials=5)
  assert r["methods"]["orm"]["mean"] == [1.0] and r["methods"]["prm"]["mean"] == [0.0]
  assert r["methods"]["weighted"]["mean"] == [0.0]


def test_an_answerless_sample_marked_correct_never_counts():
  """A scored file may mark a sample without an answer `is_correct`: it is dropped from the draw,
  so it neither wins the PRM's pick nor a vote, whichever trial draws it."""
  sols = [sol("a", None, True, prm=0.9, orm=0.9), sol("a", "2", False, prm=0.1, orm=0.1)]
  r = best_of_n(build_pools(sols), [1, 2], trials=200)
  for m in ("prm", "orm", "majority", "weighted"):
    assert r["methods"][m]["mean"] == [0.0, 0.0], m


def test_weighted_vote_ties_only_within_float_rounding():
  """Weights 1e-6 apart (relative) are not a tie; nor are tiny weights a whole 1e-9 apart."""
  for hi, lo in ((0.500001, 0.5), (2e-9, 1e-9)):
    sols = [sol("a", "1", True, prm=hi), sol("a", "2", False, prm=lo)]
    r = best_of_n(build_pools(sols), [2], trials=200)
    assert r["methods"]["weighted"]["mean"] == [1.0], (hi, lo)
    flip = [sol("a", "1", True, prm=lo), sol("a", "2", False, prm=hi)]
    assert best_of_n(build_pools(flip), [2], trials=200)["methods"]["weighted"]["mean"] == [0.0]
  same = [sol("a", "1", True, prm=0.1 + 0.2), sol("a", "2", False, prm=0.3)]  # equal but rounding
  assert best_of_n(build_pools(same), [2], trials=2000)["methods"]["weighted"]["mean"][0] == (
      pytest.approx(0.5, abs=0.05))


def test_build_pools_grades_rows_without_is_correct_in_the_given_mode():
  """Rows whose `is_correct` is null are graded against their truth in the grading mode asked for
  ("\\sqrt{4}" is 2 to math_verify, not to the PRM800K grader); the mode groups the answers for
  voting too."""
  mk = lambda a, t="2": Solution("a", "q", ["s"], answer=a, ground_truth_answer=t,
                                 scores={"prm": 0.5, "orm": 0.5})
  sols = [mk("2"), mk("3"), mk("\\sqrt{4}"), mk("2"), mk("3"), mk(None), mk("2", None)]
  (p,) = build_pools(sols)
  assert p.correct.tolist() == [True, False, False, True, False, False, False]
  assert p.group.tolist() == [0, 1, 2, 0, 1, -1, 0]
  (p,) = build_pools(sols, mode="math_verify")
  assert p.correct.tolist() == [True, False, True, True, False, False, False]
  assert p.group.tolist() == [0, 1, 0, 0, 1, -1, 0]
  assert p.scores["prm"].dtype == np.float64 and set(p.scores) == {"prm", "orm"}
  assert group_answers(["2", "\\sqrt{4}", "  ", "", None]).tolist() == [0, 1, -1, -1, -1]
  assert group_answers(["2", "\\sqrt{4}"], mode="math_verify").tolist() == [0, 0]


def test_group_answers_classes_by_first_appearance():
  """Classes are numbered in order of first appearance, and an answer matches the class of any
  equivalent earlier one (by normal form or by the symbolic check)."""
  g = group_answers(["7", "x", "\\frac{1}{2}", "7.0", "0.5", "\\text{x}", "1/2", "8"])
  assert g.dtype == np.int64
  assert g.tolist() == [0, 1, 2, 0, 2, 1, 2, 3]


def _same(a, b, tol=1e-9):
  """Nested dicts / lists equal, floats to `tol`, NaN equal to NaN."""
  if isinstance(a, dict):
    return isinstance(b, dict) and a.keys() == b.keys() and all(_same(a[k], b[k], tol) for k in a)
  if isinstance(a, (list, tuple)):
    return (isinstance(b, (list, tuple)) and len(a) == len(b)
            and all(_same(x, y, tol) for x, y in zip(a, b)))
  if isinstance(a, float) or isinstance(b, float):
    return (math.isnan(a) and math.isnan(b)) or math.isclose(a, b, rel_tol=tol, abs_tol=tol)
  return a == b


def _proc(pid, labels, probs, **meta):
  return Solution(pid, "q", [f"s{i}" for i in range(len(labels))], step_labels=labels,
                  scores={"prm_steps": probs}, meta=meta)


def _step_auroc(probs, ok):
  """Mann-Whitney by pairs: P(positive scores above negative), ties counted half."""
  pos = [p for p, o in zip(probs, ok) if o]
  neg = [p for p, o in zip(probs, ok) if not o]
  return sum((a > b) + 0.5 * (a == b) for a in pos for b in neg) / (len(pos) * len(neg))


def test_run_process_eval_writes_the_report_in_process(tmp_path):
  """A fixed threshold 0.5 on hand-made ProcessBench subsets, two PRMBench rows and three rows it
  must skip; every number below is worked out by hand."""
  from prm_jax.evaluation import run_process_eval
  rows = [_proc("g1", [1, -1], [0.95, 0.25], subset="gsm8k"),       # error at 1, found at 1
          _proc("g2", [1, 0], [0.95, 0.85], subset="gsm8k"),        # no error, none found
          _proc("m1", [1, -1, None], [0.35, 0.95, 0.15], subset="math"),  # error 1, found 0
          _proc("m2", [None, 1], [0.65, 0.45], subset="math"),      # no error, "found" at 1
          _proc("m3", [-1], [0.15], subset="math"),                 # error 0, found 0
          _proc("c1", [1, -1, 1], [0.75, 0.65, 0.35], source="prmbench", classification="confidence"),
          _proc("c2", [1, 1], [0.95, 0.15], source="prmbench", classification="correct"),
          Solution("x1", "q", [], step_labels=[], scores={"prm_steps": []}),
          Solution("x2", "q", ["s"], scores={"prm_steps": [0.5]}),
          Solution("x3", "q", ["s"], step_labels=[1])]
  out = tmp_path / "eval"
  r = run_process_eval(rows, str(out), threshold=0.5, invalid_lines=2)
  assert r["threshold"] == 0.5 and r["threshold_chosen_on"] == "fixed"
  assert r["skipped"] == {"no_steps": 1, "no_step_labels": 1, "no_step_scores": 1, "invalid_lines": 2}
  assert (r["num_rows"], r["num_dev"], r["num_test"]) == (10, 0, 7)
  assert math.isnan(r["dev_f1"])
  # every kept row is reported: erroneous g1 m3 right, m1 c1 wrong; correct g2 right, m2 c2 wrong
  assert r["test"] == pytest.approx({"f1": 0.4, "acc_erroneous": 0.5, "acc_correct": 1 / 3,
                                     "n_erroneous": 4, "n_correct": 3})
  assert _same(r["processbench"], {
      "gsm8k": {"f1": 1.0, "acc_erroneous": 1.0, "acc_correct": 1.0, "n_erroneous": 1, "n_correct": 1},
      "math": {"f1": 0.0, "acc_erroneous": 0.5, "acc_correct": 0.0, "n_erroneous": 2, "n_correct": 1},
      "average_f1": 0.5})
  # PRMBench: c1 has TP 0.75, FP 0.65, FN 0.35; c2 (the "correct" class, not in overall) TP, FN
  assert _same(r["prmbench"], {
      "confidence": {"f1": 0.5, "negative_f1": 0.0, "prmscore": 0.25, "steps": 3},
      "correct": {"f1": 2 / 3, "negative_f1": 0.0, "prmscore": 1 / 3, "steps": 2},
      "overall": {"f1": 0.5, "negative_f1": 0.0, "prmscore": 0.25, "steps": 3}})
  # the steps up to each first error, unlabelled ones left out, neutral counted ok
  probs = [0.95, 0.25, 0.95, 0.85, 0.35, 0.95, 0.45, 0.15, 0.75, 0.65, 0.95, 0.15]
  ok = [True, False, True, True, True, False, True, False, True, False, True, True]
  assert r["num_steps"] == 12 and r["step_auroc"] == pytest.approx(_step_auroc(probs, ok))
  assert r["step_auroc"] == pytest.approx(21 / 32) and "step_auroc_reason" not in r
  # ECE over ten bins: bin 9 holds the four 0.95s (3 ok), bin 1 the two 0.15s (1 ok), the other
  # six steps are alone in theirs: (4 x 0.2 + 2 x 0.35 + .15 + .65 + .55 + .25 + .25 + .65) / 12
  assert r["calibration"]["ece"] == pytest.approx(1 / 3)
  bins = {tuple(round(e, 6) for e in b["bin"]): (b["confidence"], b["accuracy"], b["count"])
          for b in r["calibration"]["bins"]}
  assert _same(bins, {(0.1, 0.2): (0.15, 0.5, 2), (0.2, 0.3): (0.25, 0.0, 1),
                                (0.3, 0.4): (0.35, 1.0, 1), (0.4, 0.5): (0.45, 1.0, 1),
                                (0.6, 0.7): (0.65, 0.0, 1), (0.7, 0.8): (0.75, 1.0, 1),
                                (0.8, 0.9): (0.85, 1.0, 1), (0.9, 1.0): (0.95, 0.75, 4)})
  assert _same(json.loads((out / "process.json").read_text()), r)
  assert (out / "process.md").read_text() == (
      "| metric | value |\n|---|---|\n"
      "| earliest-error F1 (test, ProcessBench) | 40.0 |\n"
      "| accuracy on erroneous / correct | 50.0 / 33.3 |\n"
      "| threshold (fixed) | 0.50 |\n"
      "| step AUROC | 0.656 |\n"
      "| step ECE | 0.333 |\n"
      "\nskipped 5 rows: 1 without steps, 1 without step labels, 1 without scores.prm_steps, "
      "2 invalid lines.\n"
      "\nProcessBench (earliest-error identification, threshold 0.50):\n\n"
      "| | gsm8k | math | average |\n|---|---|---|---|\n"
      "| erroneous acc | 100.0 | 50.0 |  |\n"
      "| correct acc | 100.0 | 0.0 |  |\n"
      "| F1 | 100.0 | 0.0 | 50.0 |\n"
      "| items (erroneous / correct) | 1 / 1 | 2 / 1 | |\n"
      "\nPRMBench (steps valid at P(ok) >= threshold):\n\n"
      "| classification | PRMScore | F1 | negative F1 | steps |\n|---|---|---|---|---|\n"
      "| confidence | 25.0 | 50.0 | 0.0 | 3 |\n"
      "| correct | 33.3 | 66.7 | 0.0 | 2 |\n"
      "| overall | 25.0 | 50.0 | 0.0 | 3 |\n")
  assert _png_size(out / "calibration.png") == (540, 504)  # 4.5 x 4.2 inches at 120 dpi
  # neutral as not ok: g2's 0.85 is then a negative step
  strict = process_eval(rows[:7], threshold=0.5, neutral_is_positive=False)
  assert strict["step_auroc"] == pytest.approx(_step_auroc(probs, ok[:3] + [False] + ok[4:]))


def test_run_process_eval_says_why_numbers_are_undefined(tmp_path):
  """Only correct solutions, every step ok, and a dev split holding all of them: the report names
  each undefined number's reason instead of printing a bare nan."""
  from prm_jax.evaluation import run_process_eval
  rows = [_proc(f"p{i}", [1, 1], [0.9, 0.8], subset="gsm8k") for i in range(6)]
  out = tmp_path / "eval"
  r = run_process_eval(rows, str(out), dev_fraction=0.999)
  assert r["threshold_chosen_on"] == "dev" and r["threshold"] == 0.5  # F1 undefined everywhere
  assert (r["num_dev"], r["num_test"]) == (6, 0) and math.isnan(r["dev_f1"])
  assert r["test"]["reason"] == ("the test split is empty (dev_fraction=0.999, 6 solutions): "
                                 "no held-out F1")
  assert r["processbench"]["reason"] == "no solution in the reported split"
  assert math.isnan(r["processbench"]["average_f1"]) and "prmbench" not in r
  assert r["step_auroc_reason"] == "no negative steps" and r["num_steps"] == 12
  assert r["skipped"] == {"no_steps": 0, "no_step_labels": 0, "no_step_scores": 0}
  md = (out / "process.md").read_text()
  assert md == ("| metric | value |\n|---|---|\n"
                "| earliest-error F1 (test, ProcessBench) | nan |\n"
                "| accuracy on erroneous / correct | nan / nan |\n"
                "| threshold (chosen on dev, F1 nan) | 0.50 |\n"
                "| step AUROC | nan (no negative steps) |\n"
                f"| step ECE | {r['calibration']['ece']:.3f} |\n"
                f"\nTest F1 is undefined: {r['test']['reason']}.\n")
  assert r["calibration"]["ece"] == pytest.approx((6 * 0.1 + 6 * 0.2) / 12)
  # an empty dev split: the threshold is fit on test, which is then not reported
  sols = [sol(f"p{i}", "1", True, steps=["a", "b", "c"], labels=[1, 1, -1] if i % 2 else [1, 1, 1],
              prm_steps=[0.9, 0.85, 0.2] if i % 2 else [0.9, 0.95, 0.8]) for i in range(20)]
  r = process_eval(sols, dev_fraction=0.0)
  assert r["threshold"] == pytest.approx(0.21) and r["num_dev"] == 0 and math.isnan(r["dev_f1"])
  assert r["test"]["reason"].startswith("the dev split is empty (dev_fraction=0.0, 20 solutions)")
  # a split dev set: the best dev F1 is reported beside the threshold chosen on it
  import zlib
  r = process_eval(sols, dev_fraction=0.5)
  dev = sum(zlib.crc32(f"p{i}".encode()) % 10_000 < 5_000 for i in range(20))
  assert (r["num_dev"], r["num_test"]) == (dev, 20 - dev) and 0 < dev < 20
  assert r["dev_f1"] == 1.0 and r["test"]["f1"] == 1.0
  with pytest.raises(ValueError, match=r"threshold=1.5 must be in \[0, 1\]"):
    process_eval(sols, threshold=1.5)
  with pytest.raises(ValueError, match=r"threshold=-0.1 must be in \[0, 1\]"):
    process_eval(sols, threshold=-0.1)
  for t in (0.0, 1.0):  # the ends are allowed: nothing / everything below threshold
    assert process_eval(sols, threshold=t)["threshold"] == t


def test_process_eval_skips_count_each_row_once():
  rows = [_proc("a", [1, -1], [0.9, 0.1])] * 2 + [
      Solution("b", "q", [], step_labels=[], scores={"prm_steps": []}),
      Solution("c", "q", ["s"], scores={"prm_steps": [0.5]}),
      Solution("d", "q", ["s"], step_labels=[1]), Solution("e", "q", ["s"], step_labels=[1]),
      Solution("f", "q", ["s"], step_labels=[1], scores={"prm": 0.5})]
  r = process_eval(rows, threshold=0.5)
  assert r["skipped"] == {"no_steps": 1, "no_step_labels": 1, "no_step_scores": 3}
  assert r["num_rows"] == 7
  with pytest.raises(ValueError) as e:
    process_eval(rows[2:])
  assert str(e.value) == ("no solutions with both step_labels and scores.prm_steps (skipped 5 rows: "
                          "1 without steps, 1 without step labels, 3 without scores.prm_steps)")
  with pytest.raises(ValueError) as e:
    process_eval([])
  assert str(e.value) == "no solutions with both step_labels and scores.prm_steps"


def test_report_cells_say_n_a_for_undefined_numbers():
  from prm_jax.evaluation import (format_auroc, prmbench_scores, prmbench_table,
                                  processbench_table, with_reason)
  assert format_auroc(None) == "n/a" and format_auroc(0.12345) == "0.123"
  assert with_reason(0.5, "why") == "0.500" and with_reason(float("nan"), "why") == "nan (why)"
  assert with_reason(float("nan"), None) == "nan"
  nan = float("nan")
  bench = {"s": {"f1": nan, "acc_erroneous": nan, "acc_correct": 1.0, "n_erroneous": 0,
                 "n_correct": 2}, "average_f1": nan, "reason": "s: no erroneous solutions"}
  assert processbench_table(bench) == (
      "| | s | average |\n|---|---|---|\n| erroneous acc | n/a |  |\n| correct acc | 100.0 |  |\n"
      "| F1 | n/a | n/a |\n| items (erroneous / correct) | 0 / 2 | |")
  assert prmbench_table(prmbench_scores([])) == (
      "\nPRMBench (steps valid at P(ok) >= threshold):\n\n"
      "| classification | PRMScore | F1 | negative F1 | steps |\n|---|---|---|---|---|\n"
      "| overall | n/a | n/a | n/a | 0 |\n")


def test_prmbench_scores_by_hand():
  """A step is valid at P(ok) >= threshold; neutral counts as valid; unlabelled steps are skipped,
  not the end of the solution; a row without a classification is "all"."""
  from prm_jax.evaluation import prmbench_scores
  row = _proc("a", [1, -1, None, 0, -1, -1], [0.5, 0.2, 0.9, 0.3, 0.7, 0.1])
  got = prmbench_scores([row], 0.5)  # TP 0.5; TN 0.2, 0.1; FN 0.3 (neutral); FP 0.7
  want = {"f1": 0.5, "negative_f1": 2 / 3, "prmscore": 7 / 12, "steps": 5}
  assert _same(got, {"all": want, "overall": want})
  empty = prmbench_scores([])["overall"]
  assert empty["steps"] == 0 and all(math.isnan(empty[k]) for k in ("f1", "negative_f1", "prmscore"))


def test_reports_rewrite_their_directory_and_use_the_seed_and_mode(tmp_path):
  from prm_jax.evaluation import repeated_samples, run_process_eval
  sols = [sol("a", a, a == "2", prm=0.1 * i + 0.1) for i, a in enumerate(["2", "\\sqrt{4}", "3", "5"])]
  out = str(tmp_path / "bon")
  first = run_bon_eval(sols, [1, 2], 40, 3, out)
  assert run_bon_eval(sols, [1, 2], 40, 3, out) == first  # the same directory again: rewritten
  assert first == best_of_n(build_pools(sols), [1, 2], 40, 3)
  assert first != run_bon_eval(sols, [1, 2], 40, 4, out)
  # math_verify puts "\\sqrt{4}" with "2": at N = 4 that answer wins the vote (2 of 4) for sure
  mv = run_bon_eval(sols, [4], 10, 0, out, mode="math_verify")
  assert mv["methods"]["majority"]["mean"] == [1.0]
  assert run_bon_eval(sols, [4], 400, 0, out)["methods"]["majority"]["mean"][0] < 0.5
  assert (tmp_path / "bon" / "bon.md").read_text().startswith("Best-of-N solve rate (%)")
  rows = [Solution("a", "q", ["s"], meta={}), Solution("a", "q", ["s"], meta={"sample_idx": 1}),
          Solution("a", "q", ["s"], meta={"sample_idx": 1})]
  assert repeated_samples(rows) == 1  # a row without an index is passed over, not the end
  # process-eval: twice into one directory; the ECE's own reason; the dev F1 beside the threshold
  unlabelled = [Solution("p", "q", ["a"], step_labels=[None], scores={"prm_steps": [0.2]})]
  pe = str(tmp_path / "eval")
  run_process_eval(unlabelled, pe, threshold=0.5)
  run_process_eval(unlabelled, pe, threshold=0.5)
  assert "| step ECE | nan (no labelled steps) |\n" in (tmp_path / "eval" / "process.md").read_text()
  mixed = [sol(f"p{i}", "1", True, steps=["a", "b"], labels=[1, -1] if i % 2 else [1, 1],
               prm_steps=[0.9, 0.3] if i % 2 else [0.9, 0.4]) for i in range(30)]
  r = run_process_eval(mixed, pe)
  assert 0 < r["dev_f1"] < 1 or r["dev_f1"] == 1.0
  assert (f"| threshold (chosen on dev, F1 {100 * r['dev_f1']:.1f}) | {r['threshold']:.2f} |"
          in (tmp_path / "eval" / "process.md").read_text())
  assert r["dev_f1"] == 1.0 and "F1 100.0" in (tmp_path / "eval" / "process.md").read_text()


def test_processbench_f1_and_auroc_edges_are_exact_and_warn_nothing():
  """An empty input names both missing classes; a missing class is NaN without NumPy's empty-mean
  or 0/0 warnings; both accuracies zero is a measured F1 of 0, not a division by zero."""
  import warnings
  from prm_jax.evaluation import auroc, auroc_reason, earliest_error
  nan = float("nan")
  with warnings.catch_warnings():
    warnings.simplefilter("error")
    none, only_ok, only_err = (processbench_f1([], []), processbench_f1([-1], [-1]),
                               processbench_f1([0], [1]))
    one_class = auroc(np.array([0.2, 0.4]), np.array([True, True]))
  assert _same(none, {"f1": nan, "acc_erroneous": nan, "acc_correct": nan, "n_erroneous": 0,
                      "n_correct": 0, "reason": "no erroneous or correct solutions"})
  assert _same(only_ok, {"f1": nan, "acc_erroneous": nan, "acc_correct": 1.0, "n_erroneous": 0,
                         "n_correct": 1, "reason": "no erroneous solutions"})
  assert _same(only_err, {"f1": nan, "acc_erroneous": 0.0, "acc_correct": nan, "n_erroneous": 1,
                          "n_correct": 0, "reason": "no correct solutions"})
  assert processbench_f1([0, -1], [1, 0]) == {"f1": 0.0, "acc_erroneous": 0.0, "acc_correct": 0.0,
                                              "n_erroneous": 1, "n_correct": 1}
  assert math.isnan(one_class)
  assert auroc_reason(np.array([False, False])) == "no positive steps"
  assert auroc_reason(np.array([], bool)) == "no labelled steps"
  assert [earliest_error(l) for l in ([1, 0, 1], [], [1, -1, -1], [None, -1])] == [-1, -1, 1, 1]


def test_process_eval_subsets_reasons_defaults_and_the_prmbench_threshold(tmp_path):
  """Rows without `meta.subset` are reported as "all"; one undefined subset F1 makes the average
  NaN and every reason is listed; PRMBench rows use the fixed threshold, or 0.5 when the threshold
  is chosen on dev; the dev fraction defaults to one half (ids hashing below 5,000 of 10,000)."""
  from prm_jax.process_metrics import _is_dev, prmbench_scores, run_process_eval
  r = process_eval([_proc("a", [1, -1], [0.9, 0.2]), _proc("b", [1, 1], [0.9, 0.8])], threshold=0.3)
  assert _same(r["processbench"], {"all": {"f1": 1.0, "acc_erroneous": 1.0, "acc_correct": 1.0,
                                           "n_erroneous": 1, "n_correct": 1}, "average_f1": 1.0})
  mixed = [_proc("x", [1, 1], [0.9, 0.8], subset="x"), _proc("y", [-1], [0.2], subset="y"),
           _proc("z1", [-1], [0.2], subset="z"), _proc("z2", [1], [0.9], subset="z")]
  r = process_eval(mixed, threshold=0.5)
  assert r["processbench"]["z"]["f1"] == 1.0 and math.isnan(r["processbench"]["average_f1"])
  assert r["processbench"]["reason"] == "x: no erroneous solutions; y: no correct solutions"
  # PRMBench at P(ok) >= threshold: 0.4 is valid at 0.3, not at 0.5
  bench = [_proc("c", [1, 1], [0.4, 0.6], source="prmbench", classification="confidence")]
  fixed = process_eval(mixed + bench, threshold=0.3)["prmbench"]["confidence"]
  nan = float("nan")  # no error step and none predicted: negative F1 is 0 / 0
  assert _same(fixed, {"f1": 1.0, "negative_f1": nan, "prmscore": nan, "steps": 2})
  chosen = process_eval(mixed + bench)["prmbench"]["confidence"]  # chosen on dev: PRMBench at 0.5
  assert chosen == pytest.approx({"f1": 2 / 3, "negative_f1": 0.0, "prmscore": 1 / 3, "steps": 2})
  assert prmbench_scores(bench)["confidence"] == chosen  # its own default is 0.5 too
  # the default dev fraction, in process_eval and in the report writer
  sols = [_proc(f"p{i}", [1, -1] if i % 2 else [1, 1], [0.9, 0.2] if i % 2 else [0.9, 0.8])
          for i in range(20)]
  dev = sum(_is_dev(f"p{i}", 0.5) for i in range(20))
  assert 0 < dev < 20
  assert (process_eval(sols)["num_dev"], process_eval(sols)["num_test"]) == (dev, 20 - dev)
  written = run_process_eval(sols, str(tmp_path / "eval"))
  assert (written["num_dev"], written["num_test"]) == (dev, 20 - dev)
  import zlib
  assert zlib.crc32(b"p14396") % 10_000 == 5_000  # exactly on the boundary: not dev at 0.5
  assert not _is_dev("p14396", 0.5) and _is_dev("p14396", 0.5001)


def test_process_report_prints_a_dev_f1_below_one_and_the_empty_test_split(tmp_path):
  """Two erroneous solutions with the same scores and different first errors: no threshold finds
  both, so the best dev F1 is 2/3 (first reached at 0.41). Every row is in dev, so the test
  metrics are the empty split's, every count zero."""
  from prm_jax.evaluation import run_process_eval
  rows = [_proc("e1", [1, -1], [0.6, 0.4]), _proc("e2", [-1, 1], [0.6, 0.4]),
          _proc("c1", [1, 1], [0.9, 0.9])]
  out = tmp_path / "eval"
  r = run_process_eval(rows, str(out), dev_fraction=0.9999)
  assert r["num_dev"] == 3 and r["dev_f1"] == pytest.approx(2 / 3)
  assert r["threshold"] == pytest.approx(0.41)
  nan = float("nan")
  why = "the test split is empty (dev_fraction=0.9999, 3 solutions): no held-out F1"
  assert _same(r["test"], {"f1": nan, "acc_erroneous": nan, "acc_correct": nan, "n_erroneous": 0,
                           "n_correct": 0, "reason": why})
  assert "| threshold (chosen on dev, F1 66.7) | 0.41 |\n" in (out / "process.md").read_text()


def test_small_helpers_by_hand():
  """describe_skips with nothing skipped and with a reason it has no words for; the calibration
  bin of P(ok) in [0, 0.1); group ids are int64 and follow the grading mode; within-problem AUROC
  over mixed problems only."""
  from prm_jax.evaluation import calibration, describe_skips, within_problem_auroc
  assert describe_skips({}) == "" and describe_skips({"no_steps": 0}) == ""
  assert describe_skips({"odd": 2, "no_steps": 1}) == "skipped 3 rows: 2 odd, 1 without steps"
  c = calibration(np.array([0.0, 0.05, 1.0]), np.array([0.0, 1.0, 1.0]))
  assert c == {"ece": pytest.approx(2 / 3 * 0.475),
               "bins": [{"bin": [0.0, 0.1], "confidence": 0.025, "accuracy": 0.5, "count": 2},
                        {"bin": [0.9, 1.0], "confidence": 1.0, "accuracy": 1.0, "count": 1}]}
  assert group_answers(["1", None]).dtype == np.int64
  # math_verify reads 50\\% as 0.5; the grader's numeric fingerprints (prm800k mode only) do not
  assert group_answers(["50\\%", "0.5"], "math_verify").tolist() == [0, 0]
  assert group_answers(["50\\%", "0.5"]).tolist() == [0, 1]
  pool = lambda pid, correct, **scores: ProblemPool(
      pid, np.array(correct), np.ones(len(correct), bool), np.arange(len(correct)),
      {k: np.array(v, float) for k, v in scores.items()})
  pools = [pool("mixed", [True, False], prm=[0.9, 0.1]),
           pool("wrong", [False, False], prm=[0.9, 0.1]),
           pool("right", [True, True], prm=[0.1, 0.9]), pool("unscored", [False, True])]
  assert within_problem_auroc(pools, "prm") == {"mean": 1.0, "problems": 1}
  assert within_problem_auroc(pools[1:3], "prm") == {"mean": None, "problems": 0}


def test_run_bon_eval_refuses_an_empty_input(tmp_path):
  with pytest.raises(ValueError, match="^no solutions to evaluate$"):
    run_bon_eval([], [1], 10, 0, str(tmp_path / "bon"))


def _saved_figure(monkeypatch, plot, *args):
  """The matplotlib Figure that `plot` saves (written as usual), kept to read what it draws."""
  from matplotlib.figure import Figure
  saved, real = [], Figure.savefig
  monkeypatch.setattr(Figure, "savefig",
                      lambda self, *a, **k: saved.append(self) or real(self, *a, **k))
  plot(*args)
  (fig,) = saved
  return fig


def test_best_of_n_plot_draws_each_methods_mean_and_std_band(tmp_path, monkeypatch):
  """Per method: the mean in % against N with small round markers, a translucent ±std band; N on
  a log-2 axis; the axis labels, default title, faint grid and legend as in the paper's Figure 3."""
  from prm_jax.evaluation import LABELS, plot_best_of_n
  result = {"n": [1, 4, 16], "num_problems": 3, "trials": 10,
            "methods": {"prm": {"mean": [0.2, 0.4, 0.5], "std": [0.1, 0.05, 0.0]},
                        "custom": {"mean": [0.1, 0.3, 0.6], "std": [0.02, 0.04, 0.08]}}}
  fig = _saved_figure(monkeypatch, plot_best_of_n, result, str(tmp_path / "bon.png"))
  (ax,) = fig.axes
  assert tuple(fig.get_size_inches()) == (6, 4.2) and fig.dpi == 120
  for line, (m, r), band in zip(ax.get_lines(), result["methods"].items(), ax.collections):
    assert line.get_xdata().tolist() == [1, 4, 16] and line.get_label() == LABELS.get(m, m)
    np.testing.assert_allclose(line.get_ydata(), 100 * np.asarray(r["mean"]))
    assert (line.get_marker(), line.get_markersize()) == ("o", 3)
    xy = band.get_paths()[0].vertices  # the band's outline: along the lower edge and back
    lo, hi = 100 * (np.asarray(r["mean"]) - r["std"]), 100 * (np.asarray(r["mean"]) + r["std"])
    for x, a, b in zip([1, 4, 16], lo, hi):
      ys = xy[np.isclose(xy[:, 0], x), 1]
      assert ys.min() == pytest.approx(a) and ys.max() == pytest.approx(b)
    assert band.get_alpha() == 0.2
  assert len(ax.get_lines()) == 2 and len(ax.collections) == 2
  assert ax.get_xscale() == "log" and ax.xaxis.get_transform().base == 2
  assert ax.get_xlabel() == "N = number of solutions per problem"
  assert ax.get_ylabel() == "% problems solved (best-of-N)"
  assert ax.get_title() == "Best-of-N (3 problems, 10 trials)"
  grid = ax.xaxis.get_gridlines()[0]
  assert grid.get_visible() and grid.get_alpha() == 0.3
  assert [t.get_text() for t in ax.get_legend().get_texts()] == [LABELS["prm"], "custom"]


def test_calibration_plot_draws_the_bins_against_the_diagonal(tmp_path, monkeypatch):
  """A thin grey dashed diagonal (perfect calibration) and the bins' accuracy against their
  confidence with markers; the ECE in the legend (upper left), the AUROC in the title."""
  from matplotlib.colors import to_rgba
  from prm_jax.evaluation import plot_calibration
  result = {"step_auroc": 0.8125, "calibration": {"ece": 0.1234, "bins": [
      {"bin": [0.1, 0.2], "confidence": 0.15, "accuracy": 0.5, "count": 2},
      {"bin": [0.9, 1.0], "confidence": 0.95, "accuracy": 0.75, "count": 4}]}}
  fig = _saved_figure(monkeypatch, plot_calibration, result, str(tmp_path / "calibration.png"))
  (ax,) = fig.axes
  assert tuple(fig.get_size_inches()) == (4.5, 4.2) and fig.dpi == 120
  diagonal, bins = ax.get_lines()
  assert diagonal.get_xdata().tolist() == [0, 1] and diagonal.get_ydata().tolist() == [0, 1]
  assert diagonal.get_linestyle() == "--" and diagonal.get_linewidth() == 1
  assert to_rgba(diagonal.get_color()) == to_rgba("gray")
  assert bins.get_xdata().tolist() == [0.15, 0.95] and bins.get_ydata().tolist() == [0.5, 0.75]
  assert bins.get_marker() == "o" and bins.get_linestyle() == "-"
  assert ax.get_xlabel() == "predicted P(step ok)" and ax.get_ylabel() == "fraction of steps ok"
  assert ax.get_title() == "Step calibration, AUROC 0.812"
  legend = ax.get_legend()
  assert [t.get_text() for t in legend.get_texts()] == ["perfect calibration",
                                                        "PRM steps (ECE 0.123)"]
  assert legend._loc == 2  # matplotlib's code for "upper left"
  grid = ax.yaxis.get_gridlines()[0]
  assert grid.get_visible() and grid.get_alpha() == 0.3
