"""Batched KV-cache sampling: prefill and decode in one jitted program.

Prompts are left-padded to a few bucket lengths (padding holds position -1, so attention never sees
it) and decoded with `lax.while_loop` over a fixed-size cache that is donated between calls. Every row
has its own key, derived from (seed, problem id, sample index), so a sample does not depend on which
batch it was drawn in: runs are deterministic per seed and a resumed run reproduces the missing rows.
A row stops at EOS or when the line after a `# Answer` line ends. A batch's repeated prompts (the N
samples of a problem, the m rollouts of a prefix) are prefilled once and their cache rows copied to
every row that shares them (`sample.share_prompts`), with the same tokens as prefilling each row.
"""

from __future__ import annotations

import dataclasses
import zlib
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from prm_jax import stopping
from prm_jax.model import CausalLM, KVCache
from prm_jax.model.transformer import last_column
from prm_jax.step_format import StepFormat

NEG_INF = -1e30


def apply_top_k(logits: jax.Array, k: int) -> jax.Array:
  """Keeps the k largest logits of each row (k <= 0: all)."""
  if k <= 0 or k >= logits.shape[-1]:
    return logits
  kth = jax.lax.top_k(logits, k)[0][..., -1:]
  return jnp.where(logits < kth, NEG_INF, logits)


def apply_top_p(logits: jax.Array, p: float) -> jax.Array:
  """Nucleus: the smallest set of tokens whose probability reaches p (the top token always stays)."""
  if p >= 1.0:
    return logits
  sorted_logits = jnp.sort(logits, axis=-1)[..., ::-1]
  probs = jax.nn.softmax(sorted_logits, axis=-1)
  before = jnp.cumsum(probs, axis=-1) - probs       # mass strictly above each sorted token
  keep_sorted = before < p
  cutoff = jnp.min(jnp.where(keep_sorted, sorted_logits, jnp.inf), axis=-1, keepdims=True)
  return jnp.where(logits < cutoff, NEG_INF, logits)


def choose(logits: jax.Array, keys: jax.Array, temperature: float, top_k: int, top_p: float
           ) -> jax.Array:
  """Next token per row: greedy at temperature 0, else temperature, then top-k, then top-p."""
  logits = logits.astype(jnp.float32)
  if temperature <= 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  logits = apply_top_p(apply_top_k(logits / temperature, top_k), top_p)
  return jax.vmap(lambda k, l: jax.random.categorical(k, l))(keys, logits).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SamplingConfig:
  max_new_tokens: int = 256
  temperature: float = 1.0
  top_k: int = 0
  top_p: float = 1.0
  eos_id: int = 3
  pad_id: int = 0
  banned_ids: tuple[int, ...] = ()  # never drawn (padding, BOS)
  vocab_limit: int = 0              # ids >= this (the model's padded vocab rows) are never drawn


def next_token(logits: jax.Array, keys: jax.Array, sc: SamplingConfig) -> jax.Array:
  """Each row's next token from its last logits: banned ids and padded vocab rows never drawn."""
  for banned in sc.banned_ids:
    logits = logits.at[:, banned].set(NEG_INF)
  if sc.vocab_limit:
    logits = jnp.where(jnp.arange(logits.shape[-1]) < sc.vocab_limit, logits, NEG_INF)
  return choose(logits, keys, sc.temperature, sc.top_k, sc.top_p)


