"""Best-of-N evaluation as in the paper, vectorized over trials with NumPy (step-level metrics:
`prm_jax.process_metrics`, re-exported here).

For each N and each problem: pad the problem's pool to the full pool size with "discarded" entries,
draw a random subset of N (T trials at once), drop entries without an answer, and pick a solution by
max PRM score, max ORM score, majority vote over *equivalent* answers, or RM-weighted vote. The solve
rate is averaged over problems; mean and std are over trials.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Iterable, Sequence

import numpy as np

from prm_jax import grading
from prm_jax.records import Solution, write_json, write_text
# Step-level metrics live in process_metrics; the stable API (`evaluation.process_eval`) keeps them
# reachable here.
from prm_jax.process_metrics import (SKIPS, auroc, auroc_reason, calibration, describe_skips,
                                     earliest_error, plot_calibration, predicted_error,
                                     prmbench_scores, prmbench_table, process_eval,
                                     processbench_f1, processbench_subsets, processbench_table,
                                     run_process_eval, with_reason)

__all__ = ["LABELS", "METHODS", "ProblemPool", "best_of_n", "build_pools", "describe_repeats",
           "format_auroc", "group_answers", "markdown_table", "plot_best_of_n", "rank_key",
           "repeated_samples", "run_bon_eval", "within_problem_auroc",
           # from process_metrics
           "SKIPS", "auroc", "auroc_reason", "calibration", "describe_skips", "earliest_error",
           "plot_calibration", "predicted_error", "prmbench_scores", "prmbench_table",
           "process_eval", "processbench_f1", "processbench_subsets", "processbench_table",
           "run_process_eval", "with_reason"]

METHODS = ("prm", "orm", "majority", "weighted")


@dataclasses.dataclass
class ProblemPool:
  """One problem's samples as arrays (length = samples in the pool)."""

  problem_id: str
  correct: np.ndarray   # bool
  valid: np.ndarray     # bool: has an answer
  group: np.ndarray     # int: equivalence class of the answer (-1 without answer)
  scores: dict[str, np.ndarray]  # method -> float scores (prm, orm), where present


def group_answers(answers: Sequence[str | None], mode: str = "prm800k") -> np.ndarray:
  """Equivalence-class id per answer, classes numbered by first appearance (None -> -1).

  An 1860-sample pool has hundreds of distinct answers, so each distinct string is normalised once,
  equal normal forms share a class by hashing, and the symbolic check runs only between normal
  forms whose numeric fingerprints agree (see `grading.forms_may_be_equal`).
  """
  reps: list[grading.AnswerForm] = []
  by_key: dict[tuple[str, str], int] = {}
  by_raw: dict[str, int] = {}
  out = np.full(len(answers), -1, np.int64)
  for i, a in enumerate(answers):
    if a is None or not str(a).strip():
      continue
    a = str(a)
    if a not in by_raw:
      form = grading.answer_form(a)
      keys = [k for k in (("mathd", form.mathd), ("norm", form.norm)) if k[1]]
      g = next((by_key[k] for k in keys if k in by_key), None)
      if g is None:
        g = next((k for k, r in enumerate(reps) if grading.forms_may_be_equal(form, r, mode)
                  and grading.grade_answer(a, r.raw, mode)), None)
      if g is None:
        g = len(reps)
        reps.append(form)
      for k in keys:
        by_key.setdefault(k, g)
      by_raw[a] = g
    out[i] = by_raw[a]
  return out


def build_pools(solutions: Iterable[Solution], mode: str = "prm800k") -> list[ProblemPool]:
  by_problem: dict[str, list[Solution]] = {}
  for s in solutions:
    by_problem.setdefault(s.problem_id, []).append(s)
  pools, graded = [], {}
  for pid, sols in by_problem.items():
    answers = [s.answer for s in sols]
    correct = []
    for s in sols:
      c = s.is_correct
      if c is None and s.answer is not None and s.ground_truth_answer is not None:
        key = (s.answer, s.ground_truth_answer)
        if key not in graded:  # a pool repeats its answers: each distinct one is graded once
          graded[key] = grading.grade_answer(s.answer, s.ground_truth_answer, mode)
        c = graded[key]
      correct.append(bool(c))
    scores = {}
    for m in ("prm", "orm", "prm_log"):
      vals = [(s.scores or {}).get(m) for s in sols]
      if all(v is not None for v in vals):
        scores[m] = np.asarray(vals, np.float64)
    pools.append(ProblemPool(pid, np.asarray(correct), np.asarray([a is not None for a in answers]),
                             group_answers(answers, mode), scores))
  return pools


