"""Decoder behaviour: KV cache, packing, masks, precision, scan/remat, heads."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prm_jax.model import CausalLM, KVCache, ModelConfig, RewardModel
from prm_jax.model.hf_import import load_hf_causal_lm
from tests.conftest import HF_FIXTURES, forward


@pytest.fixture(scope="module")
def lm(tiny_cfg):
  return CausalLM(tiny_cfg, rngs=nnx.Rngs(0))


def tokens(b, t, seed=1, vocab=128):
  return jax.random.randint(jax.random.key(seed), (b, t), 0, vocab)


# Every forward pass below is jitted (conftest.forward and these): one program per model and
# shape, instead of an XLA compile per operation and shape when a model runs eagerly.
@nnx.jit
def decode(model, x, cache, positions=None):
  return model.decode(x, cache, positions)


@nnx.jit
def hidden(model, x, positions=None, segment_ids=None):
  if isinstance(model, RewardModel):
    return model.hidden(x, positions, segment_ids)
  return model.transformer(x, positions, segment_ids)[0]


def test_config_rejects_bad_values():
  with pytest.raises(ValueError, match="multiple of num_kv_heads"):
    ModelConfig(vocab_size=8, dim=16, num_layers=1, num_heads=4, num_kv_heads=3, mlp_dim=8)
  with pytest.raises(ValueError, match="unknown model config keys \\['hidden'\\]"):
    ModelConfig.from_dict(dict(vocab_size=8, dim=16, num_layers=1, num_heads=4, num_kv_heads=2,
                               mlp_dim=8, hidden=3))
  with pytest.raises(ValueError, match="dtype='fp8'"):
    ModelConfig(vocab_size=8, dim=16, num_layers=1, num_heads=4, num_kv_heads=2, mlp_dim=8,
                dtype="fp8")


@pytest.mark.parametrize("scan", [False, True])
def test_kv_cache_decoding_equals_full_forward(tiny_cfg, scan):
  model = CausalLM(tiny_cfg.replace(scan_layers=scan), rngs=nnx.Rngs(0))
  x = tokens(2, 9)
  full = forward(model, x)
  cache = KVCache.init(model.cfg, 2, 16)
  outs = []
  for lo, hi in [(0, 5), (5, 6), (6, 7), (7, 9)]:  # prefill, then one token at a time, then two
    logits, cache = decode(model, x[:, lo:hi], cache)
    outs.append(logits)
  np.testing.assert_allclose(jnp.concatenate(outs, 1), full, atol=1e-5)
  assert int(cache.index) == 9
  assert (np.asarray(cache.pos[:, :9]) == np.arange(9)).all() and (cache.pos[:, 9:] == -1).all()
  c = tiny_cfg
  shapes = {a.shape for a in jax.tree.leaves(cache.k)}  # stacked, or one [B,K,H,S] per layer
  assert shapes == ({(c.num_layers, 2, 16, c.num_kv_heads, c.head_dim)} if scan else
                    {(2, c.num_kv_heads, c.head_dim, 16)})
  assert {a.shape for a in jax.tree.leaves(cache.v)} == ({(c.num_layers, 2, 16, c.num_kv_heads,
                                                          c.head_dim)} if scan else
                                                        {(2, c.num_kv_heads, 16, c.head_dim)})
  assert len(jax.tree.leaves(cache.v)) == (1 if scan else c.num_layers)
  other = KVCache.init(tiny_cfg.replace(scan_layers=not scan), 2, 16)
  with pytest.raises(ValueError, match="stacked cache" if scan else "per-layer cache"):
    decode(model, x[:, :1], other)


@pytest.mark.parametrize("scan,window", [(False, None), (True, None), (False, 3)])
def test_a_fresh_prefill_equals_attending_over_the_whole_cache(tiny_cfg, scan, window):
  """`fresh` (the cache is empty): the new tokens attend to each other alone, in query blocks
  (4 here, 11 tokens), not over every slot. Left-padded prompts of different lengths, a sliding
  window: the same logits and the same cache as the slot-wise prefill, and the decode step after
  reads the cache either wrote the same. With `only_at` (each prompt's last column, as the
  Sampler's prefill asks): those logits alone, equal, and the same cache."""
  cfg = tiny_cfg.replace(scan_layers=scan, attention_block=4, sliding_window=window)
  model = CausalLM(cfg, rngs=nnx.Rngs(0))
  x = tokens(2, 11)
  positions = jnp.asarray([[-1] * 3 + list(range(8)), list(range(11))], jnp.int32)
  run = nnx.jit(lambda m, x, c, p, fresh: m.decode(x, c, p, fresh), static_argnums=4)
  got, got_cache = run(model, x, KVCache.init(cfg, 2, 16), positions, True)
  want, want_cache = run(model, x, KVCache.init(cfg, 2, 16), positions, False)
  real = np.asarray(positions) >= 0  # a padding token's own output is never read
  np.testing.assert_allclose(np.asarray(got)[real], np.asarray(want)[real], atol=1e-5)
  np.testing.assert_array_equal(got_cache.pos, want_cache.pos)
  last_col = jnp.full((2, 1), 10, jnp.int32)
  at, at_cache = nnx.jit(lambda m, x, c, p, o: m.decode(x, c, p, True, o))(
      model, x, KVCache.init(cfg, 2, 16), positions, last_col)
  assert at.shape == (2, 1, cfg.vocab_size)
  np.testing.assert_allclose(at[:, 0], np.asarray(want)[:, -1], atol=1e-5)
  for a, b in zip(jax.tree.leaves(at_cache), jax.tree.leaves(got_cache)):
    np.testing.assert_allclose(a, b, atol=1e-6)
  slots = np.asarray(want_cache.pos) >= 0  # [B,S]; padding slots are never attended
  seen_k, seen_v = ((slots[None, :, :, None, None],) * 2 if scan else  # keys [B,K,H,S] a layer
                    (slots[:, None, None, :], slots[:, None, :, None]))
  for seen, got_kv, want_kv in ((seen_k, got_cache.k, want_cache.k),
                                (seen_v, got_cache.v, want_cache.v)):
    for a, b in zip(jax.tree.leaves(got_kv), jax.tree.leaves(want_kv)):
      np.testing.assert_allclose(np.where(seen, a, 0), np.where(seen, b, 0), atol=1e-6)
  nxt = tokens(2, 1, seed=5)
  step = jnp.asarray([[8], [11]], jnp.int32)
  np.testing.assert_allclose(run(model, nxt, got_cache, step, False)[0],
                             run(model, nxt, want_cache, step, False)[0], atol=1e-5)
  with pytest.raises(ValueError, match="fresh is for a prefill"):
    model.transformer(x, fresh=True)


def test_left_padded_prompt_in_cache_is_invisible(lm):
  """Bucketed prompts are left-padded with position -1: the real tokens must not see the padding."""
  x = tokens(1, 6)
  pad = 3
  padded = jnp.concatenate([jnp.zeros((1, pad), x.dtype), x], axis=1)
  positions = jnp.concatenate([jnp.full((1, pad), -1), jnp.arange(6)[None]], axis=1)
  cache = KVCache.init(lm.cfg, 1, 12)
  logits, cache = decode(lm, padded, cache, positions)
  np.testing.assert_allclose(logits[:, pad:], forward(lm, x), atol=1e-5)
  nxt = tokens(1, 1, seed=7)
  step, _ = decode(lm, nxt, cache, jnp.full((1, 1), 6))
  np.testing.assert_allclose(step[:, 0], forward(lm, jnp.concatenate([x, nxt], 1))[:, -1],
                             atol=1e-5)


def test_packed_rows_equal_separate_rows(lm):
  a, b = tokens(1, 4, seed=2), tokens(1, 5, seed=3)
  packed = jnp.concatenate([a, b, jnp.zeros((1, 3), a.dtype)], axis=1)
  seg = jnp.array([[1] * 4 + [2] * 5 + [0] * 3])
  pos = jnp.array([list(range(4)) + list(range(5)) + [0, 1, 2]])
  out = forward(lm, packed, pos, seg)
  np.testing.assert_allclose(out[:, :4], forward(lm, a), atol=1e-5)
  np.testing.assert_allclose(out[:, 4:9], forward(lm, b), atol=1e-5)
  # Without segment ids the second solution would see the first: the test can fail.
  assert np.abs(forward(lm, packed)[:, 4:9] - forward(lm, b)).max() > 1e-3


@nnx.jit
def hidden_only_at(model, x, pos, seg, at):
  return model.hidden(x, pos, seg, only_at=at)


@pytest.mark.parametrize("scan", [False, True])
def test_hidden_states_at_a_few_tokens_equal_the_full_forwards(tiny_cfg, scan):
  """`only_at` runs the last layer's queries, attention, output projection and MLP at the tokens
  read alone: their hidden states must equal the full forward's, in any order and with repeats
  (unused slots point at column 0), on packed rows or plain causal ones, with 1 or 3 layers,
  scanned or not; and the unscanned program must do less work."""
  x = tokens(2, 12, seed=4)
  seg = jnp.array([[1] * 5 + [2] * 7, [1] * 9 + [0] * 3])
  pos = jnp.array([list(range(5)) + list(range(7)), list(range(9)) + [0, 1, 2]])
  at = jnp.array([[4, 11, 0, 9], [8, 0, 0, 3]], jnp.int32)
  for layers in (1, 3):
    rm = RewardModel(tiny_cfg.replace(scan_layers=scan, num_layers=layers), "prm",
                     rngs=nnx.Rngs(layers))
    for p, s in ((pos, seg), (None, None)):
      full = hidden(rm, x, p, s)
      got = hidden_only_at(rm, x, p, s, at)
      assert got.shape == (2, 4, tiny_cfg.dim)
      want = np.take_along_axis(np.asarray(full), np.asarray(at)[..., None], axis=1)
      np.testing.assert_allclose(got, want, atol=2e-6)
    if scan:  # XLA's FLOP count below counts a loop's body once, whatever its trip count
      continue
    # XLA's own FLOP count of both programs: the 8 reads instead of 24 tokens in the last layer's
    # MLP and output projection alone
    g, st = nnx.split(rm)
    flops = [jax.jit(lambda st, *a: nnx.merge(g, st).hidden(*a[:3], only_at=a[3] if a[3:] else None)
                     ).lower(st, *args).compile().cost_analysis()["flops"]
             for args in ((x, pos, seg), (x, pos, seg, at))]
    cfg = rm.cfg
    assert flops[0] - flops[1] >= 2 * (3 * cfg.dim * cfg.mlp_dim + cfg.dim * cfg.dim) * (24 - 8)
  with pytest.raises(ValueError, match="without a cache"):
    rm.transformer(x, cache=KVCache.init(rm.cfg, 2, 16), only_at=at)


def test_sliding_window_limits_attention(tiny_cfg):
  model = CausalLM(tiny_cfg.replace(sliding_window=3, num_layers=1), rngs=nnx.Rngs(0))
  x = tokens(1, 8)
  y = x.at[0, 0].set((x[0, 0] + 1) % 128)
  diff = np.abs(np.asarray(forward(model, x) - forward(model, y)))[0].max(-1)
  assert diff[2] > 1e-4          # token 2 still sees token 0
  assert diff[3:].max() == 0.0   # one layer, window 3: tokens >= 3 do not


def test_bf16_compute_with_fp32_master_weights(tiny_cfg):
  f32 = CausalLM(tiny_cfg, rngs=nnx.Rngs(0))
  bf16 = CausalLM(tiny_cfg.replace(dtype="bfloat16"), rngs=nnx.Rngs(0))
  assert bf16.transformer.layers[0].attn.q_proj[...].dtype == jnp.float32
  x = tokens(2, 8)
  a, b = forward(f32, x), forward(bf16, x)
  assert b.dtype == jnp.float32  # logits always come back in fp32
  err = float(jnp.abs(a - b).max())
  assert 0 < err < 0.05 * float(jnp.abs(a).max()) + 1e-2


@pytest.mark.slow
def test_scan_and_remat_match_layer_loop_with_gradients():
  """Same imported weights, three layouts: identical logits and gradients."""
  path = HF_FIXTURES / "llama_gqa_untied"
  x = jnp.asarray(np.load(path / "expected.npz")["tokens"])
  grads = []
  for kw in (dict(), dict(scan_layers=True), dict(scan_layers=True, remat=True), dict(remat=True)):
    model = load_hf_causal_lm(str(path), **kw)
    graphdef, state = nnx.split(model)
    loss = lambda s: jnp.mean(jax.nn.logsumexp(nnx.merge(graphdef, s)(x), -1))
    grads.append(np.asarray(jax.jit(jax.grad(loss))(state)["transformer"]["embed"][...]))
  for g in grads[1:]:
    np.testing.assert_allclose(g, grads[0], atol=1e-6)
  assert np.abs(grads[0]).max() > 0


def test_reward_model_heads_and_initialisation(lm):
  x = tokens(2, 7)
  for kind, k in (("orm", 1), ("prm", 3)):
    rm = RewardModel.from_lm(lm, kind, rngs=nnx.Rngs(5))
    assert forward(rm, x).shape == (2, 7, k)
    np.testing.assert_allclose(hidden(rm, x), hidden(lm, x), atol=0)
  with pytest.raises(ValueError, match="reward head kind 'value'"):
    RewardModel(lm.cfg, "value", rngs=nnx.Rngs(0))
