"""Tokenizers: sentencepiece training/loading, Hugging Face parity against transformers' own ids."""

import io

import numpy as np
import pytest
import sentencepiece as spm

from prm_jax.data.math import read_math
from prm_jax.step_format import StepFormat
from prm_jax.tokenizer import (IGNORE, HFTokenizer, SentencePieceTokenizer, load_tokenizer,
                               train_sentencepiece)
from tests.conftest import FIXTURES, HF_FIXTURES

encode_solution = StepFormat().encode  # the default newline layout


@pytest.fixture(scope="module")
def math_texts():
  return [p.problem + "\n" + p.solution for p in read_math(str(FIXTURES / "math_test.sample.jsonl"))]


@pytest.fixture(scope="module")
def tok(math_texts):
  return train_sentencepiece(math_texts, vocab_size=700)


def test_roundtrip_is_exact_and_bytes_never_unk(tok, math_texts):
  for t in math_texts:
    assert tok.decode(tok.encode(t)) == t
  odd = "数学 ∮ 🙂 \\mathfrak{g}\n\n  indented\ttab"
  ids = tok.encode(odd)
  assert tok.decode(ids) == odd
  assert tok.sp.unk_id() not in ids
  assert ids.count(tok.nl_id) == odd.count("\n")


def test_save_load_and_unigram(tok, tmp_path, math_texts):
  path = tmp_path / "tok.model"
  tok.save(str(path))
  again = SentencePieceTokenizer.load(str(path))
  assert again.encode(math_texts[0]) == tok.encode(math_texts[0])
  uni = train_sentencepiece(math_texts, vocab_size=500, model_type="unigram")
  assert uni.decode(uni.encode(math_texts[1])) == math_texts[1]
  with pytest.raises(ValueError, match="model_type 'wordpiece'"):
    train_sentencepiece(math_texts, model_type="wordpiece")


def test_model_without_newline_piece_is_rejected(math_texts):
  buf = io.BytesIO()
  spm.SentencePieceTrainer.train(sentence_iterator=iter(math_texts), model_writer=buf,
                                 vocab_size=300, minloglevel=2, hard_vocab_limit=False)
  with pytest.raises(ValueError, match="no '<nl>' piece"):
    SentencePieceTokenizer(buf.getvalue())


def test_step_ends_are_the_closing_newlines(tok):
  steps = ["We have $x = 2$.", "So $x^2 = 4$.\n\n# Answer\n\n4"]
  enc = encode_solution(tok, "Find $x^2$.", steps, [1, None])
  t = enc.tokens.tolist()
  assert t[0] == tok.bos_id and t[-1] == tok.eos_id
  assert [t[i] for i in enc.step_ends] == [tok.nl_id, tok.nl_id]
  assert enc.step_labels.tolist() == [1, IGNORE]
  assert tok.decode(t[enc.prompt_len:enc.step_ends[0] + 1]) == steps[0] + "\n"
  assert tok.decode(t[enc.step_ends[0] + 1:enc.step_ends[1] + 1]) == steps[1] + "\n"
  assert tok.decode(t[1:enc.prompt_len]) == "Find $x^2$.\n"


def test_truncation_drops_whole_steps(tok):
  steps = ["a" * 5, "b" * 30, "c" * 5]
  full = encode_solution(tok, "P", steps, [1, 1, -1])
  cut = encode_solution(tok, "P", steps, [1, 1, -1], max_len=int(full.step_ends[1]))
  assert cut.truncated_steps == 2 and len(cut.step_ends) == 1
  assert len(cut.tokens) == cut.step_ends[0] + 1  # no partial step, no EOS
  assert cut.tokens[-1] == tok.nl_id
  with pytest.raises(ValueError, match="2 labels for 3 steps"):
    encode_solution(tok, "P", steps, [1, 1])
  none = encode_solution(tok, "a long problem " * 20, steps, max_len=5)
  assert len(none.tokens) == 5 and none.truncated_steps == 3 and len(none.step_ends) == 0


# ----------------------------------------------------------------------------- Hugging Face

QWEN = HF_FIXTURES / "qwen2_bpe"  # a real byte-level BPE tokenizer.json made by scripts/make_hf_fixtures.py


@pytest.fixture(scope="module")
def hf():
  return load_tokenizer(str(QWEN))


@pytest.fixture(scope="module")
def reference():
  import json
  return json.loads((QWEN / "encodings.json").read_text())


def test_hf_encode_and_decode_equal_transformers_ids(hf, reference):
  """Every one of the committed texts (LaTeX, unicode, `# Answer` lines, special tokens embedded in
  text) encodes to the ids transformers gave, and those ids decode to transformers' text."""
  texts, ids = reference["texts"], reference["ids"]
  assert len(texts) >= 200
  mismatched = [t for t, want in zip(texts, ids) if hf.encode(t) != want]
  assert not mismatched, mismatched[:3]
  assert [hf.decode(i) for i in ids] == reference["decoded"]
  assert hf.encode(reference["chat"]) == reference["chat_ids"]
  assert any(reference["extra_0"] in i for i in ids)  # special tokens in text become their ids


def test_hf_special_tokens_and_chat_template(hf, reference):
  assert isinstance(hf, HFTokenizer) and hf.vocab_size == reference["len"] == 701
  assert (hf.eos_id, hf.pad_id, hf.bos_id, hf.adds_bos) == (
      reference["eos_id"], reference["pad_id"], None, False)  # Qwen2: no BOS is ever added
  assert hf.token_id("<extra_0>") == reference["extra_0"] and hf.token_id("ки") == reference["ki"]
  assert hf.token_id("no-such-token") is None
  chat = hf.apply_chat_template([{"role": "user", "content": "1+1?"}])
  assert chat == "<|im_start|>user\n1+1?<|im_end|>\n"
  texts = hf.token_texts()
  assert len(texts) == hf.vocab_size and texts[hf.eos_id] == "<|im_end|>"
  assert all(texts[i] == hf.decode([i]) for i in range(0, hf.vocab_size, 37))


def test_load_tokenizer_finds_every_layout(hf, tok, tmp_path):
  assert isinstance(load_tokenizer(str(QWEN / "tokenizer.json")), HFTokenizer)
  run = tmp_path / "run"
  assert hf.save_pretrained(str(run)) == str(run / "tokenizer")  # a run keeps it in tokenizer/
  again = load_tokenizer(str(run))
  assert again.encode("x_{n+1} = 2\n\n# Answer") == hf.encode("x_{n+1} = 2\n\n# Answer")
  sp_run = tmp_path / "sp_run"
  assert tok.save_pretrained(str(sp_run)).endswith("tokenizer.model")
  assert isinstance(load_tokenizer(str(sp_run)), SentencePieceTokenizer)
  with pytest.raises(FileNotFoundError, match="holds no tokenizer"):
    load_tokenizer(str(tmp_path))
  with pytest.raises(FileNotFoundError, match="does not exist"):
    load_tokenizer(str(tmp_path / "nope"))
  broken = tmp_path / "broken"
  broken.mkdir()
  (broken / "tokenizer_config.json").write_text("{}")
  with pytest.raises(ValueError, match="not a Hugging Face tokenizer transformers can load"):
    load_tokenizer(str(broken))
