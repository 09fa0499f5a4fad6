"""Final-answer extraction and equivalence.

`mode="prm800k"` follows the paper's grader.py (MATH normalisation; tuples and intervals
element-wise, but bare lists, sets and unions only as a whole; two plain fractions must match
exactly; an integer answer must be given as an integer; more than two unknown letters or a risky
exponent are never evaluated; otherwise the difference must simplify to exactly 0). Model output is
untrusted text, so nothing here evaluates it as Python: LaTeX is rewritten to a small arithmetic
language and parsed by `parse_expression`, a recursive-descent parser that builds sympy objects
directly and refuses anything outside a whitelist. Every call is bounded: structural limits (length,
exponent size, factorial) and a wall-clock limit on any thread.
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

TIME_LIMIT_S = 2.0
MAX_CHARS = 400
MAX_ANSWER = 4 * MAX_CHARS  # longer answers are never normalised: each equals only itself


# ----------------------------------------------------------------------------- extraction

def _brace_content(s: str, open_idx: int) -> tuple[str, int] | None:
  """Content of the {...} group opening at `open_idx` and the index after it (nesting aware)."""
  if open_idx >= len(s) or s[open_idx] != "{":
    return None
  depth = 0
  for i in range(open_idx, len(s)):
    if s[i] == "{":
      depth += 1
    elif s[i] == "}":
      depth -= 1
      if depth == 0:
        return s[open_idx + 1:i], i + 1
  return None


def _closing_braces(text: str) -> dict[int, int]:
  """Index of each `{` that is closed -> index of its `}`, in one pass (an unclosed one is absent)."""
  out, stack = {}, []
  for i, c in enumerate(text):
    if c == "{":
      stack.append(i)
    elif c == "}" and stack:
      out[stack.pop()] = i
  return out


_BOXED = re.compile(r"\\(?:boxed|fbox)\s*")
_BARE = re.compile(r"[^\s$]+")


def extract_boxed(text: str | None) -> str | None:
  """Content of the last `\\boxed{...}` / `\\fbox{...}` (nested braces handled; `\\boxed 5` too).

  Linear in the text: the brace pairs are found in one pass, not one scan per unclosed box (a
  sample of 100k unclosed `\\boxed{` took minutes).
  """
  if not text:
    return None
  closing = None
  for m in reversed(list(_BOXED.finditer(text))):
    j = m.end()
    if j < len(text) and text[j] == "{":
      if closing is None:
        closing = _closing_braces(text)
      if j in closing:
        return text[j + 1:closing[j]]
    elif m.group(0).endswith(" ") or (j < len(text) and text[j] != "{"):
      rest = _BARE.match(text, j)
      if rest:
        return rest.group(0)
  return None


def extract_answer(text: str | None) -> str | None:
  """The final answer of a solution: the text after the last `# Answer` line, else the last box."""
  if not text:
    return None
  parts = re.split(r"(?m)^#\s*Answer\s*$", text)
  if len(parts) > 1:
    ans = parts[-1].strip()
    return ans if ans else None
  return extract_boxed(text)


# ----------------------------------------------------------------------------- normalisation

_UNITS = (
    "degrees", "degree", "cm", "centimeters", "centimeter", "meters", "meter", "mm", "km", "kilometers",
    "miles", "mile", "inches", "inch", "feet", "foot", "ft", "yards", "yard", "units", "unit",
    "seconds", "second", "minutes", "minute", "hours", "hour", "days", "day", "weeks", "week",
    "months", "month", "years", "year", "dollars", "dollar", "cents", "cent", "sq", "square",
    "cubic", "mph", "pounds", "pound", "ounces", "ounce", "grams", "gram", "kg", "liters", "liter",
    "p.m.", "a.m.", "pm", "am", "students", "people", "marbles", "ways", "points", "edges",
)


# A unit after a number, `}`, `)`, `.` or a space. A match may start only where the previous
# character is one of those and the whitespace before the unit is matched from its first
# character (or its second, after any other character, as the lookbehind `[\d}).\s]` allowed):
# starting anywhere inside a run of spaces made every start rescan the run, quadratic in its length.
_UNITS_RE = re.compile(
    r"(?:(?<=[\d}).])|(?<=\s)(?<![\d}).\s]\s))\s*(?:"
    + "|".join(re.escape(u) for u in sorted(_UNITS, key=len, reverse=True))
    + r")(?:\^?\{?\d\}?)?(?![a-zA-Z])")


def _fix_fracs(s: str) -> str:
  """`\\frac12` -> `\\frac{1}{2}`, `\\frac1{2}` -> `\\frac{1}{2}`, `\\frac{1}2` -> `\\frac{1}{2}`."""
  out, i = [], 0
  while i < len(s):
    if s.startswith("\\frac", i):
      out.append("\\frac")
      i += 5
      for _ in range(2):
        if i < len(s) and s[i] == "{":
          got = _brace_content(s, i)
          if got is None:
            return "".join(out) + s[i:]
          out.append("{" + got[0] + "}")
          i = got[1]
        elif i < len(s) and s[i] not in "\\":
          out.append("{" + s[i] + "}")
          i += 1
    else:
      out.append(s[i])
      i += 1
  return "".join(out)


def _fix_sqrt(s: str) -> str:
  """`\\sqrt3` -> `\\sqrt{3}` (a one-character radicand written without braces)."""
  return re.sub(r"\\sqrt(?![\[{a-zA-Z])\s*([^\s{\\\[])", r"\\sqrt{\1}", s)


def strip_string(s: str) -> str:
  """The MATH dataset's normalisation (Hendrycks et al.), written from its documented behaviour."""
  s = s.replace("\n", "").replace("\\!", "").replace("\\\\", "\\")
  s = s.replace("tfrac", "frac").replace("dfrac", "frac")
  s = s.replace("\\left", "").replace("\\right", "")
  s = s.replace("^{\\circ}", "").replace("^\\circ", "")
  s = s.replace("\\$", "").replace("$", "")
  if re.search(r"[\d}]\s*\\text\{\s", s):  # `\s*[a-zA-Z. ]*` split a run of spaces every way
    s = re.sub(r"\\text\{\s*(?:[a-zA-Z.][a-zA-Z. ]*)?\}\s*$", "", s)
  s = s.replace("\\%", "").replace("%", "")
  s = s.replace(" .", " 0.").replace("{.", "{0.")
  if s.startswith("."):
    s = "0" + s
  if "=" in s and len(s.split("=")[0].strip()) <= 2:
    s = s.split("=", 1)[1]
  s = _fix_sqrt(s)
  s = s.replace(" ", "")
  s = _fix_fracs(s)
  if s == "0.5":
    s = "\\frac{1}{2}"
  m = re.fullmatch(r"(-?\d+)/(\d+)", s)
  if m:
    s = f"\\frac{{{m.group(1)}}}{{{m.group(2)}}}"
  return s


