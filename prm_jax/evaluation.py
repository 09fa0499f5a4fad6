"""Best-of-N evaluation as in the paper, vectorized over trials with NumPy.

For each N and each problem: pad the problem's pool to the full pool size with "discarded" entries,
draw a random subset of N (T trials at once), drop entries without an answer, and pick a solution by
max PRM score, max ORM score, majority vote over *equivalent* answers, or RM-weighted vote. The solve
rate is averaged over problems; mean and std are over trials.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Iterable, Sequence

import numpy as np

from prm_jax import grading
from prm_jax.records import Solution, write_json, write_text

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


# ----------------------------------------------------------------------------- step-level metrics

def earliest_error(labels: Sequence[int | None]) -> int:
  """Index of the first -1 step, or -1 when no step is wrong (ProcessBench's label)."""
  return next((i for i, l in enumerate(labels) if l == -1), -1)


def predicted_error(step_probs: Sequence[float], threshold: float) -> int:
  """First step whose P(ok) falls below the threshold, or -1."""
  return next((i for i, p in enumerate(step_probs) if p < threshold), -1)


def processbench_f1(gold: Sequence[int], pred: Sequence[int]) -> dict:
  """Harmonic mean of accuracy on erroneous solutions (exact error step) and on correct ones.

  Undefined (NaN, with a `reason`) when either class is missing: 0.0 would read as a measured
  failure.
  """
  gold, pred = np.asarray(gold), np.asarray(pred)
  err, ok = gold >= 0, gold < 0
  acc_err = float((pred[err] == gold[err]).mean()) if err.any() else float("nan")
  acc_ok = float((pred[ok] == -1).mean()) if ok.any() else float("nan")
  out = {"acc_erroneous": acc_err, "acc_correct": acc_ok, "n_erroneous": int(err.sum()),
         "n_correct": int(ok.sum())}
  missing = [name for name, n in (("erroneous", err.sum()), ("correct", ok.sum())) if n == 0]
  if missing:
    return {"f1": float("nan"), **out, "reason": f"no {' or '.join(missing)} solutions"}
  f1 = 2 * acc_err * acc_ok / (acc_err + acc_ok) if (acc_err + acc_ok) > 0 else 0.0
  return {"f1": f1, **out}


def auroc(scores: np.ndarray, positive: np.ndarray) -> float:
  """Area under the ROC curve (Mann-Whitney with tied ranks averaged)."""
  from scipy.stats import rankdata
  pos, neg = positive.sum(), (~positive).sum()
  if pos == 0 or neg == 0:
    return float("nan")
  ranks = rankdata(scores)
  return float((ranks[positive].sum() - pos * (pos + 1) / 2) / (pos * neg))


def calibration(probs: np.ndarray, outcomes: np.ndarray, bins: int = 10) -> dict:
  edges = np.linspace(0, 1, bins + 1)
  which = np.clip(np.digitize(probs, edges[1:-1]), 0, bins - 1)
  rows, ece = [], 0.0
  for b in range(bins):
    at = which == b
    if at.any():
      conf, acc = float(probs[at].mean()), float(outcomes[at].mean())
      ece += at.mean() * abs(conf - acc)
      rows.append({"bin": [float(edges[b]), float(edges[b + 1])], "confidence": conf,
                   "accuracy": acc, "count": int(at.sum())})
  return {"ece": float(ece), "bins": rows}


def _is_dev(problem_id: str, dev_fraction: float) -> bool:
  import zlib
  return (zlib.crc32(problem_id.encode()) % 10_000) < dev_fraction * 10_000


def prmbench_scores(solutions: Sequence[Solution], threshold: float = 0.5) -> dict:
  """PRMBench's headline metric per classification: every step predicted valid when P(ok) >=
  `threshold`; F1 over valid steps, negative F1 over error steps, PRMScore = their mean. "overall"
  pools every classification but `correct` (the benchmark's own totals)."""
  counts: dict[str, np.ndarray] = {}
  for s in solutions:
    kind = str(s.meta.get("classification", "all"))
    c = counts.setdefault(kind, np.zeros(4, np.int64))  # TP, FP, TN, FN
    for p, label in zip(s.scores["prm_steps"], s.step_labels):
      if label is None:
        continue
      valid = p >= threshold
      c += [valid and label != -1, valid and label == -1, not valid and label == -1,
            not valid and label != -1]
  ratio = lambda a, b: a / b if b else float("nan")

  def scores(c):
    tp, fp, tn, fn = (int(x) for x in c)
    f1 = ratio(2 * tp, 2 * tp + fp + fn)
    neg = ratio(2 * tn, 2 * tn + fn + fp)
    return {"f1": f1, "negative_f1": neg, "prmscore": (f1 + neg) / 2, "steps": tp + fp + tn + fn}
  out = {k: scores(c) for k, c in sorted(counts.items())}
  rest = [c for k, c in counts.items() if k != "correct"]
  out["overall"] = scores(np.sum(rest, axis=0) if rest else np.zeros(4, np.int64))
  return out


def process_eval(solutions: Iterable[Solution], dev_fraction: float = 0.5,
                 neutral_is_positive: bool = True, threshold: float | None = None) -> dict:
  """Step-level evaluation of `scores.prm_steps` against gold `step_labels`.

  The earliest-error threshold is `threshold` when given (every solution is then reported), else
  chosen on a dev split of the problems (by id) and reported on the rest. `processbench` holds the
  benchmark's own table over the reported solutions, as its paper lays it out: `{"<subset>": {f1,
  acc_erroneous, acc_correct, n_erroneous, n_correct}, ..., "average_f1"}` (`meta.subset`; "all"
  without one; a `reason` beside them when an F1 is undefined). PRMBench rows (`meta.source`) are
  left out of it and get their own metric (`prmbench`). AUROC and calibration use every labelled
  step up to the first error.
  """
  rows, skipped = [], dict.fromkeys(SKIPS, 0)
  for s in solutions:
    why = ("no_steps" if not s.steps else "no_step_labels" if s.step_labels is None else
           "no_step_scores" if not s.scores or s.scores.get("prm_steps") is None else None)
    if why:
      skipped[why] += 1
    else:
      rows.append(s)
  if not rows:
    raise ValueError("no solutions with both step_labels and scores.prm_steps"
                     + (f" ({describe_skips(skipped)})" if any(skipped.values()) else ""))
  gold = lambda ss: [earliest_error(s.step_labels) for s in ss]
  pred = lambda ss, t: [predicted_error(s.scores["prm_steps"], t) for s in ss]
  if threshold is not None:
    if not 0.0 <= threshold <= 1.0:
      raise ValueError(f"threshold={threshold} must be in [0, 1]")
    dev, test, best, dev_f1 = [], rows, float(threshold), np.asarray([np.nan])
  else:
    dev = [s for s in rows if _is_dev(s.problem_id, dev_fraction)]
    test = [s for s in rows if not _is_dev(s.problem_id, dev_fraction)]
    thresholds = np.linspace(0.0, 1.0, 101)
    pick = dev or test  # with no dev split the threshold is fit on test, so test is not reported
    dev_f1 = np.asarray([processbench_f1(gold(pick), pred(pick, t))["f1"] for t in thresholds])
    best = float(thresholds[int(np.nanargmax(dev_f1))]) if np.isfinite(dev_f1).any() else 0.5
  if not test or (threshold is None and not dev):
    empty = "test" if not test else "dev"
    test_metrics = {"f1": float("nan"), "acc_erroneous": float("nan"),
                    "acc_correct": float("nan"), "n_erroneous": 0, "n_correct": 0,
                    "reason": f"the {empty} split is empty (dev_fraction={dev_fraction}, "
                              f"{len(rows)} solutions): no held-out F1"}
    reported = []
  else:
    test_metrics = processbench_f1(gold(test), pred(test, best))
    reported = test
  subsets: dict[str, list[Solution]] = {}
  for s in reported:
    if s.meta.get("source") != "prmbench":  # PRMBench labels every step: its own metric below
      subsets.setdefault(str(s.meta.get("subset") or "all"), []).append(s)
  table = {k: processbench_f1(gold(v), pred(v, best)) for k, v in sorted(subsets.items())}
  f1s = [v["f1"] for v in table.values()]
  bench: dict[str, Any] = {**table, "average_f1": float(np.mean(f1s)) if f1s and np.all(
      np.isfinite(f1s)) else float("nan")}
  undefined = [f"{k}: {v['reason']}" for k, v in table.items() if "reason" in v]
  if undefined or not table:
    bench["reason"] = "; ".join(undefined) or "no solution in the reported split"
  from_prmbench = [s for s in rows if s.meta.get("source") == "prmbench"]
  prmbench = prmbench_scores(from_prmbench, 0.5 if threshold is None else threshold) if (
      from_prmbench) else None
  probs, ok = [], []
  for s in rows:
    for p, l in zip(s.scores["prm_steps"], s.step_labels):
      if l is None:
        continue
      probs.append(p)
      ok.append(l == 1 or (l == 0 and neutral_is_positive))
      if l == -1:
        break
  probs, ok = np.asarray(probs, float), np.asarray(ok, bool)
  dev_best = float(np.nanmax(dev_f1)) if dev and np.isfinite(dev_f1).any() else float("nan")
  calib = calibration(probs, ok.astype(float))
  step_auroc, auroc_why = auroc(probs, ok), auroc_reason(ok)
  if not len(probs):
    calib.update(ece=float("nan"), reason=auroc_why)
  return {"threshold": best, "threshold_chosen_on": "fixed" if threshold is not None else "dev",
          "dev_f1": dev_best, "test": test_metrics, "processbench": bench,
          **({"prmbench": prmbench} if prmbench else {}),
          "num_rows": len(rows) + sum(skipped.values()), "skipped": skipped,
          "num_dev": len(dev), "num_test": len(test), "num_steps": int(len(probs)),
          "step_auroc": step_auroc, **({"step_auroc_reason": auroc_why} if auroc_why else {}),
          "calibration": calib}


SKIPS = ("no_steps", "no_step_labels", "no_step_scores")
_SKIP_WORDS = {"no_steps": "without steps", "no_step_labels": "without step labels",
               "no_step_scores": "without scores.prm_steps", "invalid_lines": "invalid lines"}


def describe_skips(skipped: dict) -> str:
  """"skipped 3 rows: 1 without steps, 2 without step labels" ("" when none was skipped)."""
  parts = [f"{n} {_SKIP_WORDS.get(k, k)}" for k, n in skipped.items() if n]
  return f"skipped {sum(skipped.values())} rows: {', '.join(parts)}" if parts else ""


def auroc_reason(positive: np.ndarray) -> str | None:
  """Why a step AUROC over these ok / not-ok labels is undefined (None when it is defined)."""
  if not len(positive):
    return "no labelled steps"
  if positive.all():
    return "no negative steps"
  if not positive.any():
    return "no positive steps"
  return None


def with_reason(x: float, reason: str | None, fmt: str = ".3f") -> str:
  """A metric as printed: "0.912", or "nan (no negative steps)" when it is undefined."""
  return f"{x:{fmt}}" + (f" ({reason})" if reason and not np.isfinite(x) else "")


def plot_calibration(result: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(4.5, 4.2), dpi=120)
  bins = result["calibration"]["bins"]
  ax.plot([0, 1], [0, 1], "--", color="gray", lw=1, label="perfect calibration")
  ax.plot([b["confidence"] for b in bins], [b["accuracy"] for b in bins], marker="o",
          label=f"PRM steps (ECE {result['calibration']['ece']:.3f})")
  ax.set_xlabel("predicted P(step ok)")
  ax.set_ylabel("fraction of steps ok")
  ax.set_title(f"Step calibration, AUROC {result['step_auroc']:.3f}")
  ax.legend(loc="upper left")
  ax.grid(alpha=0.3)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)


