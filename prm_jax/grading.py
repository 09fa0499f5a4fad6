"""Final-answer equivalence: is a given answer the same as the truth?

`mode="prm800k"` follows the paper's grader.py (MATH normalisation; tuples and intervals
element-wise, but bare lists, sets and unions only as a whole; two plain fractions must match
exactly; an integer answer must be given as an integer; more than two unknown letters or a risky
exponent are never evaluated; otherwise the difference must simplify to exactly 0). Model output is
untrusted text, so nothing here evaluates it as Python: answers are extracted and normalised as
text (prm_jax/answer_text.py), rewritten to a small arithmetic language and parsed into sympy by a
whitelisting parser (prm_jax/safe_math.py). Every call is bounded: structural limits (length,
exponent size, factorial) and a wall-clock limit on any thread. `answer_form` and
`forms_may_be_equal` group answers for voting.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re
import signal
import sys
import threading
import time

import sympy

from prm_jax.answer_text import (_brace_content, extract_answer, extract_boxed, normalize,
                                 strip_string)
from prm_jax.safe_math import MAX_CHARS, _Refused, latex_to_plain, parse_expression

__all__ = ["AnswerForm", "MAX_ANSWER", "MAX_CHARS", "TIME_LIMIT_S", "answer_form",
           "extract_answer", "extract_boxed", "forms_may_be_equal", "grade_answer",
           "latex_to_plain", "normalize", "parse_expression", "strip_string"]

TIME_LIMIT_S = 2.0
MAX_ANSWER = 4 * MAX_CHARS  # longer answers are never normalised: each equals only itself


# ----------------------------------------------------------------------------- equivalence

_THOUSANDS = re.compile(r"(\d),(\d\d\d)($|\D)")


def _strip_thousands(s: str) -> str:
  """grader.py's `_strip_properly_formatted_commas`: `1,000,000` -> `1000000`, repeated to a fixed
  point (each pass consumes the digit after a group), while `1, 2` and `1,00` keep their commas."""
  while True:
    stripped = _THOUSANDS.sub(r"\1\2\3", s)
    if stripped == s:
      return s
    s = stripped


def _number(s: str) -> float:
  """`float` of a number written with thousands separators (ValueError if it is none)."""
  return float(_strip_thousands(s))


def _is_int_str(s: str) -> bool:
  """An integer written as a number (`5`, `5.0`, `1,000`): what grader.py's integer rule sees."""
  try:
    f = _number(s)
  except ValueError:
    return False
  return math.isfinite(f) and abs(f - round(f)) <= 1e-7


_FRAC = re.compile(r"^-?[0-9]+\.?/0*[1-9][0-9]*\.?$")
_NAMED_LETTERS = {"pi": "pi", "infty": "inf"}  # the letters grader.py sees after latex2text
_NO_LETTERS = ("sqrt", "frac", "cdot", "times", "div")


def _unknown_letters(*exprs: str) -> int:
  """Distinct letters the expressions name, as grader.py counts them before it agrees to evaluate.

  `sqrt` and `frac` are not letters; `\\pi` is two (p, i) and `\\infty` three (i, n, f), as in
  grader.py's text rendering; any other command counts once.
  """
  letters: set[str] = set()
  for e in exprs:
    for name in re.findall(r"\\([a-zA-Z]+)", e):
      if name in _NAMED_LETTERS:
        letters.update(_NAMED_LETTERS[name])
      elif name not in _NO_LETTERS:
        letters.add("\\" + name)
    letters.update(c for c in re.sub(r"\\[a-zA-Z]+", "", e) if c.isalpha())
  return len(letters)


