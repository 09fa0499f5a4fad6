"""The toy domain: chained arithmetic whose every step a program can check.

Problem: "Start with 7, add 5, multiply by 3, subtract 4. What is the result?"
Reference solution, one step per line:  7+5=12 / 12*3=36 / 36-4=32 / # Answer / 32
The oracle plays the human labeller: for each line
  +1  a correct computation that applies the next operation to the carried value (progress),
      the "# Answer" line once every operation is done, or the correct final answer;
   0  a correct statement that makes no progress (a repeated step, "12 = 12", a remark);
  -1  wrong arithmetic, a wrong carried value, an operation out of order or not in the problem (an
      unjustified jump), a premature "# Answer", a wrong final answer, or an unreadable line.
Labels stop at the first -1 (None after it), as in PRM800K.

Errors come in two kinds, as a real generator's do. Random slips (`imperfect_solution`, and whatever
an undertrained model gets wrong) scatter over many answers. Systematic misconceptions
(`MISCONCEPTIONS`) are carried by a share of the training references (`training_solution`), so a model
trained on them is wrong the same way on every problem that triggers one: its wrong answer is the
common one, majority voting picks it, and only a verifier of the offending step can tell.
"""

from __future__ import annotations

import re
from typing import Callable, Mapping, Sequence

import numpy as np

from prm_jax.records import Problem, Solution

OPS = {"add": "+", "subtract": "-", "multiply by": "*"}
SYMBOL_TO_WORD = {v: k for k, v in OPS.items()}
# level -> (operations, operand range, multiplier range, bound on every intermediate value or None)
# Level 0 keeps every value in 0..20: a fact table small enough for a tiny verifier to learn.
LEVELS = {0: ((3, 3), (1, 9), (2, 3), 20), 1: ((3, 3), (1, 9), (2, 3), None),
          2: ((4, 5), (1, 20), (2, 4), None), 3: ((6, 8), (1, 30), (2, 5), None)}


def apply(a: int, op: str, b: int) -> int:
  return a + b if op == "+" else a - b if op == "-" else a * b


def make_problem(rng: np.random.Generator, level: int) -> Problem:
  (lo, hi), (vlo, vhi), (mlo, mhi), bound = LEVELS[level]
  n_ops = int(rng.integers(lo, hi + 1))
  start = int(rng.integers(vlo, vhi + 1))
  ops, value = [], start
  for _ in range(n_ops):
    while True:
      word = str(rng.choice(list(OPS)))
      if word == "multiply by" and abs(value) > 200:
        word = "subtract"
      b = int(rng.integers(mlo, mhi + 1)) if word == "multiply by" else int(rng.integers(vlo, vhi + 1))
      if bound is None or 0 <= apply(value, OPS[word], b) <= bound:
        break
    ops.append((OPS[word], b))
    value = apply(value, OPS[word], b)
  text = f"Start with {start}, " + ", ".join(f"{SYMBOL_TO_WORD[o]} {b}" for o, b in ops)
  text += ". What is the result?"
  pid = "synth/" + re.sub(r"[^0-9a-z*+-]+", "_", text.lower())[:120]
  return Problem(problem_id=pid, problem=text, answer=str(value), subject="arithmetic", level=level,
                 meta={"start": start, "ops": ops})


_PROBLEM = re.compile(r"Start with (-?\d+), (.*)\. What is the result\?$")


def parse_problem(text: str) -> tuple[int, list[tuple[str, int]]]:
  """(start, [(op, operand), ...]) from the problem text (the oracle needs nothing else)."""
  m = _PROBLEM.match(text.strip())
  if not m:
    raise ValueError(f"not a synthetic problem: {text[:80]!r}")
  ops = []
  for part in m.group(2).split(", "):
    word, _, num = part.rpartition(" ")
    if word not in OPS:
      raise ValueError(f"unknown operation {word!r} in {text[:80]!r}")
    ops.append((OPS[word], int(num)))
  return int(m.group(1)), ops


