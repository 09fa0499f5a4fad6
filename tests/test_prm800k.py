"""PRM800K, MATH and scored-samples readers on the shipped samples and hand-made edge cases."""

import copy
import json
import math

import pytest

from prm_jax.data.math import read_math
from prm_jax.data.prm800k import (expand_alternatives, parse_prm800k_row, read_any_solutions,
                                  read_prm800k, read_scored_samples)
from prm_jax.records import DataError, ReadStats
from tests.conftest import FIXTURES

P1 = FIXTURES / "prm800k" / "phase1_train.thirdparty_examples.jsonl"
P2 = FIXTURES / "prm800k" / "phase2_train.thirdparty_examples.jsonl"
SCORED = FIXTURES / "prm800k" / "scored_test_sample.thirdparty_example.jsonl"


def rows(path):
  return [json.loads(l) for l in path.read_text().splitlines()]


def test_phase1_follows_chosen_and_human_completions():
  sols = list(read_prm800k(str(P1)))
  assert len(sols) == 3
  first = sols[0]
  assert first.finish_reason == "solution" and first.meta["phase"] == 1
  # step 1 was rewritten by the labeller (a human completion object, not a string)
  assert first.meta["human_steps"] == [1]
  assert first.steps[1] == "We have $3p+e=1.24$ and $5p+e=1.82$."
  assert first.step_labels == [1, None, 1, 1, 1, 1]
  assert first.answer == "29" and first.is_correct is True
  # the five -1 alternatives at step 1 and the other rated ones at step 5 are kept
  alts = first.meta["alternatives"]
  assert sum(a["step_index"] == 1 and a["rating"] == -1 for a in alts) == 5
  assert {a["step_index"] for a in alts} == {1, 5}


def test_phase1_give_up_stops_at_unrated_step():
  give_up = list(read_prm800k(str(P1)))[1]
  raw = rows(P1)[1]["label"]["steps"]
  assert give_up.finish_reason == "give_up"
  assert len(give_up.steps) == len(raw) - 1  # the last step's completions are all unrated
  assert all(r["rating"] is None for r in raw[-1]["completions"])
  assert give_up.answer is None and give_up.is_correct is None


def test_phase2_found_error_stops_at_first_negative():
  sols = list(read_prm800k(str(P2)))
  assert len(sols) == 9
  for s, row in zip(sols, rows(P2)):
    assert s.meta["phase"] == 2 and s.finish_reason == "found_error"
    assert s.step_labels[-1] == -1 and -1 not in s.step_labels[:-1]
    last = row["label"]["steps"][len(s.steps) - 1]
    assert last["chosen_completion"] is None
    assert s.steps[-1] == last["completions"][0]["text"]  # the pre-generated step
    # the answer: from the steps when the erroneous step is the answer line, else pre-generated
    assert s.answer == row["question"]["pre_generated_answer"]
    assert s.meta["answer_source"] == ("steps" if "# Answer" in s.steps[-1] else "pre_generated")
    # a walk cut before its answer has no outcome: the pre-generated answer ends steps not kept
    assert s.is_correct is (None if s.meta["answer_source"] == "pre_generated" else False)
  assert any(s.is_correct is None for s in sols)


def test_expand_alternatives_yields_rated_prefix_examples():
  sol = list(read_prm800k(str(P2)))[0]
  out = list(expand_alternatives([sol]))
  assert out[0] is sol and len(out) == 1 + len(sol.meta["alternatives"])
  for alt, meta in zip(out[1:], sol.meta["alternatives"]):
    j = meta["step_index"]
    assert alt.steps[:j] == sol.steps[:j] and alt.steps[j] == meta["text"]
    # the prefix is already counted once, in `sol`: only the alternative step is labelled here
    assert alt.step_labels == [None] * j + [meta["rating"]]
  assert any(a["step_index"] > 0 for a in sol.meta["alternatives"])  # a prefix to leave unlabelled


def edited(row, fn):
  row = copy.deepcopy(row)
  fn(row)
  return row


