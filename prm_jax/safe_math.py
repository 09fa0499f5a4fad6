"""A safe reader of answers as math: LaTeX rewritten to a small arithmetic language, parsed by a
recursive-descent parser that builds sympy objects directly.

Model output is untrusted text, so nothing here evaluates it as Python (no `sympify`, no
`parse_latex`): `parse_expression` refuses anything outside its whitelist of numbers, names,
functions and operators, and anything too large to evaluate safely (length, tokens, nesting,
exponent size, factorial) with `_Refused`. Used by prm_jax/grading.py's equivalence checks.
"""

from __future__ import annotations

import math
import re

import sympy

from prm_jax.answer_text import _brace_content

MAX_CHARS = 400   # longer expressions are refused unparsed


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
