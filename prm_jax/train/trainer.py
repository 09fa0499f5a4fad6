"""The training step and loop: AdamW with warmup + cosine, global-norm clipping, `jax.jit` with explicit
shardings and donated state. Parameters stay in `param_dtype` (fp32 master weights) while the model
computes in `dtype` (bf16 on accelerators).
"""

from __future__ import annotations

from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from prm_jax import sharding
from prm_jax.model import TASKS
from prm_jax.train import losses

def task_loss(task: str, tc: ml_collections.ConfigDict):
  """loss_fn(model, batch) -> (loss, metrics) for the task, on the pipeline's packed batch."""
  def logits(model, b):
    return model(b["tokens"], b["positions"], b["segment_ids"])
  if task == "sft":
    return lambda m, b: losses.sft_task_loss(logits(m, b), b)
  if task == "orm":
    return lambda m, b: losses.orm_task_loss(logits(m, b), b, all_tokens=tc.orm_all_tokens)
  if task == "prm":
    return lambda m, b: losses.prm_task_loss(logits(m, b), b, tc.prm_mode, tc.neutral_is_positive,
                                             tuple(tc.class_weights))
  raise ValueError(f"task {task!r}; expected one of {TASKS}")


class TrainState(NamedTuple):
  step: jax.Array
  params: nnx.State
  opt_state: Any


def make_optimizer(tc: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tc.learning_rate, warmup_steps=max(1, tc.warmup_steps),
      decay_steps=max(tc.steps, tc.warmup_steps + 1), end_value=tc.learning_rate * 0.1)
  tx = optax.chain(
      optax.clip_by_global_norm(tc.grad_clip),
      optax.adamw(schedule, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay))
  accum = int(tc.get("grad_accum", 1))
  return optax.MultiSteps(tx, every_k_schedule=accum) if accum > 1 else tx


def _state_shardings(abstract: TrainState, mesh: Mesh, rules) -> TrainState:
  """Params and optimizer moments follow the parameters' logical axes; scalars are replicated."""
  replicated = NamedSharding(mesh, P())

  def one(x):
    if isinstance(x, nnx.Variable):
      return sharding.state_shardings(x, mesh, rules)
    return replicated
  return jax.tree.map(one, abstract, is_leaf=lambda x: isinstance(x, nnx.Variable))


def create_train_state(model: nnx.Module, tx: optax.GradientTransformation, mesh: Mesh, rules
                       ) -> tuple[nnx.GraphDef, TrainState, TrainState]:
  """Splits a (sharded) model into graphdef + TrainState and initialises the optimizer in place."""
  graphdef, params = nnx.split(model, nnx.Param)
  abstract = jax.eval_shape(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)), params)
  shardings = _state_shardings(abstract, mesh, rules)
  init = jax.jit(lambda p: TrainState(jnp.zeros((), jnp.int32), p, tx.init(p)),
                 out_shardings=shardings)
  return graphdef, init(params), shardings


LossFn = Callable[[nnx.Module, dict[str, jax.Array]], tuple[jax.Array, dict[str, jax.Array]]]


def make_train_step(graphdef: nnx.GraphDef, tx: optax.GradientTransformation, loss_fn: LossFn,
                    state_shardings: TrainState, batch_shardings, mesh: Mesh, rules):
  """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings; `state` is donated.

  A step whose loss or gradient is not finite leaves the state unchanged and reports `finite=0`, so
  the loop can stop with the last good state (and checkpoint) intact.
  """
  def step(state: TrainState, batch):
    def loss_of(params):
      with sharding.use_rules(mesh, rules):
        return loss_fn(nnx.merge(graphdef, params), batch)
    (loss, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    grad_norm = optax.tree.norm(grads)
    finite = jnp.isfinite(loss) & jnp.isfinite(grad_norm)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    new = TrainState(state.step + 1, params, opt_state)
    new = jax.tree.map(lambda n, o: jnp.where(finite, n, o), new, state)
    metrics = dict(metrics, grad_norm=grad_norm, finite=finite.astype(jnp.float32))
    return new, metrics

  replicated = NamedSharding(mesh, P())
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))