def generate(model: CausalLM, cache: KVCache, prompts: jax.Array, positions: jax.Array,
             keys: jax.Array, stop_next: jax.Array, stop_accept: jax.Array, sc: SamplingConfig,
             rows: jax.Array | None = None) -> tuple[jax.Array, jax.Array, KVCache]:
  """Samples up to `sc.max_new_tokens` after left-padded `prompts` [U,P] (positions -1 on padding).

  Without `rows`, row r of the batch continues prompt r (U = B). With `rows` int32[B] (shared-prompt
  sampling: the N samples of a problem, the m rollouts of a prefix), the U prompts are prefilled
  once, in a U-row cache of the same length, and row r continues prompt `rows[r]`: its cache rows
  (k, v, pos) and last logits are gathered from the prefilled ones, so a row's tokens are the ones
  it gets with its prompt prefilled in place. A row stops at EOS or when a stop automaton accepts
  (`stopping.StopTables`: `stop_next` int[A,S,V] advances each row's state per token, `stop_accept`
  bool[A,S]). Returns tokens int32[B, max_new] (pad after the stop), lengths int32[B] (tokens
  generated, the stopping one included), and the B-row cache (donate it back on the next call).
  """
  from prm_jax import sharding
  b, u = keys.shape[0], prompts.shape[0]
  next_pos = jnp.max(positions, axis=1) + 1
  last_col = last_column(prompts)  # the prefill reads its last logits only
  if rows is None:
    cache = cache.empty(b)
    logits, cache = model.decode(prompts, cache, positions, fresh=True, only_at=last_col)
    last = logits[:, -1]
  else:
    small = cache.empty(u)
    logits, small = model.decode(prompts, small, positions, fresh=True, only_at=last_col)
    cache = small.take_rows(rows)  # each prompt's rows to the decode rows that continue it
    last = sharding.constrain(jnp.take(logits[:, -1], rows, axis=0), ("batch", None))
    next_pos = jnp.take(next_pos, rows, axis=0)
  automata = jnp.arange(stop_next.shape[0])[None, :]
  tokens = jnp.full((b, sc.max_new_tokens), sc.pad_id, jnp.int32)

  def cond(state):
    i, _, _, _, done, _, _, _ = state
    return (i < sc.max_new_tokens) & ~jnp.all(done)

  def body(state):
    i, cache, last_logits, tokens, done, states, lengths, pos = state
    tok = next_token(last_logits, jax.vmap(lambda k: jax.random.fold_in(k, i))(keys), sc)
    tok = jnp.where(done, sc.pad_id, tok)
    tokens = jax.lax.dynamic_update_slice(tokens, tok[:, None], (0, i))
    lengths = lengths + (~done).astype(jnp.int32)
    states = stop_next[automata, states, jnp.clip(tok, 0, stop_next.shape[-1] - 1)[:, None]]
    hit = jnp.any(stop_accept[automata, states], axis=1)
    done = done | (tok == sc.eos_id) | hit
    logits, cache = model.decode(tok[:, None], cache, pos[:, None])
    return i + 1, cache, logits[:, -1], tokens, done, states, lengths, pos + 1

  state = (jnp.int32(0), cache, last, tokens, jnp.zeros(b, bool),
           jnp.zeros((b, stop_next.shape[0]), jnp.int32), jnp.zeros(b, jnp.int32), next_pos)
  _, cache, _, tokens, _, _, lengths, _ = jax.lax.while_loop(cond, body, state)
  return tokens, lengths, cache


def row_keys(seed: int, problem_ids: Sequence[str], sample_idx: Sequence[int]) -> np.ndarray:
  """One key per (problem, sample): independent of batch composition."""
  base = jax.random.key(seed)
  ids = np.array([zlib.crc32(p.encode("utf-8")) & 0x7FFFFFFF for p in problem_ids], np.uint32)
  idx = np.asarray(sample_idx, np.uint32)
  return jax.vmap(lambda a, c: jax.random.fold_in(jax.random.fold_in(base, a), c))(ids, idx)


def bucket_length(n: int, buckets: Sequence[int]) -> int:
  for b in sorted(buckets):
    if n <= b:
      return b
  raise ValueError(f"prompt of {n} tokens is longer than the largest bucket {max(buckets)}")


def left_pad(prompts: Sequence[Sequence[int]], length: int, pad_id: int
             ) -> tuple[np.ndarray, np.ndarray]:
  tokens = np.full((len(prompts), length), pad_id, np.int32)
  positions = np.full((len(prompts), length), -1, np.int32)
  for r, p in enumerate(prompts):
    tokens[r, length - len(p):] = p
    positions[r, length - len(p):] = np.arange(len(p))
  return tokens, positions


def _generate_from_key_data(model, cache, prompts, positions, key_data, stop_next, stop_accept,
                            *rows, sc):
  return generate(model, cache, prompts, positions, jax.random.wrap_key_data(key_data), stop_next,
                  stop_accept, sc, *rows)