def processbench_subsets(bench: dict) -> dict[str, dict]:
  """The per-subset entries of `process.json`'s `processbench` (beside `average_f1`, `reason`)."""
  return {k: v for k, v in bench.items() if isinstance(v, dict)}


def processbench_table(bench: dict) -> str:
  """The ProcessBench paper's table layout: per subset, accuracy on erroneous / correct, F1."""
  table = processbench_subsets(bench)
  subsets = list(table)
  pct = lambda x: "n/a" if not np.isfinite(x) else f"{100 * x:.1f}"
  lines = ["| | " + " | ".join(subsets) + " | average |", "|---|" + "---|" * (len(subsets) + 1)]
  for key, name in (("acc_erroneous", "erroneous acc"), ("acc_correct", "correct acc"),
                    ("f1", "F1")):
    cells = [pct(table[k][key]) for k in subsets]
    lines.append(f"| {name} | " + " | ".join(cells) + " | "
                 + (pct(bench["average_f1"]) if key == "f1" else "") + " |")
  lines.append("| items (erroneous / correct) | " + " | ".join(
      f"{table[k]['n_erroneous']} / {table[k]['n_correct']}"
      for k in subsets) + " | |")
  return "\n".join(lines)


def prmbench_table(scores: dict) -> str:
  pct = lambda x: "n/a" if not np.isfinite(x) else f"{100 * x:.1f}"
  lines = ["", "PRMBench (steps valid at P(ok) >= threshold):", "",
           "| classification | PRMScore | F1 | negative F1 | steps |", "|---|---|---|---|---|"]
  lines += [f"| {k} | {pct(v['prmscore'])} | {pct(v['f1'])} | {pct(v['negative_f1'])} | "
            f"{v['steps']} |" for k, v in scores.items()]
  return "\n".join(lines) + "\n"


