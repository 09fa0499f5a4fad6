"""Decoder, heads and Hugging Face import."""

from prm_jax.model.config import ModelConfig, RopeScaling
from prm_jax.model.heads import (HEAD_OUTPUTS, PRM_CLASSES, TASKS, CausalLM, HeadSpec,
                                  RewardModel,
                                  build_model)
from prm_jax.model.transformer import KVCache, Transformer

__all__ = ["ModelConfig", "RopeScaling", "CausalLM", "RewardModel", "KVCache", "Transformer",
           "HEAD_OUTPUTS", "PRM_CLASSES", "TASKS", "build_model", "HeadSpec"]
