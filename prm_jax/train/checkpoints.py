"""Orbax checkpoints of the train state together with the data iterator's position.

Saves are asynchronous every `save_every` steps, the last `keep` are kept, and a checkpoint only becomes
visible (and "latest") once orbax has finalised it, so a crash mid-save never leaves a half-written
latest. Restore takes target shardings, so a checkpoint written on one mesh restores onto another.
"""

from __future__ import annotations

import json
import os
from typing import Any

import jax
import orbax.checkpoint as ocp


class Checkpointer:
  def __init__(self, directory: str, save_every: int, keep: int = 3, async_save: bool = True):
    self.directory = os.path.abspath(directory)
    self.manager = ocp.CheckpointManager(
        self.directory,
        options=ocp.CheckpointManagerOptions(max_to_keep=keep, save_interval_steps=save_every,
                                             enable_async_checkpointing=async_save,
                                             create=True),
        item_names=("state", "data"))

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, data_state: dict | None, force: bool = False) -> bool:
    """Saves when `step` is on the interval (or `force`); returns whether a save started."""
    return self.manager.save(step, args=ocp.args.Composite(
        state=ocp.args.StandardSave(state), data=ocp.args.JsonSave(data_state or {})), force=force)

  def restore(self, abstract_state: Any, step: int | None = None) -> tuple[Any, dict, int]:
    """Restores onto the shardings carried by `abstract_state` (ShapeDtypeStructs with .sharding)."""
    step = self.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f"no checkpoint in {self.directory}")
    out = self.manager.restore(step, args=ocp.args.Composite(
        state=ocp.args.StandardRestore(abstract_state), data=ocp.args.JsonRestore()))
    return out.state, dict(out.data or {}), step

  def wait(self) -> None:
    self.manager.wait_until_finished()

  def close(self) -> None:
    self.manager.wait_until_finished()
    self.manager.close()


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `state` placed on `shardings` (a prefix tree: one sharding per Variable)."""
  def place(sharding, subtree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding), subtree)
  return jax.tree.map(place, shardings, state,
                      is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))


def export_params(path: str, params) -> None:
  """Final parameters alone (no optimizer state): what sampling, scoring and RM init load."""
  ckpt = ocp.StandardCheckpointer()
  ckpt.save(os.path.abspath(path), params, force=True)
  ckpt.wait_until_finished()


def load_params(path: str, abstract_params) -> Any:
  """Restores exported params onto the shardings carried by `abstract_params`."""
  return ocp.StandardCheckpointer().restore(os.path.abspath(path), abstract_params)


def read_run_config(workdir: str, *required: str, hint: str = "") -> dict:
  """A training run's config.json, once it and `required` (e.g. "params") are known to exist."""
  for name in ("config.json", *required):
    path = os.path.join(workdir, name)
    if not os.path.exists(path):
      raise FileNotFoundError(f"{workdir} is not a prm_jax training run (or not a finished one): "
                              f"{path} is missing{hint}")
  with open(os.path.join(workdir, "config.json")) as f:
    return json.load(f)


def load_trained(workdir: str, mesh=None, rules=None):
  """(model, ModelConfig, tokenizer, task) of a finished training run's workdir, sharded on `mesh`."""
  from flax import nnx
  from prm_jax import sharding
  from prm_jax.model import ModelConfig
  from prm_jax.tokenizer import SentencePieceTokenizer
  from prm_jax.train.trainer import build_model
  config = read_run_config(workdir, "params", "tokenizer.model")
  params_path = os.path.join(workdir, "params")
  cfg = ModelConfig.from_dict(config["model"])
  task = config["train"]["task"]
  rules = tuple(tuple(r) for r in (rules or config.get("rules") or sharding.DEFAULT_RULES))
  mesh = mesh or sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(task, cfg, nnx.Rngs(0))),
                                 nnx.Param)
  placed = abstract_with_shardings(abstract, sharding.state_shardings(abstract, mesh, rules))
  model = nnx.merge(graphdef, load_params(params_path, placed))
  tok = SentencePieceTokenizer.load(os.path.join(workdir, "tokenizer.model"))
  return model, cfg, tok, task
