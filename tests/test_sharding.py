"""Meshes, the rules table, sharded init and sharded jitted forward/train steps on 8 CPU devices."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from prm_jax.configs import base
from prm_jax import sharding
from prm_jax.model import CausalLM
from prm_jax.train import losses, trainer
from tests.conftest import forward

RULES = base.RULES
MESHES = [(8, 1, 1), (2, 2, 2), (1, 4, 2)]


def test_config_rules_are_the_library_defaults():
  assert tuple(base.get_config().rules) == tuple(RULES)


def test_make_mesh_shapes_and_errors():
  assert dict(sharding.make_mesh({"data": -1, "fsdp": 2, "tensor": 1}).shape) == {
      "data": 4, "fsdp": 2, "tensor": 1}
  assert sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1]).devices.size == 1
  with pytest.raises(ValueError, match="needs 4 devices, but 8"):
    sharding.make_mesh((2, 2, 1))
  with pytest.raises(ValueError, match="at most one axis may be -1"):
    sharding.make_mesh((-1, -1, 1))
  with pytest.raises(ValueError, match="does not divide 8 devices"):
    sharding.make_mesh((3, -1, 1))


def test_logical_to_spec_rules():
  mesh = sharding.make_mesh((2, 2, 2))
  spec = lambda axes, shape: sharding.logical_to_spec(axes, shape, mesh, RULES)
  assert spec(("embed", "mlp"), (64, 128)) == P("fsdp", "tensor")
  assert spec(("batch", "length", "embed"), (8, 16, 64)) == P(("data", "fsdp"))  # fsdp used once
  assert spec(("batch", None), (2, 16)) == P("data")       # 2 rows: fsdp does not fit after data
  assert spec(("vocab", "embed"), (97, 64)) == P(None, "fsdp")  # odd vocab: replicated
  assert spec(("norm",), (64,)) == P()
  with pytest.raises(KeyError, match="'experts' has no sharding rule"):
    spec(("experts",), (4,))


@pytest.fixture(scope="module")
def reference(tiny_cfg):
  """Single-device params and logits for the comparison."""
  one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  model = sharding.init_sharded(lambda: CausalLM(tiny_cfg, rngs=nnx.Rngs(3)), one, RULES)
  x = jax.random.randint(jax.random.key(0), (8, 16), 0, tiny_cfg.vocab_size)
  return model, x, np.asarray(forward(model, x))


def sharded_forward(model, mesh):
  graphdef, state = nnx.split(model)
  param_sh = sharding.state_shardings(state, mesh, RULES)
  batch_sh = sharding.logical_sharding(("batch", "length"), (8, 16), mesh, RULES)
  out_sh = sharding.logical_sharding(("batch", "length", "vocab"), (8, 16, 128), mesh, RULES)
  fwd = sharding.jit_apply(lambda m, x: m(x), graphdef, param_sh, (batch_sh,), out_sh, mesh, RULES)
  return fwd, state, batch_sh, out_sh


@pytest.mark.parametrize("shape", MESHES, ids=lambda s: "x".join(map(str, s)))
def test_sharded_forward_equals_single_device(tiny_cfg, reference, shape):
  ref_model, x, want = reference
  mesh = sharding.make_mesh(shape)
  model = sharding.init_sharded(lambda: CausalLM(tiny_cfg, rngs=nnx.Rngs(3)), mesh, RULES)
  # Sharded init gives the same values as single-device init (never materialised unsharded).
  np.testing.assert_array_equal(model.transformer.embed[...], ref_model.transformer.embed[...])
  data, fsdp, tensor = shape
  q = model.transformer.layers[0].attn.q_proj[...]
  want_q = P(*[a for a, n in (("fsdp", fsdp), ("tensor", tensor)) if n > 1]) if fsdp > 1 else (
      P(None, "tensor") if tensor > 1 else P())
  assert q.sharding.spec == want_q
  assert q.sharding.mesh.shape == mesh.shape
  if fsdp * tensor > 1:  # each device really holds only its shard
    assert q.addressable_shards[0].data.size == q.size // (fsdp * tensor)
  assert model.transformer.layers[1].mlp.down[...].sharding.spec == (
      P("tensor", "fsdp") if fsdp > 1 and tensor > 1 else P("tensor") if tensor > 1 else
      P(None, "fsdp") if fsdp > 1 else P())

  fwd, state, batch_sh, out_sh = sharded_forward(model, mesh)
  logits = fwd(state, jax.device_put(x, batch_sh))
  assert logits.sharding == out_sh
  np.testing.assert_allclose(np.asarray(logits), want, atol=1e-5)


def test_one_train_step_same_loss_on_every_mesh(tiny_cfg):
  tc = base.get_config().train
  tc.steps, tc.warmup_steps = 10, 1
  tx = trainer.make_optimizer(tc)
  rng = np.random.default_rng(0)
  batch = {"inputs": rng.integers(0, 128, (8, 16)).astype(np.int32),
           "targets": rng.integers(0, 128, (8, 16)).astype(np.int32),
           "weights": np.ones((8, 16), np.float32)}

  def loss_fn(model, b):
    return losses.sft_loss(model(b["inputs"]), b["targets"], b["weights"])

  results = {}
  for shape in [(1, 1, 1)] + [(8, 1, 1), (2, 2, 2)]:
    devices = jax.devices()[:1] if shape == (1, 1, 1) else None
    mesh = sharding.make_mesh(shape, devices=devices)
    model = sharding.init_sharded(lambda: CausalLM(tiny_cfg, rngs=nnx.Rngs(3)), mesh, RULES)
    graphdef, state, state_sh = trainer.create_train_state(model, tx, mesh, RULES)
    batch_sh = sharding.logical_sharding(("batch",), (8, 16), mesh, RULES)
    step = trainer.make_train_step(graphdef, tx, loss_fn, state_sh, batch_sh, mesh, RULES)
    metrics = []
    for _ in range(3):  # step 0 has lr 0 (warmup from zero): the third loss shows the update
      state, m = step(state, sharding.shard_batch(batch, mesh, RULES))
      metrics.append(float(m["loss"]))
    assert state.params["transformer"]["embed"][...].sharding.spec == state_sh.params[
        "transformer"]["embed"].spec
    results[shape] = metrics
  ref = results[(1, 1, 1)]
  assert ref[2] < ref[0] - 1e-3  # the steps really updated the parameters
  for shape, got in results.items():
    np.testing.assert_allclose(got, ref, atol=1e-5, err_msg=str(shape))