def make_problems(n: int, seed: int, levels: Sequence[int] = (1, 2, 3),
                  exclude: set[str] | frozenset = frozenset()) -> list[Problem]:
  """`n` distinct problems, none of whose text is in `exclude` (keeps train and test disjoint)."""
  rng = np.random.default_rng(seed)
  out, seen = [], set(exclude)
  while len(out) < n:
    p = make_problem(rng, int(rng.choice(list(levels))))
    if p.problem not in seen:
      seen.add(p.problem)
      out.append(p)
  return out


def train_test_problems(n_train: int, n_test: int, seed: int, levels=(1, 2, 3)):
  train = make_problems(n_train, seed, levels)
  test = make_problems(n_test, seed + 10_007, levels, exclude={p.problem for p in train})
  return train, test


def reference_solution(p: Problem) -> Solution:
  start, ops = parse_problem(p.problem)
  steps, value = [], start
  for op, b in ops:
    new = apply(value, op, b)
    steps.append(f"{value}{op}{b}={new}")
    value = new
  steps += ["# Answer", str(value)]
  return Solution(problem_id=p.problem_id, problem=p.problem, steps=steps, answer=str(value),
                  ground_truth_answer=p.answer, is_correct=True,
                  step_labels=[1] * len(steps), finish_reason="solution", meta={"source": "reference"})


def _smaller_from_larger(a: int, op: str, b: int) -> int | None:
  """Column subtraction that needs a borrow, done by taking the smaller units digit from the larger
  (13-5 -> 12, 20-4 -> 24): the commonest bug in children's subtraction (Brown & Burton's BUGGY)."""
  if op == "-" and a >= 10 and 0 < b < 10 and a % 10 < b:
    return a - a % 10 + (b - a % 10)
  return None


def _forgotten_carry(a: int, op: str, b: int) -> int | None:
  """Addition whose units overflow, written without the carry (7+6 -> 3, 18+5 -> 13)."""
  if op == "+" and a >= 0 and 0 < b < 10 and a % 10 + b >= 10:
    return a - a % 10 + (a % 10 + b) % 10
  return None


# name -> the misconceived result of `a op b` where the misconception applies, else None
MISCONCEPTIONS: dict[str, Callable[[int, str, int], int | None]] = {
    "smaller_from_larger": _smaller_from_larger, "forgotten_carry": _forgotten_carry}


def _check_rates(rates: Mapping[str, float]) -> dict[str, float]:
  out = {}
  for name, rate in dict(rates).items():
    if name not in MISCONCEPTIONS:
      raise ValueError(f"unknown misconception {name!r}; known: {', '.join(MISCONCEPTIONS)}")
    if not 0.0 <= float(rate) <= 1.0:
      raise ValueError(f"misconception rate {name}={rate} must be in [0, 1]")
    out[name] = float(rate)
  return out


def training_solution(p: Problem, rng: np.random.Generator,
                      misconceptions: Mapping[str, float] = {}) -> Solution:
  """A training reference as a human-written corpus has them: a step that triggers misconception
  `name` is written with its misconceived result with probability `misconceptions[name]`, and the
  rest of the solution follows correctly from the wrong value. Oracle-labelled (the step -1)."""
  rates = _check_rates(misconceptions)
  start, ops = parse_problem(p.problem)
  steps, value, applied = [], start, []
  for op, b in ops:
    new = apply(value, op, b)
    for name, rate in rates.items():
      wrong = MISCONCEPTIONS[name](value, op, b)
      if wrong is not None and rng.random() < rate:
        new = wrong
        applied.append(name)
        break
    steps.append(f"{value}{op}{b}={new}")
    value = new
  steps += ["# Answer", str(value)]
  sol = Solution(problem_id=p.problem_id, problem=p.problem, steps=steps, answer=str(value),
                 ground_truth_answer=p.answer, meta={"source": "reference",
                                                     "misconceptions": applied})
  return label_solution(sol)


def misconception_rates(solutions: Sequence[Solution]) -> dict[str, dict[str, float | int]]:
  """Per misconception: how many written steps `a op b = r` triggered it, and the share of those
  whose `r` is the misconceived result (the same trigger is in the problem for every sample)."""
  out = {}
  for name, wrong in MISCONCEPTIONS.items():
    triggered = misconceived = 0
    for s in solutions:
      for line in s.steps:
        m = _STEP.match(line)
        if not m:
          continue
        a, op, b, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
        w = wrong(a, op, b)
        if w is not None:
          triggered += 1
          misconceived += int(r == w)
    out[name] = {"steps": triggered, "rate": misconceived / triggered if triggered else float("nan")}
  return out