def _exponents_allowed(expr: str) -> bool:
  """grader.py's guards against sympy hanging on powers (its BAD_SUBSTRINGS and BAD_REGEXES).

  An exponent is one digit or one letter, optionally negative and in braces (`x^2`, `x^{-1}`):
  two or more digits (`x^{10}`), a parenthesised or compound exponent (`x^(2)`, `x^{n+1}`) and
  towers (`2^2^2`) are refused. grader.py sees `x^{10}` as `x^10` once braces are dropped.
  """
  for m in re.finditer(r"\^", expr):
    rest = expr[m.end():].lstrip()
    if rest.startswith("("):
      return False
    if rest.startswith("{"):
      got = _brace_content(rest, 0)
      if got is None or not re.fullmatch(r"-?(?:[0-9]|[a-zA-Z])", got[0].strip()):
        return False
      rest = rest[got[1]:]
    else:
      digits = re.match(r"[0-9]+", rest)
      if digits and len(digits.group(0)) > 1:
        return False
      rest = rest[digits.end():] if digits else rest[1:]
    if rest.lstrip().startswith("^"):
      return False
  return True


def _may_evaluate(given: str, truth: str) -> bool:
  """grader.py's `should_allow_eval`: at most two unknown letters, no risky powers."""
  return _unknown_letters(given, truth) <= 2 and all(map(_exponents_allowed, (given, truth)))


def _exactly_equal(a: sympy.Expr, b: sympy.Expr) -> bool:
  """Equal when sympy simplifies the difference to 0 (as grader.py does): 1.4142135624 is not
  sqrt(2). Decimals were parsed exactly, so 0.1 + 0.2 is 0.3."""
  if a == b:
    return True
  if a.is_Rational and b.is_Rational:
    return False
  bad = (sympy.oo, -sympy.oo, sympy.zoo, sympy.nan)
  if a.has(*bad) or b.has(*bad):
    return False
  return sympy.simplify(a - b) == 0


def _renders_equal(g: str, t: str) -> bool:
  """grader.py's first test on two whole normalised answers: the same text once the LaTeX is
  rendered (`(\\sqrt{2},1)` is `(sqrt(2),1)`), before any tuple split."""
  try:
    return latex_to_plain(g).replace(" ", "") == latex_to_plain(t).replace(" ", "")
  except (ValueError, IndexError):
    return False


def _element_equal(g: str, t: str, whole: bool = True) -> bool:
  """grader.py's comparison of two normalised answers (`whole`: also equal when they render to
  the same text) or of two elements of a tuple, which are only ever compared as fractions,
  integers or by sympy (so `(abc)` is not `abc`, and `(52_8)` is `528`)."""
  if whole and g == t:
    return True
  if not g or not t:
    return False
  try:
    gp, tp = latex_to_plain(g), latex_to_plain(t)
  except (ValueError, IndexError):
    return False
  gp_c, tp_c = gp.replace(" ", ""), tp.replace(" ", "")
  if whole and gp_c == tp_c:  # `_renders_equal`, on the renderings already made
    return True
  if _FRAC.match(gp_c) and _FRAC.match(tp_c):  # two plain fractions: as written (2/4 is not 1/2)
    return gp_c == tp_c
  if _is_int_str(gp_c) != _is_int_str(tp_c):
    return False  # an integer answer must be given as an integer (not 10/2, not \\sqrt{25})
  if _is_int_str(gp_c):  # both: their values (Python's float reads `52_8` as 528, as grader.py)
    return _number(gp_c) == _number(tp_c)
  if not _may_evaluate(g, t):
    return False
  try:
    return _exactly_equal(parse_expression(gp), parse_expression(tp))
  except (_Refused, TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError,
          AttributeError):
    return False


def _matrix(s: str) -> list[list[str]] | None:
  m = re.fullmatch(r"\\begin\{[pbv]?matrix\}(.*)\\end\{[pbv]?matrix\}", s)
  if not m:
    return None
  return [row.split("&") for row in m.group(1).split("\\\\") if row != ""]


def _split_tuple(s: str) -> list[str]:
  """grader.py's `split_tuple`: a tuple or interval (`(`/`[` ... `)`/`]`, no bracket inside) is
  its comma-separated elements; anything else (a bare list `1, 2`, a set, a union, nested
  tuples) is one element, equal only as a whole. Thousands separators go first, as there
  (`(1,000)` is one element, `(1, 1,000)` two)."""
  s = _strip_thousands(s)
  if len(s) > 2 and s[0] in "()[]" and s[-1] in "()[]" and not any(c in s[1:-1] for c in "()[]"):
    return [e.strip() for e in s[1:-1].split(",")]
  return [s]