def _unwrap_command(s: str, name: str) -> str:
  """`\\name{X}` -> `X` everywhere (nesting aware), in one left-to-right pass: linear time.

  The stack holds one entry per open brace: None for a kept `{`, else where an unwrapped
  `\\name{` began in the output and in `s`. The output is matched as it grows, so a `\\name{`
  that forms only once an inner one is removed is unwrapped too, as repeated search-and-replace
  did. The first `\\name{` never closed keeps itself and everything after it as written.
  """
  key = "\\" + name
  if key + "{" not in s:
    return s
  out: list[str] = []
  stack: list[tuple[int, int] | None] = []
  for i, c in enumerate(s):
    if c == "{":
      if "".join(out[-len(key):]) == key:
        del out[-len(key):]
        stack.append((len(out), i))
      else:
        stack.append(None)
        out.append(c)
    elif c == "}" and stack:
      if stack.pop() is None:
        out.append(c)
    else:
      out.append(c)
  unclosed = next((e for e in stack if e is not None), None)
  if unclosed is not None:
    return "".join(out[:unclosed[0]]) + key + s[unclosed[1]:]
  return "".join(out)


def normalize(expr: str | None) -> str | None:
  """The grader's normalisation: units, text, money, percent, commas, `x=` prefixes, integral floats."""
  if expr is None:
    return None
  s = expr.strip()
  for name in ("text", "textbf", "mbox", "mathrm", "mathbf", "textnormal", "boxed"):
    s = _unwrap_command(s, name)
  s = s.replace("\\%", "%").replace("\\$", "$").replace("$", "").replace("%", "")
  s = s.replace("\\!", "").replace("\\,", "").replace("\\;", "").replace("\\:", "")
  s = re.sub(r"(?<!\\)\\ ", " ", s).replace("~", " ")  # `\ ` is a space, `\\ ` a row break
  s = s.replace("\\left", "").replace("\\right", "").replace("\\displaystyle", "")
  s = s.replace("dfrac", "frac").replace("tfrac", "frac")
  s = re.sub(r"\^\s*(?:\{\s*)?\\circ\s*\}?", "", s).replace("°", "")  # one `\s*` per gap
  s = s.replace(" or ", " , ").replace(" and ", " , ")
  s = re.sub(r"\\(?:le|ge|lt|gt)\b", lambda m: {"\\le": "<=", "\\ge": ">=", "\\lt": "<",
                                                  "\\gt": ">"}[m.group(0)], s)
  s = s.replace("million", "*10^6").replace("billion", "*10^9").replace("trillion", "*10^12")
  s = _UNITS_RE.sub("", s)
  s = s.strip()
  if s.startswith("{") and s.endswith("}") and _brace_content(s, 0) == (s[1:-1], len(s)):
    s = s[1:-1]
  lhs = s.split("=")[0]
  if "=" in s and len(lhs.strip()) <= 2 and "\\" not in lhs and lhs[-1:] not in ("<", ">", "!"):
    s = s.split("=", 1)[1]  # `x = 5`, not `x >= 5` (`\\ge` was rewritten to `>=` above)
  s = _fix_fracs(s)
  if re.fullmatch(r"-?\d{1,3}(,\d{3})+(\.\d+)?", s.replace(" ", "")):
    s = s.replace(",", "")
  m = re.fullmatch(r"\s*(-?\d+)\s+(\d+)\s*/\s*(\d+)\s*", s)  # mixed number 7 3/4
  if m:
    s = f"{m.group(1)}+{m.group(2)}/{m.group(3)}"
  m = re.fullmatch(r"\s*(-?\d+)\s*\\frac\{(\d+)\}\{(\d+)\}\s*", s)  # 7\frac{3}{4}
  if m:
    s = f"{m.group(1)}+{m.group(2)}/{m.group(3)}"
  s = _fix_sqrt(s)
  s = _fix_fracs(s)
  s = s.replace(" ", "")
  s = re.sub(r"_\{(\w+)\}", r"_\1", s)
  try:
    f = float(s)
    if math.isfinite(f) and abs(f - round(f)) <= 1e-7 and abs(f) < 1e15:  # grader.py's _is_int
      s = str(int(round(f)))
  except ValueError:
    pass
  s = s.lower()
  return s


