"""Sentencepiece tokenizer behind a small protocol, and step-aware encoding.

Newlines are a dedicated token (`<nl>`): text is split into lines, each line is encoded by
sentencepiece, and the lines are joined with the newline id. So a step's end is exactly the position of
the newline that closes it, and nothing about line structure depends on sentencepiece's whitespace
handling. A solution is `[BOS] problem <nl> step_1 <nl> step_2 <nl> ... [EOS]`.
"""

from __future__ import annotations

import dataclasses
import io
import os
from typing import Iterable, Protocol, Sequence

import numpy as np
import sentencepiece as spm

NEWLINE = "<nl>"
IGNORE = -100  # label value for positions that carry no supervision


class Tokenizer(Protocol):
  vocab_size: int
  pad_id: int
  bos_id: int
  eos_id: int
  nl_id: int

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...


class SentencePieceTokenizer:
  """A trained sentencepiece model plus the project's newline convention."""

  def __init__(self, model_proto: bytes):
    self.proto = model_proto
    self.sp = spm.SentencePieceProcessor(model_proto=model_proto)
    self.vocab_size = self.sp.get_piece_size()
    self.pad_id, self.bos_id, self.eos_id = self.sp.pad_id(), self.sp.bos_id(), self.sp.eos_id()
    self.nl_id = self.sp.piece_to_id(NEWLINE)
    if self.nl_id == self.sp.unk_id():
      raise ValueError(f"sentencepiece model has no {NEWLINE!r} piece; train it with "
                       "prm_jax.tokenizer.train_sentencepiece")

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    with open(path, "rb") as f:
      return cls(f.read())

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
      f.write(self.proto)

  def encode(self, text: str) -> list[int]:
    out: list[int] = []
    for k, line in enumerate(text.split("\n")):
      if k:
        out.append(self.nl_id)
      if line:
        out.extend(self.sp.encode(line))
    return out

  def decode(self, ids: Sequence[int]) -> str:
    lines, cur = [], []
    for i in ids:
      i = int(i)
      if i == self.nl_id:
        lines.append(self.sp.decode(cur))
        cur = []
      elif i not in (self.pad_id, self.bos_id, self.eos_id) and 0 <= i < self.vocab_size:
        cur.append(i)
    lines.append(self.sp.decode(cur))
    return "\n".join(lines)


def train_sentencepiece(texts: Iterable[str], vocab_size: int = 4000, model_type: str = "bpe",
                        path: str | None = None, max_lines: int = 2_000_000
                        ) -> SentencePieceTokenizer:
  """Trains on the lines of `texts`. Byte fallback means LaTeX never maps to <unk>; digits are split
  so numbers tokenize uniformly; normalisation is the identity so text round-trips exactly."""
  if model_type not in ("bpe", "unigram"):
    raise ValueError(f"model_type {model_type!r}; expected 'bpe' or 'unigram'")

  def lines():
    n = 0
    for t in texts:
      for line in t.split("\n"):
        if line.strip():
          yield line
          n += 1
          if n >= max_lines:
            return
  buf = io.BytesIO()
  try:
    _train(lines(), buf, vocab_size, model_type)
  except RuntimeError as e:
    if "Vocabulary size is smaller than required" in str(e):
      raise ValueError(f"vocab_size={vocab_size} is too small for this text: byte fallback needs "
                       f"256 byte pieces plus every distinct character ({e})") from None
    raise
  tok = SentencePieceTokenizer(buf.getvalue())
  if path:
    tok.save(path)
  return tok


def _train(lines, buf, vocab_size, model_type):
  spm.SentencePieceTrainer.train(
      sentence_iterator=lines, model_writer=buf, vocab_size=vocab_size, model_type=model_type,
      byte_fallback=True, split_digits=True, normalization_rule_name="identity",
      add_dummy_prefix=False, remove_extra_whitespaces=False, character_coverage=1.0,
      pad_id=0, unk_id=1, bos_id=2, eos_id=3, user_defined_symbols=[NEWLINE],
      hard_vocab_limit=False, num_threads=os.cpu_count() or 1, minloglevel=2,
      max_sentence_length=1 << 16)


@dataclasses.dataclass
class EncodedSolution:
  tokens: np.ndarray        # int32[T]
  step_ends: np.ndarray     # int32[S]: index of the newline closing each kept step
  step_labels: np.ndarray   # int32[S]: -1/0/1, IGNORE where unlabelled
  prompt_len: int           # tokens before the first step (BOS + problem + newline)
  truncated_steps: int      # whole steps dropped to fit max_len


def encode_solution(tok: Tokenizer, problem: str, steps: Sequence[str],
                    labels: Sequence[int | None] | None = None, max_len: int | None = None,
                    add_eos: bool = True) -> EncodedSolution:
  """Step-aware encoding; truncation drops whole steps past `max_len` and counts them."""
  if labels is not None and len(labels) != len(steps):
    raise ValueError(f"{len(labels)} labels for {len(steps)} steps")
  tokens = [tok.bos_id] + tok.encode(problem) + [tok.nl_id]
  limit = max_len if max_len is not None else 1 << 62
  if len(tokens) > limit:
    return EncodedSolution(np.asarray(tokens[:limit], np.int32), np.zeros(0, np.int32),
                           np.zeros(0, np.int32), limit, len(steps))
  prompt_len = len(tokens)
  ends, kept_labels = [], []
  for k, step in enumerate(steps):
    piece = tok.encode(step) + [tok.nl_id]
    if len(tokens) + len(piece) > limit:
      break
    tokens.extend(piece)
    ends.append(len(tokens) - 1)
    lab = None if labels is None else labels[k]
    kept_labels.append(IGNORE if lab is None else int(lab))
  kept = len(ends)
  if add_eos and kept == len(steps) and len(tokens) < limit:
    tokens.append(tok.eos_id)
  return EncodedSolution(np.asarray(tokens, np.int32), np.asarray(ends, np.int32),
                         np.asarray(kept_labels, np.int32), prompt_len, len(steps) - kept)
