"""MATH problems (`math_splits/{train,test}.jsonl`: problem, solution, answer, subject, level,
unique_id) as `Problem`s."""

from __future__ import annotations

from typing import Iterator

from prm_jax.records import Problem, ReadStats, read_problems


def read_math(path: str, skip_invalid: bool = False, stats: ReadStats | None = None
              ) -> Iterator[Problem]:
  """Streams MATH lines; `unique_id` becomes `problem_id`, `level` an int ("Level 3" accepted)."""
  def check(p: Problem) -> Problem:
    if p.answer is None:
      raise ValueError("missing 'answer'")
    return p
  for p in read_problems(path, skip_invalid, stats):
    yield check(p)
