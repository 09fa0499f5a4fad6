"""Active learning: choose which solutions to label next.

The paper's small-scale recipe: per problem, score a pool with the current PRM and label mostly
*convincing wrong-answer* solutions (high PRM score, wrong final answer) — 80% of the budget — plus the
most convincing of the rest.
"""

from __future__ import annotations

from typing import Iterable

from prm_jax.records import Solution


def select_convincing_wrong_answers(scored: Iterable[Solution], k: int, frac_wrong: float = 0.8,
                                    score_key: str = "prm") -> list[Solution]:
  """Up to `k` solutions per problem: the top-scored wrong-answer ones (`round(k * frac_wrong)`,
  fewer if there are not enough), filled with the top-scored others. Identical solutions count once.
  """
  if not 0.0 <= frac_wrong <= 1.0:
    raise ValueError(f"frac_wrong={frac_wrong} must be in [0, 1]")
  by_problem: dict[str, list[tuple[int, Solution]]] = {}
  for i, s in enumerate(scored):
    if not s.scores or s.scores.get(score_key) is None:
      raise ValueError(f"solution {i} of problem {s.problem_id} has no scores.{score_key}")
    by_problem.setdefault(s.problem_id, []).append((i, s))
  chosen: list[tuple[int, Solution]] = []
  for items in by_problem.values():
    seen, unique = set(), []
    for i, s in sorted(items, key=lambda x: (-x[1].scores[score_key], x[0])):
      key = tuple(s.steps)
      if key not in seen:
        seen.add(key)
        unique.append((i, s))
    wrong = [x for x in unique if x[1].is_correct is False and x[1].answer is not None]
    take = wrong[:round(k * frac_wrong)]
    picked = {i for i, _ in take}
    take += [x for x in unique if x[0] not in picked][:k - len(take)]
    chosen.extend(take)
  return [s for _, s in sorted(chosen, key=lambda x: x[0])]
