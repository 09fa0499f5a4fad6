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
import json
from typing import Iterable, Iterator, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prm_jax.model.heads import RewardModel
from prm_jax.records import Solution
from prm_jax.step_format import StepFormat

METHODS = ("prod", "min", "last")
LOG_PROD = "log_prod"  # sum of log P(ok): the product in log space, for ranking without underflow
LAYOUTS = ("any", "grouped", "sorted")
_WINDOW = 16  # steps per gathered window on the contiguous path


def aggregate_step_scores(step_probs: jax.Array, solution_ids: jax.Array, num_solutions: int,
                          method: str, layout: str = "any") -> jax.Array:
  """float[num_solutions] from per-step P(ok) `float[S]` and `int[S]` owners (< 0: padding).

  A solution with no steps scores 0.0 (`log_prod`: -inf, as does a step with P(ok) = 0);
  probabilities of exactly 0 or 1 never produce NaN.

  `layout` (static) is a promise about the owners, like `indices_are_sorted` in `jax.ops`:
    "any"      none: segment reductions (a scatter per quantity, slow on CPU);
    "grouped"  each solution's steps are one contiguous run, padding anywhere between runs;
    "sorted"   grouped, runs in increasing solution order, padding only after the last step.
  The contiguous layouts count steps with one scatter, find each run's start (a prefix sum of the
  counts when sorted, a scatter-min of positions when grouped) and reduce each run from gathered
  windows of `_WINDOW` steps: several times faster on CPU at scale (scripts/bench_scoring.py),
  equal to "any" up to float32 rounding (products multiply P(ok) instead of exponentiating a sum
  of logs). A broken promise gives wrong scores, not an error. `pack_for_scoring` numbers a
  batch's solutions in packing order, so the scorer's steps are "sorted". Steps held as values
  and per-solution lengths need no owners: `aggregate_ragged`.
  """
  _check_method(method)
  if layout not in LAYOUTS:
    raise ValueError(f"aggregation layout {layout!r}; expected one of {LAYOUTS}")
  p = jnp.asarray(step_probs, jnp.float32)
  ids = jnp.asarray(solution_ids, jnp.int32)
  if p.shape[0] == 0:
    return _without_steps(num_solutions, method)
  if layout == "any":
    return _aggregate_segments(p, ids, num_solutions, method)
  return _aggregate_runs(p, ids, num_solutions, method, layout == "sorted")


def _check_method(method: str) -> None:
  if method not in METHODS + (LOG_PROD,):
    raise ValueError(f"aggregation method {method!r}; expected one of {METHODS + (LOG_PROD,)}")


def _without_steps(num_solutions: int, method: str) -> jax.Array:
  """What every solution scores when there are no steps at all."""
  return jnp.full((num_solutions,), -jnp.inf if method == LOG_PROD else 0.0, jnp.float32)


def _aggregate_segments(p, ids, num_solutions, method):
  """The general path: segment reductions over arbitrary owners."""
  p = jnp.clip(p, 0.0, 1.0)
  valid = ids >= 0
  seg = jnp.where(valid, ids, num_solutions)  # padding goes to a spare segment, dropped below
  n = num_solutions + 1
  count = jax.ops.segment_sum(valid.astype(jnp.int32), seg, n)[:num_solutions]
  if method in ("prod", LOG_PROD):
    logp = jnp.where(valid, jnp.log(jnp.where(p > 0, p, 1.0)), 0.0)
    has_zero = jax.ops.segment_max((valid & (p <= 0)).astype(jnp.int32), seg, n)[:num_solutions]
    total = jax.ops.segment_sum(logp, seg, n)[:num_solutions]
    if method == LOG_PROD:
      return jnp.where((has_zero > 0) | (count == 0), -jnp.inf, total)
    out = jnp.where(has_zero > 0, 0.0, jnp.exp(total))
  elif method == "min":
    out = jax.ops.segment_min(jnp.where(valid, p, 1.0), seg, n)[:num_solutions]
  else:
    order = jnp.where(valid, jnp.arange(p.shape[0]), -1)
    last = jax.ops.segment_max(order, seg, n)[:num_solutions]
    out = p[jnp.clip(last, 0, p.shape[0] - 1)]
  return jnp.where(count > 0, out, 0.0)


