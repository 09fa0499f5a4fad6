"""`StepFormat`: every preset's step ends land on the right token (sentencepiece and a real
byte-level BPE tokenizer), generated text splits back into the same steps, and the Qwen2.5-Math-PRM
layout equals the model card's whole-string tokenization."""

import numpy as np
import pytest

from prm_jax.data.math import read_math
from prm_jax.step_format import StepFormat
from prm_jax.tokenizer import IGNORE, load_tokenizer, train_sentencepiece
from tests.conftest import FIXTURES, HF_FIXTURES

STEPS = ["We have $x = 2$.", "So $x^2 = 4$ and  $y_{n+1}=\\frac{1}{2}$.", "# Answer\n\n4"]
PROBLEM = "Find $x^2$ when $x = 2$."
QWEN_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


@pytest.fixture(scope="module")
def sp():
  texts = [p.problem + "\n" + p.solution for p in read_math(str(FIXTURES / "math_test.sample.jsonl"))]
  return train_sentencepiece(texts, vocab_size=700)


@pytest.fixture(scope="module")
def hf():
  return load_tokenizer(str(HF_FIXTURES / "qwen2_bpe"))


def pieces(tok, enc):
  """The decoded text of each step's tokens (from the previous step's end to its own)."""
  t = enc.tokens.tolist()
  bounds = [enc.prompt_len - 1] + enc.step_ends.tolist()
  return [tok.decode(t[a + 1:b + 1]) for a, b in zip(bounds, bounds[1:])]


@pytest.mark.parametrize("preset, sep", [("newline", "\n"), ("double_newline", "\n\n")])
@pytest.mark.parametrize("which", ["sp", "hf"])
def test_newline_presets_end_each_step_on_its_separator(request, which, preset, sep):
  tok = request.getfixturevalue(which)
  fmt = StepFormat(preset=preset)
  enc = fmt.encode(tok, PROBLEM, STEPS, [1, -1, None])
  t = enc.tokens.tolist()
  assert pieces(tok, enc) == [s + sep for s in STEPS]  # each step's piece ends with its separator
  assert all(tok.decode([t[e]]).endswith("\n") for e in enc.step_ends)  # scored at the newline
  assert enc.step_labels.tolist() == [1, -1, IGNORE]
  assert t[-1] == tok.eos_id and enc.truncated_steps == 0
  first = [tok.bos_id] if which == "sp" else []  # sentencepiece runs start with BOS; Qwen2 never
  assert t[:len(first)] == first
  assert tok.decode(t[len(first):enc.prompt_len]) == PROBLEM + sep
  assert fmt.split(tok.decode(t[enc.prompt_len:-1])) == STEPS  # generated text -> the same steps


def test_qwen_prm_layout_equals_the_model_cards_tokenization(hf):
  """Steps joined by <extra_0> with one after the last, inside the chat template with the model
  card's system prompt: one forward pass, one score per <extra_0>."""
  fmt = StepFormat(preset="tag", tag="<extra_0>", before_tag="", after_tag="", chat_template=True,
                   system_prompt=QWEN_SYSTEM)
  enc = fmt.encode(hf, PROBLEM, STEPS)
  reference = hf.apply_chat_template([
      {"role": "system", "content": QWEN_SYSTEM}, {"role": "user", "content": PROBLEM},
      {"role": "assistant", "content": "<extra_0>".join(STEPS) + "<extra_0>"}])
  assert enc.tokens.tolist() == hf.encode(reference)
  tag = hf.token_id("<extra_0>")
  assert enc.step_ends.tolist() == [i for i, x in enumerate(enc.tokens.tolist()) if x == tag]
  assert hf.decode(enc.tokens[:enc.prompt_len].tolist()).endswith("<|im_start|>assistant\n")
  assert fmt.split("a<extra_0>b\n\nc<extra_0>") == ["a", "b\n\nc"]


def test_math_shepherd_tag_between_space_and_newline(hf, sp):
  fmt = StepFormat(preset="tag", tag="ки", before_tag=" ", after_tag="\n")
  enc = fmt.encode(hf, PROBLEM, STEPS)
  t = enc.tokens.tolist()
  assert [t[e] for e in enc.step_ends] == [hf.token_id("ки")] * 3
  assert [hf.decode(t[e + 1:e + 2]) for e in enc.step_ends] == ["\n"] * 3
  text = hf.decode(t[enc.prompt_len:-1])
  assert text == "".join(s + " ки\n" for s in STEPS) and fmt.split(text) == STEPS
  with pytest.raises(ValueError, match="format.tag='ки' is not a token of the tokenizer"):
    fmt.encode(sp, PROBLEM, STEPS)
  with pytest.raises(ValueError, match="no chat template"):
    StepFormat(chat_template=True).encode(sp, PROBLEM, STEPS)


def test_split_keeps_the_answer_and_drops_empty_steps():
  fmt = StepFormat()
  assert fmt.split("a\n\n  \nb\n# Answer\n\n42\n") == ["a", "b", "# Answer\n\n42"]
  assert StepFormat(preset="double_newline").split("a\nb\n\nc\n\n\n\n# Answer\n\n42") == [
      "a\nb", "c", "# Answer\n\n42"]
  assert fmt.split("") == [] and fmt.split("# Answer") == ["# Answer"]


def test_truncation_chat_and_bos_rules(hf, sp):
  fmt = StepFormat(chat_template=True)
  full = fmt.encode(hf, PROBLEM, STEPS)
  assert hf.decode(full.tokens[-2:].tolist()) == "<|im_end|>\n"  # the template's closing, no EOS
  cut = fmt.encode(hf, PROBLEM, STEPS, max_len=int(full.step_ends[1]) + 1)
  assert cut.truncated_steps == 1 and len(cut.tokens) == cut.step_ends[-1] + 1
  np.testing.assert_array_equal(cut.tokens, full.tokens[:len(cut.tokens)])
  assert StepFormat(bos="never").encode(sp, PROBLEM, STEPS).tokens[0] != sp.bos_id
  with pytest.raises(ValueError, match="the tokenizer has no BOS token"):
    StepFormat(bos="always").encode(hf, PROBLEM, STEPS)
  with pytest.raises(ValueError, match="format.preset='lines'"):
    StepFormat(preset="lines")
  with pytest.raises(ValueError, match="unknown format fields"):
    StepFormat.from_config({"preset": "newline", "sep": "x"})
