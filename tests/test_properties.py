"""Property tests (hypothesis) where inputs are untrusted or combinatorial: answer grading and
normalisation, the step-score aggregation against a NumPy reference, and the JSONL readers on
arbitrary bytes.

Examples are derandomized (CI sees the same ones every run) and few: the file runs in well under a
minute. For a deeper search: HYPOTHESIS_EXAMPLES=2000 bash scripts/test.sh tests/test_properties.py
"""

import json
import os
import re
import time

import numpy as np
import pytest
from hypothesis import HealthCheck, Phase, example, given, settings, strategies as st

from prm_jax import grading
from prm_jax.data import prm800k
from prm_jax.data.math import read_math
from prm_jax.records import DataError, ReadStats, read_problems, read_solutions
from tests.conftest import FIXTURES

SCALE = int(os.environ.get("HYPOTHESIS_EXAMPLES", "0"))


# Under mutation testing (scripts/mutation.sh) a failing example is enough: shrinking it to the
# smallest one costs minutes per mutant and kills nothing more.
PHASES = ((Phase.explicit, Phase.reuse, Phase.generate) if "MUTANT_UNDER_TEST" in os.environ
          else tuple(Phase))


def props(n: int):
  """Settings for a property tested on `n` examples (HYPOTHESIS_EXAMPLES overrides)."""
  return settings(max_examples=SCALE or n, deadline=None, derandomize=not SCALE, database=None,
                  phases=PHASES,
                  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                         HealthCheck.function_scoped_fixture])


# ----------------------------------------------------------------------------- answers

def _expressions():
  """Answers as MATH solutions write them, built from the grader's whole vocabulary."""
  atoms = st.one_of(
      st.integers(-2000, 2000).map(str),
      st.sampled_from(["0.5", "1.25", ".5", "3.0", "1,000", "10^{3}", "x", "y", "n", "\\pi",
                       "\\infty", "e", "i", "2\\pi", "\\sqrt{2}", "\\sqrt3", "\\frac12", "0"]))

  def grow(inner):
    return st.one_of(
        st.tuples(inner, st.sampled_from(["+", "-", "*", "/", "\\cdot", "\\times", "^"]), inner)
        .map(lambda t: f"{t[0]}{t[1]}{t[2]}"),
        st.tuples(inner, inner).map(lambda t: f"\\frac{{{t[0]}}}{{{t[1]}}}"),
        st.tuples(inner, inner).map(lambda t: f"\\dfrac{t[0]}{t[1]}"),
        inner.map(lambda a: f"\\sqrt{{{a}}}"),
        inner.map(lambda a: f"({a})"),
        inner.map(lambda a: f"-{a}"),
        inner.map(lambda a: f"{a}!"),
        st.tuples(inner, st.integers(0, 12)).map(lambda t: f"{t[0]}^{{{t[1]}}}"),
        st.tuples(st.sampled_from("([{"), inner, inner, st.sampled_from(")]}"))
        .map(lambda t: f"{t[0]}{t[1]}, {t[2]}{t[3]}"),
        st.tuples(inner, inner).map(lambda t: f"{t[0]} \\cup {t[1]}"),
        st.tuples(inner, inner).map(lambda t: f"\\begin{{pmatrix}} {t[0]} \\\\ {t[1]} \\end{{pmatrix}}"),
    )
  wrap = st.sampled_from(["{}", "\\boxed{{{}}}", "\\text{{{}}}", "${}$", "x = {}", "{} cm",
                          "{}\\%", "\\${}", "{}^\\circ", "\\left( {} \\right)", " {} ", "{{{}}}",
                          "\\mbox{{{} inches}}", "{} \\text{{ and }} 2"])
  return st.tuples(wrap, st.recursive(atoms, grow, max_leaves=6)).map(lambda t: t[0].format(t[1]))


ANSWERS = st.one_of(_expressions(), st.text(max_size=40),
                    st.text(alphabet="0123456789.,/-+^{}()[]\\ fracsqrtpi$%", max_size=40))
BOUND = grading.TIME_LIMIT_S + 1.5  # the grader's own limit, plus the cost of stopping


def timed(fn, *args):
  t = time.perf_counter()
  out = fn(*args)
  return out, time.perf_counter() - t


def _same(a):
  """A second writing of `a` that the grader may call equal (or not): the True branches too."""
  return st.sampled_from([a, f"\\boxed{{{a}}}", f" {a} ", f"{a}.0", f"\\text{{{a}}}", f"x={a}",
                          a.replace("\\frac", "\\dfrac"), a.replace(" ", ""), f"{{{a}}}"])


