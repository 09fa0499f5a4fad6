"""A run: the directory one stage writes and later stages open.

    RUN/
      config.json      the whole config the run trained with: model shape, task, settings
      tokenizer.model  the tokenizer its data was encoded with
      params/          final parameters (orbax): what `Run.open` restores
      checkpoints/N/   train state + data-iterator position (orbax), for resuming training
      metrics.jsonl    one line per logged step (tb/: the same as TensorBoard events)
      summary.json     what the run did: steps, mesh, parameters

`RunDir` owns that layout (every path into a run is spelled here and nowhere else); `Run.open(spec,
mesh, rules)` opens a finished run directory or `hf:PATH` (a Hugging Face folder: config.json +
*.safetensors) and restores the parameters straight into the shardings the rules give on `mesh`.
"""

from __future__ import annotations

import dataclasses
import json
import os
from typing import Any

import jax
from flax import nnx

from prm_jax import distributed, sharding
from prm_jax.model import ModelConfig, build_model

HF_PREFIX = "hf:"


@dataclasses.dataclass(frozen=True)
class RunDir:
  """The layout of a run directory."""

  path: str

  @property
  def config_path(self) -> str:
    return os.path.join(self.path, "config.json")

  @property
  def params_path(self) -> str:
    return os.path.join(self.path, "params")

  @property
  def tokenizer_path(self) -> str:
    return os.path.join(self.path, "tokenizer.model")

  @property
  def checkpoints_path(self) -> str:
    return os.path.join(self.path, "checkpoints")

  @property
  def metrics_path(self) -> str:
    return os.path.join(self.path, "metrics.jsonl")

  @property
  def summary_path(self) -> str:
    return os.path.join(self.path, "summary.json")

  def finished(self) -> bool:
    """Training ended and wrote its final parameters."""
    return os.path.exists(self.config_path) and os.path.isdir(self.params_path)

  def read_config(self, *required: str, hint: str = "") -> dict[str, Any]:
    """config.json, once it and the `required` entries ("params", "tokenizer") are known to exist."""
    paths = {"params": self.params_path, "tokenizer": self.tokenizer_path}
    for path in (self.config_path, *(paths[r] for r in required)):
      if not os.path.exists(path):
        raise FileNotFoundError(f"{self.path} is not a prm_jax run (or not a finished one): {path} "
                                f"is missing{hint}")
    with open(self.config_path) as f:
      try:
        return json.load(f)
      except json.JSONDecodeError as e:
        raise ValueError(f"{self.config_path}:{e.lineno}: malformed JSON: {e.msg}") from None

  def write_config(self, config) -> None:
    """The resolved config, written by process 0 (atomically)."""
    if distributed.is_main():
      from prm_jax.records import write_text
      write_text(self.config_path, config.to_json_best_effort(indent=1) + "\n")

  def write_summary(self, summary: dict[str, Any]) -> None:
    if distributed.is_main():
      from prm_jax.records import write_json
      write_json(self.summary_path, summary)

  def save_params(self, params: nnx.State) -> None:
    """Final parameters alone (no optimizer state): what sampling, scoring and init_from load."""
    import orbax.checkpoint as ocp
    ckpt = ocp.StandardCheckpointer()
    ckpt.save(os.path.abspath(self.params_path), params, force=True)
    ckpt.wait_until_finished()

  def load_params(self, abstract: nnx.State) -> nnx.State:
    """Restores the parameters onto the shardings carried by `abstract` (ShapeDtypeStructs)."""
    import orbax.checkpoint as ocp
    return ocp.StandardCheckpointer().restore(os.path.abspath(self.params_path), abstract)


def is_hf(spec: str) -> bool:
  return spec.startswith(HF_PREFIX)


def _hf_path(spec: str) -> str:
  path = spec[len(HF_PREFIX):]
  if not os.path.isfile(os.path.join(path, "config.json")):
    raise FileNotFoundError(f"{spec}: {os.path.join(path, 'config.json')} is missing (hf:PATH names "
                            "a local Hugging Face folder: config.json + *.safetensors)")
  return path


