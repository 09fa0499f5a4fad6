"""The training step and loop: AdamW with warmup + cosine, global-norm clipping, `jax.jit` with explicit
shardings and donated state. Parameters stay in `param_dtype` (fp32 master weights) while the model
computes in `dtype` (bf16 on accelerators).
"""

from __future__ import annotations

import functools
import time
from typing import Any, Callable, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from tqdm.auto import tqdm

from prm_jax import sharding


class TrainState(NamedTuple):
  step: jax.Array
  params: nnx.State
  opt_state: Any


def make_optimizer(tc: ml_collections.ConfigDict) -> optax.GradientTransformation:
  schedule = optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=tc.learning_rate, warmup_steps=max(1, tc.warmup_steps),
      decay_steps=max(tc.steps, tc.warmup_steps + 1), end_value=tc.learning_rate * 0.1)
  return optax.chain(
      optax.clip_by_global_norm(tc.grad_clip),
      optax.adamw(schedule, b1=tc.b1, b2=tc.b2, weight_decay=tc.weight_decay))


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
  """`step(state, batch) -> (state, metrics)`, jitted with explicit shardings; `state` is donated."""
  def step(state: TrainState, batch):
    def loss_of(params):
      with sharding.use_rules(mesh, rules):
        return loss_fn(nnx.merge(graphdef, params), batch)
    (_, metrics), grads = jax.value_and_grad(loss_of, has_aux=True)(state.params)
    updates, opt_state = tx.update(grads, state.opt_state, state.params)
    params = optax.apply_updates(state.params, updates)
    metrics = dict(metrics, grad_norm=optax.tree.norm(grads))
    return TrainState(state.step + 1, params, opt_state), metrics

  replicated = NamedSharding(mesh, P())
  return jax.jit(step, in_shardings=(state_shardings, batch_shardings),
                 out_shardings=(state_shardings, replicated), donate_argnums=(0,))


def fit(step_fn, state: TrainState, batches: Iterator[dict[str, np.ndarray]], num_steps: int,
        mesh: Mesh, rules, log_every: int = 50, desc: str = "train"
        ) -> tuple[TrainState, list[dict[str, float]]]:
  """Runs `num_steps` steps with a progress bar; returns the final state and the logged metrics."""
  history = []
  start = int(state.step)
  bar = tqdm(total=num_steps, initial=0, desc=desc, dynamic_ncols=True, leave=True)
  t0 = time.perf_counter()
  for i in range(num_steps):
    batch = sharding.shard_batch(next(batches), mesh, rules)
    state, metrics = step_fn(state, batch)
    if (i + 1) % log_every == 0 or i + 1 == num_steps:
      m = {k: float(v) for k, v in jax.device_get(metrics).items()}
      m["step"] = start + i + 1
      m["seconds"] = time.perf_counter() - t0
      history.append(m)
      bar.set_postfix(loss=f"{m['loss']:.4f}")
    bar.update(1)
  bar.close()
  return state, history