def _grade_normalized(g: str, t: str) -> bool:
  if g == t or _renders_equal(g, t):
    return True
  gm, tm = _matrix(g), _matrix(t)
  if gm is not None or tm is not None:
    if gm is None or tm is None or [len(r) for r in gm] != [len(r) for r in tm]:
      return False
    return all(_element_equal(a, b) for ra, rb in zip(gm, tm) for a, b in zip(ra, rb))
  ge, te = _split_tuple(g), _split_tuple(t)
  if len(te) > 1 and (g[0] != t[0] or g[-1] != t[-1]):
    return False  # (a,b) is not [a,b]
  return len(ge) == len(te) and all(_element_equal(a, b, whole=False) for a, b in zip(ge, te))


class _Timeout(BaseException):
  """The time bound ran out (a BaseException, so no `except Exception` inside sympy swallows it)."""


@contextlib.contextmanager
def _time_limit(seconds: float):
  """A wall-clock bound on pure-Python work, on any thread.

  The main thread uses a SIGALRM timer. Signals reach only the main thread, so elsewhere (a thread
  pool grading samples) a trace hook checks the clock at every Python function call and raises
  there: sympy is pure Python and calls functions constantly, and the structural limits keep the C
  parts (big integers) small. The hook returns None, so no per-line tracing slows the work.
  """
  if threading.current_thread() is threading.main_thread() and hasattr(signal, "setitimer"):
    def on_alarm(*_):
      raise _Timeout()
    previous = signal.signal(signal.SIGALRM, on_alarm)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
      yield
    finally:
      signal.setitimer(signal.ITIMER_REAL, 0)
      signal.signal(signal.SIGALRM, previous)
    return
  deadline = time.monotonic() + seconds
  previous = sys.gettrace()

  def check(frame, event, arg):
    if time.monotonic() > deadline:
      raise _Timeout()  # Python unsets a trace function that raises
    return None
  sys.settrace(check)
  try:
    yield
  finally:
    sys.settrace(previous)


def _grade_prm800k(given: str, truth: str) -> bool:
  if strip_string(given) == strip_string(truth):
    return True
  g, t = normalize(given), normalize(truth)
  if not g or not t:
    return False
  return _grade_normalized(g, t)


# (`\lambda` is LaTeX, not Python's lambda)
_PYTHONISH = re.compile(r"__|\bimport\b|\beval\b|\bexec\b|(?<!\\)\blambda\b|[`;]|\bos\.|\bsys\.")


def _grade_math_verify(given: str, truth: str) -> bool:
  try:
    import math_verify
  except ImportError as e:
    raise ImportError("mode='math_verify' needs the math-verify package (pip install math-verify)"
                      ) from e
  # Only the LaTeX extractor (an ANTLR parser), never the plain-expression one (sympy.parse_expr);
  # text that looks like Python is refused before it reaches the library at all.
  if _PYTHONISH.search(given) or _PYTHONISH.search(truth):
    return False
  # math_verify bounds itself with signal.alarm, which exists only on the main thread; elsewhere
  # its timeouts must be off and `_time_limit`'s profile hook bounds it instead.
  on_main = threading.current_thread() is threading.main_thread()
  limit = max(1, math.ceil(TIME_LIMIT_S)) if on_main else None
  cfg = [math_verify.LatexExtractionConfig()]
  wrap = lambda s: s if "$" in s or "\\boxed" in s else f"${s}$"
  gold = math_verify.parse(wrap(truth), extraction_config=cfg, parsing_timeout=limit)
  pred = math_verify.parse(wrap(given), extraction_config=cfg, parsing_timeout=limit)
  if not gold or not pred:
    return False
  return bool(math_verify.verify(gold, pred, timeout_seconds=limit))


