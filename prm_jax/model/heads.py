"""The three heads on the decoder's final hidden state: LM (generator), ORM (1 logit), PRM (3 logits).

A reward model is the generator's transformer plus a small head, so it starts from a generator (or an
imported Hugging Face) checkpoint with `RewardModel.from_lm`.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from prm_jax.model.config import ModelConfig
from prm_jax.model.transformer import KVCache, Transformer, normal, param, zeros

# PRM classes in logit order: index 0 = negative (-1), 1 = neutral (0), 2 = positive (+1).
PRM_CLASSES = (-1, 0, 1)
HEAD_OUTPUTS = {"orm": 1, "prm": len(PRM_CLASSES)}


class CausalLM(nnx.Module):
  """Generator: transformer + LM head (or tied embeddings)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.transformer = Transformer(cfg, rngs=rngs)
    if not cfg.tie_embeddings:
      self.lm_head = param(rngs, normal(cfg.init_std), (cfg.dim, cfg.vocab_size),
                           ("embed", "vocab"), cfg.weight_dtype)

  def logits(self, hidden: jax.Array) -> jax.Array:
    if self.cfg.tie_embeddings:
      w = self.transformer.embed[...].astype(hidden.dtype).T
    else:
      w = self.lm_head[...].astype(hidden.dtype)
    return (hidden @ w).astype(jnp.float32)

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    """Logits float32[B,T,V] for int32[B,T] tokens."""
    hidden, _ = self.transformer(tokens, positions, segment_ids)
    return self.logits(hidden)

  def decode(self, tokens: jax.Array, cache: KVCache, positions: jax.Array | None = None,
             fresh: bool = False, only_at: jax.Array | None = None
             ) -> tuple[jax.Array, KVCache]:
    """Prefill or decode step: logits for `tokens` attending over (and appended to) the cache;
    `fresh`: the cache is empty (a prefill), see `Transformer`; with it, `only_at` (int[B,R]
    columns, e.g. each prompt's last) gives the logits [B,R,V] at those columns alone, the whole
    cache still written."""
    hidden, cache = self.transformer(tokens, positions, cache=cache, only_at=only_at, fresh=fresh)
    return self.logits(hidden), cache


@dataclasses.dataclass(frozen=True)
class HeadSpec:
  """A reward head's shape and how its classes read as P(step ok).

  classes: 1 (ORM: P(correct) = sigmoid), 2 ((bad, good): P(ok) = softmax[..., 1]: TRL's token
  classifiers, Qwen2.5-Math-PRM, an LM's (-, +) logits), 3 ((neg, neutral, pos): this project's PRM,
  P(ok) = 1 - P(neg) when neutral counts as ok, else P(pos)). `hidden`: Qwen2.5-Math-PRM's
  Linear(D, D) -> ReLU before the classifier.
  """

  classes: int
  hidden: bool = False

  def __post_init__(self):
    if self.classes not in (1, 2, 3):
      raise ValueError(f"a reward head has 1, 2 or 3 classes, not {self.classes}")


class RewardModel(nnx.Module):
  """Transformer + a head: `orm` gives one logit per token, `prm` 3 (neg, neutral, pos) or 2
  (bad, good) class logits (`HeadSpec`)."""

  def __init__(self, cfg: ModelConfig, kind: str, *, rngs: nnx.Rngs, spec: HeadSpec | None = None):
    if kind not in HEAD_OUTPUTS:
      raise ValueError(f"reward head kind {kind!r}; expected one of {sorted(HEAD_OUTPUTS)}")
    self.cfg, self.kind = cfg, kind
    self.spec = spec or HeadSpec(HEAD_OUTPUTS[kind])
    if (self.spec.classes == 1) != (kind == "orm"):
      raise ValueError(f"a {kind} head cannot have {self.spec.classes} classes")
    self.transformer = Transformer(cfg, rngs=rngs)
    k = self.spec.classes
    if self.spec.hidden:
      self.head_w1 = param(rngs, normal(cfg.init_std), (cfg.dim, cfg.dim), ("embed", "mlp"),
                           jnp.float32)
      self.head_b1 = param(rngs, zeros, (cfg.dim,), ("mlp",), jnp.float32)
    self.head_w = param(rngs, normal(cfg.init_std), (cfg.dim, k), ("embed", "classes"),
                        jnp.float32)
    self.head_b = param(rngs, zeros, (k,), ("classes",), jnp.float32)

  @classmethod
  def from_lm(cls, lm: CausalLM, kind: str, *, rngs: nnx.Rngs) -> "RewardModel":
    """A reward model whose transformer starts as the generator's (the paper's initialisation)."""
    rm = cls(lm.cfg, kind, rngs=rngs)
    nnx.update(rm.transformer, nnx.state(lm.transformer))
    return rm

  def hidden(self, tokens: jax.Array, positions: jax.Array | None = None,
             segment_ids: jax.Array | None = None, only_at: jax.Array | None = None) -> jax.Array:
    """Hidden states [B,T,D]; with `only_at` (int[B,R] columns of each row), [B,R,D] of those
    tokens alone, the last layer's queries and MLP run at them only (`Transformer`)."""
    return self.transformer(tokens, positions, segment_ids, only_at=only_at)[0]

  def head(self, hidden: jax.Array) -> jax.Array:
    """Head logits float32[..., K] for hidden states [..., D] (e.g. gathered at step ends)."""
    h = hidden.astype(jnp.float32)
    if self.spec.hidden:
      h = jax.nn.relu(h @ self.head_w1[...] + self.head_b1[...])
    return h @ self.head_w[...] + self.head_b[...]

  def ok_probability(self, logits: jax.Array, neutral_is_positive: bool = True) -> jax.Array:
    """P(step ok) (PRM) or P(correct) (ORM) from head logits [..., K] (see `HeadSpec`)."""
    logits = logits.astype(jnp.float32)
    if self.spec.classes == 1:
      return jax.nn.sigmoid(logits[..., 0])
    probs = jax.nn.softmax(logits, axis=-1)
    if self.spec.classes == 2:
      return probs[..., 1]
    return 1.0 - probs[..., 0] if neutral_is_positive else probs[..., 2]

  def __call__(self, tokens: jax.Array, positions: jax.Array | None = None,
               segment_ids: jax.Array | None = None) -> jax.Array:
    return self.head(self.hidden(tokens, positions, segment_ids))


TASKS = ("sft", "orm", "prm")


def build_model(task: str, cfg: ModelConfig, rngs: nnx.Rngs) -> CausalLM | RewardModel:
  """The generator for `sft`, a reward model with the task's head for `orm` / `prm`."""
  if task not in TASKS:
    raise ValueError(f"task {task!r}; expected one of {TASKS}")
  return CausalLM(cfg, rngs=rngs) if task == "sft" else RewardModel(cfg, task, rngs=rngs)
