"""Losses. Each returns (scalar loss, metrics dict) and takes float32 logits."""

from __future__ import annotations

import jax
import jax.numpy as jnp


def sft_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token cross-entropy averaged over tokens with weight > 0 (e.g. solution tokens only)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  w = weights.astype(jnp.float32)
  denom = jnp.maximum(w.sum(), 1.0)
  loss = (nll * w).sum() / denom
  acc = ((logits.argmax(-1) == targets) * w).sum() / denom
  return loss, {"loss": loss, "token_accuracy": acc, "tokens": w.sum()}