def grade_answer(given: str | None, truth: str | None, mode: str = "prm800k") -> bool:
  """True when `given` is equivalent to `truth`. Bounded in time; never evaluates its input."""
  if mode not in ("prm800k", "math_verify"):
    raise ValueError(f"grading mode {mode!r}; expected 'prm800k' or 'math_verify'")
  if given is None or truth is None:
    return False
  given, truth = str(given), str(truth)
  if not given.strip():
    return False
  if given.strip() == truth.strip():
    return True  # what any normalisation would conclude, at any length
  if len(given) > MAX_ANSWER or len(truth) > MAX_ANSWER:
    return False  # the normalising regexes are C code no time limit interrupts: bound their input
  on_main = threading.current_thread() is threading.main_thread()
  # on the main thread math_verify sets its own alarms, which would cancel ours
  bound = (contextlib.nullcontext() if mode == "math_verify" and on_main
           else _time_limit(TIME_LIMIT_S))
  try:
    with bound:
      if mode == "prm800k":
        return _grade_prm800k(given, truth)
      return _grade_math_verify(given, truth)
  except (_Timeout, RecursionError):
    return False


# ----------------------------------------------------------------------------- grouping

@dataclasses.dataclass(frozen=True)
class AnswerForm:
  """One answer normalised once, for grouping many answers (best-of-N pools of 1860 samples).

  `mathd` and `norm` are the two normal forms `grade_answer` compares as strings; `values` is a
  numeric fingerprint (shape, then one complex value per element at a fixed point, None where
  unknown) that two answers the grader calls equal always share.
  """

  raw: str
  mathd: str
  norm: str
  values: tuple | None


def _element_value(e: str) -> complex | None:
  try:
    expr = parse_expression(latex_to_plain(e))
    point = {x: sympy.Rational(1000 + 37 * (sum(map(ord, str(x))) % 97), 997)
             for x in expr.free_symbols}
    v = complex(expr.evalf(20, subs=point))
  except (_Refused, TypeError, ValueError, ZeroDivisionError, OverflowError, RecursionError,
          AttributeError, IndexError):
    return None
  return v if math.isfinite(abs(v)) else None


def _fingerprint(s: str) -> tuple | None:
  """Mirrors `_grade_normalized`'s structure: matrix, tuple or interval, element."""
  mat = _matrix(s)
  if mat is not None:
    return ("matrix", tuple(tuple(_element_value(c) for c in row) for row in mat))
  parts = _split_tuple(s)
  if len(parts) > 1:
    return ("tuple", s[0], s[-1], tuple(_element_value(x) for x in parts))
  return ("element", _element_value(s))


def answer_form(answer: str) -> AnswerForm:
  """Normalises `answer` once (bounded in time like `grade_answer`)."""
  answer = str(answer)
  if len(answer) > MAX_ANSWER:  # grade_answer calls it equal only to itself: no normal form
    return AnswerForm(answer, "", "", None)
  try:
    with _time_limit(TIME_LIMIT_S):
      mathd, norm = strip_string(answer), normalize(answer) or ""
      values = _fingerprint(norm) if norm else None
  except (_Timeout, RecursionError):
    return AnswerForm(answer, "", "", None)
  return AnswerForm(answer, mathd, norm, values)


def _same_value(a, b) -> bool:
  """False only when the fingerprints prove the values differ (None: unknown, may be equal)."""
  if a is None or b is None:
    return True
  if isinstance(a, complex) and isinstance(b, complex):
    return abs(a - b) <= 1e-6 * max(1.0, abs(a), abs(b))
  if isinstance(a, tuple) and isinstance(b, tuple):
    return len(a) == len(b) and all(_same_value(x, y) for x, y in zip(a, b))
  return a == b  # kinds and bracket characters


def forms_may_be_equal(a: AnswerForm, b: AnswerForm, mode: str = "prm800k") -> bool:
  """A cheap necessary condition for `grade_answer(a.raw, b.raw, mode)`; True when unsure.

  Equal normal forms are equal. Otherwise the grader calls two answers equal only through
  `_grade_normalized`, whose shape rules and exact equality imply equal fingerprints.
  """
  if len(a.raw) > MAX_ANSWER or len(b.raw) > MAX_ANSWER:
    return a.raw.strip() == b.raw.strip()  # never normalised: equal only to itself
  if (a.mathd and a.mathd == b.mathd) or (a.norm and a.norm == b.norm):
    return True
  if mode != "prm800k" or a.values is None or b.values is None:
    return True
  return _same_value(a.values, b.values)
