"""Tokenizers behind one protocol: sentencepiece (the demo's own) and Hugging Face (real checkpoints).

`load_tokenizer(path)` opens a sentencepiece `.model`, a Hugging Face folder or `tokenizer.json`
(through `transformers.AutoTokenizer`: CPU only, no torch), or a prm_jax run directory. `encode` adds
no special tokens (the step format decides about BOS / EOS), so ids equal the Hugging Face
tokenizer's `encode(text, add_special_tokens=False)` exactly.

The sentencepiece models this project trains give newlines a dedicated token (`<nl>`): text is split
into lines, each line is encoded by sentencepiece, and the lines are joined with the newline id, so
line structure never depends on sentencepiece's whitespace handling.
"""

from __future__ import annotations

import io
import os
from typing import Any, Iterable, Protocol, Sequence

import sentencepiece as spm

NEWLINE = "<nl>"
IGNORE = -100  # label value for positions that carry no supervision
SP_FILE = "tokenizer.model"   # a sentencepiece model in a run directory
HF_DIR = "tokenizer"          # a Hugging Face tokenizer's files in a run directory


class Tokenizer(Protocol):
  vocab_size: int               # every id is < vocab_size
  pad_id: int
  bos_id: int | None
  eos_id: int
  adds_bos: bool                # the tokenizer's own convention: sequences start with BOS
  chat_template: str | None

  def encode(self, text: str) -> list[int]: ...

  def decode(self, ids: Sequence[int]) -> str: ...

  def token_id(self, piece: str) -> int | None: ...

  def token_texts(self) -> list[str]: ...

  def apply_chat_template(self, messages: list[dict[str, str]]) -> str: ...

  def save_pretrained(self, directory: str) -> str: ...


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

  adds_bos = True
  chat_template = None

  @classmethod
  def load(cls, path: str) -> "SentencePieceTokenizer":
    with open(path, "rb") as f:
      return cls(f.read())

  def save(self, path: str) -> None:
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    with open(path, "wb") as f:
      f.write(self.proto)

  def save_pretrained(self, directory: str) -> str:
    """Writes `directory/tokenizer.model` (a run directory's tokenizer); returns the path."""
    path = os.path.join(directory, SP_FILE)
    self.save(path)
    return path

  def token_id(self, piece: str) -> int | None:
    i = self.sp.piece_to_id(piece)
    return None if i == self.sp.unk_id() and piece != self.sp.id_to_piece(i) else int(i)

  def token_texts(self) -> list[str]:
    """The text of every id (the newline id is "\n"; control ids are empty)."""
    out = []
    for i in range(self.vocab_size):
      if i == self.nl_id:
        out.append("\n")
      elif self.sp.is_control(i) or self.sp.is_unknown(i):
        out.append("")
      else:
        out.append(self.sp.decode([i]))
    return out

  def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
    raise ValueError("a sentencepiece tokenizer has no chat template; set format.chat_template=False")

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


class HFTokenizer:
  """A Hugging Face tokenizer (`tokenizer.json` + `tokenizer_config.json`), loaded with
  `transformers.AutoTokenizer` from local files only."""

  def __init__(self, hf: Any, source: str):
    self.hf, self.source = hf, source
    self.vocab_size = len(hf)
    if hf.eos_token_id is None:
      raise ValueError(f"{source}: the tokenizer has no eos_token; set one in tokenizer_config.json")
    self.eos_id = int(hf.eos_token_id)
    self.bos_id = None if hf.bos_token_id is None else int(hf.bos_token_id)
    self.pad_id = int(hf.pad_token_id) if hf.pad_token_id is not None else self.eos_id
    with_special = hf.encode("a", add_special_tokens=True)
    self.adds_bos = self.bos_id is not None and bool(with_special) and with_special[0] == self.bos_id
    self.chat_template = hf.chat_template

  @classmethod
  def load(cls, directory: str) -> "HFTokenizer":
    import logging
    import warnings
    os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no "torch not found" notice
    logging.getLogger("transformers").setLevel(logging.ERROR)
    with warnings.catch_warnings():
      warnings.simplefilter("ignore")
      from transformers import AutoTokenizer
      try:
        hf = AutoTokenizer.from_pretrained(directory, local_files_only=True, use_fast=True)
      except (OSError, ValueError) as e:
        raise ValueError(f"{directory}: not a Hugging Face tokenizer transformers can load "
                         f"({' '.join(str(e).split())[:300]})") from None
    return cls(hf, directory)

  def encode(self, text: str) -> list[int]:
    return list(self.hf.encode(text, add_special_tokens=False))

  def decode(self, ids: Sequence[int]) -> str:
    return self.hf.decode([int(i) for i in ids], skip_special_tokens=False,
                          clean_up_tokenization_spaces=False)

  def token_id(self, piece: str) -> int | None:
    i = self.hf.convert_tokens_to_ids(piece)
    if i is None or (i == self.hf.unk_token_id and piece != self.hf.unk_token):
      return None
    return int(i)

  def token_texts(self) -> list[str]:
    """The text of every id, decoded alone (fast: one batched call into the Rust tokenizer)."""
    backend = getattr(self.hf, "backend_tokenizer", None) or getattr(self.hf, "_tokenizer", None)
    ids = [[i] for i in range(self.vocab_size)]
    if backend is not None:
      return list(backend.decode_batch(ids, skip_special_tokens=False))
    return [self.decode(i) for i in ids]

  def apply_chat_template(self, messages: list[dict[str, str]]) -> str:
    if not self.chat_template:
      raise ValueError(f"{self.source}: the tokenizer has no chat template; set "
                       "format.chat_template=False")
    return self.hf.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)

  def save_pretrained(self, directory: str) -> str:
    """Writes the tokenizer's files into `directory/tokenizer/`; returns that folder."""
    path = os.path.join(directory, HF_DIR)
    self.hf.save_pretrained(path)
    return path


def load_tokenizer(path: str) -> SentencePieceTokenizer | HFTokenizer:
  """The tokenizer at `path`: a sentencepiece `.model` file, a Hugging Face folder or its
  `tokenizer.json`, or a prm_jax run directory (its `tokenizer/` or `tokenizer.model`)."""
  if os.path.isfile(path):
    if os.path.basename(path) == "tokenizer.json":
      return HFTokenizer.load(os.path.dirname(os.path.abspath(path)))
    return SentencePieceTokenizer.load(path)
  if not os.path.isdir(path):
    raise FileNotFoundError(f"tokenizer {path} does not exist")
  if os.path.isdir(os.path.join(path, HF_DIR)):
    return HFTokenizer.load(os.path.join(path, HF_DIR))
  if any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json",
                                                        "tokenizer_config.json")):
    return HFTokenizer.load(path)
  if os.path.exists(os.path.join(path, SP_FILE)):
    return SentencePieceTokenizer.load(os.path.join(path, SP_FILE))
  raise FileNotFoundError(f"{path} holds no tokenizer (tokenizer.json, tokenizer_config.json, "
                          f"{HF_DIR}/ or {SP_FILE})")


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