def test_hand_made_edge_cases(tmp_path):
  base = rows(P2)[2]
  cases = {
      "qc": edited(base, lambda r: r.update(is_quality_control_question=True)),
      "screen": edited(base, lambda r: r.update(is_initial_screening_question=True)),
      "bad": edited(base, lambda r: r["label"].update(finish_reason="bad_problem")),
      "empty": edited(base, lambda r: r["label"].update(steps=[], finish_reason="give_up")),
      "human_str": edited(base, lambda r: r["label"]["steps"][0].update(
          chosen_completion=None, human_completion="My own step.")),
  }
  path = tmp_path / "edge.jsonl"
  path.write_text("\n".join(json.dumps(cases[k]) for k in cases) + "\n")
  stats = ReadStats()
  got = list(read_prm800k(str(path), stats=stats))
  assert stats.dropped == 3 and len(got) == 2
  empty, human = got
  assert empty.steps == [] and empty.step_labels == [] and empty.finish_reason == "give_up"
  assert human.steps[0] == "My own step." and human.meta["human_steps"] == [0]
  everything = list(read_prm800k(str(path), include_quality_control=True, include_screening=True,
                                 include_bad_problem=True))
  assert len(everything) == 5


@pytest.mark.parametrize("edit,needle", [
    (lambda r: r["label"]["steps"][0]["completions"][0].update(rating=2), "rating 2"),
    (lambda r: r["label"]["steps"][0].update(chosen_completion=9), "out of range"),
    (lambda r: r["label"].update(finish_reason="done"), "finish_reason 'done'"),
    (lambda r: r.pop("question"), "'question'"),
])
def test_malformed_rows_fail_with_file_line(tmp_path, edit, needle):
  good, bad = rows(P2)[0], edited(rows(P2)[1], edit)
  path = tmp_path / "p.jsonl"
  path.write_text(json.dumps(good) + "\n" + json.dumps(bad) + "\n")
  with pytest.raises(DataError, match=rf"p\.jsonl:2: .*{needle}"):
    list(read_prm800k(str(path)))
  stats = ReadStats()
  assert len(list(read_prm800k(str(path), skip_invalid=True, stats=stats))) == 1
  assert stats.skipped == 1


def test_math_reader_on_shipped_sample():
  probs = list(read_math(str(FIXTURES / "math_test.sample.jsonl")))
  assert len(probs) == 50
  assert probs[0].problem_id == "test/precalculus/807.json" and probs[0].level == 2
  assert all(p.answer and p.subject for p in probs)


def test_scored_samples_reader_and_any_format():
  (s,) = list(read_scored_samples(str(SCORED)))
  assert s.problem_id == "test/precalculus/779.json" and s.is_correct is True
  assert math.isclose(math.prod(s.scores["prm_steps"]), s.scores["prm"], rel_tol=1e-9)
  assert 0 <= s.scores["orm"] <= 1
  kinds = [x.meta["source"] for p in (P1, SCORED) for x in read_any_solutions(str(p))]
  assert kinds == ["prm800k"] * 3 + ["scored-samples"]


def test_scored_samples_read_given_answer_when_answer_is_absent():
  row = rows(SCORED)[0]
  truth = row.pop("answer")
  from prm_jax.data.prm800k import parse_scored_sample
  assert parse_scored_sample(dict(row, given_answer="5")).answer == "5"
  assert parse_scored_sample(dict(row, answer=truth, given_answer="5")).answer == truth
  assert parse_scored_sample(row).answer is None


def _step(*rated, chosen=0):
  return {"completions": [{"text": t, "rating": r, "flagged": False} for t, r in rated],
          "human_completion": None, "chosen_completion": chosen}


