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


# ----------------------------------------------------------------------------- the Python API

class Scorer:
  """Scores `Solution`s with a trained ORM or PRM (`prm-jax train --task orm|prm` workdir).

      scorer = Scorer("runs/demo/prm")
      scored = list(scorer.score(solutions))  # same records, in order, with `scores` filled in

  PRM scores: `prm` (product), `prm_min`, `prm_last`, `prm_steps` (per-step P(ok)); ORM: `orm`.
  Solutions longer than `seq_len` are scored on the whole steps that fit (`meta.scored_steps`).
  """

  def __init__(self, checkpoint: str, *, mesh=None, rules=None, seq_len: int = 1024,
               rows: int = 16, chunk: int = 512, neutral_is_positive: bool = True):
    from flax import nnx
    from prm_jax import sharding
    from prm_jax.train.checkpoints import load_trained
    self.mesh = mesh or sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
    rules = tuple(rules or sharding.DEFAULT_RULES)
    model, self.cfg, self.tok, self.kind = load_trained(checkpoint, self.mesh, rules)
    if self.kind not in ("orm", "prm"):
      raise ValueError(f"{checkpoint} holds a {self.kind!r} model; scoring needs an orm or prm")
    data = self.mesh.shape["data"] * self.mesh.shape["fsdp"]
    self.rows = max(data, rows - rows % data)
    self.seq_len, self.chunk = seq_len, chunk
    graphdef, self.params = nnx.split(model)
    row = sharding.logical_sharding(("batch", None), (self.rows, seq_len), self.mesh, rules)
    # every solution and step takes >= 2 tokens (text + newline), which bounds the static sizes
    cap = self.rows * seq_len // 2
    self._fn = sharding.jit_apply(
        lambda m, b: score_packed(m, b, cap, cap, neutral_is_positive), graphdef,
        sharding.state_shardings(self.params, self.mesh, rules),
        ({k: row for k in ("tokens", "segment_ids", "positions", "solution_id", "step_end")},),
        None, self.mesh, rules)

  def _score_chunk(self, sols):
    from prm_jax.tokenizer import encode_solution
    enc = [encode_solution(self.tok, s.problem, s.steps, max_len=self.seq_len) for s in sols]
    for pb in pack_for_scoring([(e.tokens, e.step_ends) for e in enc], self.seq_len, self.rows):
      out = jax.device_get(self._fn(self.params, pb.arrays))
      for k, i in enumerate(pb.solution_index):
        s, e = sols[i], enc[i]
        scores = dict(s.scores or {})
        if self.kind == "orm":
          scores["orm"] = float(out["orm"][k])
        else:
          steps = out["step_probs"][out["step_solution"] == k]
          scores.update(prm=float(out["prod"][k]), prm_min=float(out["min"][k]),
                        prm_last=float(out["last"][k]), prm_steps=[float(x) for x in steps])
        s.scores = scores
        if e.truncated_steps:
          s.meta = dict(s.meta, scored_steps=len(s.steps) - e.truncated_steps)
    return sols

  def score(self, solutions):
    """Yields the solutions, in input order, with their scores."""
    chunk = []
    for s in solutions:
      chunk.append(s)
      if len(chunk) == self.chunk:
        yield from self._score_chunk(chunk)
        chunk = []
    if chunk:
      yield from self._score_chunk(chunk)


def score_to_file(checkpoint: str, input_path: str, output: str, skip_invalid: bool = False,
                  scorer_kwargs: dict | None = None) -> dict:
  """`prm-jax score`: streams scored records to `output` in input order; resumes after a kill.

  Multi-host: process p scores records p, p+P, ... into `output.p-of-P`.
  """
  import itertools
  from tqdm.auto import tqdm
  from prm_jax.data.prm800k import read_any_solutions
  from prm_jax.records import JsonlAppender, ReadStats
  pid, nproc = jax.process_index(), jax.process_count()
  path = output if nproc == 1 else f"{output}.{pid}-of-{nproc}"
  stats = ReadStats()
  mine = (s for i, s in enumerate(read_any_solutions(input_path, skip_invalid, stats))
          if i % nproc == pid)
  with JsonlAppender(path) as out:
    done = out.existing
    scorer = Scorer(checkpoint, **(scorer_kwargs or {}))
    bar = tqdm(desc="score", unit=" sol", initial=done, disable=None)
    written = 0
    for k, s in enumerate(scorer.score(itertools.islice(mine, done, None))):
      out.write(s)
      written += 1
      if (k + 1) % scorer.chunk == 0:
        out.flush()
      bar.update(1)
    bar.close()
  return {"resumed_from": done, "written": written, "skipped_invalid": stats.skipped,
          "output": path}