def _vote(groups, weights, correct_of_group, rng):
  """Per trial, whether the top-voted group is correct. groups/weights: [T, N] (-1 group: none).

  A tie is broken uniformly at random among the tied groups: a rule such as "lowest group id"
  would consult the order of the whole pool, which the drawn subset must not see.
  """
  t = groups.shape[0]
  g = int(groups.max()) + 1 if groups.size else 0
  if g == 0:
    return np.zeros(t, bool)
  tally = np.zeros((t, g))
  rows = np.repeat(np.arange(t), groups.shape[1])
  ok = groups.reshape(-1) >= 0
  np.add.at(tally, (rows[ok], groups.reshape(-1)[ok]), weights.reshape(-1)[ok])
  top = tally.max(axis=1, keepdims=True)
  tied = (tally > 0) & np.isclose(tally, top, rtol=1e-12, atol=0.0)
  winner = np.where(tied, rng.random(tally.shape), -1.0).argmax(axis=1)
  return (top[:, 0] > 0) & correct_of_group[winner]


def rank_key(pool: "ProblemPool", method: str) -> np.ndarray:
  """The scores a method ranks one problem's samples by: the PRM's log score when present.

  A product of many step probabilities underflows to 0.0 and ties; its log does not. A step with
  P(ok) = 0 gives -inf, ranked below every finite score.
  """
  if method == "prm" and "prm_log" in pool.scores:
    return pool.scores["prm_log"]
  return pool.scores[method]


def best_of_n(pools: Sequence[ProblemPool], ns: Sequence[int], trials: int = 400, seed: int = 0,
              pool_size: int | None = None) -> dict:
  """The `bon.json` dict: solve rates (mean, std over trials) per method for each N."""
  full = pool_size or max(len(p.correct) for p in pools)
  if max(ns) > full:
    raise ValueError(f"N={max(ns)} exceeds the pool size {full}")
  present = [m for m in METHODS if m in ("majority",) or all(
      (m if m != "weighted" else "prm") in p.scores for p in pools)]
  if "weighted" in present and not all("prm" in p.scores for p in pools):
    present.remove("weighted")
  rng = np.random.default_rng(seed)
  solved = {m: np.zeros((len(ns), trials)) for m in present}
  for p in pools:
    m_p = len(p.correct)
    if m_p > full:
      raise ValueError(f"problem {p.problem_id} has {m_p} samples > pool size {full}")
    # padded pool: entries >= m_p are "discarded" (no answer)
    order = rng.permuted(np.tile(np.arange(full), (trials, 1)), axis=1)
    ngroups = int(p.group.max()) + 1 if (p.group >= 0).any() else 0
    correct_of_group = np.zeros(max(ngroups, 1), bool)
    for g in range(ngroups):
      correct_of_group[g] = p.correct[p.group == g].any()
    pad = lambda a, fill: np.concatenate([a, np.full(full - m_p, fill, a.dtype)])
    valid, correct, group = pad(p.valid, False), pad(p.correct, False), pad(p.group, -1)
    scores = {k: pad(v, -np.inf) for k, v in p.scores.items()}
    # valid samples rank above padding and no-answer ones even at -inf (P(ok) = 0 somewhere)
    lowest = np.finfo(np.float64).min
    ranked = {m: pad(np.maximum(rank_key(p, m), lowest), -np.inf) for m in ("prm", "orm")
              if m in p.scores}
    for i, n in enumerate(ns):
      idx = order[:, :n]
      v = valid[idx]
      for m in present:
        if m in ("prm", "orm"):
          s = np.where(v, ranked[m][idx], -np.inf)
          pick = s.argmax(axis=1)
          solved[m][i] += v.any(axis=1) & correct[np.take_along_axis(idx, pick[:, None], 1)[:, 0]]
        elif m == "majority":
          solved[m][i] += _vote(np.where(v, group[idx], -1), v.astype(float), correct_of_group, rng)
        else:
          w = np.where(v, scores["prm"][idx], 0.0)
          solved[m][i] += _vote(np.where(v, group[idx], -1), w, correct_of_group, rng)
  rates = {m: solved[m] / len(pools) for m in present}
  return {"n": [int(n) for n in ns], "num_problems": len(pools), "pool_size": int(full),
          "trials": trials, "methods": {m: {"mean": rates[m].mean(1).tolist(),
                                            "std": rates[m].std(1).tolist()} for m in present},
          "within_problem_auroc": {m: within_problem_auroc(pools, m) for m in ("prm", "orm")
                                   if m in present}}


