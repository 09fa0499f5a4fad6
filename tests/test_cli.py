"""The `prm-jax` console script, run as a real subprocess with absl config flags."""

import os
import pathlib
import subprocess
import sys

from tests.conftest import ROOT

PRM_JAX = str(pathlib.Path(sys.executable).parent / "prm-jax")


def run(*args, timeout=600):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  return subprocess.run([PRM_JAX, *args], capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, env=env)


def test_describe_prints_rules_applied_to_a_1b_config():
  p = run("describe", "--config=configs/base.py:1b", "--config.mesh.data=1",
          "--config.mesh.fsdp=2", "--config.mesh.tensor=2")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "1235.8M parameters" in p.stdout
  line = next(l for l in p.stdout.splitlines() if "layers/attn/q_proj" in l)
  assert "(16, 2048, 32, 64)" in line and "P(None, 'fsdp', 'tensor')" in line


def test_bad_command_and_bad_override_fail_clearly():
  p = run("trian")
  assert p.returncode == 2 and "unknown command 'trian'" in p.stderr and "demo" in p.stderr
  p = run("describe", "--config.model.no_such_field=3")
  assert p.returncode != 0 and "no_such_field" in p.stderr
  p = run("describe", "--config.mesh.data=3")
  assert p.returncode == 1 and "needs 3 devices, but 4 are available" in p.stderr
  assert "Traceback" not in p.stderr


def test_convert_build_tfds_and_train_tokenizer(tmp_path):
  src = ROOT / "tests" / "fixtures" / "prm800k" / "phase2_train.thirdparty_examples.jsonl"
  out = tmp_path / "sol.jsonl"
  p = run("convert", f"--input={src}", f"--output={out}", "--expand-alternatives")
  assert p.returncode == 0, p.stderr[-2000:]
  assert "wrote 40 records" in p.stdout and len(out.read_text().splitlines()) == 40

  bad = tmp_path / "bad.jsonl"
  bad.write_bytes(out.read_bytes() + b'{"problem_id": 1,\n' + b"\xff\xfe\n")
  p = run("convert", f"--input={bad}", f"--output={tmp_path / 'x.jsonl'}")
  assert p.returncode == 1 and f"{bad}:41: malformed JSON" in p.stderr and "Traceback" not in p.stderr
  assert not (tmp_path / "x.jsonl").exists()  # nothing half-written
  p = run("convert", f"--input={bad}", f"--output={tmp_path / 'x.jsonl'}", "--skip-invalid")
  assert p.returncode == 0 and "skipped 2 invalid line(s)" in p.stderr
  assert "wrote 40 records" in p.stdout

  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "phase2_train.jsonl").write_bytes(src.read_bytes())
  p = run("build-tfds", "--dataset=prm800k", f"--manual-dir={manual}",
          f"--data-dir={tmp_path / 'tfds'}")
  assert p.returncode == 0, p.stderr[-2000:]
  assert "prm800k/phase2_train: 9 examples" in p.stdout

  model = tmp_path / "tok.model"
  p = run("train-tokenizer", f"--inputs={out}", f"--output={model}",
          "--config.tokenizer.vocab_size=400")
  assert p.returncode == 0, p.stderr[-2000:]
  assert model.exists() and "400 pieces" in p.stdout
  p = run("convert", f"--input={src}")
  assert p.returncode == 1 and "missing --output" in p.stderr
