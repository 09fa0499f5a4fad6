"""A tiny step-labelled task for trainer tests: one-digit sums, right (+1), off by one (-1), or a
neutral remark (0). Labels stop at the first wrong step, as in PRM800K."""

import json

import numpy as np

from prm_jax.records import Solution


def make(n: int, seed: int) -> list[Solution]:
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    steps, labels = [], []
    for _ in range(int(rng.integers(2, 5))):
      kind = rng.choice(["right", "wrong", "neutral"], p=[0.55, 0.3, 0.15])
      a, b = (int(x) for x in rng.integers(0, 5, size=2))
      if kind == "neutral":
        steps.append("so far so good")
        labels.append(0)
      else:
        steps.append(f"{a}+{b}={a + b + (kind == 'wrong')}")
        labels.append(1 if kind == "right" else -1)
      if labels[-1] == -1:
        break
    out.append(Solution(problem_id=f"t{i}", problem="Add.", steps=steps, step_labels=labels,
                        is_correct=-1 not in labels))
  return out


def write(path, sols) -> str:
  with open(path, "w") as f:
    for s in sols:
      f.write(json.dumps(s.to_dict()) + "\n")
  return str(path)