def aggregate_ragged(step_probs: jax.Array, lengths: jax.Array, method: str) -> jax.Array:
  """float[len(lengths)] from per-step P(ok) laid out solution after solution, `lengths[j]` steps
  for solution j (a ragged array as values + row lengths, how an evaluation script holds its
  per-solution step lists once concatenated); entries past `sum(lengths)` are padding, and
  `sum(lengths)` must not exceed `len(step_probs)`. The same scores as `aggregate_step_scores`
  with `layout="sorted"`, without the scatter that counts each solution's steps from its owner
  ids (the larger part of that path's time at 100k solutions)."""
  _check_method(method)
  p = jnp.asarray(step_probs, jnp.float32)
  if not isinstance(lengths, jax.core.Tracer):  # checkable outside jit: a wrong layout is an error
    given = np.asarray(lengths)
    if given.size and (given.min() < 0 or given.sum() > p.shape[0]):
      raise ValueError(f"aggregate_ragged: lengths must be >= 0 and sum to at most the "
                       f"{p.shape[0]} step scores; got min {given.min()}, sum {given.sum()}")
  count = jnp.maximum(jnp.asarray(lengths, jnp.int32), 0)
  if p.shape[0] == 0:
    return _without_steps(count.shape[0], method)
  return _reduce_runs(p, _starts(count, p.shape[0]), count, method)


def _starts(count: jax.Array, num_steps: int) -> jax.Array:
  """Each run's first step when the runs lie back to back from step 0."""
  return _exclusive_cumsum(count) if num_steps < 2**24 else jnp.cumsum(count) - count


def _aggregate_runs(p, ids, num_solutions, method, is_sorted):
  """The contiguous path: each solution's steps counted (one scatter) and its run's start found
  (a prefix sum of the counts when sorted, a scatter-min of positions when grouped)."""
  s, n = p.shape[0], num_solutions
  count = _scatter(jax.lax.scatter_add, jnp.zeros((n,), jnp.int32), ids, jnp.ones_like(ids),
                   is_sorted)
  if not is_sorted:
    start = _scatter(jax.lax.scatter_min, jnp.full((n,), s, jnp.int32), ids,
                     jnp.arange(s, dtype=jnp.int32), False)
  else:
    start = _starts(count, s)
  return _reduce_runs(p, start, count, method)


def _reduce_runs(p, start, count, method):
  """Each solution's run [start, start + count) reduced from windows of `_WINDOW` steps gathered
  at its start: one window when no run is longer, else a loop over further windows (its cost
  grows with the longest run)."""
  s, k = p.shape[0], _WINDOW
  has = count > 0
  start = jnp.where(has, start, 0)
  if method == "last":
    return jnp.where(has, jnp.clip(p[jnp.clip(start + count - 1, 0, s - 1)], 0.0, 1.0), 0.0)
  padded = jnp.concatenate([p, jnp.ones((k - s,), p.dtype)]) if s < k else p  # windows fit
  offsets = jnp.arange(k, dtype=jnp.int32)
  logs = method == LOG_PROD

  def window(i):  # steps [i*k, (i+1)*k) of every run, 1.0 (the identity) past its end, reduced
    first = start + i * k
    at = jnp.clip(first, 0, padded.shape[0] - k)  # where dynamic_slice puts the window
    w = jax.vmap(lambda a: jax.lax.dynamic_slice(padded, (a,), (k,)))(at)
    rel = offsets[None, :] + (at - start)[:, None]  # each slot's step index in its run
    inside = (rel >= i * k) & (rel < count[:, None])
    w = jnp.where(inside, jnp.clip(w, 0.0, 1.0), 1.0)
    return (jnp.sum(jnp.log(w), axis=1),) if logs else _prod_and_min(w)

  def combine(a, b):
    return (a[0] + b[0],) if logs else (a[0] * b[0], jnp.minimum(a[1], b[1]))

  windows = (jnp.max(count, initial=0) + k - 1) // k  # the first, then one more per k steps
  out = jax.lax.fori_loop(1, windows, lambda i, acc: combine(acc, window(i)), window(0))
  if logs:
    return jnp.where(has, out[0], -jnp.inf)
  return jnp.where(has, out[0] if method == "prod" else out[1], 0.0)