def run_process_eval(solutions: Iterable[Solution], out_dir: str, dev_fraction: float = 0.5,
                     threshold: float | None = None, invalid_lines: int = 0) -> dict:
  """`prm-jax process-eval`: writes process.json, process.md and calibration.png. Every row it
  could not use is counted in `skipped` (`invalid_lines`: the reader's, with data.skip_invalid)."""
  result = process_eval(solutions, dev_fraction, threshold=threshold)
  if invalid_lines:
    result["skipped"]["invalid_lines"] = int(invalid_lines)
  auroc_why, ece_why = result.get("step_auroc_reason"), result["calibration"].get("reason")
  os.makedirs(out_dir, exist_ok=True)
  write_json(os.path.join(out_dir, "process.json"), result)
  t = result["test"]
  write_text(os.path.join(out_dir, "process.md"),
             "| metric | value |\n|---|---|\n"
             f"| earliest-error F1 (test, ProcessBench) | {100 * t['f1']:.1f} |\n"
             f"| accuracy on erroneous / correct | {100 * t['acc_erroneous']:.1f} / "
             f"{100 * t['acc_correct']:.1f} |\n"
             + (f"| threshold (fixed) | {result['threshold']:.2f} |\n" if threshold is not None
                else f"| threshold (chosen on dev, F1 {100 * result['dev_f1']:.1f}) | "
                     f"{result['threshold']:.2f} |\n")
             + f"| step AUROC | {with_reason(result['step_auroc'], auroc_why)} |\n"
             f"| step ECE | {with_reason(result['calibration']['ece'], ece_why)} |\n"
             + (f"\nTest F1 is undefined: {t['reason']}.\n" if "reason" in t else "")
             + (f"\n{describe_skips(result['skipped'])}.\n" if any(result["skipped"].values())
                else "")
             + ("\nProcessBench (earliest-error identification, threshold "
                f"{result['threshold']:.2f}):\n\n{processbench_table(result['processbench'])}\n"
                if processbench_subsets(result["processbench"]) else "")
             + (prmbench_table(result["prmbench"]) if "prmbench" in result else ""))
  plot_calibration(result, os.path.join(out_dir, "calibration.png"))
  return result
