"""The jitted, vectorized scorer: hidden states -> step-end gather -> PRM head -> per-solution scores.

Rows may pack several solutions. The host supplies, per token, the solution's index in the input order
(`solution_id`, -1 on padding) and a `step_end` flag; the device gathers the flagged hidden states
(a static `max_steps` per batch), applies the head, and aggregates with segment reductions — no Python
loop over solutions or steps anywhere:
  prod = exp(segment_sum(log P(ok)))   (the paper's score; neutral counts as ok by default)
  min  = segment_min(P(ok))
  last = P(ok) of each solution's last step
"""

from __future__ import annotations

import dataclasses
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prm_jax.model.heads import RewardModel

METHODS = ("prod", "min", "last")


def aggregate_step_scores(step_probs: jax.Array, solution_ids: jax.Array, num_solutions: int,
                          method: str) -> jax.Array:
  """float[num_solutions] from per-step P(ok) `float[S]` and `int[S]` owners (< 0: padding).

  A solution with no steps scores 0.0; probabilities of exactly 0 or 1 never produce NaN.
  """
  if method not in METHODS:
    raise ValueError(f"aggregation method {method!r}; expected one of {METHODS}")
  p = jnp.clip(jnp.asarray(step_probs, jnp.float32), 0.0, 1.0)
  ids = jnp.asarray(solution_ids, jnp.int32)
  if p.shape[0] == 0:
    return jnp.zeros((num_solutions,), jnp.float32)
  valid = ids >= 0
  seg = jnp.where(valid, ids, num_solutions)  # padding goes to a spare segment, dropped below
  n = num_solutions + 1
  count = jax.ops.segment_sum(valid.astype(jnp.int32), seg, n)[:num_solutions]
  if method == "prod":
    logp = jnp.where(valid, jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    has_zero = jax.ops.segment_max((valid & (p <= 0)).astype(jnp.int32), seg, n)[:num_solutions]
    out = jnp.exp(jax.ops.segment_sum(logp, seg, n)[:num_solutions])
    out = jnp.where(has_zero > 0, 0.0, out)
  elif method == "min":
    out = jax.ops.segment_min(jnp.where(valid, p, 1.0), seg, n)[:num_solutions]
  else:
    order = jnp.where(valid, jnp.arange(p.shape[0]), -1)
    last = jax.ops.segment_max(order, seg, n)[:num_solutions]
    out = p[jnp.clip(last, 0, p.shape[0] - 1)]
  return jnp.where(count > 0, out, 0.0)


def step_ok_probability(logits: jax.Array, neutral_is_positive: bool = True) -> jax.Array:
  """P(step ok) from PRM logits [..., 3] ordered (neg, neutral, pos)."""
  probs = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)
  return 1.0 - probs[..., 0] if neutral_is_positive else probs[..., 2]


def score_packed(model: RewardModel, batch: dict[str, jax.Array], max_steps: int,
                 max_solutions: int, neutral_is_positive: bool = True) -> dict[str, jax.Array]:
  """Scores of every solution in a packed batch (pure function of the model; jit it).

  batch: tokens, segment_ids, positions, solution_id (int32[B,T], -1 padding) and, for a PRM,
  step_end (bool/int[B,T]). Returns per-solution `float[max_solutions]` aggregates (a PRM's `prod`,
  `min`, `last`; an ORM's `orm` = P(correct) at the solution's last token) and, for a PRM, the per-step
  `step_probs` / `step_solution` (`int[max_steps]`, -1 on unused slots).
  """
  hidden = model.hidden(batch["tokens"], batch["positions"], batch["segment_ids"])
  b, t, d = hidden.shape
  flat = hidden.reshape(b * t, d)
  sol = batch["solution_id"].reshape(b * t)
  if model.kind == "orm":
    idx = jnp.where(sol >= 0, jnp.arange(b * t), -1)
    last = jax.ops.segment_max(idx, jnp.where(sol >= 0, sol, max_solutions), max_solutions + 1)
    last = last[:max_solutions]
    logit = model.head(flat[jnp.clip(last, 0, b * t - 1)])[:, 0]
    return {"orm": jnp.where(last >= 0, jax.nn.sigmoid(logit), 0.0)}
  ends = batch["step_end"].reshape(b * t) > 0
  (pos,) = jnp.nonzero(ends, size=max_steps, fill_value=-1)
  used = pos >= 0
  step_solution = jnp.where(used, sol[jnp.clip(pos, 0)], -1)
  probs = step_ok_probability(model.head(flat[jnp.clip(pos, 0)]), neutral_is_positive)
  probs = jnp.where(used, probs, 0.0)
  out = {m: aggregate_step_scores(probs, step_solution, max_solutions, m) for m in METHODS}
  out.update(step_probs=probs, step_solution=step_solution)
  return out


# ----------------------------------------------------------------------------- host-side packing

@dataclasses.dataclass
class PackedBatch:
  arrays: dict[str, np.ndarray]   # tokens, segment_ids, positions, solution_id, step_end
  solution_index: list[int]       # input index of batch-local solution k
  num_steps: int


def pack_for_scoring(encoded: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, rows: int,
                     pack: bool = True) -> list[PackedBatch]:
  """Packs (tokens, step_ends) of many solutions into batches of `rows` x `seq_len`.

  Longest-first first-fit when `pack`, else one solution per row. Batch-local solution ids follow
  the input order within the batch, so results map back through `solution_index`.
  """
  order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0])) if pack else list(
      range(len(encoded)))
  batches, cur_rows, fill = [], [], []
  for i in order:
    n = len(encoded[i][0])
    if n > seq_len:
      raise ValueError(f"solution {i} has {n} tokens > seq_len={seq_len}; truncate it first")
    slot = next((r for r, f in enumerate(fill) if f + n <= seq_len), None) if pack else None
    if slot is None:
      if len(cur_rows) == rows:
        batches.append(cur_rows)
        cur_rows, fill = [], []
      cur_rows.append([])
      fill.append(0)
      slot = len(cur_rows) - 1
    cur_rows[slot].append(i)
    fill[slot] += n
  if cur_rows:
    batches.append(cur_rows)
  out = []
  for rows_ in batches:
    arrays = {k: np.zeros((rows, seq_len), np.int32) for k in
              ("tokens", "segment_ids", "positions", "step_end")}
    arrays["solution_id"] = np.full((rows, seq_len), -1, np.int32)
    members = sorted(i for r in rows_ for i in r)
    local = {i: k for k, i in enumerate(members)}
    steps = 0
    for r, items in enumerate(rows_):
      at = 0
      for s, i in enumerate(items):
        tokens, ends = encoded[i]
        n = len(tokens)
        arrays["tokens"][r, at:at + n] = tokens
        arrays["segment_ids"][r, at:at + n] = s + 1
        arrays["positions"][r, at:at + n] = np.arange(n)
        arrays["solution_id"][r, at:at + n] = local[i]
        arrays["step_end"][r, at + np.asarray(ends, np.int64)] = 1
        steps += len(ends)
        at += n
    out.append(PackedBatch(arrays, members, steps))
  return out