def _prod_and_min(w: jax.Array) -> tuple[jax.Array, jax.Array]:
  """Row products and minima of `float[n, k]` in one variadic reduction: one loop fusion with the
  gather that feeds it, shared by the "prod" and "min" aggregations of one jit (XLA CSE)."""
  one = np.float32(1.0)
  return jax.lax.reduce((w, w), (one, one), lambda a, b: (a[0] * b[0], jnp.minimum(a[1], b[1])),
                        (1,))


def _scatter(op, into: jax.Array, ids: jax.Array, values: jax.Array, is_sorted: bool) -> jax.Array:
  """`into` updated at `ids` by `op` (a `jax.lax.scatter_*`); ids < 0 or >= len(into) are dropped
  (XLA's own rule: no index normalisation, no padding segment to build and slice off)."""
  dims = jax.lax.ScatterDimensionNumbers(update_window_dims=(), inserted_window_dims=(0,),
                                         scatter_dims_to_operand_dims=(0,))
  return op(into, ids[:, None], values, dims, indices_are_sorted=is_sorted,
            mode=jax.lax.GatherScatterMode.FILL_OR_DROP)


def _exclusive_cumsum(x: jax.Array) -> jax.Array:
  """Exclusive prefix sums of a non-negative int32 vector whose total is < 2**24: blocks of 32
  summed by a strictly-triangular float32 matmul (exact on integers this small), recursively over
  the block totals. XLA's own cumsum is a reduce-window, several times slower on CPU."""
  n, b = x.shape[0], 32
  if n <= b:
    tri = jnp.triu(jnp.ones((n, n), jnp.float32), 1)
    return jnp.dot(x.astype(jnp.float32), tri, precision="highest").astype(jnp.int32)
  rows = jnp.pad(x, (0, -n % b)).reshape(-1, b)
  within = jnp.dot(rows.astype(jnp.float32), jnp.triu(jnp.ones((b, b), jnp.float32), 1),
                   precision="highest").astype(jnp.int32)
  return (within + _exclusive_cumsum(rows.sum(axis=1))[:, None]).reshape(-1)[:n]


PACKED_KEYS = ("tokens", "segment_ids", "positions", "solution_id", "step_end")