# ----------------------------------------------------------------------------- LaTeX -> plain

_GREEK = {"pi": "pi", "infty": "oo", "theta": "theta", "alpha": "alpha", "beta": "beta"}
_COMMANDS = sorted(list(_GREEK) + ["cdot", "times", "div", "sin", "cos", "tan", "log", "ln", "exp"],
                   key=len, reverse=True)


def latex_to_plain(s: str) -> str:
  """Rewrites the LaTeX of a normalised answer into the arithmetic language of `parse_expression`.

  `\\frac{1}{2}` with plain integers stays `1/2` (so two fractions can be compared as written);
  other fractions become `((A)/(B))`.
  """
  out, i = [], 0
  while i < len(s):
    c = s[i]
    if s.startswith("\\frac{", i):
      num = _brace_content(s, i + 5)
      den = _brace_content(s, num[1]) if num else None
      if not num or not den:
        raise ValueError("unbalanced \\frac")
      a, b = latex_to_plain(num[0]), latex_to_plain(den[0])
      simple = re.fullmatch(r"-?\d+", a) and re.fullmatch(r"\d+", b)
      out.append(f"{a}/{b}" if simple and not out else f"(({a})/({b}))")
      i = den[1]
    elif s.startswith("\\sqrt[", i):
      j = s.index("]", i)
      rad = _brace_content(s, j + 1)
      if not rad:
        raise ValueError("unbalanced \\sqrt")
      out.append(f"(({latex_to_plain(rad[0])})^(1/({latex_to_plain(s[i + 6:j])})))")
      i = rad[1]
    elif s.startswith("\\sqrt{", i):
      rad = _brace_content(s, i + 5)
      if not rad:
        raise ValueError("unbalanced \\sqrt")
      out.append(f"sqrt({latex_to_plain(rad[0])})")
      i = rad[1]
    elif c == "\\":
      m = re.match(r"\\([a-zA-Z]+)", s[i:])
      if not m:
        out.append(s[i:i + 2])
        i += 2
        continue
      name = m.group(1)
      known = next((k for k in _COMMANDS if name.startswith(k)), None)
      if known and known != name:  # `\\pir`: spaces were removed after `\\pi`
        name = known
        m = re.match(r"\\" + known, s[i:])
      if name in ("cdot", "times"):
        out.append("*")
      elif name == "div":
        out.append("/")
      elif name in _GREEK:
        out.append(f" {_GREEK[name]} ")
      elif name in ("sin", "cos", "tan", "log", "ln", "exp"):
        out.append(f" {name} ")
      else:
        out.append("\\" + name)  # left for the parser to refuse
      i += len(m.group(0))
    elif c == "{":
      got = _brace_content(s, i)
      if not got:
        raise ValueError("unbalanced {")
      out.append(f"({latex_to_plain(got[0])})")
      i = got[1]
    else:
      out.append(c)
      i += 1
  return "".join(out)


# ----------------------------------------------------------------------------- safe parser

class _Refused(Exception):
  """Input outside the whitelist or too large to evaluate safely."""


_TOKEN = re.compile(r"\s*(?:(\d+\.\d*|\.\d+|\d+)|([a-z]+)|(\*\*|[-+*/^()!]))")
_FUNCS = {"sqrt": sympy.sqrt, "sin": sympy.sin, "cos": sympy.cos, "tan": sympy.tan,
          "log": sympy.log, "ln": sympy.log, "exp": sympy.exp}
