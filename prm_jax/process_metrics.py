"""Step-level evaluation: how well a PRM finds the first wrong step and how calibrated its P(ok) is.

`process_eval` on step-labelled, PRM-scored solutions: ProcessBench's earliest-error F1 (a threshold
chosen on a dev split of the problems, or fixed), per-subset when the rows carry ProcessBench's
subsets, PRMBench's PRMScore when they carry its classifications, step AUROC and calibration;
`run_process_eval` writes them (`prm-jax process-eval`).
"""

from __future__ import annotations

import os
from typing import Any, Iterable, Sequence

import numpy as np

from prm_jax.records import Solution, write_json, write_text


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
