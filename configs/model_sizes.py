"""Model sizes (LLaMA family). `base.get_config("small")` picks one; every field can be overridden."""

import ml_collections
from ml_collections import config_dict

SIZES = {
    # CPU tests and the demo: compiles in seconds.
    "tiny": dict(vocab_size=512, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128,
                 max_seq_len=256),
    # ~45M parameters: a realistic single-host GPU/TPU config.
    "small": dict(vocab_size=32000, dim=512, num_layers=8, num_heads=8, num_kv_heads=4,
                  mlp_dim=1408, max_seq_len=1024, dtype="bfloat16"),
    # ~400M: the benchmark config for one accelerator.
    "medium": dict(vocab_size=32000, dim=1024, num_layers=24, num_heads=16, num_kv_heads=8,
                   mlp_dim=2816, max_seq_len=2048, dtype="bfloat16", remat=True,
                   scan_layers=True),
    # Llama-3.2-1B shape: tied embeddings, theta 500k with Llama-3 scaling.
    "1b": dict(vocab_size=128256, dim=2048, num_layers=16, num_heads=32, num_kv_heads=8,
               mlp_dim=8192, head_dim=64, norm_eps=1e-5, rope_theta=500000.0,
               rope_scaling=dict(factor=32.0, low_freq_factor=1.0, high_freq_factor=4.0,
                                 original_max_position_embeddings=8192),
               tie_embeddings=True, max_seq_len=4096, dtype="bfloat16", remat=True,
               scan_layers=True),
}

_DEFAULTS = dict(head_dim=config_dict.placeholder(int), norm_eps=1e-6, rope_theta=10000.0, rope_scaling=None,
                 qkv_bias=False, tie_embeddings=False,
                 sliding_window=config_dict.placeholder(int), dtype="float32",
                 param_dtype="float32", remat=False, scan_layers=False, init_std=0.02,
                 attention_block=128)


def get(size: str) -> ml_collections.ConfigDict:
  if size not in SIZES:
    raise ValueError(f"unknown model size {size!r}; choose from {sorted(SIZES)}")
  # Placeholders keep optional fields typed, so `--config.model.head_dim=128` works from None.
  return ml_collections.ConfigDict(dict(_DEFAULTS, **SIZES[size]))
