"""Tokenizers behind one protocol: sentencepiece (the demo's own) and Hugging Face (real checkpoints).

`load_tokenizer(path)` opens a sentencepiece `.model`, a Hugging Face folder or `tokenizer.json`
(through `transformers.AutoTokenizer`: CPU only, no torch), or a prm_jax run directory. `encode` adds
no special tokens (the step format decides about BOS / EOS), so ids equal the Hugging Face
tokenizer's `encode(text, add_special_tokens=False)` exactly.

The sentencepiece models this project trains give newlines a dedicated token (`<nl>`): text is split
into lines, each line is encoded by sentencepiece, and the lines are joined with the newline id, so
line structure never depends on sentencepiece's whitespace handling. For exports,
`SentencePieceTokenizer.save_hf` writes the same tokenizer as a Hugging Face one (`to_hf_tokenizer`:
the newline rule in its normaliser): transformers' ids equal `encode`'s.
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

  def to_hf_tokenizer(self) -> Any:
    """This tokenizer as a Hugging Face `tokenizers.Tokenizer` (an export's `tokenizer.json`): the
    same ids as `encode` for any text (BOS first with `add_special_tokens`), the same text as
    `decode` for ids whose byte pieces spell whole characters (all that `encode` makes).

    For what `train_sentencepiece` writes (BPE or unigram, identity normalisation, no dummy prefix,
    spaces kept, byte fallback); any other sentencepiece model raises ValueError.
    - normaliser: "\n" -> `<nl>`, then " " -> "\u2581": the line split, then all that
      sentencepiece's identity normalisation does. `<nl>` (a user-defined piece) is an added token,
      so it is cut out whole, in text or from a newline, as sentencepiece does;
    - the model reads whole lines, as sentencepiece does. BPE: sentencepiece merges the adjacent
      pair whose concatenation is the best-scored piece, so every split of a piece into two pieces
      is a merge, ranked by that piece's score. Unigram: the pieces and scores, except that control
      and byte pieces are no candidates in sentencepiece's lattice: their scores go below spelling
      them out, and a pre-tokenizer cuts a literal "<s>" or "<0x41>" at a point no piece crosses
      (after "<"), since where a character is unknown no score keeps them out;
    - control pieces (pad, unk, BOS, EOS) are special tokens; an export's tokenizer_config.json sets
      `split_special_tokens` so transformers reads "<s>" in text as text, as sentencepiece does.
    """
    import re

    from sentencepiece import sentencepiece_model_pb2 as pb
    from tokenizers import AddedToken, Regex, decoders, models, normalizers, pre_tokenizers
    from tokenizers import Tokenizer as HFBackend
    from tokenizers import processors

    proto = pb.ModelProto()
    proto.ParseFromString(self.proto)
    norm, trainer, Piece = proto.normalizer_spec, proto.trainer_spec, pb.ModelProto.SentencePiece
    pieces = [(p.piece, p.score, p.type) for p in proto.pieces]
    kind = {pb.TrainerSpec.BPE: "bpe", pb.TrainerSpec.UNIGRAM: "unigram"}.get(trainer.model_type)
    unsupported = [what for what, bad in (
        (f"model_type {pb.TrainerSpec.ModelType.Name(trainer.model_type)}", kind is None),
        (f"normalization {norm.name!r}", norm.name != "identity" or norm.precompiled_charsmap),
        ("add_dummy_prefix", norm.add_dummy_prefix),
        ("remove_extra_whitespaces", norm.remove_extra_whitespaces),
        ("no escape_whitespaces", not norm.escape_whitespaces),
        ("treat_whitespace_as_suffix", trainer.treat_whitespace_as_suffix),
        ("no byte_fallback", not trainer.byte_fallback),
        ("unused pieces", any(k == Piece.UNUSED for _, _, k in pieces)),
        (f"{NEWLINE} not user-defined", pieces[self.nl_id][2] != Piece.USER_DEFINED)) if bad]
    if unsupported:
      raise ValueError(f"a sentencepiece model with {', '.join(unsupported)} was not trained by "
                       "prm_jax.tokenizer.train_sentencepiece; it has no tokenizer.json conversion")
    normal = {p: i for i, (p, _, k) in enumerate(pieces) if k == Piece.NORMAL}
    reserved = [p for p, _, k in pieces if k in (Piece.CONTROL, Piece.UNKNOWN, Piece.BYTE)]
    unk = pieces[self.sp.unk_id()][0]
    pre_tokenizer = None
    if kind == "bpe":
      merges = []  # among normal pieces only: sentencepiece never merges into a reserved one
      for piece in sorted(normal, key=lambda p: (-pieces[normal[p]][1], normal[p])):
        merges += [(piece[:k], piece[k:]) for k in range(1, len(piece))
                   if piece[:k] in normal and piece[k:] in normal]
      model = models.BPE({p: i for i, (p, _, _) in enumerate(pieces)}, merges, unk_token=unk,
                         byte_fallback=True, fuse_unk=False)
    else:
      lowest = min([pieces[i][1] for i in normal.values()] + [-1.0])
      never = (max(map(len, reserved)) + 1) * lowest - 10.0  # below any spelling from characters
      model = models.Unigram([(p, s if k == Piece.NORMAL else never) for p, s, k in pieces],
                             unk_id=self.sp.unk_id(), byte_fallback=True)
      # A cut inside each reserved name, between two characters no piece holds side by side.
      pairs = {q[j:j + 2] for q in normal for j in range(len(q) - 1)}
      cuts: dict[str, list[str]] = {}
      for name in reserved:
        k = next((k for k in range(1, len(name)) if name[k - 1:k + 1] not in pairs), None)
        if k is not None:
          cuts.setdefault(name[:k], []).append(re.escape(name[k:]))
      if cuts:
        pattern = "|".join(f"{re.escape(head)}(?={'|'.join(tails)})"
                           for head, tails in cuts.items())
        pre_tokenizer = pre_tokenizers.Split(Regex(pattern), behavior="merged_with_previous")
    tok = HFBackend(model)
    tok.normalizer = normalizers.Sequence([normalizers.Replace("\n", NEWLINE),
                                           normalizers.Replace(" ", "\u2581")])
    if pre_tokenizer is not None:
      tok.pre_tokenizer = pre_tokenizer
    tok.decoder = decoders.Sequence([decoders.Replace(NEWLINE, "\n"),
                                     decoders.Replace("\u2581", " "), decoders.ByteFallback(),
                                     decoders.Fuse()])
    tok.add_tokens([AddedToken(p, special=False, normalized=True)
                    for p, _, k in pieces if k == Piece.USER_DEFINED])
    tok.add_special_tokens([AddedToken(p, special=True, normalized=False)
                            for p, _, k in pieces if k in (Piece.CONTROL, Piece.UNKNOWN)])
    if self.bos_id >= 0:
      bos = pieces[self.bos_id][0]
      tok.post_processor = processors.TemplateProcessing(
          single=f"{bos}:0 $A:0", pair=f"{bos}:0 $A:0 {bos}:1 $B:1",
          special_tokens=[(bos, self.bos_id)])
    return tok

  def save_hf(self, directory: str, *, model_max_length: int | None = None,
              chat_template: str | None = None) -> list[str]:
    """Writes this tokenizer as a Hugging Face one into `directory` (an export): tokenizer.json
    (`to_hf_tokenizer`), tokenizer_config.json (PreTrainedTokenizerFast), special_tokens_map.json,
    and tokenizer.model beside them (what `load_tokenizer(directory)` opens). Returns the paths."""
    from prm_jax.records import write_json
    hf = self.to_hf_tokenizer()  # first: a model it cannot convert leaves nothing behind
    os.makedirs(directory, exist_ok=True)
    special = {name: self.sp.id_to_piece(i) for name, i in (
        ("bos_token", self.bos_id), ("eos_token", self.eos_id), ("unk_token", self.sp.unk_id()),
        ("pad_token", self.pad_id)) if i >= 0}
    config: dict[str, Any] = {"tokenizer_class": "PreTrainedTokenizerFast", **special,
                              "clean_up_tokenization_spaces": False,
                              "split_special_tokens": True}  # "<s>" in text is text, as here
    if model_max_length:
      config["model_max_length"] = int(model_max_length)
    if chat_template:
      config["chat_template"] = chat_template
    paths = [os.path.join(directory, f) for f in (
        "tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")]
    hf.save(paths[0])
    write_json(paths[1], config)
    write_json(paths[2], special)
    return paths + [self.save_pretrained(directory)]

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
  # An export of a sentencepiece run holds tokenizer.json too, converted from its tokenizer.model
  # (`SentencePieceTokenizer.save_hf`). The model itself wins: it is what the run trained and scored
  # with (so `hf:DIR` scores as the run did, decode drops control ids the same way) and needs no
  # transformers. Hugging Face folders that ship a tokenizer.model without `<nl>` (LLaMA's) are
  # read through tokenizer.json.
  own = _own_sentencepiece(os.path.join(path, SP_FILE))
  if own is not None:
    return own
  if any(os.path.exists(os.path.join(path, f)) for f in ("tokenizer.json",
                                                        "tokenizer_config.json")):
    return HFTokenizer.load(path)
  if os.path.exists(os.path.join(path, SP_FILE)):
    return SentencePieceTokenizer.load(os.path.join(path, SP_FILE))
  raise FileNotFoundError(f"{path} holds no tokenizer (tokenizer.json, tokenizer_config.json, "
                          f"{HF_DIR}/ or {SP_FILE})")


def _own_sentencepiece(path: str) -> SentencePieceTokenizer | None:
  """The sentencepiece model at `path` when there is one with this project's `<nl>` piece."""
  if not os.path.isfile(path):
    return None
  try:
    return SentencePieceTokenizer.load(path)
  except (ValueError, RuntimeError, OSError):
    return None


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
