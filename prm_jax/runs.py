"""A run: the directory one stage writes and later stages open.

    RUN/
      config.json      the whole config the run trained with: model shape, task, step format, ...
      tokenizer.model  the tokenizer its data was encoded with (sentencepiece), or
      tokenizer/       a Hugging Face tokenizer's files (tokenizer.json, tokenizer_config.json)
      params/          final parameters (orbax): what `Run.open` restores
      checkpoints/N/   train state + data-iterator position (orbax), for resuming training
      metrics.jsonl    one line per logged step (tb/: the same as TensorBoard events)
      summary.json     what the run did: steps, mesh, parameters
      .lock            only while training writes the run (flock; it names the process)

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
QWEN_PRM_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
# The step formats released reward models were trained with (the model cards' recipes).
REWARD_FORMATS = {
    "qwen_prm": dict(preset="tag", tag="<extra_0>", before_tag="", after_tag="",
                     chat_template=True, system_prompt=QWEN_PRM_SYSTEM, bos="auto"),
    "lm": dict(preset="tag", tag="ки", before_tag=" ", after_tag="\n", chat_template=False,
               system_prompt="", bos="auto"),
}


def _read_sidecar(path: str) -> dict[str, Any]:
  """The `prm_jax.json` a prm_jax export writes beside its weights ({} for other folders)."""
  from prm_jax.model.hf_export import SIDECAR
  p = os.path.join(path, SIDECAR)
  if not os.path.exists(p):
    return {}
  with open(p) as f:
    return json.load(f)


def _single_token(tokenizer, text: str, spec: str) -> int:
  """The id of a token that is `text` (a vocabulary entry, or text that encodes to one id)."""
  i = tokenizer.token_id(text)
  if i is None:
    ids = tokenizer.encode(text)
    if len(ids) != 1:
      raise ValueError(f"{spec}: {text!r} is not one token of its tokenizer ({ids})")
    i = ids[0]
  return i


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
    """The run's tokenizer: its `tokenizer/` folder (Hugging Face) or `tokenizer.model`."""
    from prm_jax.tokenizer import HF_DIR, SP_FILE
    hf = os.path.join(self.path, HF_DIR)
    return hf if os.path.isdir(hf) else os.path.join(self.path, SP_FILE)

  @property
  def checkpoints_path(self) -> str:
    return os.path.join(self.path, "checkpoints")

  @property
  def metrics_path(self) -> str:
    return os.path.join(self.path, "metrics.jsonl")

  @property
  def summary_path(self) -> str:
    return os.path.join(self.path, "summary.json")

  @property
  def lock_path(self) -> str:
    """Held (flock) by the one process training into this run; removed when it is done."""
    return os.path.join(self.path, ".lock")

  def written(self) -> list[str]:
    """The names of the files training writes here besides config.json and the tokenizer, that
    exist: a folder holding any of them but no config.json is not a run training wrote."""
    names = ("params", "checkpoints", "metrics.jsonl", "summary.json", "tb")
    return [n for n in names if os.path.lexists(os.path.join(self.path, n))]

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
    """Final parameters alone (no optimizer state): what sampling, scoring and init_from load.
    They replace earlier params/ of this run: `train` checks the workdir is its own first."""
    import orbax.checkpoint as ocp
    from prm_jax.train.checkpoints import save_each_array_once_on_cpu
    save_each_array_once_on_cpu()
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
  def open(cls, spec: str, mesh: jax.sharding.Mesh, rules: sharding.Rules, *,
           reward: str | None = None, good_bad: tuple[str, str] = ("+", "-"), **model_overrides
           ) -> "Run":
    """Opens a prm_jax run directory or `hf:PATH`; parameters land in their shardings on `mesh`.

    `model_overrides` (e.g. `dtype="bfloat16"`) change how the weights are held, not their shape.
    """
    rules = tuple(rules)
    if is_hf(spec):
      return cls._open_hf(spec, mesh, rules, reward, good_bad, **model_overrides)
    if reward:
      raise ValueError(f"{spec} is a prm_jax run: score.convention={reward!r} is for hf:PATH")
    run = RunDir(spec)
    config = run.read_config("params", "tokenizer", hint=" (hf:PATH opens a Hugging Face folder)")
    task = config["train"]["task"]
    cfg = ModelConfig.from_dict({**config["model"], **model_overrides})
    graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(task, cfg, nnx.Rngs(0))),
                                   nnx.Param)
    placed = abstract_with_shardings(abstract, sharding.state_shardings(abstract, mesh, rules))
    model = nnx.merge(graphdef, run.load_params(placed))
    return cls(spec, task, model, cfg, tokenizer_of(spec), config)

  @classmethod
  def _open_hf(cls, spec, mesh, rules, reward=None, good_bad=("+", "-"), **model_overrides):
    from prm_jax.model import hf_import
    path = _hf_path(spec)
    with open(os.path.join(path, "config.json")) as f:
      hf = json.load(f)
    arch = (hf.get("architectures") or ["?"])[0]
    exported = _read_sidecar(path)
    dtype = model_overrides.pop("dtype", "float32")
    tokenizer = tokenizer_of(spec)
    if not reward and arch.endswith("ForCausalLM"):
      model = hf_import.load_hf_causal_lm(path, dtype, mesh=mesh, rules=rules, **model_overrides)
      return cls(spec, "sft", model, model.cfg, tokenizer,
                 {"format": exported["format"]} if exported.get("format") else {})
    ids = None
    if reward == "lm":
      if tokenizer is None:
        raise ValueError(f"{spec}: score.convention=lm needs the folder's tokenizer")
      ids = tuple(_single_token(tokenizer, t, spec) for t in reversed(good_bad))  # (bad, good)
    model = hf_import.load_hf_reward_model(path, dtype, mesh=mesh, rules=rules, convention=reward,
                                           good_bad_ids=ids, **model_overrides)
    convention, _ = hf_import.reward_convention(hf, reward)
    config = {"train": {"task": model.kind, "neutral_is_positive": True}}
    if convention in REWARD_FORMATS:
      config["format"] = dict(REWARD_FORMATS[convention])
    if exported:  # a prm_jax export: score it the way it was trained
      config["train"]["neutral_is_positive"] = exported.get("neutral_is_positive", True)
      if exported.get("format"):
        config["format"] = exported["format"]
      if "orm_bias" in exported and model.kind == "orm":
        model.head_b.value = jax.numpy.full_like(model.head_b.value, exported["orm_bias"])
    return cls(spec, model.kind, model, model.cfg, tokenizer, config)

  def require(self, stage: str, *tasks: str) -> "Run":
    """This run, if it holds a model of one of `tasks`; else a clear error naming both."""
    if self.task not in tasks:
      raise ValueError(f"{self.spec} holds a {self.task!r} model; {stage} needs "
                       f"{' or '.join(repr(t) for t in tasks)}")
    if self.tokenizer is None:
      raise ValueError(f"{self.spec} has no tokenizer (tokenizer.json / tokenizer_config.json)")
    if self.tokenizer.vocab_size > self.model_config.vocab_size:
      raise ValueError(f"{self.spec}: its tokenizer has {self.tokenizer.vocab_size} tokens but the "
                       f"model's embedding table only {self.model_config.vocab_size}")
    return self

  def with_format(self, config):
    """`config` with this run's step format (the one it was trained with), when it recorded one:
    every later stage reads text the way the run was trained to."""
    saved = self.config.get("format")
    if not saved:
      return config
    from prm_jax.configs import derive
    return derive(config, {f"format.{k}": v for k, v in saved.items()})

  @staticmethod
  def holding(spec: str, config) -> dict[str, Any]:
    """How to hold `spec`'s weights per `config.model` (dtype, param_dtype): a Hugging Face folder
    has no such setting of its own; a prm_jax run keeps the one it trained with."""
    if not is_hf(spec):
      return {}
    return {"dtype": config.model.dtype, "param_dtype": config.model.param_dtype}

  @property
  def train_config(self) -> dict[str, Any]:
    return dict(self.config.get("train") or {})


def tokenizer_of(spec: str):
  """The tokenizer a run was trained with, or a Hugging Face folder's own (None when the folder
  ships none)."""
  from prm_jax.tokenizer import load_tokenizer
  if not is_hf(spec):
    return load_tokenizer(RunDir(spec).tokenizer_path)
  path = _hf_path(spec)
  if not any(os.path.exists(os.path.join(path, f)) for f in (
      "tokenizer.json", "tokenizer_config.json", "tokenizer.model")):
    return None
  return load_tokenizer(path)
