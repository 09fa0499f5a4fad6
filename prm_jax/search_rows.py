"""The generator's and the PRM's rows for PRM-guided search (prm_jax/search.py), on the mesh.

A batch of B rows lives in each model's KV cache. The generator decodes one step per live row (it
stops at the step end: `step_tables`), the PRM scores the new step against its cached prefix, and
`select(parents)` makes row r continue row parents[r]'s prefix by copying cache rows (no prefix is
prefilled twice). `mark` / `restore` undo a lookahead. With `reuse_cache=False` both re-read every
whole prefix instead (the benchmark's peer and the tests' reference). Programs are jitted with
explicit shardings, compiled once per shape, and shared by every search over a model of the same
shape on the same mesh (`sharding.jit_apply`'s `static`).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from prm_jax import sharding, stopping
from prm_jax.model import KVCache
from prm_jax.model.transformer import last_column
from prm_jax.sampling import Sampler, SamplingConfig, bucket_length, left_pad, next_token
from prm_jax.scoring import Scorer
from prm_jax.step_format import ANSWER_HEADER, StepFormat

# How a row's step ended (`decode_step`): RUNNING after the loop means it reached max_step_tokens.
RUNNING, STEP, ANSWER, EOS = 0, 1, 2, 3

# ----------------------------------------------------------------------------- the step end

def step_tables(fmt: StepFormat, tok, stop_at_answer: bool = True) -> tuple[np.ndarray, np.ndarray]:
  """A character automaton that ends a step where the step format's separator closes a non-blank
  line (one newline; two for `double_newline`; a tag reads as a newline), except that a `# Answer`
  line runs on to the end of the answer line after it (PRM800K's last step) and ends the solution.
  Returns its token table int[S, V] (`stopping.CharAutomaton.token_table`) and each state's kind
  int[S] (RUNNING, STEP, ANSWER)."""
  header, need = ANSWER_HEADER, 2 if fmt.preset == "double_newline" else 1
  start, h = 0, len(header)               # states 1..h: k characters of the header read
  wait, answer, body, body_nl, step_end, answer_end = range(h + 1, h + 7)
  line_end = step_end if need == 1 else body_nl

  def step(s: int, c: str) -> int:
    if s in (step_end, answer_end):
      return s
    if s == start:
      return start if c in " \t\r\n" else (1 if c == header[0] else body)
    if s == wait:
      return wait if c in " \t\r\n" else answer
    if s == answer:
      return answer_end if c == "\n" else answer
    if s == body:
      return line_end if c == "\n" else body
    if s == body_nl:
      return step_end if c == "\n" else body
    if s == h:                             # the whole header: only blanks may follow on its line
      return wait if c == "\n" else (h if c in " \t\r" else body)
    if c == header[s]:
      return s + 1
    return line_end if c == "\n" else body
  automaton = stopping.CharAutomaton(answer_end + 1, step, frozenset({step_end, answer_end}),
                                     "step", drop=0)
  kind = np.full(automaton.num_states, RUNNING, np.int32)
  kind[step_end], kind[answer_end] = STEP, ANSWER if stop_at_answer else STEP
  return automaton.token_table(fmt.token_texts(tok)), kind


# ----------------------------------------------------------------------------- device programs

def _empty(cfg, rows: int, length: int) -> KVCache:
  return KVCache.init(cfg, rows, length).constrained()


def take_rows(cache: KVCache, rows: jax.Array, *arrays: jax.Array):
  """The cache (and per-row arrays) with row r holding row `rows[r]`'s: a prefix copied to the rows
  that continue it."""
  return (cache.take_rows(rows),) + tuple(jnp.take(a, rows, axis=0) for a in arrays)


def rewind(cache: KVCache, index: jax.Array) -> KVCache:
  """Forgets every slot from `index` on (lookahead rolled past it): they are hidden and rewritten."""
  slots = jnp.arange(cache.pos.shape[1])[None, :]
  return cache._replace(pos=jnp.where(slots >= index, -1, cache.pos),
                        index=jnp.asarray(index, jnp.int32))


def grow(cache: KVCache, size: int) -> KVCache:
  """The cache with empty slots appended up to `size` (attention costs what a search has used,
  not the most it may use)."""
  extra = size - cache.pos.shape[1]
  def pad(a, axes):
    slots = axes.index("length")
    return jnp.pad(a, [(0, extra) if d == slots else (0, 0) for d in range(a.ndim)])
  return cache.map_kv(pad)._replace(pos=jnp.pad(cache.pos, ((0, 0), (0, extra)),
                                                constant_values=-1))


def _room(rows, need: int) -> bool:
  """Whether `need` slots fit `rows`' cache, growing it (to a multiple of 128, at most its
  largest size) when they fit the largest. `rows` holds `cache_sh`, `size`, `max_size`, `p`, `cfg`."""
  if need > rows.max_size:
    return False
  if need > rows.size:
    new = min(rows.max_size, _round(need, 128))
    fn = rows.p.plain_fn(grow, rows.p.cache_sh(rows.cfg, rows.b, new), size=new)
    rows.size = new
    rows.set_cache(fn(rows.get_cache()))
  return True


def prefill(forward, cfg, tokens: jax.Array, positions: jax.Array, length: int,
            rows: jax.Array | None = None):
  """Left-padded prompts [U, L] run into a fresh cache of `length` slots; with `rows` int32[B] each
  of the B rows then takes its prompt's cache rows (a problem's n rows prefill its prompt once).
  `forward(tokens, cache, positions, fresh, only_at) -> (outputs, cache)` (outputs at the
  `only_at` columns: each prompt's last). Returns (cache, each row's last output, each row's next
  position)."""
  out, cache = forward(tokens, _empty(cfg, tokens.shape[0], length), positions, fresh=True,
                       only_at=last_column(tokens))
  last, nxt = out[:, -1], jnp.max(positions, axis=1) + 1
  return take_rows(cache, rows, last, nxt) if rows is not None else (cache, last, nxt)


def decode_step(model, cache: KVCache, last: jax.Array, pos: jax.Array, keys: jax.Array,
                live: jax.Array, nxt: jax.Array, kind: jax.Array, sc: SamplingConfig,
                max_tokens: int):
  """Decodes one step in every live row: until its step automaton (`nxt` int[S, V], `kind` int[S])
  ends the step, EOS, or `max_tokens`. A row that is done writes its slots at position -1 (never
  attended), so the slots a longer row used stay invisible to it. Returns tokens int32[B, T] (pad
  after the end), lengths, how each step ended (RUNNING, STEP, ANSWER, EOS), and the cache, last
  logits and next positions to continue from."""
  b = keys.shape[0]

  def cond(s):
    return (s[0] < max_tokens) & ~jnp.all(s[4])

  def body(s):
    i, cache, last, tokens, done, state, lengths, pos, ended = s
    tok = jnp.where(done, sc.pad_id, next_token(last, jax.vmap(
        lambda k: jax.random.fold_in(k, i))(keys), sc))
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
    run = ~done
    state = jnp.where(run, nxt[state, jnp.clip(tok, 0, nxt.shape[1] - 1)], state)
    ended = jnp.where(run, jnp.where(tok == sc.eos_id, EOS, kind[state]), ended)
    logits, cache = model.decode(tok[:, None], cache, jnp.where(run, pos, -1)[:, None])
    last = jnp.where(run[:, None], logits[:, -1], last)
    return (i + 1, cache, last, tokens, done | (ended != RUNNING), state,
            lengths + run, pos + run, ended)

  zeros = jnp.zeros(b, jnp.int32)
  state = (jnp.int32(0), cache, last, jnp.full((b, max_tokens), sc.pad_id, jnp.int32), ~live,
           zeros, zeros, pos, zeros)
  _, cache, last, tokens, _, _, lengths, pos, ended = jax.lax.while_loop(cond, body, state)
  return tokens, lengths, ended, cache, last, pos


def prm_forward(rm, neutral_is_positive: bool):
  """`forward(tokens, cache, positions, fresh, only_at) -> (P(ok) at every token, or at the
  `only_at` columns, cache)` of a RewardModel (`fresh`: an empty cache, see `Transformer`)."""
  def forward(tokens, cache, positions, fresh=False, only_at=None):
    hidden, cache = rm.transformer(tokens, positions, cache=cache, only_at=only_at, fresh=fresh)
    return rm.ok_probability(rm.head(hidden), neutral_is_positive), cache
  return forward


def _round(n: int, unit: int) -> int:
  return max(unit, -(-n // unit) * unit)


def _unique_prompts(prompts: list[list[int]], processed: np.ndarray
                    ) -> tuple[list[tuple[int, ...]], np.ndarray]:
  """The distinct prompts (first appearance first) and each row's index among them: a shared
  prompt is prefilled once and its rows copy its cache, so its tokens count once (in `processed`,
  at the first row holding it)."""
  index: dict[tuple[int, ...], int] = {}
  rows = np.array([index.setdefault(tuple(x), len(index)) for x in prompts], np.int32)
  for u in range(len(index)):
    first = int(np.argmax(rows == u))
    processed[first] += len(prompts[first])
  return list(index), rows


def _prompt_slots(n: int, buckets: Sequence[int]) -> int:
  """Cache slots for prompts of up to n tokens: a multiple of 64 within the largest bucket (every
  decode step attends over all slots, so a bucket's padding would cost every step)."""
  return min(bucket_length(n, buckets), _round(n, 64))


def _pow2(n: int, low: int = 8) -> int:
  return max(low, 1 << max(0, n - 1).bit_length())


def _keys_at(key_data: jax.Array, i: jax.Array) -> jax.Array:
  """Each row's key for round `i`: its key data folded with the round."""
  return jax.vmap(lambda x: jax.random.fold_in(x, i))(jax.random.wrap_key_data(key_data))


# The programs, as module-level functions of (model, *arrays, **static): `sharding.jit_apply`
# shares each compiled one between every search over a model of the same shape on the same mesh.

def _generator_prefill(m, tokens, positions, rows, *, cfg, size):
  return prefill(m.decode, cfg, tokens, positions, size, rows)


def _generator_step(m, cache, last, pos, keys, i, live, nxt, kind, *, sc, steps):
  return decode_step(m, cache, last, pos, _keys_at(keys, i), live, nxt, kind, sc, steps)


def _generator_from_scratch(m, tokens, positions, keys, i, live, nxt, kind, *, cfg, sc, steps):
  cache, last, pos = prefill(m.decode, cfg, tokens, positions, tokens.shape[1] + steps)
  return decode_step(m, cache, last, pos, _keys_at(keys, i), live, nxt, kind, sc, steps)[:3]


def _prm_prefill(m, tokens, positions, rows, *, cfg, size, nip):
  return prefill(prm_forward(m, nip), cfg, tokens, positions, size, rows)[0]


def _prm_chunk(m, cache, tokens, positions, *, nip):
  probs, cache = prm_forward(m, nip)(tokens, cache, positions)
  return cache, probs


def _prm_from_scratch(m, tokens, positions, *, cfg, nip):
  return prm_forward(m, nip)(tokens, _empty(cfg, *tokens.shape), positions, fresh=True)[0]


def _take_cache(cache: KVCache, rows: jax.Array) -> KVCache:
  return take_rows(cache, rows)[0]


@functools.lru_cache(maxsize=64)
def _plain_program(fn, out_sh, donate: tuple, static: tuple):
  return jax.jit(functools.partial(fn, **dict(static)) if static else fn, out_shardings=out_sh,
                 donate_argnums=donate)


class _Programs:
  """One model's shardings on the mesh and its jitted programs (compiled once per shape, shared
  by every search over a model of the same shape: `sharding.jit_apply`'s `static`)."""

  def __init__(self, owner):
    self.graphdef, self.params, self.mesh = owner.graphdef, owner.params, owner.mesh
    self.rules = tuple(owner.rules)
    self.param_sh = sharding.state_shardings(self.params, self.mesh, self.rules)
    self.replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self.fns: dict = {}

  def sh(self, axes, shape) -> jax.sharding.NamedSharding:
    return sharding.logical_sharding(tuple(axes) + (None,) * (len(shape) - len(axes)), shape,
                                     self.mesh, self.rules)

  def rows(self, x: np.ndarray) -> jax.Array:
    """A host array split over the batch axis by its first dimension."""
    x = np.asarray(x)
    return sharding.put_global(x, self.sh(("batch",), x.shape))

  def whole(self, x) -> jax.Array:
    return sharding.put_global(np.asarray(x), self.replicated)

  def cache_sh(self, cfg, b: int, s: int) -> KVCache:
    return KVCache.shardings(cfg, b, s, self.mesh, self.rules)

  def model_fn(self, fn, args_sh, out_sh, donate=(), **static):
    """`fn(model, *args, **static)` jitted over the weights with these shardings."""
    key = (fn, tuple(sorted(static.items())), args_sh, out_sh, tuple(donate))
    if key not in self.fns:
      self.fns[key] = sharding.jit_apply(fn, self.graphdef, self.param_sh, args_sh, out_sh,
                                         self.mesh, self.rules, donate_argnums=donate,
                                         static=static)
    return self.fns[key]

  def plain_fn(self, fn, out_sh, donate=(), **static):
    """`fn(*args, **static)` jitted with these output shardings (no weights)."""
    return _plain_program(fn, out_sh, tuple(donate), tuple(sorted(static.items())))


# ----------------------------------------------------------------------------- the two models' rows

class GeneratorRows:
  """The generator's B rows: a KV cache with each row's last logits and next position, and each
  row's generated tokens (`paths`). Without cache reuse each step re-prefills prompt + path."""

  def __init__(self, sampler: Sampler, rows: int, sc: SearchConfig, stop_at_answer: bool = True):
    self.sampler, self.b, self.sc, self.cfg = sampler, rows, sc, sampler.cfg
    self.p = _Programs(sampler)
    nxt, kind = step_tables(sampler.format, sampler.tok, stop_at_answer)
    self.tables = (self.p.whole(nxt), self.p.whole(kind))
    self.greedy = dataclasses.replace(sampler.sc, temperature=0.0)
    self.processed = np.zeros(rows, np.int64)   # prompt / prefix tokens prefilled, per row

  def _state_sh(self):
    p, b, cfg = self.p, self.b, self.cfg
    return (p.cache_sh(cfg, b, self.size), p.sh(("batch",), (b, cfg.vocab_size)),
            p.sh(("batch",), (b,)))

  def start(self, prompts: list[list[int]], keys: np.ndarray) -> None:
    """Row r continues `prompts[r]`; its randomness is `keys[r]` (key data uint32[B, 2])."""
    self.prompts, self.paths = prompts, [[] for _ in prompts]
    self.keys = self.p.rows(keys)
    if not self.sc.reuse_cache:
      return
    index, rows = _unique_prompts(prompts, self.processed)
    length = _prompt_slots(max(map(len, prompts)), self.sampler.buckets)
    self.max_size, self.index = length + self.sc.max_new_tokens, length
    self.size = min(self.max_size, _round(length + 2 * self.sc.max_step_tokens, 128))
    tokens, positions = left_pad([list(x) for x in index], length, self.sampler.tok.pad_id)
    p, cfg, size = self.p, self.cfg, self.size
    fn = p.model_fn(_generator_prefill, (p.sh(("batch",), tokens.shape),) * 2 + (p.replicated,),
                    self._state_sh(), cfg=cfg, size=size)
    self.state = fn(p.params, p.rows(tokens), p.rows(positions), p.whole(rows))

  def get_cache(self) -> KVCache:
    return self.state[0]

  def set_cache(self, cache: KVCache) -> None:
    self.state = (cache,) + tuple(self.state[1:])

  def room(self, steps: int) -> bool:
    """Whether `steps` more steps fit every row's cache slots (grown as needed)."""
    return not self.sc.reuse_cache or _room(self, self.index + steps * self.sc.max_step_tokens)

  def step(self, t: int, live: np.ndarray, greedy: bool = False):
    """One step in every live row (round `t` of the search): (tokens [B, T], lengths, kinds) on
    the host; each live row's tokens are appended to its path."""
    sc, p, cfg, b, steps = (self.greedy if greedy else self.sampler.sc), self.p, self.cfg, self.b, \
        self.sc.max_step_tokens
    rep = p.replicated
    args = (p.sh(("batch",), (b, 2)), rep, p.sh(("batch",), (b,)), rep, rep)
    if self.sc.reuse_cache:
      shs = self._state_sh()
      fn = p.model_fn(_generator_step, shs + args, (rep,) * 3 + shs, donate=(1,), sc=sc,
                      steps=steps)
      out = fn(p.params, *self.state, self.keys, np.int32(t), p.rows(live), *self.tables)
      out, self.state = out[:3], out[3:]
    else:
      seqs = [pr + pa for pr, pa in zip(self.prompts, self.paths)]
      length = _round(max(map(len, seqs)), 64)
      tokens, positions = left_pad(seqs, length, self.sampler.tok.pad_id)
      self.processed += np.where(live, [len(x) for x in seqs], 0)
      fn = p.model_fn(_generator_from_scratch, (p.sh(("batch",), (b, length)),) * 2 + args,
                      (rep,) * 3, cfg=cfg, sc=sc, steps=steps)
      out = fn(p.params, p.rows(tokens), p.rows(positions), self.keys, np.int32(t), p.rows(live),
               *self.tables)
    tokens, lengths, kinds = (sharding.to_host(x) for x in out)
    if self.sc.reuse_cache:
      self.index += int(lengths.max(initial=0))   # the loop ran as long as the longest row
    for r in np.flatnonzero(live):
      self.paths[r] += tokens[r, :lengths[r]].tolist()
    return tokens, lengths, kinds

  def select(self, parents: np.ndarray) -> None:
    """Row r continues row `parents[r]`'s prefix (its cache rows copied, never re-prefilled)."""
    self.paths = [list(self.paths[q]) for q in parents]
    if self.sc.reuse_cache and not np.array_equal(parents, np.arange(self.b)):
      fn = self.p.plain_fn(take_rows, self._state_sh())
      self.state = fn(self.state[0], self.p.whole(parents.astype(np.int32)), *self.state[1:])

  def mark(self) -> None:
    self._mark = ([len(x) for x in self.paths],
                  (self.state[1:], self.index) if self.sc.reuse_cache else None)

  def restore(self) -> None:
    """Back to `mark()`: the lookahead's tokens forgotten, its cache slots hidden and reused."""
    lens, saved = self._mark
    self.paths = [x[:n] for x, n in zip(self.paths, lens)]
    if saved is not None:
      rest, self.index = saved
      fn = self.p.plain_fn(rewind, self._state_sh()[0], donate=(0,))
      self.state = (fn(self.state[0], np.int32(self.index)),) + rest


class PRMRows:
  """The PRM's B rows: each row's prefix (problem and scored steps, in the PRM's own step format
  and tokenizer) in a KV cache; new steps are scored against it at their step ends. Without cache
  reuse every call re-scores the whole prefix."""

  def __init__(self, scorer: Scorer, rows: int, sc: SearchConfig,
               buckets: Sequence[int] = (64, 128, 256, 512, 1024)):
    if scorer.kind != "prm":
      raise ValueError(f"search needs a PRM (step scores); the reward model is an {scorer.kind}")
    self.scorer, self.b, self.sc, self.cfg = scorer, rows, sc, scorer.cfg
    self.p = _Programs(scorer)
    self.nip, self.buckets = scorer.neutral_is_positive, tuple(buckets)
    self.processed = np.zeros(rows, np.int64)   # tokens run through the PRM, per row

  def _pieces(self, steps: Sequence[str]) -> tuple[list[int], list[int]]:
    """Tokens of `steps` as the scorer encodes them, and where each is scored."""
    fmt, tok, tokens, ends = self.scorer.format, self.scorer.tok, [], []
    for step in steps:
      piece = fmt._step_piece(tok, step)
      ends.append(len(tokens) + fmt._end_offset(tok, piece))
      tokens += piece
    return tokens, ends

  def start(self, problems: list[str]) -> None:
    fmt, tok, p, cfg = self.scorer.format, self.scorer.tok, self.p, self.cfg
    prompts = [fmt.prompt(tok, x) for x in problems]
    self.seqs = [list(x) for x in prompts]       # each row's prefix in PRM tokens
    if not self.sc.reuse_cache:
      return
    index, rows = _unique_prompts(prompts, self.processed)
    length = _prompt_slots(max(map(len, prompts)), self.buckets)
    self.max_size, self.index = length + 2 * self.sc.max_new_tokens + 64, length
    self.size = min(self.max_size, _round(length + 4 * self.sc.max_step_tokens, 128))
    tokens, positions = left_pad([list(x) for x in index], length, tok.pad_id)
    fn = p.model_fn(_prm_prefill, (p.sh(("batch",), tokens.shape),) * 2 + (p.replicated,),
                    p.cache_sh(cfg, self.b, self.size), cfg=cfg, size=self.size, nip=self.nip)
    self.cache = fn(p.params, p.rows(tokens), p.rows(positions), p.whole(rows))

  def get_cache(self) -> KVCache:
    return self.cache

  def set_cache(self, cache: KVCache) -> None:
    self.cache = cache

  def room(self, steps: int) -> bool:
    return not self.sc.reuse_cache or _room(
        self, self.index + steps * (2 * self.sc.max_step_tokens + 16))

  def score(self, new_steps: dict[int, list[str]]) -> dict[int, list[float]]:
    """P(ok) of each row's new steps (rows not in `new_steps` add nothing)."""
    p, b, cfg = self.p, self.b, self.cfg
    pieces = {r: self._pieces(s) for r, s in new_steps.items() if s}
    if not pieces:
      return {r: [] for r in new_steps}
    if self.sc.reuse_cache:   # the new tokens only, after each row's cached prefix
      chunk = {r: (t, e, len(self.seqs[r])) for r, (t, e) in pieces.items()}
    else:                     # the whole prefix again
      chunk = {r: (self.seqs[r] + t, [len(self.seqs[r]) + x for x in e], 0)
               for r, (t, e) in pieces.items()}
    longest = max(len(t) for t, _, _ in chunk.values())
    width = _pow2(longest) if self.sc.reuse_cache else _round(longest, 64)
    tokens = np.full((b, width), self.scorer.tok.pad_id, np.int32)
    positions = np.full((b, width), -1, np.int32)
    for r, (t, _, first) in chunk.items():
      tokens[r, :len(t)], positions[r, :len(t)] = t, first + np.arange(len(t))
      self.processed[r] += len(t)
    row, rep = p.sh(("batch",), (b, width)), p.replicated
    if self.sc.reuse_cache:
      if not _room(self, self.index + width):
        raise RuntimeError(f"the PRM's cache of {self.size} slots is full; raise "
                           "config.search.max_new_tokens")
      c_sh = p.cache_sh(cfg, b, self.size)
      fn = p.model_fn(_prm_chunk, (c_sh, row, row), (c_sh, rep), donate=(1,), nip=self.nip)
      self.cache, probs = fn(p.params, self.cache, p.rows(tokens), p.rows(positions))
      self.index += width
    else:
      fn = p.model_fn(_prm_from_scratch, (row, row), rep, cfg=cfg, nip=self.nip)
      probs = fn(p.params, p.rows(tokens), p.rows(positions))
    probs = sharding.to_host(probs)
    for r, (t, _) in pieces.items():
      self.seqs[r] = self.seqs[r] + t
    return {r: [float(probs[r, x]) for x in chunk[r][1]] if r in chunk else []
            for r in new_steps}

  def select(self, parents: np.ndarray) -> None:
    self.seqs = [list(self.seqs[q]) for q in parents]
    if self.sc.reuse_cache and not np.array_equal(parents, np.arange(self.b)):
      fn = self.p.plain_fn(_take_cache, self.p.cache_sh(self.cfg, self.b, self.size))
      self.cache = fn(self.cache, self.p.whole(parents.astype(np.int32)))

  def mark(self) -> None:
    self._mark = ([len(x) for x in self.seqs], getattr(self, "index", 0))

  def restore(self) -> None:
    lens, index = self._mark
    self.seqs = [x[:n] for x, n in zip(self.seqs, lens)]
    if self.sc.reuse_cache:
      self.index = index
      fn = self.p.plain_fn(rewind, self.p.cache_sh(self.cfg, self.b, self.size), donate=(0,))
      self.cache = fn(self.cache, np.int32(index))