PAIRS = st.one_of(st.tuples(ANSWERS, ANSWERS),
                  ANSWERS.flatmap(lambda a: st.tuples(st.just(a), _same(a))))


@props(60)
@given(PAIRS)
@example(("\\frac{1}{2}", "0.5"))
@example(("10", "10.0"))
@example(("9^{9^{9^9}}", "1"))
@example(("(" * 300 + "1" + ")" * 300, "1"))
@example(("1" * 1700, "1" * 1700))
@example(("5!" * 30, "1"))
def test_grading_never_raises_stays_bounded_and_is_symmetric(pair):
  a, b = pair
  ab, t_ab = timed(grading.grade_answer, a, b)
  ba, t_ba = timed(grading.grade_answer, b, a)
  assert isinstance(ab, bool) and ab == ba, (a, b, ab, ba)
  assert max(t_ab, t_ba) < BOUND, (a, b, t_ab, t_ba)
  # grouping's shortcut never separates answers the grader calls equal
  fa, fb = grading.answer_form(a), grading.answer_form(b)
  assert grading.forms_may_be_equal(fa, fb) == grading.forms_may_be_equal(fb, fa)
  if ab:
    assert grading.forms_may_be_equal(fa, fb), (a, b)


@props(60)
@given(ANSWERS)
def test_an_answer_equals_itself_unless_empty(a):
  got, t = timed(grading.grade_answer, a, a)
  assert got == bool(a.strip()), a
  assert t < BOUND


@props(80)
@given(st.one_of(ANSWERS, st.text(max_size=300)))
@example("\\boxed{" * 200)
@example("1" + " " * 3000 + "cm")
@example("}" * 500 + "{" * 500)
def test_normalisation_and_extraction_never_raise_and_stay_bounded(text):
  norm, t_norm = timed(grading.normalize, text)
  assert norm is None or isinstance(norm, str)
  strip, t_strip = timed(grading.strip_string, text)
  assert isinstance(strip, str)
  for solution in (text, f"Step 1.\n# Answer\n\n{text}", f"So $\\boxed{{{text}}}$."):
    ans, t_ans = timed(grading.extract_answer, solution)
    assert ans is None or isinstance(ans, str)
    assert t_ans < BOUND
  form, t_form = timed(grading.answer_form, text)
  assert form.raw == text
  assert max(t_norm, t_strip, t_form) < BOUND


def test_extraction_reads_the_last_answer_line_and_the_last_box():
  assert grading.extract_answer("a\n# Answer\n\n5\n# Answer\n\n7") == "7"
  assert grading.extract_answer("$\\boxed{1}$ then $\\boxed{\\frac{2}{3}}$") == "\\frac{2}{3}"


@props(30)
@given(st.lists(st.one_of(st.none(), ANSWERS), max_size=12))
def test_group_answers_is_an_equivalence_numbered_by_first_appearance(answers):
  from prm_jax.evaluation import group_answers
  g = group_answers(answers).tolist()
  seen = []
  for a, k in zip(answers, g):
    if a is None or not a.strip():
      assert k == -1
      continue
    assert 0 <= k <= len(seen)  # a new class gets the next id
    if k == len(seen):
      seen.append(a)
  for i, a in enumerate(answers):  # equal strings share a class
    for j in range(i):
      if answers[j] == a:
        assert g[i] == g[j]


# ----------------------------------------------------------------------------- aggregation

S, NSOL = 32, 8  # one padded shape: the jitted aggregations compile once per layout
LAYOUT_FNS = {}


def _aggregate(layout):
  import jax
  from prm_jax.scoring import LOG_PROD, METHODS, aggregate_step_scores
  if layout not in LAYOUT_FNS:
    LAYOUT_FNS[layout] = jax.jit(lambda p, ids: {
        m: aggregate_step_scores(p, ids, NSOL, m, layout) for m in METHODS + (LOG_PROD,)})
  return LAYOUT_FNS[layout]


# no subnormals: XLA on CPU flushes them to zero, and a P(ok) below 1e-38 means nothing anyway
PROB = st.one_of(st.sampled_from([0.0, 1.0, 1e-30, 0.5]),
                 st.floats(0.0, 1.0, allow_nan=False, allow_subnormal=False, width=32))


