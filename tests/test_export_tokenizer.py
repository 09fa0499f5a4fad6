"""A sentencepiece run's export carries a tokenizer.json that transformers reads to the run's ids.

A tokenizer trained by `train_sentencepiece` on half of the MATH sample plus arithmetic lines goes
out through `hf_export.export`; `transformers.AutoTokenizer` on the folder must give exactly
`SentencePieceTokenizer.encode`'s ids (and decode them back) on held-out MATH text, ProcessBench
steps, arithmetic and text built to break it: newlines in every arrangement, edge and repeated
spaces, tabs, characters never seen in training, and the literal names of special and byte pieces.
"""

import json
import os
import random

import pytest
from flax import nnx

from prm_jax.data.math import read_math
from prm_jax.model import ModelConfig
from prm_jax.model.heads import build_model
from prm_jax.model.hf_export import export
from prm_jax.tokenizer import (HFTokenizer, SentencePieceTokenizer, load_tokenizer,
                               train_sentencepiece)
from tests.conftest import FIXTURES, one_digit_sums

ODD = ["", "\n", "\n\n", "\n\n\n", "a\n", "\na", "a\n\nb", " \n ", "  lead", "trail  ", " both ",
       "x  y   z", "\ttab\tand\t\ttabs\t", "a\r\nb", "\u00a0nbsp\u3000wide", "数学 ∮ 🙂 Ω≤∞",
       "e\u0301 é ﬁ Å", "\\frac{1}{2} + \\sqrt{3}^{2} = \\boxed{7}", "12345678901234567890",
       "<s>", "</s>", "<pad>", "<unk>", "<nl>", "a<nl>b", "<0x41>", "x<0x0A>y", "▁ ▁▁", "\x00\x01",
       "# Answer\n\n42", "Step 1: 3 + 4 = 7.\nStep 2: 7 * 2 = 14.\n\n# Answer\n\n14"]


def _texts():
  """(training texts, evaluation texts): MATH problems split in half, arithmetic, odd text."""
  math = [p.problem + "\n" + p.solution
          for p in read_math(str(FIXTURES / "math_test.sample.jsonl"))]
  sums = ["\n".join(s.steps) for s in one_digit_sums(400, 3)]
  train = math[::2] + sums[:200]
  bench = json.loads((FIXTURES / "processbench" / "math.sample.json").read_text())
  rng = random.Random(0)
  held = math[1::2]
  pieces = [t[a:a + rng.randint(1, 120)] for t in held for a in
            rng.sample(range(len(t)), min(4, len(t)))]  # cut anywhere: mid-word, mid-space
  mixes = ["".join(rng.choice(ODD + [" ", "\n", "x", "7", " the"])
                   for _ in range(rng.randint(2, 9))) for _ in range(60)]
  evaluate = (held + pieces + ["\n\n".join(b["steps"]) for b in bench] + sums[200:260] + ODD +
              mixes)
  return train, evaluate


TRAIN, EVALUATE = _texts()


@pytest.fixture(scope="module", params=["bpe", "unigram", "bpe-sums", "unigram-sums"])
def exported(request, tmp_path_factory):
  """(the run's tokenizer, its export folder): a tiny PRM exported with `hf_export.export`. The
  `-sums` tokenizers know arithmetic only, so most characters fall back to bytes (and a literal
  "<s>" or "<0x41>" holds characters they lack)."""
  kind, _, sums = request.param.partition("-")
  texts = TRAIN[-200:] if sums else TRAIN
  tok = train_sentencepiece(texts, vocab_size=600, model_type=kind)
  cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, num_layers=1, num_heads=2, num_kv_heads=1,
                    mlp_dim=64, max_seq_len=64)
  out = tmp_path_factory.mktemp(f"export_{request.param}")
  export(build_model("prm", cfg, nnx.Rngs(0)), tok, str(out))
  return tok, str(out)


def _auto(path):
  from transformers import AutoTokenizer
  return AutoTokenizer.from_pretrained(path, local_files_only=True)


