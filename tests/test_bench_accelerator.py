"""scripts/bench_accelerator.py, the script a session lent a GPU or TPU runs for issue 18's figures,
works end to end: here on CPU at the tiny size, where no peak or HBM bandwidth is known."""

import os
import pathlib
import re
import subprocess
import sys

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


@pytest.mark.slow
def test_the_accelerator_bench_reports_every_part_on_cpu():
  env = {k: v for k, v in os.environ.items() if not k.startswith(("JAX_", "XLA_"))}
  env["JAX_PLATFORMS"] = "cpu"
  out = subprocess.run(
      [sys.executable, str(ROOT / "scripts" / "bench_accelerator.py"), "--size=tiny",
       "--seq-len=128", "--batch=2", "--steps=1", "--score-rows=2", "--decode-batch=2",
       "--prompt=8", "--new=4"], capture_output=True, text=True, timeout=600, env=env)
  assert out.returncode == 0, out.stderr[-2000:]
  lines = out.stdout.splitlines()
  assert re.match(r"1 x cpu \(cpu\), size tiny: [\d.]+M parameters, 2 layers, dim 64", lines[0])
  train, score, decode = lines[1:4]
  assert re.match(r"train \(sft, 2 x 128 tokens a step\): \d+ ms a step, [\d,]+ tokens/s, ", train)
  assert "MFU n/a (no peak known for it); attention: XLA (prm_jax attend)" in train
  assert re.match(r"score \(prm, 2 x 128 packed tokens a batch\): \d+ ms a batch, [\d,]+ tokens/s$",
                  score)
  assert re.match(r"decode \(batch 2, prompt 8, 4 new\): [\d.]+ ms a step, [\d,]+ tokens/s; "
                  r"no HBM bandwidth known for it$", decode)