def score_packed(model: RewardModel, batch: dict[str, jax.Array], max_steps: int,
                 max_solutions: int, neutral_is_positive: bool = True,
                 layout: str = "any") -> dict[str, jax.Array]:
  """Scores of every solution in a packed batch (pure function of the model; jit it).

  batch: tokens, segment_ids, positions, solution_id (int32[B,T], -1 padding) and, for a PRM,
  step_end (bool/int[B,T]). Returns per-solution `float[max_solutions]` aggregates (a PRM's `prod`,
  `min`, `last`; an ORM's `orm` = P(correct) at the solution's last token) and, for a PRM, the per-step
  `step_probs` / `step_solution` (`int[max_steps]`, -1 on unused slots). `layout` is
  `aggregate_step_scores`' promise about the step owners: a batch from `pack_for_scoring` keeps
  "sorted" (the Scorer's), one with arbitrary solution ids needs "any".
  """
  b, t = batch["tokens"].shape
  sol = batch["solution_id"].reshape(b * t)
  if model.kind == "orm":
    idx = jnp.where(sol >= 0, jnp.arange(b * t), -1)
    last = jax.ops.segment_max(idx, jnp.where(sol >= 0, sol, max_solutions), max_solutions + 1)
    last = last[:max_solutions]
    reads = jnp.zeros((b * t,), bool).at[jnp.where(last >= 0, last, b * t)].set(
        True, mode="drop").reshape(b, t)
    p = model.ok_probability(_head_at(model, batch, reads, last))
    return {"orm": jnp.where(last >= 0, p, 0.0)}
  reads = batch["step_end"] > 0
  (pos,) = jnp.nonzero(reads.reshape(b * t), size=max_steps, fill_value=-1)
  used = pos >= 0
  step_solution = jnp.where(used, sol[jnp.clip(pos, 0)], -1)
  probs = model.ok_probability(_head_at(model, batch, reads, pos), neutral_is_positive)
  probs = jnp.where(used, probs, 0.0)
  out = {m: aggregate_step_scores(probs, step_solution, max_solutions, m, layout)
         for m in METHODS + (LOG_PROD,)}
  out.update(step_probs=probs, step_solution=step_solution)
  return out


READS_PER_ROW = 1 / 8  # the reads (step ends, last tokens) a row may hold for the short last layer