def make_generate_fn(graphdef, params, cfg, sc: SamplingConfig, batch: int, length: int, mesh,
                     rules, unique: int | None = None):
  """`fn(params, cache, tokens, positions, key_data, stop_next, stop_accept) -> (tokens, lengths,
  cache)` with explicit shardings (rows over the batch axes; `key_data` uint32[B, 2] from
  `row_keys`; the stop tables replicated), the outputs replicated (every process reads them) and the
  cache donated, plus a cache placed on the mesh.

  With `unique=U` (shared-prompt sampling), `tokens` / `positions` hold U prompts [U, length] and
  `fn` takes one more argument, `rows` int32[B] (replicated): the prompt each row continues (see
  `generate`). The cache is the same B-row one, so the two kinds of program can share it.

  Placing the cache matters: an unplaced cache next to mesh-placed weights is not aliased across
  the decode loop, which costs about 4x on CPU.
  """
  from prm_jax import sharding
  total = length + sc.max_new_tokens
  row = sharding.logical_sharding(("batch", None), (unique or batch, length), mesh, rules)
  cache_sh = KVCache.shardings(cfg, batch, total, mesh, rules)
  keys_sh = sharding.logical_sharding(("batch", None), (batch, 2), mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  fn = sharding.jit_apply(
      _generate_from_key_data, graphdef, sharding.state_shardings(params, mesh, rules),
      (cache_sh, row, row, keys_sh, replicated, replicated) + ((replicated,) if unique else ()),
      (replicated, replicated, cache_sh), mesh, rules, donate_argnums=(1,), static=dict(sc=sc))
  return fn, jax.device_put(KVCache.init(cfg, batch, total), cache_sh)


# ----------------------------------------------------------------------------- the Python API

class Sampler:
  """N graded solutions per problem from a generator.

      sampler = Sampler.from_run("runs/gen", config)        # a run directory, or "hf:PATH"
      sampler = Sampler(model, tokenizer, config)           # the model a notebook just trained
      solutions = sampler.sample(problems, n=16, seed=0)    # graded `Solution`s, in input order

  `config` is a prm_jax config (`configs/base.py`): `config.sample` holds the settings,
  `config.format` the step format (prompts, and generated text back into steps), `config.mesh` and
  `config.rules` the sharding (or pass `mesh` / `rules`). A row stops at EOS, after the line that
  follows `# Answer` (`sample.stop_at_answer`, PRM800K's convention), or at a `sample.stop` string.
  """

  def __init__(self, model: CausalLM, tokenizer, config=None, mesh=None, rules=None):
    from prm_jax import sharding
    from prm_jax.configs import base
    config = config if config is not None else base.get_config()
    if not isinstance(model, CausalLM):
      raise ValueError(f"sampling needs a generator (CausalLM), got {type(model).__name__}")
    self.mesh = mesh if mesh is not None else sharding.make_mesh(config.mesh)
    self.rules = tuple(rules if rules is not None else config.rules)
    s = config.sample
    self.tok, self.cfg = tokenizer, model.cfg
    if tokenizer.vocab_size > model.cfg.vocab_size:
      raise ValueError(f"the tokenizer's {tokenizer.vocab_size} pieces do not fit the model's "
                       f"embedding table of {model.cfg.vocab_size}")
    self.graphdef, params = nnx.split(model)
    self.params = jax.device_put(params, sharding.state_shardings(params, self.mesh, self.rules))
    div = self.div = sharding.batch_divisor(self.mesh, self.rules)
    self.batch_size = max(div, s.batch_size - s.batch_size % div)
    # Rows continuing the same prompt prefill it once (`generate`'s `rows`); False prefills every
    # row (the same tokens: each row's key is its own). `prefilled_rows` counts prompt rows run.
    self.share_prompts, self.prefilled_rows = bool(s.get("share_prompts", True)), 0
    self.buckets, self.grading_mode = tuple(s.buckets), s.grading_mode
    self.format = StepFormat.from_config(config.get("format"))
    self.format.check(tokenizer)
    banned = tuple(sorted({i for i in (tokenizer.pad_id, tokenizer.bos_id)
                           if i is not None and i != tokenizer.eos_id}))
    self.sc = SamplingConfig(s.max_new_tokens, s.temperature, s.top_k, s.top_p, tokenizer.eos_id,
                             tokenizer.pad_id, banned, tokenizer.vocab_size)
    automata = ([stopping.answer_line()] if s.stop_at_answer else []) + [
        stopping.stop_string(x) for x in s.stop]
    self.stops = stopping.StopTables.build(automata, self.format.token_texts(tokenizer))
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    self._stop_arrays = (jax.device_put(self.stops.next, replicated),
                         jax.device_put(self.stops.accept, replicated))
    self._fns, self._caches = {}, {}

  @classmethod
  def from_run(cls, spec: str, config=None) -> "Sampler":
    """Opens a generator run (or `hf:PATH`) on the mesh of `config.mesh`."""
    from prm_jax import sharding
    from prm_jax.configs import base
    from prm_jax.runs import Run
    config = config if config is not None else base.get_config()
    mesh, rules = sharding.make_mesh(config.mesh), tuple(config.rules)
    run = Run.open(spec, mesh, rules, **Run.holding(spec, config)).require("sampling", "sft")
    return cls(run.model, run.tokenizer, run.with_format(config), mesh, rules)

  def _fn(self, length: int, unique: int | None = None):
    """One compiled program per (prompt bucket, unique prompts: None for one per row) and one
    donated cache per prompt bucket, which the programs of that bucket share."""
    if (length, unique) not in self._fns:
      fn, cache = make_generate_fn(self.graphdef, self.params, self.cfg, self.sc, self.batch_size,
                                   length, self.mesh, self.rules, unique)
      self._fns[length, unique] = fn
      self._caches.setdefault(length, cache)
    return self._fns[length, unique]

  def _unique_bucket(self, u: int) -> int | None:
    """Rows to prefill for u distinct prompts: the mesh's batch divisor times a power of two (few
    programs), or None (one prompt per row) when that saves nothing."""
    div = self.div
    ub = div * (1 << max(0, -(-u // div) - 1).bit_length())
    return ub if self.share_prompts and ub < self.batch_size else None

  def sample(self, problems, n: int, seed: int = 0, progress: bool = False):
    """All `n` samples of each problem, problem by problem, as one list."""
    return [s for batch in self.iter_batches(problems, n, seed, progress=progress) for s in batch]

  def iter_batches(self, problems, n: int, seed: int = 0, start: int = 0, progress: bool = False):
    """Yields lists of graded `Solution`s in input order (problem-major, then sample index), one
    list per generated batch, from job `start` on (a resume: batches stay aligned to absolute job
    numbers, so the rows are those an uninterrupted run writes)."""
    if n < 1:
      raise ValueError(f"samples per problem n={n} must be >= 1")
    jobs = [(p, k, ()) for p in problems for k in range(n)]
    yield from self._run(jobs, seed, progress, start)

  def complete(self, prefixes, m: int, seed: int = 0):
    """`m` continuations of each (problem, steps-so-far) pair: rollouts for Monte-Carlo labels.

    Returns one list of `m` graded solutions (prefix + continuation) per input pair.
    """
    jobs = [(p, k, tuple(prefix)) for p, prefix in prefixes for k in range(m)]
    out = [s for batch in self._run(jobs, seed, False) for s in batch]
    return [out[i * m:(i + 1) * m] for i in range(len(prefixes))]

  def _generate(self, prompts: list[list[int]], keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """One fixed-shape batch: prompts padded to the bucket of the longest, placed on the mesh.
    Rows with the same prompt share one prefill (`generate`'s `rows`) when that saves rows."""
    from prm_jax import sharding
    length = bucket_length(max(map(len, prompts)), self.buckets)
    index: dict[tuple[int, ...], int] = {}
    rows = np.array([index.setdefault(tuple(p), len(index)) for p in prompts], np.int32)
    unique = self._unique_bucket(len(index))
    if unique is not None:
      prompts = [list(p) for p in index] + [prompts[0]] * (unique - len(index))
    fn = self._fn(length, unique)
    tokens, positions = left_pad(prompts, length, self.tok.pad_id)
    self.prefilled_rows += len(prompts)
    row = sharding.logical_sharding(("batch", None), tokens.shape, self.mesh, self.rules)
    key_sh = sharding.logical_sharding(("batch", None), keys.shape, self.mesh, self.rules)
    replicated = jax.sharding.NamedSharding(self.mesh, jax.sharding.PartitionSpec())
    extra = () if unique is None else (sharding.put_global(rows, replicated),)
    out, lengths, self._caches[length] = fn(
        self.params, self._caches[length], sharding.put_global(tokens, row),
        sharding.put_global(positions, row), sharding.put_global(keys, key_sh), *self._stop_arrays,
        *extra)
    return sharding.to_host(out), sharding.to_host(lengths)

  def _run(self, jobs, seed: int, progress: bool, start: int = 0):
    import time
    from tqdm.auto import tqdm
    from prm_jax import distributed

    def key_id(p, prefix):  # rollouts of different prefixes get different randomness
      return p.problem_id if not prefix else (
          f"{p.problem_id}|{len(prefix)}|{zlib.crc32(chr(10).join(prefix).encode())}")
    b = self.batch_size
    if start >= len(jobs):
      return
    first = start // b * b
    bar = tqdm(total=len(jobs), initial=start, desc="sample", unit=" samples",
               disable=not progress or not distributed.is_main())
    t0 = time.perf_counter()
    for lo in range(first, len(jobs), b):
      chunk = jobs[lo:lo + b]
      fill = b - len(chunk)
      prompts = [self.format.prompt(self.tok, p.problem, prefix) for p, _, prefix in chunk]
      prompts += [prompts[0]] * fill  # fixed batch shape
      keys = row_keys(seed, [key_id(p, prefix) for p, _, prefix in chunk] + ["<pad>"] * fill,
                      [k for _, k, _ in chunk] + [0] * fill)
      out, lengths = self._generate(prompts, np.asarray(jax.random.key_data(keys)))
      batch = [self._solution(p, k, prefix, out[r, :lengths[r]].tolist(), seed)
               for r, (p, k, prefix) in enumerate(chunk) if lo + r >= start]
      bar.update(len(batch))
      bar.set_postfix(samples_per_s=f"{(bar.n - start) / (time.perf_counter() - t0):.1f}",
                      refresh=False)
      yield batch
    bar.close()

  def _solution(self, p, k: int, prefix: tuple[str, ...], gen: list[int], seed: int):
    """A generated row as a graded `Solution`: its text cut where a stop condition accepted, split
    into steps by the step format, the answer extracted and graded."""
    from prm_jax import grading
    from prm_jax.records import Solution
    eos = bool(gen) and gen[-1] == self.tok.eos_id
    text, stopped = self.stops.cut_text(self.tok.decode(gen[:-1] if eos else gen))
    finish = "eos" if eos else {None: "length", "answer": "answer"}.get(stopped, "stop")
    steps = list(prefix) + self.format.split(text)
    answer = grading.extract_answer("\n".join(steps))
    correct = grading.grade_answer(answer, p.answer, self.grading_mode) if (
        answer is not None and p.answer is not None) else (False if p.answer else None)
    meta = {"sample_idx": k, "seed": seed, "num_tokens": len(gen)}
    if prefix:
      meta["prefix_steps"] = len(prefix)
    return Solution(problem_id=p.problem_id, problem=p.problem, steps=steps, answer=answer,
                    ground_truth_answer=p.answer, is_correct=correct, finish_reason=finish,
                    meta=meta)


def sample_to_file(sampler: Sampler, problems, output: str, n: int, seed: int,
                   claim=None) -> dict:
  """`prm-jax sample`: streams graded samples to `output` in input order (problem by problem, then
  sample index) and resumes where an earlier run stopped, on one process or many (every process
  generates its devices' share of each batch; process 0 writes the one output file). The rows
  already there must be this run's first rows (problem id, sample index, seed); the output is
  locked while it is written (`distributed.ResumableOutput`; `claim`: an `OutputClaim` the caller
  took earlier)."""
  from prm_jax import distributed
  problems = list(problems)
  want = [(p.problem_id, k) for p in problems for k in range(n)]

  def check_existing(i, s):  # row i already there must be this run's row i
    got = (s.problem_id, s.meta.get("sample_idx"))
    if i >= len(want) or got != want[i]:
      raise ValueError(f"{output}:{i + 1}: holds sample {got}, but this run's row {i + 1} is "
                       f"{want[i] if i < len(want) else 'past the end'}; it was written from "
                       "other problems or another n: choose another --output")
    if s.meta.get("seed") != seed:
      raise ValueError(f"{output}:{i + 1}: was sampled with seed {s.meta.get('seed')!r}, this run "
                       f"has config.seed={seed}: choose another --output or the same seed")
  with distributed.ResumableOutput(output, check_existing, claim) as out:
    written = 0
    for batch in sampler.iter_batches(problems, n, seed, start=out.done, progress=True):
      out.write_all(batch)
      written += len(batch)
  return {"problems": len(problems), "resumed_from": out.done, "written": written,
          "repaired_tail_lines": out.dropped, **distributed.mesh_summary(sampler.mesh)}
