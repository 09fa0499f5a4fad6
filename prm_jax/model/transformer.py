"""NNX LLaMA-family decoder: RMSNorm, RoPE, SwiGLU, grouped-query attention.

Every parameter carries logical axis names in its `out_sharding` metadata (`embed`, `mlp`, `heads`,
`kv_heads`, `head_dim`, `vocab`, `norm`, and `layers` when scanned); `prm_jax.sharding` maps them to the
mesh. Packed rows use `segment_ids` (0 marks padding) and per-segment `positions`. The KV cache is a plain
pytree (`KVCache`) threaded through the call, so a sampler can donate it and loop over it in `lax.while_loop`.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import numpy as np
import jax.numpy as jnp
from flax import nnx

from prm_jax.model.config import ModelConfig, RopeScaling
from prm_jax import sharding


def param(rngs: nnx.Rngs | None, init, shape, axes, dtype) -> nnx.Param:
  """A parameter annotated with logical axis names (never eagerly sharded: see sharding.init_sharded)."""
  value = init(rngs.params() if rngs is not None else None, shape, dtype)
  return nnx.Param(value, out_sharding=tuple(axes), eager_sharding=False)


def normal(std):
  return lambda key, shape, dtype: std * jax.random.normal(key, shape, dtype)


def ones(_, shape, dtype):
  return jnp.ones(shape, dtype)


def zeros(_, shape, dtype):
  return jnp.zeros(shape, dtype)


STACKED_KV_AXES = ("layers", "batch", "length", "kv_heads", "head_dim")
PER_LAYER_K_AXES = ("batch", "kv_heads", "head_dim", "length")  # slots minor: q k^T reads rows
PER_LAYER_V_AXES = ("batch", "kv_heads", "length", "head_dim")


class KVCache(NamedTuple):
  """Fixed-size cache for all layers. `pos[b, s]`: the position stored in slot s (-1: empty).

  Two layouts of `k` / `v`, by `cfg.scan_layers`: one stacked [L,B,S,K,H] buffer each that a scan
  over the layers walks, or (unscanned) a tuple of L per-layer buffers, heads-major, the keys
  [B,K,H,S] (slots minor) and the values [B,K,S,H]. A decode loop updates each per-layer buffer in
  place and the attention dots read it as laid out: q k^T is then a row-times-matrix product over
  contiguous slots, the layout XLA's CPU dot is fastest at for a few query rows (the keys
  [B,K,S,H] took 1.8x as long for the tiny LLaMA of scripts/bench_sampling.py at 160 slots, 2.2x
  at 640), and XLA copies a stacked cache's per-layer slices and transposes their [S,K] at every
  step. `map_kv` hands each buffer with its logical axes (the batch, the slots: "length"), so
  `take_rows`, `empty`, `shardings` and a search's `grow` serve either layout.
  """

  k: jax.Array | tuple[jax.Array, ...]  # [L,B,S,K,H], or L x [B,K,H,S]
  v: jax.Array | tuple[jax.Array, ...]  # [L,B,S,K,H], or L x [B,K,S,H]
  pos: jax.Array    # int32 [B, S]
  index: jax.Array  # int32 [], next slot to write

  @classmethod
  def _build(cls, cfg: ModelConfig, batch: int, max_len: int, buffer, pos, index) -> "KVCache":
    """The cache's tree of `buffer(axes, shape)` for k and v in `cfg`'s layout, with `pos` and
    `index`: one place for both layouts, shared by `init` and `shardings`."""
    if cfg.scan_layers:
      shape = (cfg.num_layers, batch, max_len, cfg.num_kv_heads, cfg.head_dim)
      return cls(buffer(STACKED_KV_AXES, shape), buffer(STACKED_KV_AXES, shape), pos, index)
    k_shape = (batch, cfg.num_kv_heads, cfg.head_dim, max_len)
    v_shape = (batch, cfg.num_kv_heads, max_len, cfg.head_dim)
    layers = range(cfg.num_layers)
    return cls(tuple(buffer(PER_LAYER_K_AXES, k_shape) for _ in layers),
               tuple(buffer(PER_LAYER_V_AXES, v_shape) for _ in layers), pos, index)

  @classmethod
  def init(cls, cfg: ModelConfig, batch: int, max_len: int, dtype=None) -> "KVCache":
    dtype = dtype or cfg.compute_dtype
    return cls._build(cfg, batch, max_len, lambda _, shape: jnp.zeros(shape, dtype),
                      jnp.full((batch, max_len), -1, jnp.int32), jnp.zeros((), jnp.int32))

  @classmethod
  def shardings(cls, cfg: ModelConfig, batch: int, max_len: int, mesh, rules) -> "KVCache":
    """The NamedShardings of `init(cfg, batch, max_len)`'s arrays (rows over the batch axes)."""
    def sh(axes, shape):
      return sharding.logical_sharding(axes, shape, mesh, rules)
    return cls._build(cfg, batch, max_len, sh, sh(("batch", None), (batch, max_len)), sh((), ()))

  @property
  def per_layer(self) -> bool:
    return isinstance(self.k, tuple)

  def map_kv(self, fn) -> "KVCache":
    """The cache with `fn(buffer, axes)` applied to every k / v buffer (`axes`: its logical axis
    names, e.g. `axes.index("length")` is its slot axis), sharding-constrained (rows over the batch
    axes) inside `sharding.use_rules`."""
    k_axes, v_axes = ((PER_LAYER_K_AXES, PER_LAYER_V_AXES) if self.per_layer else
                      (STACKED_KV_AXES, STACKED_KV_AXES))
    def apply(axes):
      return lambda a: sharding.constrain(fn(a, axes), axes)
    return self._replace(k=jax.tree.map(apply(k_axes), self.k),
                         v=jax.tree.map(apply(v_axes), self.v))

  def constrained(self) -> "KVCache":
    """The cache constrained to its rows over the batch axes (a fresh one built inside a jit)."""
    return self.map_kv(lambda a, _: a)._replace(
        pos=sharding.constrain(self.pos, ("batch", None)))

  def empty(self, rows: int) -> "KVCache":
    """An empty cache of this one's layout, length and dtype with `rows` rows, constrained."""
    def zeros(a, axes):
      shape = list(a.shape)
      shape[axes.index("batch")] = rows
      return jnp.zeros(shape, a.dtype)
    return self.map_kv(zeros)._replace(
        pos=sharding.constrain(jnp.full((rows, self.pos.shape[1]), -1, jnp.int32),
                               ("batch", None)), index=jnp.zeros((), jnp.int32))

  def take_rows(self, rows: jax.Array) -> "KVCache":
    """Row r holding row `rows[r]`'s keys, values and positions (a gather that may cross shards)."""
    out = self.map_kv(lambda a, axes: jnp.take(a, rows, axis=axes.index("batch")))
    return out._replace(pos=sharding.constrain(jnp.take(self.pos, rows, axis=0), ("batch", None)))