def within_problem_auroc(pools: Sequence[ProblemPool], method: str) -> dict:
  """How well a reward model ranks right above wrong answers *to the same problem*.

  Best-of-N only ever compares samples of one problem, so this (not a global AUROC, which a model
  also earns by telling easy problems from hard ones) is the number that predicts its gain. Mean over
  the problems that have both right and wrong samples; None when there are none.
  """
  per = [auroc(rank_key(p, method), p.correct) for p in pools
         if method in p.scores and 0 < p.correct.sum() < len(p.correct)]
  return {"mean": float(np.mean(per)) if per else None, "problems": len(per)}


def format_auroc(x: float | None) -> str:
  """A within-problem AUROC as printed in bon.md and the demo report ("n/a": no mixed problem)."""
  return "n/a" if x is None else f"{x:.3f}"


def markdown_table(result: dict) -> str:
  methods = list(result["methods"])
  lines = ["| N | " + " | ".join(methods) + " |", "|---|" + "---|" * len(methods)]
  for i, n in enumerate(result["n"]):
    cells = [f"{100 * result['methods'][m]['mean'][i]:.1f} ± {100 * result['methods'][m]['std'][i]:.1f}"
             for m in methods]
    lines.append(f"| {n} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


LABELS = {"prm": "Process-supervised RM", "orm": "Outcome-supervised RM", "majority": "Majority voting",
          "weighted": "PRM-weighted voting"}


def plot_best_of_n(result: dict, path: str, title: str = "Best-of-N") -> None:
  """Solve rate vs N (log x), one line per method with a shaded ±std band (the paper's Figure 3)."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6, 4.2), dpi=120)
  ns = np.asarray(result["n"])
  for m, r in result["methods"].items():
    mean, std = 100 * np.asarray(r["mean"]), 100 * np.asarray(r["std"])
    ax.plot(ns, mean, marker="o", ms=3, label=LABELS.get(m, m))
    ax.fill_between(ns, mean - std, mean + std, alpha=0.2)
  ax.set_xscale("log", base=2)
  ax.set_xlabel("N = number of solutions per problem")
  ax.set_ylabel("% problems solved (best-of-N)")
  ax.set_title(f"{title} ({result['num_problems']} problems, {result['trials']} trials)")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def run_bon_eval(solutions: Iterable[Solution], ns: Sequence[int], trials: int, seed: int, out_dir: str,
                 mode: str = "prm800k", pool_size: int = 0) -> dict:
  """`prm-jax bon-eval`: writes bon.json, bon.md and bon.png to `out_dir`.

  `pool_size` pads every problem's pool with discarded entries (eval.py uses 1860), so N samples
  are drawn from the same-sized pool everywhere; 0 means the largest pool.
  """
  solutions = list(solutions)
  pools = build_pools(solutions, mode)
  if not pools:
    raise ValueError("no solutions to evaluate")
  result = best_of_n(pools, ns, trials, seed, pool_size=pool_size or None)
  repeated = repeated_samples(solutions)
  if repeated:
    result["repeated_samples"] = repeated
  os.makedirs(out_dir, exist_ok=True)
  write_json(os.path.join(out_dir, "bon.json"), result)
  md = (f"Best-of-N solve rate (%), mean ± std over {trials} trials, "
        f"{result['num_problems']} problems, pool size {result['pool_size']}\n\n"
        + markdown_table(result) + "\n")
  for m, v in result["within_problem_auroc"].items():
    md += (f"\n{m}: right vs wrong answers to the same problem, AUROC "
           f"{format_auroc(v['mean'])} (over {v['problems']} problems with both)\n")
  if repeated:
    md += f"\nWarning: {describe_repeats(repeated)}.\n"
  write_text(os.path.join(out_dir, "bon.md"), md)
  plot_best_of_n(result, os.path.join(out_dir, "bon.png"))
  return result


def repeated_samples(solutions: Iterable[Solution]) -> int:
  """Rows whose (problem_id, meta.sample_idx, meta.seed) an earlier row already had: a file that
  holds some samples twice (two runs appended into one file), which best-of-N would count as
  bigger pools. Rows without a sample index are not counted."""
  seen, repeated = set(), 0
  for s in solutions:
    if s.meta.get("sample_idx") is None:
      continue
    key = (s.problem_id, s.meta.get("sample_idx"), s.meta.get("seed"), s.meta.get("prefix_steps"))
    repeated += key in seen
    seen.add(key)
  return repeated


def describe_repeats(n: int) -> str:
  return (f"{n} rows repeat an earlier row's (problem_id, sample_idx, seed): the input holds "
          "samples twice, and they are counted in the pools as drawn")
