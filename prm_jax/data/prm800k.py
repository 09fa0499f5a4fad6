"""PRM800K label files (phase 1 and 2) and the paper's released scored samples, as `Solution`s.

A labelled row is a walk through candidate steps: at each step the labeller rated one or more
completions and the walk continued with the chosen one (or with a step the labeller wrote, phase 1's
`human_completion`). We follow that walk and stop at the first -1. Every other rated completion is a
valid (prefix, step, rating) example too: `expand_alternatives` turns them into extra `Solution`s.
"""

from __future__ import annotations

import hashlib
from typing import Any, Iterator

from prm_jax import grading
from prm_jax.records import LABELS, ReadStats, Solution, iter_records

FINISH_REASONS = ("solution", "found_error", "give_up", "bad_problem")


def problem_id_for(problem: str) -> str:
  """PRM800K rows carry no problem id: a stable one from the problem text."""
  return "prm800k/" + hashlib.sha1(problem.encode("utf-8")).hexdigest()[:12]


def _rating(c: Any, where: str) -> int | None:
  r = c.get("rating") if isinstance(c, dict) else None
  if isinstance(r, bool) or r not in LABELS:
    raise ValueError(f"{where}: rating {r!r} is not -1, 0, 1 or null")
  return r


def parse_prm800k_row(row: dict[str, Any], grade: bool = True) -> Solution:
  """One label row -> Solution (raises ValueError with the offending field on malformed input)."""
  if not isinstance(row, dict):
    raise ValueError("expected a JSON object")
  for key in ("question", "label"):
    if not isinstance(row.get(key), dict):
      raise ValueError(f"missing or non-object '{key}'")
  q, label = row["question"], row["label"]
  if not isinstance(q.get("problem"), str):
    raise ValueError("missing 'question.problem'")
  steps_in = label.get("steps")
  if not isinstance(steps_in, list):
    raise ValueError("missing 'label.steps' list")
  finish = label.get("finish_reason")
  if finish not in FINISH_REASONS:
    raise ValueError(f"label.finish_reason {finish!r} is not one of {FINISH_REASONS}")
  generation = row.get("generation")
  phase = 1 if generation is None else 2

  steps, labels, alternatives, human_steps = [], [], [], []
  for j, step in enumerate(steps_in):
    where = f"label.steps[{j}]"
    if not isinstance(step, dict) or not isinstance(step.get("completions"), list):
      raise ValueError(f"{where}: missing 'completions' list")
    comps = step["completions"]
    ratings = [_rating(c, f"{where}.completions[{k}]") for k, c in enumerate(comps)]
    for k, c in enumerate(comps):
      if not isinstance(c, dict) or not isinstance(c.get("text"), str):
        raise ValueError(f"{where}.completions[{k}]: missing 'text'")
    chosen, human = step.get("chosen_completion"), step.get("human_completion")
    followed = None
    if chosen is not None:
      if isinstance(chosen, bool) or not isinstance(chosen, int) or not 0 <= chosen < len(comps):
        raise ValueError(f"{where}: chosen_completion {chosen!r} out of range for {len(comps)} "
                         "completions")
      followed = (comps[chosen]["text"], ratings[chosen], chosen)
    elif human is not None:
      if isinstance(human, str):
        followed = (human, None, None)
      elif isinstance(human, dict) and isinstance(human.get("text"), str):
        followed = (human["text"], _rating(human, f"{where}.human_completion"), None)
      else:
        raise ValueError(f"{where}: human_completion must be null, a string or an object with text")
      human_steps.append(len(steps))
    elif phase == 2 and comps:
      followed = (comps[0]["text"], ratings[0], 0)  # phase 2: completions[0] is the pre-generated step
    for k, (c, r) in enumerate(zip(comps, ratings)):
      if r is not None and (followed is None or k != followed[2]):
        alternatives.append({"step_index": len(steps), "text": c["text"], "rating": r})
    if followed is None:
      break  # nothing was continued from here (phase 1 give-up, or an error with no rewrite)
    steps.append(followed[0])
    labels.append(followed[1])
    if followed[1] == -1:
      break

  answer, source = None, None
  if steps and "# Answer" in steps[-1]:
    answer, source = grading.extract_answer(steps[-1]), "steps"
  elif phase == 2 and isinstance(q.get("pre_generated_answer"), str):
    answer, source = q["pre_generated_answer"], "pre_generated"
  truth = q.get("ground_truth_answer")
  truth = None if truth is None else str(truth)
  # Only an answer the kept steps reach has an outcome: a walk cut at its first -1 before the
  # answer would otherwise carry the pre-generated answer's grade on its truncated last step.
  cut = (labels and labels[-1] == -1) or finish != "solution"
  is_correct = (grading.grade_answer(answer, truth)
                if (grade and answer and truth and (source == "steps" or not cut)) else None)
  meta = {"source": "prm800k", "phase": phase, "labeler": row.get("labeler"),
          "timestamp": row.get("timestamp"), "generation": generation,
          "total_time": label.get("total_time"), "alternatives": alternatives,
          "human_steps": human_steps, "answer_source": source,
          "is_quality_control_question": bool(row.get("is_quality_control_question")),
          "is_initial_screening_question": bool(row.get("is_initial_screening_question"))}
  if phase == 2:
    meta["pre_generated_num_steps"] = len(q.get("pre_generated_steps") or [])
    meta["pre_generated_verifier_score"] = q.get("pre_generated_verifier_score")
  return Solution(problem_id=problem_id_for(q["problem"]), problem=q["problem"], steps=steps,
                  answer=answer, ground_truth_answer=truth, is_correct=is_correct,
                  step_labels=labels, finish_reason=finish, meta=meta)