@pytest.mark.parametrize("generation", [None, 3])  # phase 1 and phase 2
def test_the_walk_stops_at_the_first_negative_even_when_steps_follow(generation):
  """A labeller may rate on past an error (or a file be edited): the walk, its labels and its
  alternatives still end at the first -1 it follows, and the answer after it is not its outcome."""
  row = {"labeler": "x", "timestamp": "t", "generation": generation,
         "is_quality_control_question": False, "is_initial_screening_question": False,
         "question": {"problem": "What is 2+3?", "ground_truth_answer": "5",
                      "pre_generated_answer": "5"},
         "label": {"finish_reason": "found_error", "total_time": 1, "steps": [
             _step(("2+3 is a sum.", 1), ("I add.", 0), chosen=0),
             _step(("2+3=6", -1), ("2+3=5", 1), chosen=0),
             _step(("So 6+0=6.", 1), ("Check: 6.", -1), chosen=0),
             _step(("# Answer\n\n5", 1), chosen=0)]}}
  s = parse_prm800k_row(row)
  assert s.steps == ["2+3 is a sum.", "2+3=6"] and s.step_labels == [1, -1]
  assert s.meta["alternatives"] == [{"step_index": 0, "text": "I add.", "rating": 0},
                                    {"step_index": 1, "text": "2+3=5", "rating": 1}]
  assert s.answer == ("5" if generation else None)  # phase 2: the pre-generated answer...
  assert s.is_correct is None                       # ...which the kept steps never reach


def _row(steps, generation=3, finish="found_error", **question):
  return {"labeler": "lab-1", "timestamp": "2022-11-22T16:51:29", "generation": generation,
          "is_quality_control_question": False, "is_initial_screening_question": False,
          "question": dict({"problem": "What is 2+3?", "ground_truth_answer": 5,
                            "pre_generated_answer": "5", "pre_generated_steps": ["a", "b", "c"],
                            "pre_generated_verifier_score": 0.25}, **question),
          "label": {"finish_reason": finish, "total_time": 1234, "steps": steps}}


def test_a_row_keeps_its_provenance_in_meta():
  import hashlib
  s = parse_prm800k_row(_row([_step(("2+3=5", 1), ("2+3 is 5", 0), chosen=0)], finish="solution"))
  assert s.problem_id == "prm800k/" + hashlib.sha1(b"What is 2+3?").hexdigest()[:12]
  assert s.problem == "What is 2+3?" and s.ground_truth_answer == "5"  # a number: as a string
  assert s.steps == ["2+3=5"] and s.step_labels == [1] and s.finish_reason == "solution"
  assert s.answer == "5" and s.is_correct is True  # the pre-generated answer, walk not cut
  assert s.meta == {"source": "prm800k", "phase": 2, "labeler": "lab-1",
                    "timestamp": "2022-11-22T16:51:29", "generation": 3, "total_time": 1234,
                    "alternatives": [{"step_index": 0, "text": "2+3 is 5", "rating": 0}],
                    "human_steps": [], "answer_source": "pre_generated",
                    "is_quality_control_question": False, "is_initial_screening_question": False,
                    "pre_generated_num_steps": 3, "pre_generated_verifier_score": 0.25}
  assert parse_prm800k_row(_row([_step(("2+3=5", 1))], finish="solution"), grade=False).is_correct is None
  p1 = parse_prm800k_row(_row([_step(("2+3=5", 1))], generation=None, finish="solution"))
  assert p1.meta["phase"] == 1 and "pre_generated_num_steps" not in p1.meta
  assert "pre_generated_verifier_score" not in p1.meta
  assert p1.answer is None and p1.is_correct is None  # phase 1 has no pre-generated answer
  no_truth = parse_prm800k_row(_row([_step(("2+3=5", 1))], finish="solution",
                                    ground_truth_answer=None))
  assert no_truth.ground_truth_answer is None and no_truth.is_correct is None


@pytest.mark.parametrize("labels,finish,want", [
    ([1, 1, 1], "solution", True),      # the walk reaches the pre-generated answer
    ([1, 1, -1], "solution", None),     # cut at its -1, whatever the finish reason says
    ([1, -1], "found_error", None),
    ([1], "give_up", None),             # not finished: the answer is not this walk's
])
def test_only_a_walk_that_reaches_the_pre_generated_answer_is_graded(labels, finish, want):
  steps = [_step((f"step {i}", r)) for i, r in enumerate(labels)]
  s = parse_prm800k_row(_row(steps, finish=finish))
  assert s.step_labels == labels and s.answer == "5" and s.is_correct is want