_STEP = re.compile(r"^\s*(-?\d+)\s*([-+*])\s*(-?\d+)\s*=\s*(-?\d+)\s*$")
_SAME = re.compile(r"^\s*(-?\d+)\s*=\s*(-?\d+)\s*$")


def oracle_labels(problem: str, steps: Sequence[str]) -> list[int | None]:
  """The oracle's rating of each step (None after the first -1)."""
  start, ops = parse_problem(problem)
  value, done, answered, done_lines = start, 0, False, set()
  labels: list[int | None] = []
  for line in steps:
    s = line.strip()
    lab = -1
    head, _, given = s.partition("\n")
    if answered:  # the line after "# Answer" is the final answer
      lab = 1 if done == len(ops) and s == str(value) else -1
    elif head.strip() == "# Answer" and given.strip():  # PRM800K's last step: "# Answer\n\n<ans>"
      lab = 1 if done == len(ops) and given.strip() == str(value) else -1
    elif s == "# Answer":
      lab = 1 if done == len(ops) else -1
      answered = True
    elif m := _STEP.match(s):
      a, op, b, r = int(m.group(1)), m.group(2), int(m.group(3)), int(m.group(4))
      if apply(a, op, b) != r:
        lab = -1                                   # wrong arithmetic
      elif done < len(ops) and (a, op, b) == (value, *ops[done]):
        lab, value, done = 1, r, done + 1          # progress
        done_lines.add(s.replace(" ", ""))
      elif s.replace(" ", "") in done_lines:
        lab = 0                                    # correct repetition: no progress
      else:
        lab = -1                                   # wrong carried value, or a jump
    elif m := _SAME.match(s):
      lab = 0 if int(m.group(1)) == int(m.group(2)) == value else -1
    elif s and not any(ch.isdigit() for ch in s) and len(s) < 80 and "#" not in s:
      lab = 0                                      # a remark without claims
    labels.append(lab)
    if lab == -1:
      break
  return labels + [None] * (len(steps) - len(labels))


def label_solution(sol: Solution) -> Solution:
  """A copy with oracle step labels and final-answer correctness."""
  from prm_jax.grading import extract_answer
  labels = oracle_labels(sol.problem, sol.steps)
  answer = sol.answer if sol.answer is not None else extract_answer(sol.text)
  truth = sol.ground_truth_answer
  correct = None if truth is None else (answer is not None and answer.strip() == truth.strip())
  return Solution(problem_id=sol.problem_id, problem=sol.problem, steps=list(sol.steps),
                  answer=answer, ground_truth_answer=truth, is_correct=correct, step_labels=labels,
                  finish_reason=sol.finish_reason, scores=sol.scores,
                  meta=dict(sol.meta, labeller="oracle"))


def imperfect_solution(p: Problem, rng: np.random.Generator, p_error: float = 0.6) -> Solution:
  """A plausible solution that may go wrong the ways a weak generator does: an arithmetic slip that
  is then carried forward, a skipped operation, or a redundant line. Labelled by the oracle."""
  start, ops = parse_problem(p.problem)
  steps, value = [], start
  slip_at = int(rng.integers(0, len(ops))) if rng.random() < p_error else -1
  kind = str(rng.choice(["slip", "skip"])) if slip_at >= 0 else ""
  for i, (op, b) in enumerate(ops):
    if i == slip_at and kind == "skip":
      continue
    new = apply(value, op, b)
    if i == slip_at and kind == "slip":
      new += int(rng.choice([-3, -2, -1, 1, 2, 10]))
    steps.append(f"{value}{op}{b}={new}")
    if rng.random() < 0.1:
      steps.append(f"{new}={new}")  # correct, but no progress
    value = new
  steps += ["# Answer", str(value)]
  sol = Solution(problem_id=p.problem_id, problem=p.problem, steps=steps, answer=str(value),
                 ground_truth_answer=p.answer, meta={"source": "perturbed"})
  return label_solution(sol)