def _head_at(model: RewardModel, batch: dict[str, jax.Array], reads: jax.Array,
             flat: jax.Array) -> jax.Array:
  """Head logits [len(flat), K] at the flat token indices `flat` (-1: unused slots), every one
  of them a `reads` token (bool[B,T]). When no row holds more reads than one per 8 tokens (real
  solutions have one per 20-40), the last layer runs at each row's reads alone (`only_at`):
  queries, attention, output projection and MLP at an eighth of the tokens or fewer. Otherwise
  the whole forward. Chosen at run time (`lax.cond`), the same logits either way up to float
  rounding. Both stay row by row up to the head, so a batch split over devices stays split and
  only the K logits of each read cross devices."""
  b, t = reads.shape
  r = max(1, int(t * READS_PER_ROW))
  at = jnp.clip(flat, 0, b * t - 1)
  args = batch["tokens"], batch["positions"], batch["segment_ids"]

  def few():
    cols = jax.vmap(lambda row: jnp.nonzero(row, size=r, fill_value=0)[0])(reads)  # [B,R]
    rank = (jnp.cumsum(reads, axis=1, dtype=jnp.int32) - 1).reshape(b * t)[at]  # in its row
    logits = model.head(model.hidden(*args, only_at=cols))  # [B,R,K]
    return logits.reshape(b * r, -1)[(at // t) * r + jnp.clip(rank, 0, r - 1)]

  def every():
    return model.head(model.hidden(*args)).reshape(b * t, -1)[at]
  return jax.lax.cond(jnp.all(reads.sum(axis=1) <= r), few, every)


# ----------------------------------------------------------------------------- host-side packing

@dataclasses.dataclass
class PackedBatch:
  arrays: dict[str, np.ndarray]   # tokens, segment_ids, positions, solution_id, step_end
  solution_index: list[int]       # input index of batch-local solution k
  num_steps: int


def pack_for_scoring(encoded: Sequence[tuple[np.ndarray, np.ndarray]], seq_len: int, rows: int,
                     pack: bool = True, max_steps: int | None = None,
                     max_solutions: int | None = None) -> list[PackedBatch]:
  """Packs (tokens, step_ends) of many solutions into batches of `rows` x `seq_len`.

  Longest-first first-fit when `pack`, else one solution per row. A batch never holds more than
  `max_steps` step ends or `max_solutions` solutions (the scorer's static sizes): the next one
  starts a new batch, so no step is ever dropped. Batch-local solution ids follow the packing
  order (row by row, left to right), so every step's owner id is non-decreasing in row-major
  order (`score_packed`'s "sorted" layout); results map back through `solution_index`.
  """
  order = sorted(range(len(encoded)), key=lambda i: -len(encoded[i][0])) if pack else list(
      range(len(encoded)))
  batches, cur_rows, fill = [], [], []
  steps_in, sols_in = 0, 0
  for i in order:
    n, k = len(encoded[i][0]), len(encoded[i][1])
    if n > seq_len:
      raise ValueError(f"solution {i} has {n} tokens > seq_len={seq_len}; truncate it first")
    if max_steps is not None and k > max_steps:
      raise ValueError(f"solution {i} has {k} step ends > the scorer's {max_steps} per batch")
    full = (max_steps is not None and steps_in + k > max_steps) or (
        max_solutions is not None and sols_in + 1 > max_solutions)
    slot = next((r for r, f in enumerate(fill) if f + n <= seq_len), None) if (
        pack and not full) else None
    if slot is None:
      if len(cur_rows) == rows or full:
        batches.append(cur_rows)
        cur_rows, fill, steps_in, sols_in = [], [], 0, 0
      cur_rows.append([])
      fill.append(0)
      slot = len(cur_rows) - 1
    cur_rows[slot].append(i)
    fill[slot] += n
    steps_in, sols_in = steps_in + k, sols_in + 1
  if cur_rows:
    batches.append(cur_rows)
  out = []
  for rows_ in batches:
    arrays = {k: np.zeros((rows, seq_len), np.int32) for k in PACKED_KEYS if k != "solution_id"}
    arrays["solution_id"] = np.full((rows, seq_len), -1, np.int32)
    members = [i for r in rows_ for i in r]   # packing order: owner ids sorted row-major
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
  """Scores `Solution`s with an ORM or a PRM.

      scorer = Scorer.from_run("runs/prm", config)   # a run directory (or "hf:PATH")
      scorer = Scorer(model, tokenizer, config)      # a RewardModel in memory
      scored = list(scorer.score(solutions))         # same records, in order, with `scores` filled

  PRM scores: `prm` (product), `prm_log` (its log, which never underflows), `prm_min`, `prm_last`,
  `prm_steps` (per-step P(ok)); ORM: `orm`. Solutions are encoded in the run's step format.
  Solutions longer than `score.seq_len` are scored on the whole steps that fit (`meta.scored_steps`).
  Settings come from `config.score`; P(ok) counts a neutral step as ok when
  `score.neutral_is_positive` says so, by default what the run was trained with
  (`train.neutral_is_positive`).
  """

  def __init__(self, model: RewardModel, tokenizer, config=None, mesh=None, rules=None):
    from flax import nnx
    from prm_jax import sharding
    from prm_jax.configs import base
    config = config if config is not None else base.get_config()
    if not isinstance(model, RewardModel):
      raise ValueError(f"scoring needs an orm or prm model, got {type(model).__name__}")
    self.mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
    rules = tuple(rules if rules is not None else config.rules)
    sc = config.score
    self.kind, self.tok, self.cfg = model.kind, tokenizer, model.cfg
    nip = sc.get("neutral_is_positive")
    self.neutral_is_positive = bool(config.train.neutral_is_positive if nip is None else nip)
    div = sharding.batch_divisor(self.mesh, rules)
    self.rows = max(div, sc.rows - sc.rows % div)
    # A batch that fills only some rows (the last of a job, or a call with a few solutions: the N
    # candidates of one problem) runs at the smallest of these row counts that holds it.
    self.row_buckets = sorted({self.rows} | {div << k for k in range(self.rows.bit_length())
                                             if div << k < self.rows})
    self.seq_len, self.chunk, self.pack = sc.seq_len, sc.chunk, bool(sc.get("pack", True))
    graphdef, params = nnx.split(model)
    self.graphdef, self.rules = graphdef, rules   # for other programs over the same weights (search)
    self._param_sh = sharding.state_shardings(params, self.mesh, rules)
    self.params = jax.device_put(params, self._param_sh)
    self.format = StepFormat.from_config(config.get("format"))
    self.format.check(tokenizer)
    # static sizes of the step gather; pack_for_scoring never puts more into one batch
    self.cap = self._cap(self.rows)
    self._programs = {}

  def _cap(self, rows: int) -> int:
    return max(1, rows * self.seq_len // 2)

  def _program(self, rows: int):
    """The jitted `score_packed` for batches of `rows` rows, and their sharding."""
    from prm_jax import sharding
    if rows not in self._programs:
      row = sharding.logical_sharding(("batch", None), (rows, self.seq_len), self.mesh, self.rules)
      replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
      cap = self._cap(rows)
      fn = sharding.jit_apply(
          score_packed, self.graphdef, self._param_sh, ({k: row for k in PACKED_KEYS},),
          replicated, self.mesh, self.rules,
          static=dict(max_steps=cap, max_solutions=cap,
                      neutral_is_positive=self.neutral_is_positive, layout="sorted"))
      self._programs[rows] = fn, row
    return self._programs[rows]

  def _bucket(self, pb: PackedBatch) -> int:
    """The fewest rows, from `row_buckets`, that hold a packed batch's used rows and steps."""
    used = int(np.flatnonzero((pb.arrays["solution_id"] >= 0).any(axis=1)).max(initial=0)) + 1
    return next(r for r in self.row_buckets
                if r >= used and self._cap(r) >= max(pb.num_steps, len(pb.solution_index)))

  @classmethod
  def from_run(cls, spec: str, config=None) -> "Scorer":
    """Opens a reward-model run on the mesh of `config.mesh`, honouring the settings it was
    trained with (`train.neutral_is_positive`)."""
    from prm_jax import sharding
    from prm_jax.configs import base, derive
    from prm_jax.runs import Run
    config = config if config is not None else base.get_config()
    mesh, rules = sharding.make_mesh(config.mesh), tuple(config.rules)
    sc = config.score
    run = Run.open(spec, mesh, rules, reward=sc.get("convention") or None,
                   good_bad=(sc.get("good_token", "+"), sc.get("bad_token", "-")),
                   **Run.holding(spec, config)).require("scoring", "orm", "prm")
    trained = run.train_config.get("neutral_is_positive")
    if trained is not None:
      config = derive(config, {"train.neutral_is_positive": bool(trained)})
    return cls(run.model, run.tokenizer, run.with_format(config), mesh, rules)

  def _score_chunk(self, sols):
    from prm_jax import sharding
    enc = [self.format.encode(self.tok, s.problem, s.steps, max_len=self.seq_len) for s in sols]
    for pb in pack_for_scoring([(e.tokens, e.step_ends) for e in enc], self.seq_len, self.rows,
                               self.pack, max_steps=self.cap, max_solutions=self.cap):
      rows = self._bucket(pb)
      fn, row = self._program(rows)
      batch = {k: sharding.put_global(v[:rows], row) for k, v in pb.arrays.items()}
      out = {k: sharding.to_host(v) for k, v in fn(self.params, batch).items()}
      for k, i in enumerate(pb.solution_index):
        s, e = sols[i], enc[i]
        scores = dict(s.scores or {})
        if self.kind == "orm":
          scores["orm"] = float(out["orm"][k])
        else:
          steps = out["step_probs"][out["step_solution"] == k]
          scores.update(prm=float(out["prod"][k]), prm_log=float(out[LOG_PROD][k]),
                        prm_min=float(out["min"][k]), prm_last=float(out["last"][k]),
                        prm_steps=[float(x) for x in steps])
        meta = dict(s.meta, scored_steps=len(s.steps) - e.truncated_steps) if (
            e.truncated_steps) else s.meta
        sols[i] = dataclasses.replace(s, scores=scores, meta=meta)
    return sols

  def score(self, solutions: Iterable[Solution]) -> Iterator[Solution]:
    """Yields the solutions, in input order, with their scores (new records; inputs untouched)."""
    chunk = []
    for s in solutions:
      chunk.append(s)
      if len(chunk) == self.chunk:
        yield from self._score_chunk(chunk)
        chunk = []
    if chunk:
      yield from self._score_chunk(chunk)


def input_identity(s: Solution) -> str:
  """What a scored row keeps of its input row: everything but `scores` (and the scorer's own
  `meta.scored_steps`). A resumed `score` matches the rows already in its output against its
  input by this, row by row, so an output written from another input is refused."""
  d = s.to_dict()
  d.pop("scores", None)
  d["meta"] = {k: v for k, v in d["meta"].items() if k != "scored_steps"}
  return json.dumps(d, sort_keys=True, ensure_ascii=False)


def score_to_file(scorer: Scorer, solutions: Iterable[Solution], output: str,
                  claim=None) -> dict:
  """`prm-jax score`: streams scored records to `output` in input order and resumes after a kill,
  on one process or many (every process scores its devices' share of each packed batch; process 0
  writes the one output file). Chunks stay aligned to absolute input positions, so a resumed run
  packs, and scores, every row exactly as an uninterrupted one.

  The output is locked while it is written, and resuming matches each row already there to its
  input row (`input_identity`), streaming: an output written from another input is refused, a
  torn or malformed last line is cut and that row scored again (`claim`: an
  `distributed.OutputClaim` the caller took earlier)."""
  import collections
  import itertools
  from tqdm.auto import tqdm
  from prm_jax import distributed
  rows_in, chunk = iter(solutions), scorer.chunk
  seen = [0]                                       # input rows read by the check (process 0)
  recent = collections.deque(maxlen=chunk)         # the last of them: a resume re-packs its chunk

  def check_existing(i, done_row):
    s = next(rows_in, None)
    if s is None:
      raise ValueError(f"{output}:{i + 1}: the output has more rows than the input ({i}): it was "
                       "written from another input; choose another --output")
    seen[0] += 1
    recent.append((i, s))
    if input_identity(done_row) != input_identity(s):
      raise ValueError(f"{output}:{i + 1}: differs from input row {i + 1} in "
                       f"{_difference(done_row, s)}: it was written from another input; choose "
                       "another --output")
  with distributed.ResumableOutput(output, check_existing, claim) as out:
    first = out.done // chunk * chunk
    again = [s for i, s in recent if i >= first]   # rows [first, done) on process 0, else none
    rows = itertools.chain(again, itertools.islice(rows_in, max(0, first - seen[0]), None))
    bar = tqdm(desc="score", unit=" sol", initial=out.done,
               disable=None if distributed.is_main() else True)
    written = 0
    for k, s in enumerate(scorer.score(rows), first):
      if k >= out.done:
        out.write(s)
        written += 1
        bar.update(1)
      if (k + 1) % chunk == 0:
        out.flush()
    bar.close()
  return {"resumed_from": out.done, "written": written, "repaired_tail_lines": out.dropped,
          **distributed.mesh_summary(scorer.mesh)}


def _difference(done: Solution, given: Solution) -> str:
  """The first field in which a row of the output differs from its input row, in a few words."""
  a, b = json.loads(input_identity(done)), json.loads(input_identity(given))
  missing = object()
  key = next((k for k in [*a, *(k for k in b if k not in a)]
              if a.get(k, missing) != b.get(k, missing)), None)
  if key is None:
    return "nothing (the rows are the same)"

  def show(d):
    if key not in d:
      return "absent"
    text = json.dumps(d[key], ensure_ascii=False)
    return text if len(text) <= 40 else text[:37] + "..."
  return f"{key} ({show(a)} there, {show(b)} in the input)"
