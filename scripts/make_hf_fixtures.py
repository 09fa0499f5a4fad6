"""Regenerates tests/fixtures/hf/: tiny random checkpoints saved by real `transformers`, with logits,
and a real byte-level BPE tokenizer (special tokens, a chat template) with a tiny Qwen2 that uses it.

Needs torch==2.13.0 and transformers (fixture-only dependencies; torch is never a runtime one):
    python -m venv /tmp/fixvenv && /tmp/fixvenv/bin/pip install torch==2.13.0 transformers jinja2
    /tmp/fixvenv/bin/python scripts/make_hf_fixtures.py [CASE ...]   (default: every case)
Every parameter (norm weights and biases too, which start at ones/zeros and would hide bugs) is
randomised before saving. Expected logits are computed in float32 on fixed token ids. The tokenizer
case (`qwen2_bpe`) also writes `encodings.json`: transformers' ids for >= 200 texts (LaTeX, unicode,
`# Answer` lines, special tokens) and the chat template's rendering, the parity target.
"""

import json
import os
import sys

import numpy as np
import torch
import transformers

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures", "hf")

COMMON = dict(vocab_size=97, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
              num_attention_heads=6, max_position_embeddings=64, rms_norm_eps=1e-5)

CASES = {
    # GQA (6 query heads over 2 KV heads), untied head, Llama-3 RoPE scaling, theta 500k.
    "llama_gqa_untied": ("LlamaConfig", "LlamaForCausalLM", dict(
        COMMON, num_key_value_heads=2, tie_word_embeddings=False, rope_theta=500000.0,
        rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0,
                          high_freq_factor=4.0, original_max_position_embeddings=16)), None),
    # Tied embeddings, multi-head (no GQA), split across two safetensors files with an index.
    "llama_mha_tied_sharded": ("LlamaConfig", "LlamaForCausalLM", dict(
        COMMON, num_key_value_heads=6, tie_word_embeddings=True), "20KB"),
    # Qwen2: qkv bias, GQA, tied embeddings.
    "qwen2_gqa_tied": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        COMMON, num_key_value_heads=3, tie_word_embeddings=True, rope_theta=1000000.0,
        use_sliding_window=False), None),
    # Qwen2 untied, explicit head_dim differing from hidden/heads is not in Qwen2; keep it plain.
    "qwen2_gqa_untied": ("Qwen2Config", "Qwen2ForCausalLM", dict(
        COMMON, num_key_value_heads=2, tie_word_embeddings=False), None),
    "mistral_gqa": ("MistralConfig", "MistralForCausalLM", dict(
        COMMON, num_key_value_heads=2, tie_word_embeddings=False, sliding_window=None), None),
}


ROOT = os.path.join(os.path.dirname(__file__), "..")
SPECIAL = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "<extra_0>"]
QWEN2_SPLIT = (r"""(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+"""
               r"""[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+""")
# Qwen2.5's layout, shortened: a turn is <|im_start|>role\ncontent<|im_end|>\n.
CHAT_TEMPLATE = (
    "{%- for message in messages -%}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' -}}"
    "{%- endfor -%}"
    "{%- if add_generation_prompt -%}{{- '<|im_start|>assistant\\n' -}}{%- endif -%}")


def _fixture_texts() -> list[str]:
  """Real math text from the repository's fixtures: MATH problems and solutions, PRM800K steps."""
  texts = []
  with open(os.path.join(ROOT, "tests", "fixtures", "math_test.sample.jsonl")) as f:
    for line in f:
      row = json.loads(line)
      texts += [row["problem"], row["solution"]]
  for name in ("phase1_train.thirdparty_examples.jsonl", "phase2_train.thirdparty_examples.jsonl"):
    with open(os.path.join(ROOT, "tests", "fixtures", "prm800k", name)) as f:
      for line in f:
        row = json.loads(line)
        for step in row["label"]["steps"]:
          texts += [c["text"] for c in step["completions"]]
  return texts


