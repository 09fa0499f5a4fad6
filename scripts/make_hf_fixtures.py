"""Regenerates tests/fixtures/hf/: tiny random checkpoints saved by real `transformers`, with logits.

Needs torch==2.13.0 and transformers (benchmark/fixture-only dependencies, never runtime ones):
    python -m venv /tmp/fixvenv && /tmp/fixvenv/bin/pip install torch==2.13.0 transformers
    /tmp/fixvenv/bin/python scripts/make_hf_fixtures.py
Every parameter (norm weights and biases too, which start at ones/zeros and would hide bugs) is
randomised before saving. Expected logits are computed in float32 on fixed token ids.
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


def main():
  torch.manual_seed(0)
  rng = np.random.default_rng(0)
  tokens = rng.integers(0, COMMON["vocab_size"], size=(2, 11)).astype(np.int64)
  for name, (config_cls, model_cls, kwargs, shard) in CASES.items():
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