class RMSNorm(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.eps = cfg.norm_eps
    self.scale = param(rngs, ones, (cfg.dim,), ("norm",), cfg.weight_dtype)

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return self.scale[...].astype(x.dtype) * x32.astype(x.dtype)


def rope_frequencies(head_dim: int, theta: float, scaling: RopeScaling | None) -> jax.Array:
  """Inverse frequencies, with Llama-3 wavelength-dependent scaling when configured."""
  inv_freq = 1.0 / (theta ** (jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim))
  if scaling is None:
    return inv_freq
  old = scaling.original_max_position_embeddings
  low_wavelen = old / scaling.low_freq_factor
  high_wavelen = old / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = jnp.where(wavelen > low_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = (old / wavelen - scaling.low_freq_factor) / (
      scaling.high_freq_factor - scaling.low_freq_factor)
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = (wavelen >= high_wavelen) & (wavelen <= low_wavelen)
  return jnp.where(medium, smoothed, scaled)


def apply_rope(x: jax.Array, positions: jax.Array, inv_freq: jax.Array) -> jax.Array:
  """Rotate-half RoPE (the Hugging Face layout). x: [B,T,N,H], positions: [B,T]."""
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B,T,H/2]
  cos = jnp.cos(angles)[:, :, None, :]
  sin = jnp.sin(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  out = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return out.astype(x.dtype)


def attend(q: jax.Array, k: jax.Array, v: jax.Array, mask: jax.Array | None,
           is_causal: bool, heads_major: bool = False) -> jax.Array:
  """softmax(q k^T / sqrt(H)) v over grouped KV heads: q [B,T,N,H], k/v [B,S,K,H] (`heads_major`,
  a per-layer cache: k [B,K,H,S], v [B,K,S,H]), mask [B,1,T,S] or None; [B,T,N,H] out. The
  numerics of `jax.nn.dot_product_attention`'s XLA path (scores and softmax in float32, masked
  scores a large finite negative), with the value product laid out as [B,K,G,T,H] and transposed
  after: XLA's CPU dot writes the [B,T,K,G,H] layout that jax's path asks for about 2.5x slower
  (16 x 256 tokens, 4 heads of 16: 14 vs 36 ms, measured). On GPU (keys [B,S,K,H]), jax's own
  function, which can take cuDNN's fused kernel."""
  if jax.default_backend() == "gpu" and not heads_major:
    return jax.nn.dot_product_attention(q, k, v, mask=mask, is_causal=is_causal)
  b, t, n, h = q.shape
  precision = (jax.lax.DotAlgorithmPreset.BF16_BF16_F32 if q.dtype == jnp.bfloat16 else None)
  logits_dtype = jnp.promote_types(q.dtype, jnp.float32)
  if heads_major:  # queries [B,K,G,T,H] times keys [B,K,H,S]: XLA:CPU's fast row-times-matrix
    kh, s = k.shape[1], k.shape[3]
    q = q.reshape(b, t, kh, n // kh, h).transpose(0, 2, 3, 1, 4)
    query, keys, values = "bkgth", "bkhs", "bksh"
  else:
    kh, s = k.shape[2], k.shape[1]
    q = q.reshape(b, t, kh, n // kh, h)
    query, keys, values = "btkgh", "bskh", "bskh"
  logits = jnp.einsum(f"{query},{keys}->bkgts", q, k, precision=precision,
                      preferred_element_type=logits_dtype)
  logits = (logits * jnp.asarray(h ** -0.5, logits.dtype)).astype(jnp.float32)
  if is_causal and mask is None:
    mask = (jnp.arange(t)[:, None] >= jnp.arange(s)[None, :])[None, None]
  if mask is not None:  # [B,1,T,S] -> [B,1,1,T,S]
    logits = jnp.where(mask[:, :, None], logits, np.float32(-0.7 * np.finfo(np.float32).max))
  probs = jax.nn.softmax(logits, axis=-1).astype(v.dtype)
  out = jnp.einsum(f"bkgts,{values}->bkgth", probs, v)
  return out.transpose(0, 3, 1, 2, 4).reshape(b, t, n, h)


def blocked_attention(q, k, v, mask, is_causal: bool, block: int, window: int | None = None):
  """Causal self-attention (q [B,T,N,H], k/v [B,T,K,H], mask [B,1,T,T] or None) in query blocks
  of `block`: block i attends to keys [0, end of block i) only (with a sliding `window`, from
  `window - 1` before its start), so keys that are all masked out are never scored. With a mask
  (packed rows), a block whose queries see no key more than `2 * block` before it (every segment
  in it starts within two blocks: PRM800K-length solutions in rows of 1024) scores only the keys
  from there, chosen at run time by `lax.cond`, exact either way. Same result as one `attend` over
  the whole row up to float rounding, with much less work on long rows and scores small enough to
  stay in cache (2-3x faster on CPU at 1024 tokens). `block` 0 or >= T: one call."""
  t = q.shape[1]
  if not block or t <= block:
    return attend(q, k, v, mask, is_causal)
  outs = []
  for start in range(0, t, block):
    end = min(t, start + block)
    first = max(0, start - window + 1) if window else 0
    near = max(first, start - 2 * block)
    if mask is None:
      m = (jnp.arange(start, end)[:, None] >= jnp.arange(first, end)[None, :])[None, None]
      outs.append(attend(q[:, start:end], k[:, first:end], v[:, first:end], m, False))
      continue

    def keys_from(a, start=start, end=end):
      return attend(q[:, start:end], k[:, a:end], v[:, a:end], mask[:, :, start:end, a:end], False)
    if near == first:
      outs.append(keys_from(first))
    else:
      far_visible = jnp.any(mask[:, :, start:end, first:near])
      outs.append(jax.lax.cond(far_visible, lambda f=first: keys_from(f),
                               lambda n=near: keys_from(n)))
  return jnp.concatenate(outs, axis=1)


class Attention(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    d, n, k, h, pd = cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim, cfg.weight_dtype
    init = normal(cfg.init_std)
    self.q_proj = param(rngs, init, (d, n, h), ("embed", "heads", "head_dim"), pd)
    self.k_proj = param(rngs, init, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
    self.v_proj = param(rngs, init, (d, k, h), ("embed", "kv_heads", "head_dim"), pd)
    self.o_proj = param(rngs, init, (n, h, d), ("heads", "head_dim", "embed"), pd)
    if cfg.qkv_bias:
      self.q_bias = param(rngs, zeros, (n, h), ("heads", "head_dim"), pd)
      self.k_bias = param(rngs, zeros, (k, h), ("kv_heads", "head_dim"), pd)
      self.v_bias = param(rngs, zeros, (k, h), ("kv_heads", "head_dim"), pd)

  def _project(self, x, name):
    w = getattr(self, f"{name}_proj")[...].astype(x.dtype)
    y = jnp.einsum("btd,dnh->btnh", x, w)
    if self.cfg.qkv_bias:
      y = y + getattr(self, f"{name}_bias")[...].astype(x.dtype)
    return y

  def __call__(self, x, positions, mask, is_causal, inv_freq, kv=None, index=None, only_at=None,
               fresh=False):
    """Returns the attention output and, with this layer's cache `kv=(k, v)`, what it writes: its
    new keys/values [B,T,K,H] for a scanned (stacked) cache, its updated buffers (keys [B,K,H,S],
    values [B,K,S,H]) for a per-layer one. Queries attend over the cache with the new rows in
    place; `fresh` (an empty cache, `mask` [B,1,T,T]): over the new rows alone, in query blocks,
    as without a cache.
    With `only_at` (int[B,R] columns of each row; no cache, or a fresh one), the output [B,R,D]
    of those queries alone, over every key of their row (`mask` [B,1,T,T] or None, causal): one
    plain `attend` of R queries.
    """
    if only_at is not None:
      q = apply_rope(self._project(tokens_at(x, only_at), "q"), tokens_at(positions, only_at),
                     inv_freq)
    else:
      q = apply_rope(self._project(x, "q"), positions, inv_freq)
    k = apply_rope(self._project(x, "k"), positions, inv_freq)
    v = self._project(x, "v")
    rows = (k, v)
    new_kv = None
    if kv is not None:
      ck, cv = kv
      if self.cfg.scan_layers:
        new_kv = (k.astype(ck.dtype), v.astype(cv.dtype))
        k = jax.lax.dynamic_update_slice(ck, new_kv[0], (0, index, 0, 0)).astype(q.dtype)
        v = jax.lax.dynamic_update_slice(cv, new_kv[1], (0, index, 0, 0)).astype(q.dtype)
      else:  # keys [B,K,H,T], values [B,K,T,H] written into the layer's buffers in place
        new_kv = (jax.lax.dynamic_update_slice(ck, k.transpose(0, 2, 3, 1).astype(ck.dtype),
                                               (0, 0, 0, index)),
                  jax.lax.dynamic_update_slice(cv, v.transpose(0, 2, 1, 3).astype(cv.dtype),
                                               (0, 0, index, 0)))
        k, v = (a.astype(q.dtype) for a in new_kv)
    if only_at is not None:  # over the new rows (no cache, or a fresh one)
      keys = jnp.arange(x.shape[1])
      m = (only_at[:, None, :, None] >= keys) if mask is None else jnp.take_along_axis(
          mask, only_at[:, None, :, None], axis=2)
      out = attend(q, *rows, m, False)
    elif kv is not None and not fresh:
      out = attend(q, k, v, mask, is_causal, heads_major=not self.cfg.scan_layers)
    else:
      out = blocked_attention(q, *rows, mask, is_causal, self.cfg.attention_block,
                              self.cfg.sliding_window)
    out = jnp.einsum("btnh,nhd->btd", out, self.o_proj[...].astype(x.dtype))
    return out, new_kv


class MLP(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    init, pd = normal(cfg.init_std), cfg.weight_dtype
    self.gate = param(rngs, init, (cfg.dim, cfg.mlp_dim), ("embed", "mlp"), pd)
    self.up = param(rngs, init, (cfg.dim, cfg.mlp_dim), ("embed", "mlp"), pd)
    self.down = param(rngs, init, (cfg.mlp_dim, cfg.dim), ("mlp", "embed"), pd)

  def __call__(self, x):
    dt = x.dtype
    h = jax.nn.silu(x @ self.gate[...].astype(dt)) * (x @ self.up[...].astype(dt))
    h = sharding.constrain(h, ("batch", "length", "mlp"))
    return h @ self.down[...].astype(dt)


class Block(nnx.Module):
  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions, mask, is_causal, inv_freq, kv=None, index=None, only_at=None,
               fresh=False):
    a, kv = self.attn(self.attn_norm(x), positions, mask, is_causal, inv_freq, kv, index, only_at,
                      fresh)
    if only_at is not None:  # every token's keys and values, the rest at `only_at` alone
      x = tokens_at(x, only_at)
    x = x + a
    x = x + self.mlp(self.mlp_norm(x))
    return sharding.constrain(x, ("batch", "length", "embed")), kv


def tokens_at(x: jax.Array, cols: jax.Array) -> jax.Array:
  """[B,T,...] -> [B,R,...]: each row's tokens at its columns `cols` (int[B,R]). Row by row, so
  a batch split over devices stays split: each device gathers from its own rows."""
  return jnp.take_along_axis(x, cols.reshape(cols.shape + (1,) * (x.ndim - 2)), axis=1)


def last_column(tokens: jax.Array) -> jax.Array:
  """int32[B,1]: each row's last column, the `only_at` of a prefill that reads only the output
  after its (left-padded) prompt."""
  return jnp.full((tokens.shape[0], 1), tokens.shape[1] - 1, jnp.int32)


def attention_mask(cfg: ModelConfig, positions, segment_ids, cache_pos):
  """Boolean mask [B,1,T,S], or None when plain causal attention (`is_causal=True`) is exact.

  Without a cache, causality is by token index and packed segments never see each other; padding
  (segment 0) sees only itself, so a block of padding never makes `blocked_attention` score the
  keys far before it (its output is unused, and the same for every block size). With a cache,
  a query at position p sees the filled slots holding positions <= p (slots of left padding hold -1).
  """
  t = positions.shape[1]
  if cache_pos is None:
    if segment_ids is None and cfg.sliding_window is None:
      return None
    idx = jnp.arange(t)
    mask = (idx[None, :, None] >= idx[None, None, :])
    if segment_ids is not None:  # padding (segment 0) sees only itself: no far keys to score
      same = (segment_ids[:, :, None] == segment_ids[:, None, :]) & (segment_ids[:, None, :] > 0)
      mask = mask & (same | (idx[:, None] == idx[None, :])[None])
    if cfg.sliding_window is not None:
      mask = mask & (idx[None, :, None] - idx[None, None, :] < cfg.sliding_window)
  else:
    kp, qp = cache_pos[:, None, :], positions[:, :, None]
    mask = (kp >= 0) & (kp <= qp)
    if cfg.sliding_window is not None:
      mask = mask & (qp - kp < cfg.sliding_window)
  return mask[:, None, :, :]


class Transformer(nnx.Module):
  """Token embedding, decoder blocks and the final norm: tokens -> hidden states [B,T,D]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = param(rngs, normal(1.0 if cfg.tie_embeddings else cfg.init_std),
                       (cfg.vocab_size, cfg.dim), ("vocab", "embed"), cfg.weight_dtype)
    if cfg.scan_layers:
      @nnx.split_rngs(splits=cfg.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: "layers"})
      def stacked(r):
        return Block(cfg, rngs=r)
      self.layers = stacked(rngs)
    else:
      self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.num_layers)])
    self.final_norm = RMSNorm(cfg, rngs=rngs)

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None, cache: KVCache | None = None,
               only_at: jax.Array | None = None, fresh: bool = False
               ) -> tuple[jax.Array, KVCache | None]:
    """Hidden states [B,T,D] and the updated cache. `fresh` (static; the caller's promise that
    the cache is empty, as in a prefill): the new tokens attend to each other alone, in query
    blocks as without a cache (not over every slot: 1.8x faster for 16 prompts of 512 tokens on
    CPU), and are written to the cache the same. `only_at` (int[B,R] columns of each row; no
    cache, or a fresh one): the hidden states [B,R,D] of those tokens alone. Every layer but the
    last runs on every token (later tokens attend to them); the last computes keys and values
    for every token (and writes them to the cache) and the rest (queries, attention, output
    projection, MLP) at the R columns only, which is all a reward model reads (its step ends, or
    each solution's last token) and all a prefill reads (each prompt's last token)."""
    cfg = self.cfg
    if only_at is not None and cache is not None and not fresh:
      raise ValueError("only_at is for a forward without a cache, or a prefill into an empty "
                       "one (fresh=True)")
    if fresh and cache is None:
      raise ValueError("fresh is for a prefill into an empty cache; no cache was given")
    if cache is not None and cache.per_layer == cfg.scan_layers:
      want = "a stacked" if cfg.scan_layers else "a per-layer"
      raise ValueError(f"a model with scan_layers={cfg.scan_layers} takes {want} cache: "
                       "KVCache.init(cfg, ...)")
    b, t = tokens.shape
    if positions is None:
      start = 0 if cache is None else cache.index
      positions = jnp.broadcast_to(start + jnp.arange(t, dtype=jnp.int32), (b, t))
    cache_pos = None
    if cache is not None:
      cache_pos = jax.lax.dynamic_update_slice(cache.pos, positions.astype(jnp.int32),
                                               (0, cache.index))
    mask = attention_mask(cfg, positions, segment_ids, positions if fresh else cache_pos)
    is_causal = mask is None
    inv_freq = rope_frequencies(cfg.head_dim, cfg.rope_theta, cfg.rope_scaling)

    # FSDP gathers the table's `embed` dim before the lookup (a gather from a table split on both
    # dims makes XLA replicate it wholesale); the vocab split over `tensor` stays.
    table = sharding.constrain(self.embed[...], ("vocab", None))
    x = table.astype(cfg.compute_dtype)[tokens]
    x = sharding.constrain(x, ("batch", "length", "embed"))
    index = None if cache is None else cache.index

    def body(x, xs, only_at=None):
      graphdef, block_state, kv = xs
      block = nnx.merge(graphdef, block_state)
      return block(x, positions, mask, is_causal, inv_freq, kv, index, only_at, fresh)

    def scan_body(graphdef):
      def f(x, xs):
        return body(x, (graphdef, *xs))
      return jax.checkpoint(f, prevent_cse=False) if cfg.remat else f

    if cfg.scan_layers:
      graphdef, state = nnx.split(self.layers)
      kvs = None if cache is None else (cache.k, cache.v)
      if only_at is None:
        x, new_kv = jax.lax.scan(scan_body(graphdef), x, (state, kvs))
      else:  # all layers but the last scanned, the last on its own
        x, new_kv = jax.lax.scan(scan_body(graphdef), x, jax.tree.map(lambda a: a[:-1],
                                                                      (state, kvs)))
        x, last_kv = body(x, (graphdef, *jax.tree.map(lambda a: a[-1], (state, kvs))), only_at)
        if cache is not None:
          new_kv = jax.tree.map(lambda a, b: jnp.concatenate([a, b[None]]), new_kv, last_kv)
      if cache is not None:  # new rows of every layer, written in one update
        at = (0, 0, cache.index, 0, 0)
        cache = cache._replace(k=jax.lax.dynamic_update_slice(cache.k, new_kv[0], at),
                               v=jax.lax.dynamic_update_slice(cache.v, new_kv[1], at))
    else:
      written = []
      for i, layer in enumerate(self.layers):
        graphdef, state = nnx.split(layer)
        kv = None if cache is None else (cache.k[i], cache.v[i])
        if only_at is not None and i == cfg.num_layers - 1:
          x, new_kv = body(x, (graphdef, state, kv), only_at)
        else:
          x, new_kv = scan_body(graphdef)(x, (state, kv))
        written.append(new_kv)
      if cache is not None:
        cache = cache._replace(k=tuple(w[0] for w in written), v=tuple(w[1] for w in written))
    x = self.final_norm(x)
    if cache is not None:
      cache = cache._replace(pos=cache_pos, index=cache.index + t)
    return x, cache