def read_prm800k(path: str, *, include_quality_control: bool = False,
                 include_screening: bool = False, include_bad_problem: bool = False,
                 grade: bool = True, skip_invalid: bool = False,
                 stats: ReadStats | None = None) -> Iterator[Solution]:
  """Streams the labelled solutions of a PRM800K file (phase 1 or 2).

  Quality-control, initial-screening and `bad_problem` rows are dropped (counted in `stats.dropped`)
  unless included.
  """
  stats = stats if stats is not None else ReadStats()
  for sol in iter_records(path, lambda r: parse_prm800k_row(r, grade), skip_invalid, stats):
    m = sol.meta
    if ((m["is_quality_control_question"] and not include_quality_control)
        or (m["is_initial_screening_question"] and not include_screening)
        or (sol.finish_reason == "bad_problem" and not include_bad_problem)):
      stats.dropped += 1
      stats.records -= 1
      continue
    yield sol


def alternative(sol: Solution, k: int) -> Solution:
  """`sol`'s k-th rated alternative as its own truncated `Solution`: prefix + alternative step.

  The prefix's labels are already counted once, in `sol`, so here it is context only.
  """
  alt = sol.meta["alternatives"][k]
  j = alt["step_index"]
  return Solution(
      problem_id=sol.problem_id, problem=sol.problem, steps=sol.steps[:j] + [alt["text"]],
      ground_truth_answer=sol.ground_truth_answer, step_labels=[None] * j + [alt["rating"]],
      finish_reason=None,
      meta={"source": "prm800k-alternative", "alternative_of": sol.meta.get("timestamp"),
            "alternative_index": k, "phase": sol.meta.get("phase")})


def expand_alternatives(solutions) -> Iterator[Solution]:
  """Each solution, then one truncated `Solution` per rated alternative (see `alternative`)."""
  for sol in solutions:
    yield sol
    for k in range(len(sol.meta.get("alternatives", ()))):
      yield alternative(sol, k)


def parse_scored_sample(row: dict[str, Any]) -> Solution:
  """A line of the paper's `scored-test-samples.jsonl` (steps, rating_probs, prm_score, orm_score).

  Per-step P(ok) is 1 - P(-1): the paper counts neutral as correct, and prm_score is their product.
  """
  if not isinstance(row, dict):
    raise ValueError("expected a JSON object")
  steps = row.get("steps")
  if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
    raise ValueError("'steps' must be a list of strings")
  probs = row.get("rating_probs")
  if probs is not None:
    if not isinstance(probs, list) or len(probs) != len(steps):
      raise ValueError(f"'rating_probs' must have one entry per step ({len(steps)})")
    for k, p in enumerate(probs):
      if not isinstance(p, dict) or not all(isinstance(p.get(c), (int, float)) for c in ("-1", "0", "1")):
        raise ValueError(f"rating_probs[{k}] must map '-1', '0', '1' to probabilities")
  pid = row.get("unique_id") or problem_id_for(str(row.get("problem", "")))
  if not isinstance(row.get("problem"), str):
    raise ValueError("missing 'problem'")
  scores = {}
  if row.get("prm_score") is not None:
    scores["prm"] = float(row["prm_score"])
  if row.get("orm_score") is not None:
    scores["orm"] = float(row["orm_score"])
  if probs is not None:
    scores["prm_steps"] = [1.0 - float(p["-1"]) for p in probs]
    scores["rating_probs"] = [[float(p["-1"]), float(p["0"]), float(p["1"])] for p in probs]
  is_correct = row.get("is_correct")
  if is_correct is not None and not isinstance(is_correct, bool):
    raise ValueError("'is_correct' must be true, false or null")
  answer = row.get("answer", row.get("given_answer"))  # eval.py reads either name
  return Solution(problem_id=str(pid), problem=row["problem"], steps=list(steps),
                  answer=None if answer is None else str(answer),
                  ground_truth_answer=None if row.get("ground_truth_answer") is None
                  else str(row["ground_truth_answer"]),
                  is_correct=is_correct, scores=scores or None,
                  meta={"source": "scored-samples", "subject": row.get("subject"),
                        "level": row.get("level")})


def read_scored_samples(path: str, skip_invalid: bool = False, stats: ReadStats | None = None
                        ) -> Iterator[Solution]:
  return iter_records(path, parse_scored_sample, skip_invalid, stats)


def detect_format(row: Any) -> str:
  """'prm800k', 'scored-samples' or 'solution' for one parsed JSON line."""
  if isinstance(row, dict):
    if "label" in row and "question" in row:
      return "prm800k"
    if "rating_probs" in row or "prm_score" in row or "orm_score" in row:
      return "scored-samples"
  return "solution"


def parse_any_solution(row: Any) -> Solution:
  """Our `Solution`, a PRM800K label row or a scored sample, whichever the line is."""
  kind = detect_format(row)
  if kind == "prm800k":
    return parse_prm800k_row(row)
  if kind == "scored-samples":
    return parse_scored_sample(row)
  return Solution.from_dict(row)


def read_any_solutions(path: str, skip_invalid: bool = False, stats: ReadStats | None = None
                       ) -> Iterator[Solution]:
  return iter_records(path, parse_any_solution, skip_invalid, stats)
