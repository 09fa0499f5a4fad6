"""A real 2-process `jax.distributed` run on localhost computes the same logits as one process."""

import os
import socket
import subprocess
import sys

import jax
import numpy as np
import pytest
from flax import nnx

from prm_jax import sharding
from prm_jax.configs import base
from prm_jax.model import CausalLM
from tests.conftest import ROOT


def free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


@pytest.mark.slow
def test_two_processes_match_single_process(tmp_path, tiny_cfg):
  out = tmp_path / "logits.npz"
  port = str(free_port())
  env = dict(os.environ, PYTHONPATH=str(ROOT))
  procs = [subprocess.Popen([sys.executable, str(ROOT / "tests" / "distributed_worker.py"), str(i),
                             "2", port, str(out)], env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True) for i in range(2)]
  logs = []
  for p in procs:
    try:
      logs.append(p.communicate(timeout=300)[0])
    except subprocess.TimeoutExpired:
      for q in procs:
        q.kill()
      raise
  for p, log in zip(procs, logs):
    assert p.returncode == 0, log[-3000:]
  got = np.load(out)
  assert int(got["process_count"]) == 2 and int(got["device_count"]) == 8
  assert int(got["local_devices"]) == 4

  one = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  model = sharding.init_sharded(lambda: CausalLM(tiny_cfg, rngs=nnx.Rngs(3)), one,
                                base.RULES)
  want = np.asarray(model(got["tokens"]))
  np.testing.assert_allclose(got["logits"], want, atol=1e-5)