def test_phase2_follows_completion_0_when_none_is_chosen():
  s = parse_prm800k_row(_row([_step(("pre", 1), ("other", -1), chosen=None),
                              _step(("next", 0), chosen=None)], finish="solution"))
  assert s.steps == ["pre", "next"] and s.step_labels == [1, 0]
  assert s.meta["alternatives"] == [{"step_index": 0, "text": "other", "rating": -1}]
  p1 = parse_prm800k_row(_row([_step(("pre", 1), chosen=None)], generation=None, finish="give_up"))
  assert p1.steps == [] and p1.meta["alternatives"] == [{"step_index": 0, "text": "pre", "rating": 1}]


def test_human_completion_objects_carry_their_rating():
  step = dict(_step(("x", -1), chosen=None), human_completion={"text": "mine", "rating": 1})
  s = parse_prm800k_row(_row([step], generation=None, finish="solution"))
  assert s.steps == ["mine"] and s.step_labels == [1] and s.meta["human_steps"] == [0]


@pytest.mark.parametrize("edit,message", [
    (lambda r: r["label"]["steps"].append("x"), "label.steps[1]: missing 'completions' list"),
    (lambda r: r["label"]["steps"][0].update(completions={}),
     "label.steps[0]: missing 'completions' list"),
    (lambda r: r["label"]["steps"][0]["completions"][1].pop("text"),
     "label.steps[0].completions[1]: missing 'text'"),
    (lambda r: r["label"]["steps"][0]["completions"].append("a string"),
     "label.steps[0].completions[2]: missing 'text'"),
    (lambda r: r["label"]["steps"][0]["completions"][1].update(rating=True),
     "label.steps[0].completions[1]: rating True is not -1, 0, 1 or null"),
    (lambda r: r["label"]["steps"][0].update(chosen_completion=2),
     "label.steps[0]: chosen_completion 2 out of range for 2 completions"),
    (lambda r: r["label"]["steps"][0].update(chosen_completion=-1),
     "label.steps[0]: chosen_completion -1 out of range for 2 completions"),
    (lambda r: r["label"]["steps"][0].update(chosen_completion=True),
     "label.steps[0]: chosen_completion True out of range for 2 completions"),
    (lambda r: r["label"]["steps"][0].update(chosen_completion="0"),
     "label.steps[0]: chosen_completion '0' out of range for 2 completions"),
    (lambda r: r["label"]["steps"][0].update(chosen_completion=None, human_completion=3),
     "label.steps[0]: human_completion must be null, a string or an object with text"),
    (lambda r: r["label"]["steps"][0].update(chosen_completion=None, human_completion={"rating": 1}),
     "label.steps[0]: human_completion must be null, a string or an object with text"),
    (lambda r: r["label"]["steps"][0].update(chosen_completion=None,
                                             human_completion={"text": "t", "rating": 5}),
     "label.steps[0].human_completion: rating 5 is not -1, 0, 1 or null"),
    (lambda r: r["question"].pop("problem"), "missing 'question.problem'"),
    (lambda r: r["label"].pop("steps"), "missing 'label.steps' list"),
    (lambda r: r.update(label=[]), "missing or non-object 'label'"),
])
def test_each_malformed_field_is_named(edit, message):
  row = _row([_step(("a", 1), ("b", 0))])
  edit(row)
  with pytest.raises(ValueError) as e:
    parse_prm800k_row(row)
  assert str(e.value) == message, str(e.value)
  with pytest.raises(ValueError, match="^expected a JSON object$"):
    parse_prm800k_row([row])


def test_dropped_rows_are_not_counted_as_records(tmp_path):
  base = _row([_step(("a", 1))], finish="solution")
  kept = [base, base]
  dropped = [dict(base, is_quality_control_question=True),
             dict(base, is_initial_screening_question=True),
             dict(base, label=dict(base["label"], finish_reason="bad_problem"))]
  path = tmp_path / "p.jsonl"
  path.write_text("".join(json.dumps(r) + "\n" for r in dropped + kept))
  stats = ReadStats()
  assert len(list(read_prm800k(str(path), stats=stats))) == 2
  assert (stats.records, stats.dropped, stats.lines) == (2, 3, 5)
  assert all(s.is_correct is None for s in read_prm800k(str(path), grade=False))
  assert all(s.is_correct is True for s in read_prm800k(str(path)))


