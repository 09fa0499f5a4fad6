"""Final-answer extraction and the MATH normalisation of answers: the text side of grading.

`extract_answer` finds a solution's final answer (its `# Answer` line or last `\\boxed{...}`);
`normalize` is grader.py's normalisation (units, text commands, money, percent, thousands
separators, `x=` prefixes, integral floats), applied to both sides before they are compared
(prm_jax/grading.py). Pure string work: linear in the input, nothing evaluated.
"""

from __future__ import annotations

import math
import re


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
