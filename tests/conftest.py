"""Eight virtual CPU devices for every test (scripts/test.sh sets this too; here for bare pytest)."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
HF_FIXTURES = FIXTURES / "hf"


@pytest.fixture(scope="session")
def tiny_cfg():
  from prm_jax.model import ModelConfig
  # Every sharded dimension divisible by 2 and 4, so all test meshes really split it.
  return ModelConfig(vocab_size=128, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     mlp_dim=128)
