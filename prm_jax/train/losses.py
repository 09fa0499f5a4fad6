"""Losses for the three tasks, on the pipeline's packed batch (see data/pipeline.py).

Each returns (scalar loss, metrics). Logits are float32; every mean is over supervised positions only.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from prm_jax.tokenizer import IGNORE


def _masked_mean(x, w):
  w = w.astype(jnp.float32)
  return (x * w).sum() / jnp.maximum(w.sum(), 1.0)


def sft_loss(logits: jax.Array, targets: jax.Array, weights: jax.Array
             ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Next-token cross-entropy averaged over tokens with weight > 0 (e.g. solution tokens only)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  nll = -jnp.take_along_axis(logp, targets[..., None], axis=-1)[..., 0]
  loss = _masked_mean(nll, weights)
  acc = _masked_mean((logits.argmax(-1) == targets).astype(jnp.float32), weights)
  return loss, {"loss": loss, "token_accuracy": acc, "tokens": weights.astype(jnp.float32).sum()}


def next_token_weights(batch) -> jax.Array:
  """Weight of predicting token t+1 at position t: a solution token of the same segment."""
  seg, mask = batch["segment_ids"], batch["loss_mask"]
  same = (seg[:, 1:] == seg[:, :-1]) & (seg[:, 1:] > 0)
  return (same & (mask[:, 1:] > 0)).astype(jnp.float32)


def sft_task_loss(logits: jax.Array, batch) -> tuple[jax.Array, dict[str, jax.Array]]:
  return sft_loss(logits[:, :-1], batch["tokens"][:, 1:], next_token_weights(batch))


def _segment_broadcast_max(values: jax.Array, seg: jax.Array) -> jax.Array:
  """Per token, the max of `values` over its (row, segment)."""
  b, t = seg.shape
  flat_seg = (seg + jnp.arange(b)[:, None] * (t + 1)).reshape(-1)
  m = jax.ops.segment_max(values.reshape(-1), flat_seg, b * (t + 1))
  return m[flat_seg].reshape(b, t)


def orm_task_loss(logits: jax.Array, batch, all_tokens: bool = False, pos_weight: float = 1.0
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Binary cross-entropy of final-answer correctness.

  Supervised at the solution's final token, or (`all_tokens`, verifier-style) at every solution token;
  the score is always read at the final token.
  """
  logit = logits[..., 0].astype(jnp.float32)
  outcome = batch["outcome"]
  if all_tokens:
    label = _segment_broadcast_max(outcome, batch["segment_ids"])
    w = (batch["loss_mask"] > 0) & (label != IGNORE) & (batch["segment_ids"] > 0)
  else:
    label, w = outcome, outcome != IGNORE
  y = (label == 1).astype(jnp.float32)
  bce = optax_sigmoid_bce(logit, y) * jnp.where(y > 0, pos_weight, 1.0)
  loss = _masked_mean(bce, w)
  final = outcome != IGNORE
  acc = _masked_mean(((logit > 0) == (outcome == 1)).astype(jnp.float32), final)
  return loss, {"loss": loss, "outcome_accuracy": acc, "solutions": final.sum().astype(jnp.float32)}


def optax_sigmoid_bce(logit, y):
  return jnp.maximum(logit, 0) - logit * y + jnp.log1p(jnp.exp(-jnp.abs(logit)))


def prm_step_weights(batch) -> jax.Array:
  """Labelled step ends that come before any negative step of the same solution."""
  label, seg, pos = batch["step_label"], batch["segment_ids"], batch["positions"]
  neg = (label == -1).astype(jnp.int32)
  cum = jnp.cumsum(neg, axis=1)
  start = jnp.arange(label.shape[1])[None, :] - pos            # first token of the segment
  before = jnp.where(start > 0, jnp.take_along_axis(cum, jnp.maximum(start - 1, 0), axis=1), 0)
  prior_negatives = cum - neg - before
  return (label != IGNORE) & (seg > 0) & (prior_negatives == 0)


def prm_task_loss(logits: jax.Array, batch, mode: str = "three_class",
                  neutral_is_positive: bool = True, class_weights=(1.0, 1.0, 1.0)
                  ) -> tuple[jax.Array, dict[str, jax.Array]]:
  """Cross-entropy at step ends only. `three_class`: (neg, neutral, pos); `binary`: ok vs not-ok,
  with neutral counted as ok when `neutral_is_positive` (the paper's choice)."""
  logits = logits.astype(jnp.float32)
  w = prm_step_weights(batch)
  label = batch["step_label"]
  cls = jnp.clip(label + 1, 0, 2)
  logp = jax.nn.log_softmax(logits, axis=-1)
  cw = jnp.asarray(class_weights, jnp.float32)[cls]
  if mode == "three_class":
    nll = -jnp.take_along_axis(logp, cls[..., None], axis=-1)[..., 0]
    pred = logits.argmax(-1)
    correct = pred == cls
  elif mode == "binary":
    p = jnp.exp(logp)
    p_ok = 1.0 - p[..., 0] if neutral_is_positive else p[..., 2]
    ok = (label == 1) | ((label == 0) & neutral_is_positive)
    p_ok = jnp.clip(p_ok, 1e-7, 1 - 1e-7)
    nll = -jnp.where(ok, jnp.log(p_ok), jnp.log1p(-p_ok))
    correct = (p_ok > 0.5) == ok
  else:
    raise ValueError(f"PRM loss mode {mode!r}; expected 'three_class' or 'binary'")
  loss = (nll * cw * w).sum() / jnp.maximum((cw * w).sum(), 1e-6)
  acc = _masked_mean(correct.astype(jnp.float32), w)
  return loss, {"loss": loss, "step_accuracy": acc, "steps": w.sum().astype(jnp.float32)}