def make_tokenizer_case(name: str = "qwen2_bpe") -> None:
  """A byte-level BPE tokenizer trained on the fixtures' math, saved the way Qwen2 ships one, and a
  tiny random Qwen2ForCausalLM whose embedding table is padded past it (as Qwen's is)."""
  from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers, trainers
  texts = _fixture_texts()
  bpe = Tokenizer(models.BPE())
  bpe.pre_tokenizer = pre_tokenizers.Sequence([  # Qwen2's split: digits one by one, then bytes
      pre_tokenizers.Split(Regex(QWEN2_SPLIT), behavior="isolated"),
      pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False)])
  bpe.decoder = decoders.ByteLevel()
  bpe.train_from_iterator(texts, trainers.BpeTrainer(
      vocab_size=700, special_tokens=SPECIAL, initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
      show_progress=False))
  bpe.add_tokens(["ки"])  # Math-Shepherd's step tag: an added (not special) token
  tok = transformers.PreTrainedTokenizerFast(
      tokenizer_object=bpe, eos_token="<|im_end|>", pad_token="<|endoftext|>",
      additional_special_tokens=["<|im_start|>", "<extra_0>"], chat_template=CHAT_TEMPLATE)
  path = os.path.join(OUT, name)
  os.makedirs(path, exist_ok=True)
  for f in os.listdir(path):
    os.remove(os.path.join(path, f))
  tok.save_pretrained(path)

  vocab = (len(tok) + 63) // 64 * 64
  config = transformers.Qwen2Config(**dict(COMMON, vocab_size=vocab, num_key_value_heads=2,
                                           max_position_embeddings=1024,
                                           tie_word_embeddings=True, use_sliding_window=False,
                                           eos_token_id=tok.eos_token_id,
                                           pad_token_id=tok.pad_token_id))
  config.architectures = ["Qwen2ForCausalLM"]
  torch.manual_seed(1)
  model = transformers.Qwen2ForCausalLM(config).eval().to(torch.float32)
  ids = tok("We have $x^2 = 4$.\n\n# Answer\n\n2", add_special_tokens=False)["input_ids"]
  tokens = np.asarray([ids], np.int64)
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_((1.0 if "norm" in pname else 0.0) + 0.3 * torch.randn_like(p))
    logits = model(torch.from_numpy(tokens)).logits.float().numpy()
  model.save_pretrained(path, safe_serialization=True)
  np.savez(os.path.join(path, "expected.npz"), tokens=tokens.astype(np.int32), logits=logits)
  # the parity target is what a user's transformers loads from the folder, not the object above
  tok = transformers.AutoTokenizer.from_pretrained(path)

  lines = [l for t in texts for l in t.split("\n") if l.strip()]
  extra = ["# Answer", "# Answer\n\n42", "\n\n# Answer\n\n\\frac{1}{2}", "数学 ∮ 🙂 \\mathfrak{g}",
           "  indented\ttab\r\n", "step one<extra_0>step two<extra_0>", "2+2=4 ки\n3+3=6 ки",
           "<|im_start|>user\nWhat is $1+1$?<|im_end|>\n", "", " ", "\n", "\n\n\n", "Ωmega αβγ",
           "x_{n+1} = \\sqrt[3]{x_n}\\cdot e^{i\\pi}"]
  sample = extra + lines[:240]
  chat = tok.apply_chat_template(
      [{"role": "system", "content": "Please reason step by step."},
       {"role": "user", "content": "What is $2+3$?"},
       {"role": "assistant", "content": "2+3=5<extra_0># Answer\n\n5<extra_0>"}], tokenize=False)
  with open(os.path.join(path, "encodings.json"), "w", encoding="utf-8") as f:
    json.dump({"texts": sample,
               "ids": [tok.encode(t, add_special_tokens=False) for t in sample],
               "decoded": [tok.decode(tok.encode(t, add_special_tokens=False),
                                      skip_special_tokens=False,
                                      clean_up_tokenization_spaces=False) for t in sample],
               "chat": chat, "chat_ids": tok.encode(chat, add_special_tokens=False),
               "len": len(tok), "eos_id": tok.eos_token_id, "pad_id": tok.pad_token_id,
               "extra_0": tok.convert_tokens_to_ids("<extra_0>"),
               "ki": tok.convert_tokens_to_ids("ки")}, f, ensure_ascii=False, indent=0)
  print(f"{name}: {len(tok)} tokens (embedding {vocab}), {len(sample)} parity texts, "
        f"{type(tok).__name__}, {sorted(os.listdir(path))}")


QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."


def _processbench_items(limit: int = 8) -> list[dict]:
  items = []
  for subset in ("gsm8k", "math"):
    with open(os.path.join(ROOT, "tests", "fixtures", "processbench", f"{subset}.sample.json")) as f:
      items += json.load(f)[:limit // 2]
  return items


def _newline_ids(tok, problem, steps, eos=True):
  """The newline layout, piece by piece: problem "\n", then each step + "\n" (and EOS)."""
  ids = tok.encode(problem + "\n", add_special_tokens=False)
  ends = []
  for s in steps:
    ids += tok.encode(s + "\n", add_special_tokens=False)
    ends.append(len(ids) - 1)
  return ids + ([tok.eos_token_id] if eos else []), ends


def _randomise(model):
  with torch.no_grad():
    for pname, p in model.named_parameters():
      if p.ndim == 1:
        p.copy_((1.0 if "norm" in pname else 0.0) + 0.3 * torch.randn_like(p))


def _fresh(seed: int, config_cls, architecture: str, make_model, **kwargs):
  """(config, model): a seeded random model of `architecture`, norms and biases randomised too."""
  torch.manual_seed(seed)
  cfg = config_cls(**kwargs)
  cfg.architectures = [architecture]
  model = make_model(cfg).eval()
  _randomise(model)
  return cfg, model


def make_reward_cases() -> None:
  """Released reward-model layouts on the qwen2_bpe tokenizer, each with the reference per-step
  probabilities on ProcessBench items computed by its model card's recipe in torch."""
  bpe_dir = os.path.join(OUT, "qwen2_bpe")
  tok = transformers.AutoTokenizer.from_pretrained(bpe_dir)
  items = _processbench_items()
  small = dict(COMMON, vocab_size=704, max_position_embeddings=2048, num_key_value_heads=2,
               tie_word_embeddings=False, pad_token_id=tok.pad_token_id,
               eos_token_id=tok.eos_token_id)

  def save(name, model, config, expected):
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
      os.remove(os.path.join(path, f))
    tok.save_pretrained(path)
    if isinstance(model, transformers.PreTrainedModel):
      model.save_pretrained(path, safe_serialization=True)
    else:
      from safetensors.torch import save_file
      save_file({k: v.contiguous() for k, v in model.state_dict().items()},
                os.path.join(path, "model.safetensors"), metadata={"format": "pt"})
      config.save_pretrained(path)
    with open(os.path.join(path, "expected_steps.json"), "w") as f:
      json.dump(expected, f, indent=0)
    print(f"{name}: {config.architectures[0]}, {len(expected['items'])} items")

  # TRL's PRMs: a token classifier, 2 labels, P(ok) = softmax[..., 1] at each step's last token
  cfg, model = _fresh(2, transformers.Qwen2Config, "Qwen2ForTokenClassification",
                      transformers.Qwen2ForTokenClassification, **small, num_labels=2)
  out = []
  for it in items:
    ids, ends = _newline_ids(tok, it["problem"], it["steps"])
    with torch.no_grad():
      probs = model(torch.tensor([ids])).logits[0].float().softmax(-1)[:, 1]
    out.append({"id": it["id"], "ids": ids, "probs": probs[ends].tolist()})
  save("qwen2_token_cls", model, cfg, {"format": "newline", "items": out})

  # Qwen2.5-Math-PRM: Qwen2 body + score.0 Linear(h, h) -> ReLU -> score.2 Linear(h, 2)
  class ProcessRewardModel(torch.nn.Module):
    def __init__(self, config):
      super().__init__()
      self.model = transformers.Qwen2Model(config)
      h = config.hidden_size
      self.score = torch.nn.Sequential(torch.nn.Linear(h, h), torch.nn.ReLU(),
                                       torch.nn.Linear(h, 2))

    def forward(self, ids):
      return self.score(self.model(ids).last_hidden_state)
  cfg, model = _fresh(3, transformers.Qwen2Config, "Qwen2ForProcessRewardModel",
                      ProcessRewardModel, **small)
  sep = tok.encode("<extra_0>")[0]
  out = []
  for it in items:  # the model card's recipe, to the letter
    messages = [{"role": "system", "content": QWEN_PRM_SYSTEM},
                {"role": "user", "content": it["problem"]},
                {"role": "assistant", "content": "<extra_0>".join(it["steps"]) + "<extra_0>"}]
    text = tok.apply_chat_template(messages, tokenize=False, add_generation_prompt=False)
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
      probs = model(ids)[0].float().softmax(-1)[:, 1]
    out.append({"id": it["id"], "ids": ids[0].tolist(), "probs": probs[ids[0] == sep].tolist()})
  save("qwen2_process_rm", model, cfg, {"format": "qwen_prm", "items": out})

  # LM-as-PRM (Math-Shepherd): softmax over the "+" / "-" logits at each "ки", P(ok) = P("+")
  cfg, model = _fresh(4, transformers.Qwen2Config, "Qwen2ForCausalLM",
                      transformers.Qwen2ForCausalLM, **small)
  good, bad = tok.convert_tokens_to_ids("+"), tok.convert_tokens_to_ids("-")
  tag = tok.convert_tokens_to_ids("ки")
  out = []
  for it in items:
    text = it["problem"] + "\n" + "".join(s + " ки\n" for s in it["steps"])
    ids = torch.tensor([tok.encode(text)])
    with torch.no_grad():
      logits = model(ids).logits[0].float()[:, [good, bad]]
    probs = logits.softmax(-1)[:, 0]
    out.append({"id": it["id"], "ids": ids[0].tolist(), "probs": probs[ids[0] == tag].tolist()})
  save("qwen2_lm_prm", model, cfg, {"format": "lm", "items": out})

  # An ORM: a sequence classifier with one label, P(correct) = sigmoid at the last token
  cfg, model = _fresh(5, transformers.LlamaConfig, "LlamaForSequenceClassification",
                      transformers.LlamaForSequenceClassification, **small, num_labels=1)
  out = []
  for it in items:
    ids, _ = _newline_ids(tok, it["problem"], it["steps"])
    with torch.no_grad():
      p = torch.sigmoid(model(torch.tensor([ids])).logits[0, 0].float())
    out.append({"id": it["id"], "ids": ids, "probs": [float(p)]})
  save("llama_seq_cls_orm", model, cfg, {"format": "newline", "items": out})


def main():
  only = set(sys.argv[1:])
  if not only or "qwen2_bpe" in only:
    make_tokenizer_case()
  if not only or "rewards" in only:
    make_reward_cases()
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, COMMON["vocab_size"], size=(2, 11)).astype(np.int64)
  for name, (config_cls, model_cls, kwargs, shard) in CASES.items():
    if only and name not in only:
      continue
    config = getattr(transformers, config_cls)(**kwargs)
    config.architectures = [model_cls]
    model = getattr(transformers, model_cls)(config).eval().to(torch.float32)
    with torch.no_grad():
      for pname, p in model.named_parameters():
        if p.ndim == 1:  # norms around 1, biases around 0: random either way
          p.copy_((1.0 if "norm" in pname else 0.0) + 0.3 * torch.randn_like(p))
      logits = model(torch.from_numpy(tokens)).logits.float().numpy()
    path = os.path.join(OUT, name)
    os.makedirs(path, exist_ok=True)
    for f in os.listdir(path):
      os.remove(os.path.join(path, f))
    model.save_pretrained(path, safe_serialization=True, **({"max_shard_size": shard} if shard else {}))
    np.savez(os.path.join(path, "expected.npz"), tokens=tokens.astype(np.int32), logits=logits)
    files = sorted(os.listdir(path))
    print(f"{name}: {files}, logits {logits.shape}")
  with open(os.path.join(OUT, "VERSIONS.json"), "w") as f:
    json.dump({"transformers": transformers.__version__, "torch": torch.__version__,
               "python": sys.version.split()[0]}, f, indent=1)


if __name__ == "__main__":
  main()