_CONSTS = {"pi": sympy.pi, "oo": sympy.oo, "theta": sympy.Symbol("theta"),
           "alpha": sympy.Symbol("alpha"), "beta": sympy.Symbol("beta")}
_NAMES = sorted(list(_FUNCS) + list(_CONSTS), key=len, reverse=True)


def _tokens(s: str) -> list[tuple[str, str]]:
  out, pos = [], 0
  s = s.rstrip()
  while pos < len(s):
    m = _TOKEN.match(s, pos)
    if not m:
      raise _Refused(f"unexpected character {s[pos]!r}")
    num, word, op = m.groups()
    if num is not None:
      out.append(("num", num))
    elif word is not None:  # known names, else single-letter symbols (xy = x*y)
      j = 0
      while j < len(word):
        name = next((n for n in _NAMES if word.startswith(n, j)), word[j])
        out.append(("name", name))
        j += len(name)
    else:
      out.append(("op", "^" if op == "**" else op))
    pos = m.end()
  if len(out) > 200:
    raise _Refused("too many tokens")
  return out


class _Parser:
  """expr := term (('+'|'-') term)* ; term := unary (('*'|'/'|implicit) unary)* ;
  unary := ('+'|'-') unary | power ; power := postfix ('^' unary)? ; postfix := atom '!'* ;
  atom := number | name | func atom | '(' expr ')'."""

  def __init__(self, tokens):
    self.t, self.i, self.depth = tokens, 0, 0

  def peek(self):
    return self.t[self.i] if self.i < len(self.t) else ("end", "")

  def take(self, kind=None, value=None):
    tok = self.peek()
    if (kind and tok[0] != kind) or (value and tok[1] != value):
      raise _Refused(f"expected {value or kind}, got {tok[1] or 'end'}")
    self.i += 1
    return tok

  def parse(self):
    e = self.expr()
    if self.i != len(self.t):
      raise _Refused(f"trailing {self.peek()[1]!r}")
    return e

  def expr(self):
    self.depth += 1
    if self.depth > 60:
      raise _Refused("nesting too deep")
    e = self.term()
    while self.peek() in (("op", "+"), ("op", "-")):
      op = self.take()[1]
      r = self.term()
      e = e + r if op == "+" else e - r
    self.depth -= 1
    return e

  def _starts_atom(self):
    k, v = self.peek()
    return k in ("num", "name") or (k, v) == ("op", "(")

  def term(self):
    e = self.unary()
    while True:
      k, v = self.peek()
      if (k, v) in (("op", "*"), ("op", "/")):
        self.take()
        r = self.unary()
        if v == "/":
          if r == 0:
            raise _Refused("division by zero")
          e = e / r
        else:
          e = e * r
      elif self._starts_atom():
        e = e * self.power()
      else:
        return e

  def unary(self):
    if self.peek() == ("op", "-"):
      self.take()
      return -self.unary()
    if self.peek() == ("op", "+"):
      self.take()
      return self.unary()
    return self.power()

  def power(self):
    base = self.postfix()
    if self.peek() == ("op", "^"):
      self.take()
      exp = self.unary()
      if exp.is_number:
        if not exp.is_finite or abs(float(exp)) > 400:
          raise _Refused("exponent too large")
        if base.is_number and base.is_finite:
          b = abs(complex(base))
          if b > 1 and abs(float(exp)) * math.log2(b) > 4000:
            raise _Refused("power too large")
      elif exp.has(sympy.Pow) and not base.is_number:
        raise _Refused("symbolic tower")
      return base ** exp
    return base

  def postfix(self):
    e = self.atom()
    while self.peek() == ("op", "!"):
      self.take()
      if not (e.is_Integer and 0 <= int(e) <= 300):
        raise _Refused("factorial of a non-integer or too large")
      e = sympy.factorial(e)
    return e

  def atom(self):
    k, v = self.peek()
    if k == "num":
      self.take()
      return sympy.Integer(v) if v.isdigit() else sympy.Rational(v)  # exact decimals
    if k == "name":
      self.take()
      if v in _FUNCS:
        return _FUNCS[v](self.power() if self.peek() != ("op", "(") else self.atom())
      return _CONSTS.get(v) or sympy.Symbol(v)
    if (k, v) == ("op", "("):
      self.take()
      e = self.expr()
      self.take("op", ")")
      return e
    raise _Refused(f"unexpected {v or 'end'}")


def parse_expression(plain: str) -> sympy.Expr:
  """Parses the whitelisted arithmetic language into sympy without evaluating any Python."""
  if len(plain) > MAX_CHARS:
    raise _Refused("too long")
  return _Parser(_tokens(plain)).parse()


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
