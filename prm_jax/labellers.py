"""Step labellers behind one interface: `labeller.label(solutions) -> solutions with step_labels`.

- OracleLabeller: the toy domain's program (plays the human).
- ModelLabeller: a larger PRM thresholds its own P(step ok) into -1/0/+1 (the paper's PRM_large).
- RolloutLabeller: Math-Shepherd-style Monte-Carlo labels from generator rollouts of each prefix.
- FileLabeller: exports PRM800K-format rows for human labelling and imports the labelled file.
Every labeller stops labelling at the first -1, as PRM800K does.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Protocol, Sequence

from prm_jax.records import Solution


class Labeller(Protocol):
  def label(self, solutions: Sequence[Solution]) -> list[Solution]: ...


def _with_labels(s: Solution, labels, labeller: str, **meta) -> Solution:
  labels = list(labels)
  if -1 in labels:  # labelling stops at the first error
    cut = labels.index(-1) + 1
    labels = labels[:cut] + [None] * (len(labels) - cut)
  return dataclasses.replace(s, steps=list(s.steps), step_labels=labels,
                             meta=dict(s.meta, labeller=labeller, **meta))


class OracleLabeller:
  """Exact labels for the synthetic arithmetic domain."""

  def label(self, solutions: Sequence[Solution]) -> list[Solution]:
    from prm_jax.data.synthetic import label_solution
    try:
      return [label_solution(s) for s in solutions]
    except ValueError as e:
      raise ValueError(f"the oracle labeller only knows the synthetic domain ({e}); use the rollout, "
                       "model:PATH or file labeller for other problems") from None


class ModelLabeller:
  """Labels from a (larger) PRM: P(ok) < `low` -> -1, < `high` -> 0, else +1."""

  def __init__(self, scorer, low: float = 0.3, high: float = 0.7):
    if not 0 <= low <= high <= 1:
      raise ValueError(f"thresholds must satisfy 0 <= low <= high <= 1, got {low}, {high}")
    self.scorer, self.low, self.high = scorer, low, high

  def label(self, solutions: Sequence[Solution]) -> list[Solution]:
    out = []
    for s in self.scorer.score([dataclasses.replace(s, scores=None) for s in solutions]):
      probs = s.scores["prm_steps"]
      labels = [-1 if p < self.low else 0 if p < self.high else 1 for p in probs]
      labels += [None] * (len(s.steps) - len(labels))  # steps past the scorer's seq_len
      out.append(_with_labels(s, labels, "model", label_probs=probs))
    return out


class RolloutLabeller:
  """From each step prefix, `m` generator completions: hard label +1 when any reaches the right
  answer (else -1), soft label the fraction that do (in `meta.soft_labels`)."""

  def __init__(self, sampler, m: int = 8, seed: int = 0):
    self.sampler, self.m, self.seed = sampler, m, seed

  def label(self, solutions: Sequence[Solution]) -> list[Solution]:
    from prm_jax.records import Problem
    prefixes, owners = [], []
    for i, s in enumerate(solutions):
      p = Problem(s.problem_id, s.problem, s.ground_truth_answer)
      for j in range(1, len(s.steps) + 1):
        prefixes.append((p, s.steps[:j]))
        owners.append((i, j - 1))
    rollouts = self.sampler.complete(prefixes, self.m, self.seed)
    soft = [[0.0] * len(s.steps) for s in solutions]
    for (i, j), rs in zip(owners, rollouts):
      soft[i][j] = sum(bool(r.is_correct) for r in rs) / self.m
    return [_with_labels(s, [1 if f > 0 else -1 for f in soft[i]], "rollout", soft_labels=soft[i])
            for i, s in enumerate(solutions)]


class LabelsPending(RuntimeError):
  """The exported file is waiting for human labels."""


class FileLabeller:
  """Human labelling through PRM800K-format files.

  `label()` exports `export_path` (one row per solution, every step a single unrated completion) and
  raises `LabelsPending`; once the labellers have filled in ratings (and finish_reason) and saved
  `labelled_path`, `label()` reads it back.
  """

  def __init__(self, export_path: str, labelled_path: str):
    self.export_path, self.labelled_path = export_path, labelled_path

  @staticmethod
  def to_prm800k_row(s: Solution) -> dict:
    return {"labeler": None, "timestamp": None, "generation": 0,
            "is_quality_control_question": False, "is_initial_screening_question": False,
            "question": {"problem": s.problem, "ground_truth_answer": s.ground_truth_answer,
                         "pre_generated_steps": list(s.steps), "pre_generated_answer": s.answer},
            "label": {"steps": [{"completions": [{"text": t, "rating": None, "flagged": None}],
                                 "human_completion": None, "chosen_completion": 0}
                                for t in s.steps],
                      "total_time": None, "finish_reason": "solution"},
            "prm_jax": {"problem_id": s.problem_id, "meta": s.meta}}

  def export(self, solutions: Sequence[Solution]) -> str:
    os.makedirs(os.path.dirname(os.path.abspath(self.export_path)), exist_ok=True)
    with open(self.export_path, "w", encoding="utf-8") as f:
      for s in solutions:
        f.write(json.dumps(self.to_prm800k_row(s), ensure_ascii=False) + "\n")
    return self.export_path

  def load(self, solutions: Sequence[Solution]) -> list[Solution]:
    from prm_jax.data.prm800k import parse_prm800k_row
    from prm_jax.records import iter_json_lines
    rows = [row for _, row in iter_json_lines(self.labelled_path)]
    if len(rows) != len(solutions):
      raise ValueError(f"{self.labelled_path}: {len(rows)} labelled rows for {len(solutions)} "
                       "exported solutions")
    out = []
    for k, (row, s) in enumerate(zip(rows, solutions)):
      got = parse_prm800k_row(row, grade=False)
      if got.problem != s.problem:
        raise ValueError(f"{self.labelled_path}:{k + 1}: row does not match exported solution")
      labels = list(got.step_labels) + [None] * (len(s.steps) - len(got.step_labels))
      out.append(_with_labels(s, labels, "human", finish_reason_label=got.finish_reason))
    return out

  def label(self, solutions: Sequence[Solution]) -> list[Solution]:
    if os.path.exists(self.labelled_path):
      return self.load(solutions)
    self.export(solutions)
    raise LabelsPending(f"{len(solutions)} solutions exported to {self.export_path} for labelling; "
                        f"save the rated file as {self.labelled_path} and run again")


def make_labeller(spec: str, workdir: str, sampler=None, rollouts: int = 8, seed: int = 0,
                  config=None) -> Labeller:
  """A labeller from its config name: `oracle`, `rollout` (needs `sampler`, a callable returning a
  Sampler), `model:PRM_WORKDIR` (scored with `config`'s score settings and mesh), or `file`
  (exports `workdir/to_label.jsonl`, reads back `workdir/labelled_by_humans.jsonl`)."""
  if spec == "oracle":
    return OracleLabeller()
  if spec == "rollout":
    if sampler is None:
      raise ValueError("the rollout labeller needs the generator's sampler")
    return RolloutLabeller(sampler(), m=rollouts, seed=seed)
  if spec.startswith("model:"):
    from prm_jax.scoring import Scorer
    return ModelLabeller(Scorer.from_run(spec[len("model:"):], config))
  if spec == "file":
    return FileLabeller(os.path.join(workdir, "to_label.jsonl"),
                        os.path.join(workdir, "labelled_by_humans.jsonl"))
  raise ValueError(f"unknown labeller {spec!r}: expected oracle, rollout, model:PATH or file")