def test_an_alternative_is_its_own_truncated_solution():
  from prm_jax.data.prm800k import alternative
  s = parse_prm800k_row(_row([_step(("a", 1)), _step(("b", 0), ("b2", -1))], finish="solution"))
  alt = alternative(s, 0)
  assert (alt.problem_id, alt.problem, alt.ground_truth_answer) == (s.problem_id, s.problem, "5")
  assert alt.steps == ["a", "b2"] and alt.step_labels == [None, -1] and alt.finish_reason is None
  assert alt.answer is None and alt.is_correct is None
  assert alt.meta == {"source": "prm800k-alternative", "alternative_of": "2022-11-22T16:51:29",
                      "alternative_index": 0, "phase": 2}


def test_detect_format_and_parse_any_solution():
  from prm_jax.data.prm800k import detect_format, parse_any_solution
  assert detect_format({"label": {}, "question": {}}) == "prm800k"
  for key in ("rating_probs", "prm_score", "orm_score"):
    assert detect_format({key: None}) == "scored-samples", key
  for row in ({"label": {}}, {"question": {}}, {"problem_id": "a"}, [1], "x"):
    assert detect_format(row) == "solution", row
  ours = {"problem_id": "a", "problem": "q", "steps": ["s"], "answer": "1"}
  got = parse_any_solution(ours)
  assert (got.problem_id, got.problem, got.steps, got.answer) == ("a", "q", ["s"], "1")
  assert parse_any_solution(_row([_step(("a", 1))])).meta["source"] == "prm800k"


def test_scored_sample_fields_and_errors():
  from prm_jax.data.prm800k import parse_scored_sample, problem_id_for
  row = {"problem": "Q?", "steps": ["a", "b"], "subject": "Algebra", "level": 3,
         "ground_truth_answer": 7, "answer": 7, "is_correct": None, "prm_score": 0.5,
         "rating_probs": [{"-1": 0.25, "0": 0.25, "1": 0.5}, {"-1": 0, "0": 0, "1": 1}]}
  s = parse_scored_sample(row)
  assert s.problem_id == problem_id_for("Q?") and len(problem_id_for("Q?")) == len("prm800k/") + 12
  assert (s.problem, s.steps, s.answer, s.ground_truth_answer, s.is_correct) == (
      "Q?", ["a", "b"], "7", "7", None)
  assert s.scores == {"prm": 0.5, "prm_steps": [0.75, 1.0],
                      "rating_probs": [[0.25, 0.25, 0.5], [0.0, 0.0, 1.0]]}
  assert s.meta == {"source": "scored-samples", "subject": "Algebra", "level": 3}
  bare = parse_scored_sample({"problem": "Q?", "steps": [], "unique_id": "u/1", "orm_score": 1})
  assert bare.problem_id == "u/1" and bare.scores == {"orm": 1.0}
  assert bare.ground_truth_answer is None and bare.answer is None and bare.meta["level"] is None
  assert parse_scored_sample({"problem": "Q?", "steps": []}).scores is None
  for bad, message in [
      ([row], "expected a JSON object"),
      (dict(row, steps="ab"), "'steps' must be a list of strings"),
      (dict(row, steps=["a", 2]), "'steps' must be a list of strings"),
      (dict(row, rating_probs=row["rating_probs"][:1]), "'rating_probs' must have one entry per step (2)"),
      (dict(row, rating_probs={}), "'rating_probs' must have one entry per step (2)"),
      (dict(row, rating_probs=[row["rating_probs"][0], [0, 0, 1]]),
       "rating_probs[1] must map '-1', '0', '1' to probabilities"),
      (dict(row, rating_probs=[row["rating_probs"][0], {"-1": 0, "0": "x", "1": 1}]),
       "rating_probs[1] must map"),
      ({k: v for k, v in row.items() if k != "problem"}, "missing 'problem'"),
      (dict(row, is_correct="yes"), "'is_correct' must be true, false or null")]:
    with pytest.raises(ValueError) as e:
      parse_scored_sample(bad)
    assert str(e.value) == message if not message.endswith("map") else str(e.value).startswith(
        message), (str(e.value), message)
