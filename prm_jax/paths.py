"""Paths and exclusive writers: the filesystem side of "nothing lost, nothing hung".

`expand_path` turns `~` and `$VARS` in a path from the command line or a config file into the real
path (an unset variable or unknown user is refused, never made into a folder named `$X` or `~x`).
`WriterLock` lets one process at a time write an output or a run directory: an exclusive
`fcntl.flock` on a sidecar lock file that names its holder (pid, host, command). The kernel drops a
flock when its holder dies, SIGKILL included, so a lock file left behind never blocks the next run.
No JAX here.
"""

from __future__ import annotations

import errno
import fcntl
import json
import os
import re
import socket
import sys
import time

_VAR = re.compile(r"\$(\w+|\{[^}]*\})")
_PREFIXES = ("hf:",)        # a path after a scheme prefix is still a path
_NOT_PATHS = ("tfds:",)     # dataset names


def expand_path(path: str | None, what: str = "path") -> str | None:
  """`path` with `~` and `$VARS` expanded; ValueError naming `what` when a variable is unset or
  `~user` names no user. Empty values, `tfds:` names and plain paths come back unchanged."""
  if not path:
    return path
  text = str(path)
  if text.startswith(_NOT_PATHS):
    return text
  prefix = next((p for p in _PREFIXES if text.startswith(p)), "")
  out = os.path.expandvars(os.path.expanduser(text[len(prefix):]))
  unset = _VAR.search(out)
  if unset:
    raise ValueError(f"{what}={text!r}: ${unset.group(1).strip('{}')} is not set")
  if out.startswith("~"):
    raise ValueError(f"{what}={text!r}: no user {out.split(os.sep)[0][1:]!r} to expand ~ for")
  return prefix + out


class LockBusy(ValueError):
  """Another live process holds the lock; the message names it (a one-line user error)."""


# A filesystem that cannot lock (some FUSE and network mounts) says so with one of these.
_NO_LOCKS = {errno.ENOLCK, errno.EOPNOTSUPP, errno.ENOSYS, errno.EINVAL}


class WriterLock:
  """An exclusive lock on `lock_path`, taken without waiting.

      with WriterLock(output + ".lock", output, "--output"):
        ...  # the only writer of `output`

  A second writer gets `LockBusy` at once: "OUT is being written by pid 123 on host h (prm-jax
  score, since 12:00:01); wait for it or choose another --output". The lock file is removed on
  release; one left by a killed holder is simply locked again. On a filesystem without locks a
  warning is printed and the work goes on unguarded.
  """

  def __init__(self, lock_path: str, target: str, choose: str = "another output"):
    self.path, self.target, self.choose, self._fd = lock_path, target, choose, None

  def acquire(self) -> "WriterLock":
    os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
    while True:
      fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        holder = _holder(fd)
        os.close(fd)
        raise LockBusy(f"{self.target} is being written by {holder}; wait for it to finish or "
                       f"choose {self.choose}") from None
      except OSError as e:
        os.close(fd)
        if e.errno not in _NO_LOCKS:
          raise
        print(f"warning: {self.path}: this filesystem cannot lock ({os.strerror(e.errno)}); "
              f"nothing stops a second writer of {self.target}", file=sys.stderr)
        return self
      # A holder releasing at this moment unlinks the file it locked: we may hold a lock on a
      # file no longer at `path`, which no other writer would see. Then open it again.
      try:
        same = os.stat(self.path).st_ino == os.fstat(fd).st_ino
      except FileNotFoundError:
        same = False
      if same:
        break
      os.close(fd)
    os.ftruncate(fd, 0)
    command = " ".join(os.path.basename(a) if i == 0 else a for i, a in enumerate(sys.argv[:2]))
    os.write(fd, (json.dumps({"pid": os.getpid(), "host": socket.gethostname(),
                              "command": command or "python", "since": time.strftime(
                                  "%Y-%m-%d %H:%M:%S")}) + "\n").encode())
    self._fd = fd
    return self

  def release(self) -> None:
    if self._fd is None:
      return
    try:  # unlinked while still held, so a waiter that opened this file sees it changed
      os.unlink(self.path)
    except FileNotFoundError:
      pass
    os.close(self._fd)
    self._fd = None

  def __enter__(self) -> "WriterLock":
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()


def _holder(fd: int) -> str:
  """Who holds the lock, from what it wrote into the lock file."""
  try:
    info = json.loads(os.pread(fd, 4096, 0).decode("utf-8", "replace") or "{}")
    return (f"pid {info['pid']} on host {info['host']} ({info.get('command', '?')}, since "
            f"{info.get('since', '?')})")
  except (OSError, ValueError, KeyError, TypeError):
    return "another process (it has not said which yet)"


def output_lock(output: str) -> WriterLock:
  """The lock of a command's output file: OUTPUT.lock beside the file it really is (a symlinked
  output and its target share one lock)."""
  return WriterLock(os.path.realpath(output) + ".lock", output, "another --output")
