"""Multi-host from the command line: `scripts/launch_local.sh 2 prm-jax ...` runs a real 2-process
`jax.distributed` job on localhost (4 CPU devices each). `train` runs on it; `sample` and `score` write
the bytes one process with 8 devices writes, also after one process is SIGKILLed mid-run and the job
is started again."""

import json
import os
import pathlib
import signal
import subprocess
import sys
import time

import pytest

from tests.conftest import ROOT

# End to end: real multi-process jobs, all in the slow tier.
pytestmark = pytest.mark.slow

PRM_JAX = str(pathlib.Path(sys.executable).parent / "prm-jax")
LAUNCH = str(ROOT / "scripts" / "launch_local.sh")


def clean_env(**extra):
  env = {k: v for k, v in os.environ.items() if not k.startswith("JAX_")}
  env.update(JAX_PLATFORMS="cpu", **extra)
  return env


def one_process(*args):
  """The reference: one process with the same 8 devices the two processes hold together."""
  p = subprocess.run([PRM_JAX, *args], capture_output=True, text=True, timeout=600,
                     env=clean_env(XLA_FLAGS="--xla_force_host_platform_device_count=8"))
  assert p.returncode == 0, p.stderr[-3000:]
  return p


def two_processes(*args) -> subprocess.Popen:
  return subprocess.Popen(["bash", LAUNCH, "2", PRM_JAX, *args], stdout=subprocess.PIPE,
                          stderr=subprocess.PIPE, text=True, env=clean_env(LOCAL_DEVICES="4"))


def finish(p: subprocess.Popen):
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  return out, err


def children(pid: int) -> dict[int, int]:
  """{JAX_PROCESS_ID: pid} of the launcher's child processes (read from /proc)."""
  found = {}
  for entry in os.listdir("/proc"):
    if not entry.isdigit():
      continue
    try:
      stat = open(f"/proc/{entry}/stat").read()
      ppid = int(stat.rsplit(")", 1)[1].split()[1])
      if ppid != pid:
        continue
      env = open(f"/proc/{entry}/environ", "rb").read().split(b"\0")
    except OSError:
      continue
    for var in env:
      if var.startswith(b"JAX_PROCESS_ID="):
        found[int(var.split(b"=", 1)[1])] = int(entry)
  return found


def kill_one_mid_run(p: subprocess.Popen, output: str, lines: int, victim: int = 1) -> None:
  """SIGKILLs process `victim` once `output` holds `lines` rows; the launcher stops the other."""
  t = time.time()
  while not (os.path.exists(output) and open(output).read().count("\n") >= lines):
    assert p.poll() is None, p.communicate()[1][-3000:]
    assert time.time() - t < 300
    time.sleep(0.02)
  os.kill(children(p.pid)[victim], signal.SIGKILL)
  _, err = p.communicate(timeout=300)
  assert p.returncode != 0 and "stopping the others" in err, err[-2000:]


def test_two_process_train_then_sample_and_score_equal_one_process(runs, tmp_path):
  workdir = tmp_path / "sft2"
  p = two_processes("train", f"--config.workdir={workdir}", "--config.train.task=sft",
                    f"--config.train.data={runs['train_data']}",
                    f"--config.tokenizer.path={runs['tokenizer']}", "--config.model.vocab_size=320",
                    "--config.model.dim=32", "--config.model.num_layers=1",
                    "--config.model.mlp_dim=64", "--config.model.num_heads=2",
                    "--config.model.num_kv_heads=1", "--config.model.max_seq_len=64",
                    "--config.train.steps=6", "--config.train.batch_size=16",
                    "--config.train.seq_len=64", "--config.train.save_every=3",
                    "--config.train.log_every=3")
  out, _ = finish(p)
  assert out.count("sft: stopped at step 6") == 1  # one process logs
  summary = json.loads((workdir / "summary.json").read_text())
  assert summary["processes"] == 2 and summary["devices"] == 8 and summary["step"] == 6
  assert max(int(n) for n in os.listdir(workdir / "checkpoints") if n.isdigit()) == 6
  assert len((workdir / "metrics.jsonl").read_text().splitlines()) == 2

  sample = ["sample", f"--checkpoint={runs['sft']}", f"--input={runs['problems']}",
            "--config.sample.n=4", "--config.seed=5", "--config.sample.batch_size=8",
            "--config.sample.max_new_tokens=24"]
  one_process(*sample, f"--output={tmp_path / 's1.jsonl'}")
  out, _ = finish(two_processes(*sample, f"--output={tmp_path / 's2.jsonl'}"))
  assert out.count("sampled 160 solutions") == 1 and "in 2 processes" in out
  assert (tmp_path / "s2.jsonl").read_bytes() == (tmp_path / "s1.jsonl").read_bytes()
  assert json.loads((tmp_path / "s2.jsonl.summary.json").read_text())["processes"] == 2

  score = ["score", f"--checkpoint={runs['prm']}", f"--input={tmp_path / 's1.jsonl'}",
           "--config.score.seq_len=64", "--config.score.rows=8", "--config.score.chunk=32"]
  one_process(*score, f"--output={tmp_path / 'c1.jsonl'}")
  finish(two_processes(*score, f"--output={tmp_path / 'c2.jsonl'}"))
  assert (tmp_path / "c2.jsonl").read_bytes() == (tmp_path / "c1.jsonl").read_bytes()


@pytest.mark.parametrize("stage", ["sample", "score"])
def test_a_killed_process_resumes_to_the_same_bytes(runs, tmp_path, stage):
  if stage == "sample":
    args = ["sample", f"--checkpoint={runs['sft']}", f"--input={runs['problems']}",
            "--config.sample.n=4", "--config.seed=3", "--config.sample.batch_size=8",
            "--config.sample.max_new_tokens=32"]
    total, at = 160, 16
  else:
    args = ["score", f"--checkpoint={runs['prm']}", f"--input={runs['solutions']}",
            "--config.score.seq_len=64", "--config.score.rows=8", "--config.score.chunk=16"]
    total, at = 2000, 48
  ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
  one_process(*args, f"--output={ref}")
  p = two_processes(*args, f"--output={out}")
  kill_one_mid_run(p, str(out), at)
  partial = out.read_bytes().count(b"\n")
  assert at <= partial < total
  out_text, _ = finish(two_processes(*args, f"--output={out}"))
  assert f"{partial} already" in out_text or out.read_bytes().count(b"\n") == total
  assert out.read_bytes() == ref.read_bytes()  # every row once, in input order, same values
