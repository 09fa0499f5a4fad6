"""`Solution` and `Problem`: the one record format between stages, and streaming JSONL I/O.

Reading is strict by default: a malformed line raises `DataError` naming the file and line. With
`skip_invalid=True` bad lines are skipped, counted in `ReadStats`, and the count is printed. Writing is
atomic (`write_jsonl`: temp file + rename) or crash-safe appending (`JsonlAppender`) for resumable jobs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import os
import sys
import tempfile
from typing import Any, Callable, Iterable, Iterator, TypeVar

LABELS = (-1, 0, 1, None)


class DataError(ValueError):
  """Bad input data; the message names the file and line."""


@dataclasses.dataclass
class Solution:
  problem_id: str
  problem: str
  steps: list[str]
  answer: str | None = None
  ground_truth_answer: str | None = None
  is_correct: bool | None = None
  step_labels: list[int | None] | None = None
  finish_reason: str | None = None
  scores: dict[str, Any] | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  @property
  def text(self) -> str:
    """The solution as the generator writes it: one step per line."""
    return "\n".join(self.steps)

  def to_dict(self) -> dict[str, Any]:
    d = dataclasses.asdict(self)
    if d["scores"] is None:
      del d["scores"]
    return d

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Solution":
    _require_mapping(d)
    steps = d.get("steps")
    if not isinstance(steps, list) or not all(isinstance(s, str) for s in steps):
      raise ValueError("'steps' must be a list of strings")
    labels = d.get("step_labels")
    if labels is not None:
      if not isinstance(labels, list) or any(isinstance(x, bool) or x not in LABELS for x in labels):
        raise ValueError(f"'step_labels' must be a list of -1, 0, 1 or null, got {labels!r}"[:200])
      if len(labels) != len(steps):
        raise ValueError(f"{len(labels)} step_labels for {len(steps)} steps")
    is_correct = d.get("is_correct")
    if is_correct is not None and not isinstance(is_correct, bool):
      raise ValueError(f"'is_correct' must be true, false or null, got {is_correct!r}")
    for key in ("scores", "meta"):
      if d.get(key) is not None and not isinstance(d[key], dict):
        raise ValueError(f"'{key}' must be an object")
    return cls(problem_id=_str_field(d, "problem_id"), problem=_str_field(d, "problem"),
               steps=list(steps), answer=_opt_str(d, "answer"),
               ground_truth_answer=_opt_str(d, "ground_truth_answer"), is_correct=is_correct,
               step_labels=None if labels is None else list(labels),
               finish_reason=_opt_str(d, "finish_reason"), scores=d.get("scores"),
               meta=dict(d.get("meta") or {}))


@dataclasses.dataclass
class Problem:
  problem_id: str
  problem: str
  answer: str | None = None
  solution: str | None = None
  subject: str | None = None
  level: int | None = None
  meta: dict[str, Any] = dataclasses.field(default_factory=dict)

  def to_dict(self) -> dict[str, Any]:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict[str, Any]) -> "Problem":
    """Our own records, or MATH lines (`unique_id` as the id)."""
    _require_mapping(d)
    pid = d.get("problem_id", d.get("unique_id"))
    if pid is None:
      raise ValueError("missing 'problem_id' (or 'unique_id')")
    level = d.get("level")
    if isinstance(level, str) and level.startswith("Level "):
      level = level[6:]
    try:
      level = None if level is None else int(level)
    except ValueError:
      raise ValueError(f"'level' must be an integer, got {d.get('level')!r}") from None
    return cls(problem_id=str(pid), problem=_str_field(d, "problem"), answer=_opt_str(d, "answer"),
               solution=_opt_str(d, "solution"), subject=_opt_str(d, "subject"), level=level,
               meta=dict(d.get("meta") or {}))


def _require_mapping(d):
  if not isinstance(d, dict):
    raise ValueError(f"expected a JSON object, got {type(d).__name__}")


def _str_field(d, key) -> str:
  if key not in d:
    raise ValueError(f"missing '{key}'")
  v = d[key]
  if isinstance(v, (int, float)) and not isinstance(v, bool) and key.endswith("_id"):
    return str(v)
  if not isinstance(v, str):
    raise ValueError(f"'{key}' must be a string, got {type(v).__name__}")
  return v


def _opt_str(d, key) -> str | None:
  v = d.get(key)
  if v is None or isinstance(v, str):
    return v
  if isinstance(v, (int, float)) and not isinstance(v, bool):
    return str(v)
  raise ValueError(f"'{key}' must be a string or null, got {type(v).__name__}")


# ----------------------------------------------------------------------------- reading

@dataclasses.dataclass
class ReadStats:
  """What a reader saw: lines read, records yielded, invalid lines skipped (with the first errors)."""

  path: str = ""
  lines: int = 0
  records: int = 0
  skipped: int = 0
  dropped: int = 0  # valid lines a reader filtered out on purpose (e.g. quality-control rows)
  errors: list[str] = dataclasses.field(default_factory=list)

  def report(self, file=None) -> None:
    if self.skipped:
      print(f"skipped {self.skipped} invalid line(s) of {self.path}; first: {self.errors[0]}",
            file=file or sys.stderr)


T = TypeVar("T")


def iter_json_lines(path: str, skip_invalid: bool = False, stats: ReadStats | None = None
                    ) -> Iterator[tuple[int, Any]]:
  """(line number, parsed JSON) for each non-blank line; bad bytes or JSON raise with file:line."""
  stats = stats if stats is not None else ReadStats()
  stats.path = str(path)
  with open(path, "rb") as f:
    for lineno, raw in enumerate(f, 1):
      stats.lines += 1
      try:
        line = raw.decode("utf-8")
      except UnicodeDecodeError as e:
        _fail(stats, skip_invalid, f"{path}:{lineno}: not valid UTF-8 ({e.reason} at byte {e.start})")
        continue
      if not line.strip():
        continue
      try:
        obj = json.loads(line)
      except json.JSONDecodeError as e:
        _fail(stats, skip_invalid, f"{path}:{lineno}: malformed JSON: {e.msg} at column {e.colno}")
        continue
      except RecursionError:
        _fail(stats, skip_invalid, f"{path}:{lineno}: JSON nested too deeply to read")
        continue
      except ValueError as e:  # e.g. an integer of more digits than Python converts
        _fail(stats, skip_invalid, f"{path}:{lineno}: unreadable JSON: {e}")
        continue
      yield lineno, obj


def _fail(stats: ReadStats, skip_invalid: bool, message: str) -> None:
  if not skip_invalid:
    raise DataError(message)
  stats.skipped += 1
  if len(stats.errors) < 10:
    stats.errors.append(message)


def iter_records(path: str, parse: Callable[[Any], T], skip_invalid: bool = False,
                 stats: ReadStats | None = None) -> Iterator[T]:
  """Streams `parse(obj)` over a JSONL file; a ValueError/KeyError/TypeError becomes file:line."""
  stats = stats if stats is not None else ReadStats()
  for lineno, obj in iter_json_lines(path, skip_invalid, stats):
    try:
      rec = parse(obj)
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
      msg = e.args[0] if isinstance(e, KeyError) and e.args else e
      _fail(stats, skip_invalid, f"{path}:{lineno}: {msg}")
      continue
    stats.records += 1
    yield rec
  if skip_invalid:
    stats.report()


def read_solutions(path: str, skip_invalid: bool = False, stats: ReadStats | None = None
                   ) -> Iterator[Solution]:
  return iter_records(path, Solution.from_dict, skip_invalid, stats)


def read_problems(path: str, skip_invalid: bool = False, stats: ReadStats | None = None
                  ) -> Iterator[Problem]:
  return iter_records(path, Problem.from_dict, skip_invalid, stats)


# ----------------------------------------------------------------------------- writing

def _line_error(e: Exception) -> str:
  if isinstance(e, UnicodeDecodeError):
    return f"not valid UTF-8 ({e.reason} at byte {e.start})"
  if isinstance(e, json.JSONDecodeError):
    return f"malformed JSON: {e.msg} at column {e.colno}"
  return str(e.args[0] if isinstance(e, KeyError) and e.args else e)


def _dumps(rec) -> str:
  d = rec.to_dict() if hasattr(rec, "to_dict") else rec
  return json.dumps(d, ensure_ascii=False)


@contextlib.contextmanager
def atomic_open(path: str, errors: str = "strict") -> Iterator[Any]:
  """A text file that appears at `path` only when the block ends without error (temp file + fsync +
  rename): readers see the old file or the complete new one, never half of one."""
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=directory, prefix=os.path.basename(path) + ".", suffix=".tmp")
  try:
    with os.fdopen(fd, "w", encoding="utf-8", errors=errors) as f:
      yield f
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.remove(tmp)
    raise


def write_jsonl(path: str, records: Iterable[Any]) -> int:
  """Writes all records atomically; returns how many."""
  n = 0
  with atomic_open(path) as f:
    for rec in records:
      f.write(_dumps(rec) + "\n")
      n += 1
  return n


def write_json(path: str, obj: Any) -> None:
  """Every JSON report (bon.json, process.json, eval.json, metrics.json, summaries), atomically."""
  with atomic_open(path) as f:
    json.dump(obj, f, indent=1, ensure_ascii=False)
    f.write("\n")


def write_text(path: str, text: str) -> None:
  """Markdown reports and other text outputs, atomically."""
  with atomic_open(path) as f:
    f.write(text)


class JsonlAppender:
  """Append-only JSONL for resumable jobs: a line is durable once `flush()` returns.

  On open, what follows the last complete record is cut off, and `existing` counts the records
  before it, so a job resumes exactly after the last durable record. Without `parse` a record is a
  newline-terminated line (a torn last line, from a kill mid-write, is cut). With `parse` (e.g.
  `Solution.from_dict`) each line must also parse: malformed lines at the end (a crash can leave
  one that still ends in a newline) are cut too and counted in `dropped`, while a malformed line
  followed by a good one is damage, not a torn tail, and raises `DataError`. `visit(i, record)`
  sees every kept record in order (a resumable job checks they are its own rows).
  """

  def __init__(self, path: str, parse: Callable[[Any], Any] | None = None,
               visit: Callable[[int, Any], None] | None = None):
    self.path, self.dropped = path, 0
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    self.existing = self._repair(parse, visit)
    self._f = open(path, "a", encoding="utf-8")

  def _repair(self, parse, visit) -> int:
    if not os.path.exists(self.path):
      return 0
    count, good_end, end, bad, lines = 0, 0, 0, None, 0
    with open(self.path, "rb") as f:
      for lineno, raw in enumerate(f, 1):
        end, lines = end + len(raw), lineno
        if not raw.endswith(b"\n"):
          break  # torn: the last line, killed mid-write
        if parse is not None:
          try:
            rec = parse(json.loads(raw.decode("utf-8")))
          except (UnicodeDecodeError, json.JSONDecodeError, ValueError, KeyError, TypeError,
                  AttributeError) as e:
            bad = bad or (lineno, _line_error(e))
            continue
          if bad is not None:
            raise DataError(f"{self.path}:{bad[0]}: {bad[1]}, and good records follow it: "
                            "damaged, not a torn tail; repair or move the file")
          if visit is not None:
            visit(count, rec)
        count += 1
        good_end = end
      size = f.seek(0, os.SEEK_END)
    if good_end != size:
      self.dropped = lines - count
      with open(self.path, "rb+") as f:
        f.truncate(good_end)
    return count

  def write(self, rec: Any) -> None:
    self._f.write(_dumps(rec) + "\n")

  def flush(self) -> None:
    self._f.flush()
    os.fsync(self._f.fileno())

  def close(self) -> None:
    if not self._f.closed:
      self.flush()
      self._f.close()

  def __enter__(self) -> "JsonlAppender":
    return self

  def __exit__(self, *exc) -> None:
    self.close()
