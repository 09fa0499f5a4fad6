"""Solution/Problem records, JSONL reading with file:line errors and counted skips, atomic and
crash-safe writing."""

import json
import os

import pytest

from prm_jax.records import (DataError, JsonlAppender, Problem, ReadStats, Solution, read_problems,
                             read_solutions, write_jsonl)

GOOD = {"problem_id": "p1", "problem": "1+1?", "steps": ["1+1=2", "# Answer", "2"], "answer": "2",
        "ground_truth_answer": "2", "is_correct": True, "step_labels": [1, 0, None],
        "finish_reason": "solution", "meta": {"k": 1}}


def write_lines(path, lines):
  with open(path, "wb") as f:
    for line in lines:
      f.write(line if isinstance(line, bytes) else (line + "\n").encode())
  return str(path)


def test_roundtrip_and_scores_absent_when_none(tmp_path):
  sol = Solution.from_dict(GOOD)
  assert sol.text == "1+1=2\n# Answer\n2"
  assert "scores" not in sol.to_dict()
  sol.scores = {"prm": 0.5, "prm_steps": [0.9, 0.5, 1.0]}
  path = tmp_path / "s.jsonl"
  assert write_jsonl(str(path), [sol, sol]) == 2
  back = list(read_solutions(str(path)))
  assert back == [sol, sol]


@pytest.mark.parametrize("line,needle", [
    ('{"problem_id": "p", "problem": "x", "steps": ["a"]', "malformed JSON"),
    ('{"problem": "x", "steps": ["a"]}', "missing 'problem_id'"),
    ('{"problem_id": "p", "problem": "x", "steps": "a"}', "'steps' must be a list of strings"),
    ('{"problem_id": "p", "problem": "x", "steps": ["a"], "step_labels": [2]}', "step_labels"),
    ('{"problem_id": "p", "problem": "x", "steps": ["a"], "step_labels": [true]}', "step_labels"),
    ('{"problem_id": "p", "problem": "x", "steps": ["a", "b"], "step_labels": [1]}', "1 step_labels for 2 steps"),
    ('{"problem_id": "p", "problem": "x", "steps": ["a"], "is_correct": "yes"}', "is_correct"),
    ('[1, 2]', "expected a JSON object"),
])
def test_bad_lines_name_file_and_line(tmp_path, line, needle):
  path = write_lines(tmp_path / "bad.jsonl", [json.dumps(GOOD), "", line, json.dumps(GOOD)])
  with pytest.raises(DataError, match=rf"bad\.jsonl:3: .*{needle[:20]}".replace("(", r"\(")):
    list(read_solutions(path))


def test_non_utf8_bytes_name_the_line(tmp_path):
  path = write_lines(tmp_path / "bin.jsonl", [json.dumps(GOOD), b'{"problem": "\xff\xfe"}\n'])
  with pytest.raises(DataError, match=r"bin\.jsonl:2: not valid UTF-8"):
    list(read_solutions(path))


def test_skip_invalid_counts_and_prints(tmp_path, capsys):
  path = write_lines(tmp_path / "mixed.jsonl", [json.dumps(GOOD), "{oops", b"\xff\n",
                                                 json.dumps(dict(GOOD, step_labels=[5, 0, 1])),
                                                 json.dumps(GOOD)])
  stats = ReadStats()
  got = list(read_solutions(path, skip_invalid=True, stats=stats))
  assert len(got) == 2 and stats.skipped == 3 and stats.records == 2
  assert "mixed.jsonl:2" in stats.errors[0]
  assert "skipped 3 invalid line(s)" in capsys.readouterr().err


def test_problem_from_math_line():
  p = Problem.from_dict({"problem": "x", "solution": "s \\boxed{1}", "answer": "1",
                         "subject": "Algebra", "level": 3, "unique_id": "test/algebra/1.json"})
  assert p.problem_id == "test/algebra/1.json" and p.level == 3
  assert Problem.from_dict({"problem_id": 7, "problem": "x", "level": "Level 5"}).level == 5
  with pytest.raises(ValueError, match="'level' must be an integer"):
    Problem.from_dict({"problem_id": 7, "problem": "x", "level": "hard"})


def test_write_is_atomic_on_failure(tmp_path):
  path = tmp_path / "out.jsonl"
  write_jsonl(str(path), [Solution.from_dict(GOOD)])

  def broken():
    yield Solution.from_dict(GOOD)
    raise RuntimeError("crash mid-write")
  with pytest.raises(RuntimeError):
    write_jsonl(str(path), broken())
  assert len(path.read_text().splitlines()) == 1  # the old file, intact
  assert [p.name for p in tmp_path.iterdir()] == ["out.jsonl"]  # no temp file left


def test_appender_cuts_a_torn_line_and_counts(tmp_path):
  path = tmp_path / "a.jsonl"
  with JsonlAppender(str(path)) as w:
    assert w.existing == 0
    w.write(Solution.from_dict(GOOD))
    w.write(Solution.from_dict(GOOD))
  with open(path, "ab") as f:
    f.write(b'{"problem_id": "p3", "probl')  # killed mid-write
  with JsonlAppender(str(path)) as w:
    assert w.existing == 2
    w.write(Solution.from_dict(dict(GOOD, problem_id="p3")))
  assert [s.problem_id for s in read_solutions(str(path))] == ["p1", "p1", "p3"]