@st.composite
def ragged(draw, layout):
  """(probs float32[S], owners int32[S]) holding up to NSOL solutions of 0-6 steps, laid out as
  `layout` promises; padding (< 0) elsewhere."""
  counts = draw(st.lists(st.integers(0, 6), min_size=NSOL, max_size=NSOL))
  while sum(counts) > S:
    counts[counts.index(max(counts))] -= 1
  pad = S - sum(counts)
  if layout == "any":
    owners = [j for j, c in enumerate(counts) for _ in range(c)]
    owners += draw(st.lists(st.sampled_from([-1, -7]), min_size=pad, max_size=pad))
    owners = draw(st.permutations(owners))
  else:
    order = list(range(NSOL)) if layout == "sorted" else draw(st.permutations(range(NSOL)))
    runs = [[j] * counts[j] for j in order if counts[j]]
    if layout == "sorted":
      gaps = [0] * len(runs) + [pad]
    else:  # padding between and around the runs, never inside one
      cuts = sorted(draw(st.lists(st.integers(0, pad), min_size=len(runs), max_size=len(runs))))
      gaps = [b - a for a, b in zip([0] + cuts, cuts + [pad])]
    owners = [-1] * gaps[0]
    for run, gap in zip(runs, gaps[1:]):
      owners += run + [-1] * gap
  probs = draw(st.lists(PROB, min_size=S, max_size=S))
  return np.asarray(probs, np.float32), np.asarray(owners, np.int32)


def reference(p, ids):
  """The aggregations in float64 NumPy, one solution at a time."""
  out = {m: np.zeros(NSOL) for m in ("prod", "min", "last", "log_prod")}
  for j in range(NSOL):
    steps = p[ids == j].astype(np.float64)
    if not len(steps):
      out["log_prod"][j] = -np.inf
      continue
    out["prod"][j], out["min"][j], out["last"][j] = steps.prod(), steps.min(), steps[-1]
    with np.errstate(divide="ignore"):
      out["log_prod"][j] = np.log(steps).sum()
  return out


@pytest.mark.parametrize("layout", ["any", "grouped", "sorted"])
def test_aggregate_step_scores_equals_a_numpy_reference(layout):
  fn = _aggregate(layout)

  @props(40)
  @given(ragged(layout))
  def check(case):
    p, ids = case
    got = {k: np.asarray(v) for k, v in fn(p, ids).items()}
    want = reference(p, ids)
    for m in ("prod", "min", "last"):
      np.testing.assert_allclose(got[m], want[m], rtol=2e-5, atol=1e-6, err_msg=m)
    lp = want["log_prod"]
    assert (np.isneginf(got["log_prod"]) == np.isneginf(lp)).all(), (got["log_prod"], lp)
    fin = np.isfinite(lp)
    np.testing.assert_allclose(got["log_prod"][fin], lp[fin], rtol=1e-5, atol=1e-3)
  check()


def test_aggregate_ragged_equals_the_sorted_layout():
  """Values + lengths (`aggregate_ragged`) on every sorted case: the sorted layout's scores."""
  import jax
  from prm_jax.scoring import LOG_PROD, METHODS, aggregate_ragged
  fn, sorted_fn = jax.jit(lambda p, n: {m: aggregate_ragged(p, n, m) for m in METHODS + (
      LOG_PROD,)}), _aggregate("sorted")

  @props(40)
  @given(ragged("sorted"))
  def check(case):
    p, ids = case
    lengths = np.bincount(ids[ids >= 0], minlength=NSOL).astype(np.int32)
    got, want = fn(p, lengths), sorted_fn(p, ids)
    for m in want:
      np.testing.assert_array_equal(np.asarray(got[m]), np.asarray(want[m]), err_msg=m)
  check()


# ----------------------------------------------------------------------------- readers

def _rows(name):
  return [json.loads(l) for l in (FIXTURES / name).read_text().splitlines() if l.strip()]


SEEDS = (_rows("prm800k/phase1_train.thirdparty_examples.jsonl")
         + _rows("prm800k/phase2_train.thirdparty_examples.jsonl")
         + _rows("prm800k/scored_test_sample.thirdparty_example.jsonl")
         + _rows("math_test.sample.jsonl")[:3]
         + [{"problem_id": "p", "problem": "Add.", "steps": ["1+1=2", "# Answer\n\n2"],
             "step_labels": [1, 1], "answer": "2", "is_correct": True, "scores": {"prm": 0.5},
             "meta": {}}])
JSON = st.recursive(st.one_of(st.none(), st.booleans(), st.integers(-3, 10**20),
                              st.floats(allow_nan=True), st.text(max_size=8)),
                    lambda inner: st.one_of(st.lists(inner, max_size=3),
                                            st.dictionaries(st.text(max_size=6), inner, max_size=3)),
                    max_leaves=8)


