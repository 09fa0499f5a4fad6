"""Blocked attention: query blocks that never score the keys after them give what one attention
call over the whole row gives, for packed segments, sliding windows, plain causal rows and
gradients."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prm_jax.model import ModelConfig, RewardModel
from prm_jax.model.transformer import attend, attention_mask, blocked_attention

# One program per (causal, block, window) instead of one dispatch per op and block.
jit_blocked = jax.jit(blocked_attention, static_argnums=(4, 5, 6))


def packed_segments(rng, b, t):
  seg = np.zeros((b, t), np.int32)
  for r in range(b):
    at, s = 0, 1
    while at < t - 3:  # the row's tail stays padding (segment 0)
      n = int(rng.integers(1, t // 2))
      seg[r, at:at + n] = s
      at, s = at + n, s + 1
  return seg


@pytest.mark.parametrize("window", [None, 7])
def test_blocked_attention_equals_one_call_over_the_row(window):
  rng = np.random.default_rng(0)
  b, t, n, k, h = 3, 53, 4, 2, 8  # t not a multiple of any block
  q = jnp.asarray(rng.normal(size=(b, t, n, h)), jnp.float32)
  kk = jnp.asarray(rng.normal(size=(b, t, k, h)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, t, k, h)), jnp.float32)
  cfg = ModelConfig(vocab_size=8, dim=n * h, num_layers=1, num_heads=n, num_kv_heads=k,
                    mlp_dim=8, sliding_window=window)
  seg = jnp.asarray(packed_segments(rng, b, t))
  positions = jnp.broadcast_to(jnp.arange(t), (b, t))
  short = jnp.asarray(np.broadcast_to(np.arange(t) // 3, (b, t)))  # every block its near keys only
  packed = np.asarray(attention_mask(cfg, positions, seg, None))[:, 0]
  pad = np.asarray(seg) == 0
  assert pad.any()  # padding sees only itself: it never makes a block score far keys
  np.testing.assert_array_equal(packed[pad], np.eye(t, dtype=bool)[np.nonzero(pad)[1]])
  for r in range(b):  # and no real query sees a padding key
    assert not packed[r][~pad[r]][:, pad[r]].any()
  for mask in (attention_mask(cfg, positions, seg, None),
               attention_mask(cfg, positions, short, None),
               attention_mask(dataclasses.replace(cfg, sliding_window=None), positions, None,
                              None)):
    causal = mask is None
    whole = jax.jit(jax.nn.dot_product_attention, static_argnames="is_causal")(
        q, kk, v, mask=mask, is_causal=causal)
    for block in (4, 8, 16, 52):  # 4: 13 blocks and a last one of a single query
      got = jit_blocked(q, kk, v, mask, causal, block, None if causal else window)
      np.testing.assert_allclose(np.asarray(got), np.asarray(whole), rtol=1e-5, atol=2e-6)
    assert blocked_attention(q, kk, v, mask, causal, 0) is not None


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_attend_equals_jax_dot_product_attention(dtype):
  """The written-out attention (its own layout of the value product) gives what jax's gives: with
  grouped KV heads, a causal flag, a packed mask whose padding queries see nothing, more keys than
  queries (a cache), and in bfloat16."""
  rng = np.random.default_rng(2)
  b, t, s, n, k, h = 2, 12, 20, 6, 2, 8
  dt = jnp.dtype(dtype)
  q = jnp.asarray(rng.normal(size=(b, t, n, h)), dt)
  kk = jnp.asarray(rng.normal(size=(b, s, k, h)), dt)
  v = jnp.asarray(rng.normal(size=(b, s, k, h)), dt)
  mask = rng.random((b, 1, t, s)) < 0.6
  mask[0, 0, 3] = False  # a query that sees no key (padding): finite, as jax's
  mask = jnp.asarray(mask)
  tol = dict(rtol=1e-5, atol=2e-6) if dtype == "float32" else dict(rtol=2e-2, atol=2e-2)
  ours = jax.jit(attend, static_argnums=4)
  theirs = jax.jit(jax.nn.dot_product_attention, static_argnames="is_causal")
  for m, causal, keys in ((mask, False, s), (None, True, t)):
    got = ours(q, kk[:, :keys], v[:, :keys], m, causal)
    want = theirs(q, kk[:, :keys], v[:, :keys], mask=m, is_causal=causal)
    assert got.dtype == want.dtype == dt and got.shape == (b, t, n, h)
    assert np.isfinite(np.asarray(got, np.float32)).all()
    np.testing.assert_allclose(np.asarray(got, np.float32), np.asarray(want, np.float32), **tol)


def test_a_blocked_reward_model_scores_and_trains_like_an_unblocked_one():
  """Packed rows through the whole model: same logits and same gradients with blocks of 16 as
  with one block (the default 128 covers these 64-token rows in one call)."""
  rng = np.random.default_rng(1)
  base = ModelConfig(vocab_size=64, dim=32, num_layers=2, num_heads=4, num_kv_heads=2,
                     mlp_dim=64, max_seq_len=64, attention_block=0)
  tokens = jnp.asarray(rng.integers(1, 64, size=(2, 64)), jnp.int32)
  seg = jnp.asarray(packed_segments(rng, 2, 64))
  positions = jnp.asarray(np.concatenate([[np.arange(64)]] * 2))
  outs, grads = {}, {}
  for block in (0, 16):
    model = RewardModel(dataclasses.replace(base, attention_block=block), "prm",
                        rngs=nnx.Rngs(0))

    def loss(m):
      return jnp.sum(jnp.square(m(tokens, positions, seg)))
    outs[block] = np.asarray(jax.jit(lambda m: m(tokens, positions, seg))(model))
    g = jax.jit(nnx.grad(loss))(model)
    grads[block] = jax.tree.leaves(nnx.state(g))
  np.testing.assert_allclose(outs[16], outs[0], rtol=1e-5, atol=1e-6)
  assert np.abs(outs[0]).max() > 1e-3  # not vacuously equal
  for a, b in zip(grads[16], grads[0]):
    np.testing.assert_allclose(np.asarray(a), np.asarray(b), rtol=1e-4, atol=1e-6)


def test_attention_block_must_not_be_negative():
  with pytest.raises(ValueError, match="attention_block=-1 must be >= 0"):
    ModelConfig(vocab_size=8, dim=8, num_layers=1, num_heads=2, num_kv_heads=1, mlp_dim=8,
                attention_block=-1)