def model_config_of(spec: str, **overrides) -> ModelConfig:
  """The architecture a run or `hf:PATH` holds, read from its config.json (no weights loaded)."""
  if is_hf(spec):
    from prm_jax.model.hf_import import config_from_hf
    with open(os.path.join(_hf_path(spec), "config.json")) as f:
      return config_from_hf(json.load(f), **overrides)
  model = dict(RunDir(spec).read_config("params", hint=" (hf:PATH opens a Hugging Face folder)")[
      "model"])
  return ModelConfig.from_dict({**model, **overrides})


def abstract_with_shardings(state: Any, shardings: Any) -> Any:
  """ShapeDtypeStructs of `state` placed on `shardings` (a prefix tree: one sharding per Variable)."""
  def place(sharding_, subtree):
    return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=sharding_),
                        subtree)
  return jax.tree.map(place, shardings, state,
                      is_leaf=lambda x: isinstance(x, jax.sharding.Sharding))


@dataclasses.dataclass
class Run:
  """A finished run (or a Hugging Face checkpoint), opened onto a mesh."""

  spec: str                         # the directory, or "hf:PATH"
  task: str                         # sft | orm | prm
  model: nnx.Module                 # CausalLM for sft, RewardModel for orm / prm
  model_config: ModelConfig
  tokenizer: Any                    # prm_jax.tokenizer.Tokenizer, or None (see `require_tokenizer`)
  config: dict[str, Any]            # the config the run trained with ({} for hf:)

  @classmethod
  def open(cls, spec: str, mesh: jax.sharding.Mesh, rules: sharding.Rules, **model_overrides
           ) -> "Run":
    """Opens a prm_jax run directory or `hf:PATH`; parameters land in their shardings on `mesh`.

    `model_overrides` (e.g. `dtype="bfloat16"`) change how the weights are held, not their shape.
    """
    rules = tuple(rules)
    if is_hf(spec):
      from prm_jax.model.hf_import import load_hf_causal_lm
      path = _hf_path(spec)
      dtype = model_overrides.pop("dtype", "float32")
      model = load_hf_causal_lm(path, dtype, mesh=mesh, rules=rules, **model_overrides)
      return cls(spec, "sft", model, model.cfg, tokenizer_of(spec), {})
    run = RunDir(spec)
    config = run.read_config("params", "tokenizer", hint=" (hf:PATH opens a Hugging Face folder)")
    task = config["train"]["task"]
    cfg = ModelConfig.from_dict({**config["model"], **model_overrides})
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(task, cfg, nnx.Rngs(0))),
                                   nnx.Param)
    placed = abstract_with_shardings(abstract, sharding.state_shardings(abstract, mesh, rules))
    model = nnx.merge(graphdef, run.load_params(placed))
    return cls(spec, task, model, cfg, tokenizer_of(spec), config)

  def require(self, stage: str, *tasks: str) -> "Run":
    """This run, if it holds a model of one of `tasks`; else a clear error naming both."""
    if self.task not in tasks:
      raise ValueError(f"{self.spec} holds a {self.task!r} model; {stage} needs "
                       f"{' or '.join(repr(t) for t in tasks)}")
    if self.tokenizer is None:
      raise ValueError(f"{self.spec} has no tokenizer prm_jax can read (it reads a sentencepiece "
                       "tokenizer.model with a <nl> piece)")
    return self

  @property
  def train_config(self) -> dict[str, Any]:
    return dict(self.config.get("train") or {})


def tokenizer_of(spec: str):
  """The tokenizer a run was trained with; for `hf:PATH`, the folder's sentencepiece tokenizer.model
  when prm_jax can use it (one with a <nl> piece), else None."""
  from prm_jax.tokenizer import SentencePieceTokenizer
  if not is_hf(spec):
    return SentencePieceTokenizer.load(RunDir(spec).tokenizer_path)
  model = os.path.join(_hf_path(spec), "tokenizer.model")
  if not os.path.exists(model):
    return None
  try:
    return SentencePieceTokenizer.load(model)
  except (ValueError, RuntimeError, OSError):
    return None