def test_transformers_reads_an_export_to_the_same_ids(exported):
  tok, out = exported
  for f in ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json",
            "tokenizer.model", "config.json", "prm_jax.json"):
    assert os.path.exists(os.path.join(out, f)), f
  hf = _auto(out)
  assert hf.is_fast and len(hf) == tok.vocab_size and hf.model_max_length == 64
  assert (hf.bos_token_id, hf.eos_token_id, hf.pad_token_id, hf.unk_token_id) == (
      tok.bos_id, tok.eos_id, tok.pad_id, tok.sp.unk_id())
  assert len(EVALUATE) >= 200
  want = [tok.encode(t) for t in EVALUATE]
  got = hf(EVALUATE, add_special_tokens=False)["input_ids"]
  wrong = [(t, w, g) for t, w, g in zip(EVALUATE, want, got) if w != g]
  assert not wrong, f"{len(wrong)}/{len(EVALUATE)} texts differ, first: {wrong[0]}"
  assert hf(EVALUATE)["input_ids"] == [[tok.bos_id] + w for w in want]  # BOS, as adds_bos says
  assert [hf.encode(t) for t in EVALUATE[:20]] == [[tok.bos_id] + w for w in want[:20]]
  text = [tok.decode(w) for w in want]  # the text itself, but "<nl>" -> "\n" and "\u2581" -> " "
  assert [t for t, d in zip(EVALUATE, text) if t != d] == [t for t in EVALUATE if
                                                          "<nl>" in t or "\u2581" in t]
  assert hf.batch_decode(want) == text
  with_controls = [[tok.bos_id] + w + [tok.eos_id, tok.pad_id] for w in want]
  assert hf.batch_decode(with_controls, skip_special_tokens=True) == text


def test_an_export_loads_as_the_run_tokenizer_and_as_hugging_face(exported):
  """`load_tokenizer` keeps the run's own sentencepiece model; read as a Hugging Face folder (what
  transformers and vLLM see) it agrees on ids, specials and the BOS convention."""
  from transformers import PreTrainedTokenizerFast
  tok, out = exported
  own = load_tokenizer(out)
  assert isinstance(own, SentencePieceTokenizer) and own.proto == tok.proto
  hf = HFTokenizer.load(out)
  assert (hf.vocab_size, hf.bos_id, hf.eos_id, hf.pad_id, hf.adds_bos) == (
      tok.vocab_size, tok.bos_id, tok.eos_id, tok.pad_id, True)
  assert [hf.encode(t) for t in EVALUATE] == [tok.encode(t) for t in EVALUATE]
  fast = PreTrainedTokenizerFast.from_pretrained(out)
  assert fast(EVALUATE[:50], add_special_tokens=False)["input_ids"] == [tok.encode(t)
                                                                         for t in EVALUATE[:50]]


def test_a_foreign_sentencepiece_model_exports_only_its_model(tmp_path):
  """A model with settings `train_sentencepiece` never writes (a dummy prefix here) has no faithful
  tokenizer.json: conversion refuses it, and the export keeps its tokenizer.model alone."""
  import io

  import sentencepiece as spm
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TRAIN), model_writer=buf, vocab_size=300,
                                 user_defined_symbols=["<nl>"], minloglevel=2,
                                 hard_vocab_limit=False)
  tok = SentencePieceTokenizer(buf.getvalue())
  with pytest.raises(ValueError, match="add_dummy_prefix"):
    tok.to_hf_tokenizer()
  cfg = ModelConfig(vocab_size=tok.vocab_size, dim=32, num_layers=1, num_heads=2, num_kv_heads=1,
                    mlp_dim=64, max_seq_len=64)
  export(build_model("sft", cfg, nnx.Rngs(0)), tok, str(tmp_path))
  assert os.path.exists(tmp_path / "tokenizer.model")
  assert not os.path.exists(tmp_path / "tokenizer.json")
  assert isinstance(load_tokenizer(str(tmp_path)), SentencePieceTokenizer)


def test_a_hugging_face_folder_with_a_foreign_tokenizer_model_stays_hugging_face(tmp_path):
  """LLaMA-style folders ship a tokenizer.model beside tokenizer.json; without `<nl>` it is not
  this project's, and `load_tokenizer` reads the folder through transformers as before."""
  import io
  import shutil

  import sentencepiece as spm
  from tests.conftest import HF_FIXTURES
  for f in ("tokenizer.json", "tokenizer_config.json"):
    shutil.copy(HF_FIXTURES / "llama_seq_cls_orm" / f, tmp_path / f)
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(TRAIN), model_writer=buf, vocab_size=300,
                                 minloglevel=2, hard_vocab_limit=False)
  (tmp_path / "tokenizer.model").write_bytes(buf.getvalue())
  assert isinstance(load_tokenizer(str(tmp_path)), HFTokenizer)
