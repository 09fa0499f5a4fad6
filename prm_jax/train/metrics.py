"""Training metrics: a JSONL file (one object per logged step), TensorBoard event files, and MFU."""

from __future__ import annotations

import json
import os

import jax

# Dense bf16 peak FLOP/s per device, for the MFU estimate (None: unknown, MFU not reported).
PEAK_FLOPS = {"tpu v4": 275e12, "tpu v5 lite": 197e12, "tpu v5e": 197e12, "tpu v5p": 459e12,
              "tpu v6 lite": 918e12, "tpu v6e": 918e12, "h100": 989e12, "h200": 989e12,
              "a100": 312e12, "gh200": 989e12, "b200": 2250e12}


# HBM bandwidth per device, bytes/s, for the decode roofline (scripts/bench_accelerator.py).
HBM_BYTES_PER_S = {"tpu v4": 1.2e12, "tpu v5 lite": 0.82e12, "tpu v5e": 0.82e12,
                   "tpu v5p": 2.76e12, "tpu v6 lite": 1.64e12, "tpu v6e": 1.64e12,
                   "h100": 3.35e12, "h200": 4.8e12, "a100": 2.0e12, "gh200": 4.0e12,
                   "b200": 8.0e12}


def _this_device(table: dict[str, float]) -> float | None:
  kind = jax.devices()[0].device_kind.lower()
  return next((v for k, v in table.items() if k in kind), None)


def peak_flops_per_device() -> float | None:
  return _this_device(PEAK_FLOPS)


def hbm_bytes_per_s() -> float | None:
  return _this_device(HBM_BYTES_PER_S)


def train_flops_per_token(num_params: int, num_layers: int, dim: int, seq_len: int) -> float:
  """6N for the matmuls plus the attention score/value products (forward + backward)."""
  return 6.0 * num_params + 12.0 * num_layers * dim * seq_len


def _step_after(line: str, step: int) -> bool:
  try:
    logged = json.loads(line).get("step")
  except (ValueError, AttributeError):
    return False
  return isinstance(logged, int) and logged > step


class MetricWriter:
  """Appends metrics to `workdir/metrics.jsonl` and TensorBoard events under `workdir/tb` (process 0)."""

  def __init__(self, workdir: str, resume_step: int = 0, enabled: bool = True):
    self.enabled = enabled and jax.process_index() == 0
    self.path = os.path.join(workdir, "metrics.jsonl")
    self._tb = None
    if self.enabled:
      os.makedirs(workdir, exist_ok=True)
      self._drop_after(resume_step)  # steps past the restored checkpoint will be logged again
      self._f = open(self.path, "a", encoding="utf-8")
      try:
        from tensorboardX import SummaryWriter
        self._tb = SummaryWriter(os.path.join(workdir, "tb"))
      except ImportError:  # TensorBoard files are optional; the JSONL is the record
        self._tb = None

  def _drop_after(self, step: int) -> None:
    """Keeps every line up to the restored step (and any line that is not a step's metrics);
    drops the lines of steps past it, which the resumed run logs again, and a torn last line.
    Rewritten atomically, and only when something is dropped."""
    if not os.path.exists(self.path):
      return
    with open(self.path, encoding="utf-8", errors="surrogateescape") as f:
      lines = f.readlines()
    keep = [l for l in lines if l.endswith("\n") and not _step_after(l, step)]
    if len(keep) != len(lines):
      from prm_jax.records import atomic_open
      with atomic_open(self.path, errors="surrogateescape") as f:
        f.writelines(keep)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    self._f.write(json.dumps({"step": step, **metrics}) + "\n")
    self._f.flush()
    if self._tb is not None:
      for k, v in metrics.items():
        if isinstance(v, (int, float)) and v == v:
          self._tb.add_scalar(k, v, step)

  def close(self) -> None:
    if self.enabled:
      self._f.close()
      if self._tb is not None:
        self._tb.close()
