"""Sentencepiece training/loading and step-aware encoding."""

import io

import numpy as np
import pytest
import sentencepiece as spm

from prm_jax.data.math import read_math
from prm_jax.tokenizer import IGNORE, SentencePieceTokenizer, encode_solution, train_sentencepiece
from tests.conftest import FIXTURES


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
