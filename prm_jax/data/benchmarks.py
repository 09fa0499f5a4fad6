"""The community's step-level benchmarks, read in their own layouts (auto-detected by `sniff`).

ProcessBench (github.com/QwenLM/ProcessBench): one JSON list per subset, each item
`{id, generator, problem, steps, final_answer_correct, label}`, `label` = index of the earliest wrong
step or -1. As `Solution`s: `problem_id` = the item's id; `step_labels` +1 before the earliest error,
-1 at it, null after (all +1 when none); `is_correct` = final_answer_correct; `meta.subset` from the
id (gsm8k / math / olympiadbench / omnimath), `meta.label` and `meta.generator` kept.

PRMBench (github.com/ssmisya/PRMBench): JSONL, each line a modified PRM800K solution
`{idx, original_question, modified_question, original_process, modified_process, error_steps (1-based),
classification, ...}`. As `Solution`s (as the benchmark's own loader builds its items):
`problem_id` = "<classification>_<idx>", steps = modified_process, `step_labels` -1 on every error
step and +1 on every other (PRMBench labels all steps), `meta.classification` and `meta.subset`
(both the classification; `meta.source` = "prmbench" keeps the rows out of ProcessBench's table and
scores them with PRMBench's own metric); a `redundency` line also yields its original solution
once, all +1, as classification `correct`.
"""

from __future__ import annotations

import json
from typing import Any, Iterator

from prm_jax.records import DataError, ReadStats, Solution

SUBSETS = ("gsm8k", "math", "olympiadbench", "omnimath")


def sniff(path: str) -> str | None:
  """"processbench" (a JSON list), "prmbench" (JSONL with `modified_process`), or None."""
  with open(path, "rb") as f:
    head = f.read(1 << 16)
  if head.lstrip().startswith(b"["):
    return "processbench"
  first = head.lstrip().split(b"\n", 1)[0]
  try:
    row = json.loads(first)
  except (json.JSONDecodeError, UnicodeDecodeError):
    return None
  return "prmbench" if isinstance(row, dict) and "modified_process" in row else None


def processbench_solution(item: Any) -> Solution:
  if not isinstance(item, dict):
    raise ValueError(f"expected a JSON object, got {type(item).__name__}")
  for key in ("id", "problem", "steps", "label"):
    if key not in item:
      raise ValueError(f"missing {key!r}")
  steps, label = item["steps"], item["label"]
  if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
    raise ValueError("'steps' must be a list of strings")
  if isinstance(label, bool) or not isinstance(label, int) or not -1 <= label < len(steps):
    raise ValueError(f"'label' must be -1 or a step index below {len(steps)}, got {label!r}")
  labels = [1] * len(steps) if label < 0 else [1] * label + [-1] + [None] * (len(steps) - label - 1)
  pid = str(item["id"])
  subset = pid.rsplit("-", 1)[0]
  correct = item.get("final_answer_correct")
  return Solution(problem_id=pid, problem=str(item["problem"]), steps=list(steps),
                  is_correct=correct if isinstance(correct, bool) else None, step_labels=labels,
                  meta={"subset": subset, "label": label, "generator": item.get("generator"),
                        "source": "processbench"})


def read_processbench(path: str, skip_invalid: bool = False, stats: ReadStats | None = None
                      ) -> Iterator[Solution]:
  """Items of a ProcessBench JSON file; a bad item fails naming the file and the item's index."""
  stats = stats if stats is not None else ReadStats()
  stats.path = str(path)
  with open(path, encoding="utf-8") as f:
    try:
      items = json.load(f)
    except json.JSONDecodeError as e:
      raise DataError(f"{path}:{e.lineno}: malformed JSON: {e.msg} at column {e.colno}") from None
  if not isinstance(items, list):
    raise DataError(f"{path}: expected a JSON list of ProcessBench items")
  for i, item in enumerate(items):
    stats.lines += 1
    try:
      sol = processbench_solution(item)
    except (ValueError, TypeError) as e:
      if not skip_invalid:
        raise DataError(f"{path}: item {i}: {e}") from None
      stats.skipped += 1
      if len(stats.errors) < 10:
        stats.errors.append(f"{path}: item {i}: {e}")
      continue
    stats.records += 1
    yield sol
  if skip_invalid:
    stats.report()


def prmbench_solutions(row: Any) -> list[Solution]:
  if not isinstance(row, dict):
    raise ValueError(f"expected a JSON object, got {type(row).__name__}")
  for key in ("idx", "modified_question", "modified_process", "error_steps", "classification"):
    if key not in row:
      raise ValueError(f"missing {key!r}")
  steps, errors = row["modified_process"], row["error_steps"]
  if not isinstance(steps, list) or not all(isinstance(x, str) for x in steps):
    raise ValueError("'modified_process' must be a list of strings")
  if not isinstance(errors, list) or not all(
      isinstance(e, int) and not isinstance(e, bool) and 1 <= e <= len(steps) for e in errors):
    raise ValueError(f"'error_steps' must be 1-based step numbers up to {len(steps)}, got "
                     f"{errors!r}"[:200])
  kind = str(row["classification"])
  meta = {"classification": kind, "subset": kind, "error_steps": list(errors), "source": "prmbench"}
  out = [Solution(problem_id=f"{kind}_{row['idx']}", problem=str(row["modified_question"]),
                  steps=list(steps), step_labels=[-1 if i + 1 in errors else 1
                                                  for i in range(len(steps))], meta=meta)]
  if kind == "redundency" and isinstance(row.get("original_process"), list):
    original = [str(x) for x in row["original_process"]]
    out.insert(0, Solution(problem_id=f"correct_{row['idx']}",
                           problem=str(row.get("original_question", row["modified_question"])),
                           steps=original, step_labels=[1] * len(original),
                           meta={"classification": "correct", "subset": "correct",
                                 "error_steps": [], "source": "prmbench"}))
  return out


def read_prmbench(path: str, skip_invalid: bool = False, stats: ReadStats | None = None
                  ) -> Iterator[Solution]:
  """Solutions of a PRMBench JSONL file (bad lines fail with file:line, or are counted)."""
  from prm_jax.records import iter_records
  seen: set[str] = set()
  for group in iter_records(path, prmbench_solutions, skip_invalid, stats):
    for sol in group:
      if sol.problem_id not in seen:  # the benchmark's loader keeps each id once
        seen.add(sol.problem_id)
        yield sol
