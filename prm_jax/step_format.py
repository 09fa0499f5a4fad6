"""`StepFormat`: the one place that turns (problem, steps) into tokens and step-end positions, and
generated text back into steps. Training, scoring, sampling, labellers and active learning all use it;
a run records it (config section `format`) and every later stage reads it back.

Presets (`format.preset`):
  newline         problem "\n" step_1 "\n" step_2 "\n" ...   the score is read at each step's "\n"
  double_newline  problem "\n\n" step_1 "\n\n" ...           steps may hold single newlines
  tag             step_1 BEFORE TAG AFTER step_2 ...          the score is read at TAG, a special
                  token (`<extra_0>` for Qwen2.5-Math-PRM: before="", after=""; `ки` for
                  Math-Shepherd: before=" ", after="\n")
Each optionally inside the tokenizer's chat template (`format.chat_template`): the system prompt,
the problem as the user turn, the steps as the assistant turn.

Tokens are built piece by piece (prefix, then each step with its separator), so a step's end is the
last token of its own piece whatever the tokenizer merges; BOS follows the tokenizer's convention
(`format.bos=auto`), EOS (or the chat template's closing) ends a complete solution.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from prm_jax.tokenizer import IGNORE, Tokenizer

PRESETS = ("newline", "double_newline", "tag")
ANSWER_HEADER = "# Answer"
_SENTINEL = "\x00prm_jax_steps\x00"


@dataclasses.dataclass
class EncodedSolution:
  tokens: np.ndarray        # int32[T]
  step_ends: np.ndarray     # int32[S]: the position each kept step is scored at
  step_labels: np.ndarray   # int32[S]: -1/0/1, IGNORE where unlabelled
  prompt_len: int           # tokens before the first step
  truncated_steps: int      # whole steps dropped to fit max_len


@dataclasses.dataclass(frozen=True)
class StepFormat:
  preset: str = "newline"
  tag: str = ""               # tag preset: the special token read at each step end
  before_tag: str = ""        # tag preset: text between a step and its tag
  after_tag: str = "\n"       # tag preset: text after each tag
  chat_template: bool = False
  system_prompt: str = ""     # chat template: "" for none
  bos: str = "auto"           # auto (the tokenizer's convention) | always | never

  def __post_init__(self):
    if self.preset not in PRESETS:
      raise ValueError(f"format.preset={self.preset!r}; expected one of {PRESETS}")
    if self.preset == "tag" and not self.tag:
      raise ValueError("format.preset=tag needs format.tag (e.g. <extra_0> or ки)")
    if self.bos not in ("auto", "always", "never"):
      raise ValueError(f"format.bos={self.bos!r}; expected auto, always or never")

  @classmethod
  def from_config(cls, section: Any | None) -> "StepFormat":
    """From a config's `format` section (a ConfigDict or dict); None gives the default."""
    if section is None:
      return cls()
    d = dict(section.to_dict() if hasattr(section, "to_dict") else section)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown format fields {unknown}; known: {sorted(known)}")
    return cls(**d)

  # -- text
  @property
  def separator(self) -> str:
    """What closes a step in text."""
    if self.preset == "tag":
      return self.before_tag + self.tag + self.after_tag
    return "\n\n" if self.preset == "double_newline" else "\n"

  def split(self, text: str) -> list[str]:
    """Generated text -> steps: split at the separator, empty steps dropped, and a `# Answer` line
    kept together with the answer that follows it (PRM800K's last step: "# Answer\\n\\n<ans>")."""
    sep = self.tag if self.preset == "tag" else self.separator
    parts = []
    for part in text.split(sep):
      if self.preset == "tag":
        part = part.removeprefix(self.after_tag) if self.after_tag else part
        part = part.removesuffix(self.before_tag) if self.before_tag else part
      part = part.strip("\n")
      if part.strip():
        parts.append(part)
    steps: list[str] = []
    for part in parts:
      if steps and steps[-1].strip() == ANSWER_HEADER:
        steps[-1] = f"{ANSWER_HEADER}\n\n{part.strip()}"
      else:
        steps.append(part)
    return steps

  # -- tokens
  def _bos(self, tok: Tokenizer) -> list[int]:
    want = self.bos == "always" or (self.bos == "auto" and tok.adds_bos)
    if want and tok.bos_id is None:
      raise ValueError("format.bos=always, but the tokenizer has no BOS token")
    return [tok.bos_id] if want else []

  def _tag_id(self, tok: Tokenizer) -> int:
    i = tok.token_id(self.tag)
    if i is None:
      raise ValueError(f"format.tag={self.tag!r} is not a token of the tokenizer "
                       f"({getattr(tok, 'source', type(tok).__name__)}); add it as a special "
                       "token or choose another tag")
    return i

  def _chat(self, tok: Tokenizer, problem: str) -> tuple[str, str]:
    """The chat template split around the assistant turn's content: (prefix, suffix)."""
    messages = ([{"role": "system", "content": self.system_prompt}] if self.system_prompt else [])
    messages += [{"role": "user", "content": problem},
                 {"role": "assistant", "content": _SENTINEL}]
    text = tok.apply_chat_template(messages)
    if text.count(_SENTINEL) != 1:
      raise ValueError("the tokenizer's chat template does not place the assistant's content once")
    prefix, suffix = text.split(_SENTINEL)
    return prefix, suffix

  def prompt(self, tok: Tokenizer, problem: str, prefix_steps: Sequence[str] = ()) -> list[int]:
    """Tokens a generator continues from: BOS, the problem (or the chat template up to the
    assistant's content), and any steps so far, each closed by its separator."""
    if self.chat_template:
      ids = self._bos(tok) + tok.encode(self._chat(tok, problem)[0])
    else:
      ids = self._bos(tok) + tok.encode(problem + ("\n" if self.preset == "tag" else
                                                   self.separator))
    for step in prefix_steps:
      ids += self._step_piece(tok, step)
    return ids

  def _step_piece(self, tok: Tokenizer, step: str) -> list[int]:
    if self.preset == "tag":
      after = tok.encode(self.after_tag) if self.after_tag else []
      return tok.encode(step + self.before_tag) + [self._tag_id(tok)] + after
    return tok.encode(step + self.separator)

  def _end_offset(self, tok: Tokenizer, piece: list[int]) -> int:
    """Where in a step's piece the score is read: the tag, else the last token."""
    if self.preset == "tag":
      return len(piece) - 1 - (len(tok.encode(self.after_tag)) if self.after_tag else 0)
    return len(piece) - 1

  def closing(self, tok: Tokenizer, problem: str) -> list[int]:
    """What ends a complete solution: the chat template's closing, else EOS."""
    if self.chat_template:
      suffix = self._chat(tok, problem)[1]
      return tok.encode(suffix) if suffix else [tok.eos_id]
    return [tok.eos_id]

  def encode(self, tok: Tokenizer, problem: str, steps: Sequence[str],
             labels: Sequence[int | None] | None = None, max_len: int | None = None,
             add_eos: bool = True) -> EncodedSolution:
    """Tokens and step ends; truncation drops whole steps past `max_len` and counts them."""
    if labels is not None and len(labels) != len(steps):
      raise ValueError(f"{len(labels)} labels for {len(steps)} steps")
    tokens = self.prompt(tok, problem)
    limit = max_len if max_len is not None else 1 << 62
    if len(tokens) > limit:
      return EncodedSolution(np.asarray(tokens[:limit], np.int32), np.zeros(0, np.int32),
                             np.zeros(0, np.int32), limit, len(steps))
    prompt_len = len(tokens)
    ends, kept_labels = [], []
    for k, step in enumerate(steps):
      piece = self._step_piece(tok, step)
      if len(tokens) + len(piece) > limit:
        break
      ends.append(len(tokens) + self._end_offset(tok, piece))
      tokens.extend(piece)
      lab = None if labels is None else labels[k]
      kept_labels.append(IGNORE if lab is None else int(lab))
    kept = len(ends)
    if add_eos and kept == len(steps):
      close = self.closing(tok, problem)
      if len(tokens) + len(close) <= limit:
        tokens.extend(close)
    return EncodedSolution(np.asarray(tokens, np.int32), np.asarray(ends, np.int32),
                           np.asarray(kept_labels, np.int32), prompt_len, len(steps) - kept)

  def check(self, tok: Tokenizer) -> None:
    """Fails early, naming both, when this format cannot work with `tok`."""
    if self.preset == "tag":
      self._tag_id(tok)
    if self.chat_template:
      self._chat(tok, "x")

  def token_texts(self, tok: Tokenizer) -> list[str]:
    """Every id's text for the stop automata: a tag counts as a line break."""
    texts = tok.token_texts()
    if self.preset == "tag":
      texts[self._tag_id(tok)] = "\n"
    return texts

