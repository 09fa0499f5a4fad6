"""One process of the 2-process `jax.distributed` test (run by tests/test_distributed.py)."""

import os
import sys

process_id, num_processes, port, out = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3], sys.argv[4]
os.environ["XLA_FLAGS"] = "--xla_force_host_platform_device_count=4"
os.environ["JAX_PLATFORMS"] = "cpu"

import jax  # noqa: E402

jax.distributed.initialize(f"localhost:{port}", num_processes=num_processes, process_id=process_id,
                           initialization_timeout=120)

import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402
from jax.experimental import multihost_utils  # noqa: E402

from prm_jax import sharding  # noqa: E402
from prm_jax.configs import base  # noqa: E402
from prm_jax.model import CausalLM, ModelConfig  # noqa: E402

cfg = ModelConfig(vocab_size=128, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128)
rules = base.RULES
mesh = sharding.make_mesh((2, 2, 2))  # spans both processes' devices
model = sharding.init_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(3)), mesh, rules)
tokens = np.random.default_rng(0).integers(0, 128, (8, 16)).astype(np.int32)
rows = len(tokens) // jax.process_count()
local = tokens[process_id * rows:(process_id + 1) * rows]  # each host feeds only its own rows

graphdef, state = nnx.split(model)
out_sh = sharding.logical_sharding(("batch", "length", "vocab"), (8, 16, 128), mesh, rules)
fwd = sharding.jit_apply(lambda m, x: m(x), graphdef, sharding.state_shardings(state, mesh, rules),
                         (sharding.logical_sharding(("batch",), (8, 16), mesh, rules),), out_sh,
                         mesh, rules)
logits = fwd(state, sharding.shard_batch(local, mesh, rules))
full = multihost_utils.process_allgather(logits, tiled=True)
# each process checks what it can see itself; the test compares process 0's logits to one process
assert jax.process_count() == 2 and jax.device_count() == 2 * jax.local_device_count(), (
    jax.process_count(), jax.device_count(), jax.local_device_count())
assert full.shape == (8, 16, 128) and np.isfinite(np.asarray(full)).all()
if process_id == 0:
  np.savez(out, logits=np.asarray(full), tokens=tokens, process_count=jax.process_count(),
           device_count=jax.device_count(), local_devices=jax.local_device_count())
jax.distributed.shutdown()
