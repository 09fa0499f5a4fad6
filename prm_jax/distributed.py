"""Multi-host: start the JAX distributed runtime from a command line, log once, agree on values.

Every `prm-jax` command calls `initialize()` before it touches JAX. It starts the runtime when it was
launched on several processes: explicitly (`--coordinator`, `--num-processes`, `--process-id`, or the
environment variables `JAX_COORDINATOR_ADDRESS`, `JAX_NUM_PROCESSES`, `JAX_PROCESS_ID`), or
auto-detected on a multi-host TPU slice, a SLURM job or an Open MPI job of more than one task, where
`jax.distributed.initialize()` finds everything itself. One process needs none of it.
"""

from __future__ import annotations

import os

import jax
import numpy as np

ENV = ("JAX_COORDINATOR_ADDRESS", "JAX_NUM_PROCESSES", "JAX_PROCESS_ID")


def _cluster_detected() -> str | None:
  """The name of a multi-process cluster environment JAX can configure itself, if any."""
  env = os.environ
  if int(env.get("SLURM_NTASKS", env.get("SLURM_NPROCS", "1")) or 1) > 1 and "SLURM_JOB_ID" in env:
    return "SLURM"
  if "," in env.get("TPU_WORKER_HOSTNAMES", "") or env.get("MEGASCALE_COORDINATOR_ADDRESS"):
    return "TPU pod"
  if int(env.get("OMPI_COMM_WORLD_SIZE", "1") or 1) > 1:
    return "Open MPI"
  return None


def initialize(coordinator: str | None = None, num_processes: int | None = None,
               process_id: int | None = None) -> str | None:
  """Starts `jax.distributed` when this is one of several processes; returns how, or None."""
  env = os.environ
  coordinator = coordinator or env.get("JAX_COORDINATOR_ADDRESS") or None
  num_processes = num_processes if num_processes is not None else _int_env("JAX_NUM_PROCESSES")
  process_id = process_id if process_id is not None else _int_env("JAX_PROCESS_ID")
  given = [x is not None for x in (coordinator, num_processes, process_id)]
  if any(given):
    if not all(given):
      raise ValueError("a multi-process launch needs all three of --coordinator, --num-processes "
                       f"and --process-id (or {', '.join(ENV)}); got coordinator={coordinator}, "
                       f"num_processes={num_processes}, process_id={process_id}")
    if num_processes < 1 or not 0 <= process_id < num_processes:
      raise ValueError(f"--process-id={process_id} must be in [0, --num-processes={num_processes})")
    if num_processes == 1:
      return None
    jax.distributed.initialize(coordinator, num_processes=num_processes, process_id=process_id,
                               initialization_timeout=120)
    return f"process {process_id} of {num_processes}, coordinator {coordinator}"
  cluster = _cluster_detected()
  if cluster:
    jax.distributed.initialize()
    return f"{cluster}: process {jax.process_index()} of {jax.process_count()}"
  return None


def _int_env(name: str) -> int | None:
  value = os.environ.get(name)
  if value in (None, ""):
    return None
  try:
    return int(value)
  except ValueError:
    raise ValueError(f"{name}={value!r} must be an integer") from None


def is_main() -> bool:
  """Process 0: the one that logs and writes shared outputs."""
  return jax.process_index() == 0


def log(*args, **kwargs) -> None:
  """`print` on process 0 only."""
  if is_main():
    print(*args, **kwargs, flush=True)


def broadcast_int(value: int) -> int:
  """Process 0's `value`, on every process (a no-op on one)."""
  if jax.process_count() == 1:
    return int(value)
  from jax.experimental import multihost_utils
  return int(multihost_utils.broadcast_one_to_all(np.asarray(value, np.int64)))


def barrier(name: str) -> None:
  """Waits until every process reaches the barrier of this name."""
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)


def mesh_summary(mesh) -> dict:
  """What a command ran on, for its printout and its output summary."""
  return {"mesh": {k: int(v) for k, v in mesh.shape.items()}, "devices": int(mesh.devices.size),
          "processes": jax.process_count(), "platform": mesh.devices.flat[0].platform}


def describe_mesh(mesh) -> str:
  m = mesh_summary(mesh)
  shape = ", ".join(f"{k}={v}" for k, v in m["mesh"].items())
  procs = f" in {m['processes']} processes" if m["processes"] > 1 else ""
  return f"mesh ({shape}) over {m['devices']} {m['platform']} device(s){procs}"


class OutputClaim:
  """Process 0's lock on a command's output, taken before the command's slow start (opening a
  model), so a second writer fails at once; every process learns whether it was taken.

      with distributed.OutputClaim(output) as claim:
        model = ...  # slow
        with ResumableOutput(output, check, claim) as out: ...
  """

  def __init__(self, path: str):
    self.path, self.lock = path, None

  def __enter__(self) -> "OutputClaim":
    from prm_jax.paths import output_lock
    error = None
    if is_main():
      try:
        self.lock = output_lock(self.path).acquire()
      except BaseException as e:  # noqa: BLE001  (told to the other processes, then re-raised)
        error = e
    failed = broadcast_int(0 if error is None else 1)
    if error is not None:
      raise error
    if failed:
      raise RuntimeError(f"process 0 could not lock {self.path}; its error says why")
    return self

  def release(self) -> None:
    if self.lock is not None:
      self.lock.release()
      self.lock = None

  def __exit__(self, *exc) -> None:
    self.release()


class ResumableOutput:
  """The output of a resumable multi-process command (`sample`, `score`), written exactly once.

  Process 0 takes the output's lock (`paths.output_lock`: a second writer fails at once, naming
  the holder), or uses the `OutputClaim` it is given (its caller releases that), then opens the
  file, cuts a torn or malformed tail (`dropped` lines, written again), shows every record already
  there to `check(i, record)` (which raises when row i is not this run's row i: an output written
  from another input), and tells every process how many rows are done (`done`); only process 0
  writes. A refusal on process 0 reaches the others as an error, never a hang.
  """

  def __init__(self, path: str, check=None, claim: OutputClaim | None = None):
    self.path, self.check, self.claim, self._out = path, check, claim, None
    self._lock, self.dropped = None, 0

  def __enter__(self) -> "ResumableOutput":
    from prm_jax.paths import output_lock
    from prm_jax.records import JsonlAppender, Solution
    done, error = -1, None
    if is_main():
      try:
        if self.claim is None or self.claim.lock is None:
          self._lock = output_lock(self.path).acquire()
        self._out = JsonlAppender(self.path, parse=Solution.from_dict, visit=self.check)
        done, self.dropped = self._out.existing, self._out.dropped
        if self.dropped:
          log(f"{self.path}: cut {self.dropped} torn or malformed line(s) at its end; those rows "
              "are written again")
      except BaseException as e:  # noqa: BLE001  (told to the other processes, then re-raised)
        error = e
    self.done = broadcast_int(done)
    if error is not None:
      self._close()
      raise error
    if self.done < 0:
      raise RuntimeError(f"process 0 could not open {self.path}; its error says why")
    return self

  def write(self, record) -> None:
    """Appends one record (process 0; the others ignore it)."""
    if self._out is not None:
      self._out.write(record)

  def flush(self) -> None:
    """Makes what was written durable."""
    if self._out is not None:
      self._out.flush()

  def write_all(self, records) -> None:
    for r in records:
      self.write(r)
    self.flush()

  def _close(self) -> None:
    try:
      if self._out is not None:
        self._out.close()
    finally:
      if self._lock is not None:
        self._lock.release()

  def __exit__(self, *exc) -> None:
    self._close()
    if exc[0] is None:
      barrier("output-closed")
