"""Stop conditions that work on any tokenizer, inside the jitted decode loop.

A stop condition is a character automaton (the PRM800K answer line; any stop string). Running it over
each vocabulary entry's text from every state gives a token-level table `next[state, token]`, so the
decode loop advances every row's state with one gather per automaton per token, however the tokenizer
merges characters (byte-level BPE writes "\\n\\n" or ".\\n" as one token). The host then cuts the
decoded text at the exact character where the automaton accepted (`cut_text`).
"""

from __future__ import annotations

import dataclasses
from typing import Callable, Sequence

import numpy as np

from prm_jax.step_format import ANSWER_HEADER


@dataclasses.dataclass(frozen=True)
class CharAutomaton:
  """A deterministic automaton over characters: `step(state, ch)`, `accepting` states, state 0 at
  the start; the last `drop` characters read when it accepts are not part of the output."""

  num_states: int
  step: Callable[[int, str], int]
  accepting: frozenset[int]
  name: str
  drop: int

  def token_table(self, texts: Sequence[str]) -> np.ndarray:
    """int[num_states, len(texts)]: the state after reading each token's text from each state
    (accepting states absorb)."""
    alphabet = sorted({c for t in texts for c in t})
    # the transition on a character only depends on its class: one column per character seen
    delta = np.array([[self.step(s, c) if s not in self.accepting else s for c in alphabet]
                      for s in range(self.num_states)], np.int32)
    index = {c: i for i, c in enumerate(alphabet)}
    width = max((len(t) for t in texts), default=0)
    chars = np.full((len(texts), width), -1, np.int32)
    for i, t in enumerate(texts):
      chars[i, :len(t)] = [index[c] for c in t]
    table = np.empty((self.num_states, len(texts)), np.int32)
    for s in range(self.num_states):
      state = np.full(len(texts), s, np.int32)
      for j in range(width):
        c = chars[:, j]
        live = c >= 0
        state = np.where(live, delta[state, np.where(live, c, 0)], state)
      table[s] = state
    return table

  def accept_at(self, text: str) -> int | None:
    """The index in `text` where the output ends, or None if it never accepts."""
    state = 0
    for i, c in enumerate(text):
      state = self.step(state, c)
      if state in self.accepting:
        return i + 1 - self.drop
    return None


def answer_line() -> CharAutomaton:
  """Accepts at the newline that ends the first non-blank line after a line reading `# Answer`
  (PRM800K's "...\\n\\n# Answer\\n\\n<answer>"): generation stops after the answer, not before it."""
  header = ANSWER_HEADER
  line_start, mid_line = 0, 1
  first_header = 2                            # states 2 .. 2 + len(header) - 1: header[:k] read
  header_done = first_header + len(header) - 1
  waiting, answer, done = header_done + 1, header_done + 2, header_done + 3

  def step(s: int, c: str) -> int:
    if s == done:
      return done
    if s == answer:
      return done if c == "\n" else answer
    if s == waiting:
      return waiting if c in " \t\r\n" else answer
    if s == line_start:
      return line_start if c == "\n" else (first_header if c == header[0] else mid_line)
    if s == mid_line:
      return line_start if c == "\n" else mid_line
    k = s - first_header + 1                  # header characters read so far
    if k == len(header):
      return waiting if c == "\n" else (header_done if c in " \t\r" else mid_line)
    if c == header[k]:
      return s + 1
    return line_start if c == "\n" else mid_line
  return CharAutomaton(done + 1, step, frozenset({done}), "answer", drop=1)


def stop_string(pattern: str) -> CharAutomaton:
  """Accepts when `pattern` has been read (KMP); the output ends before the pattern."""
  if not pattern:
    raise ValueError("an empty stop string")
  fail = [0] * (len(pattern) + 1)
  k = 0
  for i in range(1, len(pattern)):
    while k and pattern[i] != pattern[k]:
      k = fail[k]
    k += pattern[i] == pattern[k]
    fail[i + 1] = k

  def step(s: int, c: str) -> int:
    if s == len(pattern):
      return s
    while s and c != pattern[s]:
      s = fail[s]
    return s + 1 if c == pattern[s] else 0
  return CharAutomaton(len(pattern) + 1, step, frozenset({len(pattern)}), f"stop {pattern!r}",
                       drop=len(pattern))


@dataclasses.dataclass
class StopTables:
  """Every stop automaton's token table, stacked: `next` int[A, S, V], `accept` bool[A, S]."""

  automata: list[CharAutomaton]
  next: np.ndarray
  accept: np.ndarray

  @classmethod
  def build(cls, automata: Sequence[CharAutomaton], texts: Sequence[str]) -> "StopTables":
    automata = list(automata)
    if not automata:  # a never-accepting automaton keeps shapes static
      automata = [CharAutomaton(1, lambda s, c: 0, frozenset(), "none", 0)]
    states = max(a.num_states for a in automata)
    nxt = np.zeros((len(automata), states, len(texts)), np.int32)
    accept = np.zeros((len(automata), states), bool)
    for i, a in enumerate(automata):
      nxt[i, :a.num_states] = a.token_table(texts)
      accept[i, list(a.accepting)] = True
    return cls(automata, nxt, accept)

  def cut_text(self, text: str) -> tuple[str, str | None]:
    """`text` up to the first place any automaton accepts, and that automaton's name."""
    best, name = None, None
    for a in self.automata:
      at = a.accept_at(text)
      if at is not None and (best is None or at < best):
        best, name = at, a.name
    return (text, None) if best is None else (text[:best], name)
