"""`ModelConfig`: the hashable, validated description of one decoder.

Configs arrive as `ml_collections.ConfigDict` (from `configs/`) or as a Hugging Face `config.json`; both
become this frozen dataclass, so a jitted function can close over it and a typo fails at load time.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """Llama-3 style frequency scaling (`rope_type: llama3`)."""

  factor: float = 8.0
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  vocab_size: int
  dim: int
  num_layers: int
  num_heads: int
  num_kv_heads: int
  mlp_dim: int
  head_dim: int | None = None
  norm_eps: float = 1e-6
  rope_theta: float = 10_000.0
  rope_scaling: RopeScaling | None = None
  qkv_bias: bool = False
  tie_embeddings: bool = False
  sliding_window: int | None = None
  max_seq_len: int = 2048
  attention_block: int = 128    # queries per block of uncached attention (0: all at once)
  dtype: str = "float32"        # compute dtype of activations and matmuls
  param_dtype: str = "float32"  # storage dtype of the (master) weights
  remat: bool = False           # rematerialise each block in the backward pass
  scan_layers: bool = False     # one compiled block, scanned over stacked weights
  init_std: float = 0.02

  def __post_init__(self):
    if self.num_heads % self.num_kv_heads:
      raise ValueError(
          f"num_heads={self.num_heads} must be a multiple of num_kv_heads={self.num_kv_heads}")
    for field in ("dtype", "param_dtype"):
      if getattr(self, field) not in _DTYPES:
        raise ValueError(f"{field}={getattr(self, field)!r}; expected one of {sorted(_DTYPES)}")
    if self.attention_block < 0:
      raise ValueError(f"attention_block={self.attention_block} must be >= 0")
    if self.head_dim is None:
      if self.dim % self.num_heads:
        raise ValueError(f"dim={self.dim} is not divisible by num_heads={self.num_heads}")
      object.__setattr__(self, "head_dim", self.dim // self.num_heads)
    if self.head_dim % 2:
      raise ValueError(f"head_dim={self.head_dim} must be even for RoPE")

  @property
  def compute_dtype(self):
    return _DTYPES[self.dtype]

  @property
  def weight_dtype(self):
    return _DTYPES[self.param_dtype]

  @classmethod
  def from_dict(cls, d: Mapping[str, Any]) -> "ModelConfig":
    """Builds from a ConfigDict / dict, rejecting unknown keys by name."""
    d = dict(d.to_dict() if hasattr(d, "to_dict") else d)
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(d) - known)
    if unknown:
      raise ValueError(f"unknown model config keys {unknown}; known: {sorted(known)}")
    if d.get("rope_scaling"):
      d["rope_scaling"] = RopeScaling(**dict(d["rope_scaling"]))
    else:
      d["rope_scaling"] = None
    return cls(**d)

  def replace(self, **kw) -> "ModelConfig":
    return dataclasses.replace(self, **kw)

  def num_params(self) -> int:
    """Parameter count, used for MFU estimates and logging."""
    hd = self.head_dim
    attn = self.dim * hd * (2 * self.num_heads + 2 * self.num_kv_heads)
    if self.qkv_bias:
      attn += hd * (self.num_heads + 2 * self.num_kv_heads)
    block = attn + 3 * self.dim * self.mlp_dim + 2 * self.dim
    emb = self.vocab_size * self.dim * (1 if self.tie_embeddings else 2)
    return self.num_layers * block + emb + self.dim