@st.composite
def edited_row(draw):
  """A real row of some format with a few values anywhere in it replaced, deleted or retyped."""
  import copy
  row = copy.deepcopy(draw(st.sampled_from(SEEDS)))
  for _ in range(draw(st.integers(1, 3))):
    node, depth = row, draw(st.integers(0, 4))
    for _ in range(depth):  # walk down to a random container
      kids = [k for k, v in (node.items() if isinstance(node, dict) else enumerate(node))
              if isinstance(v, (dict, list)) and v]
      if not kids:
        break
      node = node[draw(st.sampled_from(kids))]
    keys = list(node) if isinstance(node, dict) else list(range(len(node)))
    if not keys:
      continue
    key = draw(st.sampled_from(keys))
    if isinstance(node, dict) and draw(st.booleans()):
      del node[key]
    else:
      node[key] = draw(JSON)
  return row


OTHER = st.one_of(
    JSON.map(lambda v: json.dumps(v).encode()),
    st.binary(max_size=40),
    st.sampled_from([b"", b"   ", b"\xff\xfe", b'{"steps": ["a"', b"\x00", b"NaN", b"[]",
                     b'{"problem_id": "\\ud800", "problem": "x", "steps": []}']))
# mostly real rows, edited or not, so the parsers get past their first checks; the rest anything
LINE = st.integers(0, 9).flatmap(lambda k: (
    edited_row().map(lambda r: json.dumps(r).encode()) if k < 5 else
    st.sampled_from(SEEDS).map(lambda r: json.dumps(r).encode()) if k < 7 else OTHER))
FILES = st.integers(0, 5).flatmap(lambda k: st.binary(max_size=300) if k == 0 else
                                  st.lists(LINE, max_size=4).map(lambda ls: b"\n".join(ls)))

READERS = {
    "solutions": read_solutions, "problems": read_problems, "math": read_math,
    "prm800k": prm800k.read_prm800k, "scored": prm800k.read_scored_samples,
    "any": prm800k.read_any_solutions,
}


def counted_lines(data: bytes) -> int:
  """Lines a reader must account for: every line but the blank ones (undecodable ones count)."""
  n = 0
  for raw in data.split(b"\n"):
    try:
      n += bool(raw.decode("utf-8").strip())
    except UnicodeDecodeError:
      n += 1
  return n


def check_reader(read, path, data: bytes):
  path.write_bytes(data)
  lines = data.count(b"\n") + 1
  try:
    strict = list(read(str(path)))
  except DataError as e:  # the first bad line, named
    m = re.match(rf"{re.escape(str(path))}:(\d+): ", str(e))
    assert m and 1 <= int(m.group(1)) <= lines, str(e)
    strict = None
  stats = ReadStats()
  kept = list(read(str(path), skip_invalid=True, stats=stats))
  assert stats.records == len(kept)
  assert stats.records + stats.skipped + stats.dropped == counted_lines(data)  # a counted skip
  if strict is not None:
    assert stats.skipped == 0 and len(strict) == len(kept)
  else:
    assert stats.skipped > 0 and all(re.match(rf"{re.escape(str(path))}:\d+: ", x)
                                     for x in stats.errors)


@pytest.mark.parametrize("name", sorted(READERS))
def test_jsonl_readers_never_crash_on_arbitrary_bytes(name, tmp_path):
  path = tmp_path / "in.jsonl"

  @props(40)
  @given(FILES)
  def check(data):
    check_reader(READERS[name], path, data)
  check()


@pytest.mark.parametrize("line", [b"[" * 100_000 + b"]" * 100_000, b'{"steps": ' + b"7" * 5000 + b"}"],
                         ids=["deep", "long-int"])
def test_jsonl_readers_name_the_line_json_itself_refuses(line, tmp_path):
  good = json.dumps(SEEDS[-1]).encode()
  path = tmp_path / "in.jsonl"
  check_reader(read_solutions, path, good + b"\n" + line + b"\n" + good + b"\n")
  with pytest.raises(DataError, match=rf"^{re.escape(str(path))}:2: (JSON nested too deeply|"
                                      r"unreadable JSON: Exceeds the limit)"):
    list(read_solutions(str(path)))
  stats = ReadStats()
  assert len(list(read_solutions(str(path), skip_invalid=True, stats=stats))) == 2
  assert stats.skipped == 1
