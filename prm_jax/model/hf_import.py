"""Load a local Hugging Face LLaMA / Qwen2 / Mistral checkpoint (config.json + *.safetensors).

Tensors are memory-mapped and streamed one at a time into their target shardings with
`jax.make_array_from_callback`, so each host only reads the slices its devices own and a checkpoint never
needs twice its size in host memory.
"""

from __future__ import annotations

import functools
import json
import os
import re
import struct
from typing import Any, Callable

import jax
import ml_dtypes
import numpy as np
from flax import nnx

from prm_jax import sharding
from prm_jax.model.config import ModelConfig, RopeScaling
from prm_jax.model.heads import CausalLM, HeadSpec, RewardModel

FAMILIES = ("Llama", "Mistral", "Qwen2")
HEADS = ("ForCausalLM", "ForTokenClassification", "ForSequenceClassification",
         "ForProcessRewardModel")
SUPPORTED = tuple(f + h for f in FAMILIES for h in HEADS if h != "ForProcessRewardModel") + (
    "Qwen2ForProcessRewardModel",)
# How a released reward model reads as P(step ok): its architecture's convention (see
# `reward_convention`); "lm" (Math-Shepherd / RLHFlow: a causal LM's "+" vs "-" logits at the step
# tag) is chosen in config, since a causal LM is a generator otherwise.
CONVENTIONS = ("token_classification", "qwen_prm", "sequence_classification", "lm")


def family_of(arch: str) -> str:
  """'Qwen2' for 'Qwen2ForTokenClassification'; a clear error for anything unsupported."""
  if arch not in SUPPORTED:
    raise ValueError(f"unsupported architecture {arch!r}; supported: {', '.join(SUPPORTED)}")
  return next(f for f in FAMILIES if arch.startswith(f + "For"))

_ST_DTYPES = {"F32": np.float32, "F16": np.float16, "BF16": ml_dtypes.bfloat16, "F64": np.float64,
              "I64": np.int64, "I32": np.int32}

# HF keys that carry no weights we need.
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")


class SafetensorsFolder:
  """Lazy, memory-mapped view of every tensor in a folder's *.safetensors files."""

  def __init__(self, path: str):
    files = sorted(f for f in os.listdir(path) if f.endswith(".safetensors"))
    if not files:
      raise FileNotFoundError(f"{path}: no *.safetensors files (PyTorch .bin checkpoints are not "
                              "supported; re-save with safe_serialization=True)")
    self.index: dict[str, tuple[str, dict]] = {}
    for f in files:
      full = os.path.join(path, f)
      with open(full, "rb") as fh:
        (n,) = struct.unpack("<Q", fh.read(8))
        header = json.loads(fh.read(n))
      header.pop("__metadata__", None)
      for name, info in header.items():
        self.index[name] = (full, dict(info, data_start=8 + n))

  def names(self) -> set[str]:
    return set(self.index)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self.index[name][1]["shape"])

  def get(self, name: str) -> np.ndarray:
    if name not in self.index:
      raise KeyError(f"tensor {name!r} is missing from the checkpoint")
    file, info = self.index[name]
    if info["dtype"] not in _ST_DTYPES:
      raise ValueError(f"tensor {name!r} has unsupported dtype {info['dtype']}")
    start, end = info["data_offsets"]
    dtype = np.dtype(_ST_DTYPES[info["dtype"]])
    mm = np.memmap(file, dtype=np.uint8, mode="r", offset=info["data_start"] + start,
                   shape=(end - start,))
    return mm.view(dtype).reshape(info["shape"])


def config_from_hf(hf: dict[str, Any], **overrides) -> ModelConfig:
  """ModelConfig from a Hugging Face config.json dict (transformers 4 and 5 layouts)."""
  arch = (hf.get("architectures") or ["?"])[0]
  qwen2 = family_of(arch) == "Qwen2"
  if hf.get("mlp_bias"):
    raise ValueError(f"{arch}: mlp_bias=True is not supported")
  if not qwen2 and hf.get("attention_bias"):
    raise ValueError(f"{arch}: attention_bias=True (bias on o_proj too) is not supported")
  # transformers 5 moved theta and scaling into `rope_parameters`; 4.x has rope_theta + rope_scaling.
  rope = dict(hf.get("rope_parameters") or {})
  theta = rope.get("rope_theta", hf.get("rope_theta", 10_000.0))
  scaling_src = rope if rope.get("rope_type", "default") != "default" else (hf.get("rope_scaling") or {})
  rope_type = scaling_src.get("rope_type", scaling_src.get("type", "default"))
  scaling = None
  if rope_type == "llama3":
    scaling = RopeScaling(
        factor=float(scaling_src["factor"]),
        low_freq_factor=float(scaling_src["low_freq_factor"]),
        high_freq_factor=float(scaling_src["high_freq_factor"]),
        original_max_position_embeddings=int(scaling_src["original_max_position_embeddings"]))
  elif rope_type != "default":
    raise ValueError(f"{arch}: rope type {rope_type!r} is not supported (default and llama3 are)")
  sliding = hf.get("sliding_window")
  if qwen2 and not hf.get("use_sliding_window", False):
    sliding = None
  heads = hf["num_attention_heads"]
  kw = dict(
      vocab_size=hf["vocab_size"], dim=hf["hidden_size"], num_layers=hf["num_hidden_layers"],
      num_heads=heads, num_kv_heads=hf.get("num_key_value_heads") or heads,
      mlp_dim=hf["intermediate_size"], head_dim=hf.get("head_dim"),
      norm_eps=hf.get("rms_norm_eps", 1e-6), rope_theta=float(theta), rope_scaling=scaling,
      qkv_bias=qwen2, tie_embeddings=bool(hf.get("tie_word_embeddings", False)),
      sliding_window=sliding, max_seq_len=hf.get("max_position_embeddings", 2048))
  kw.update(overrides)
  return ModelConfig(**kw)


def _layer_map(cfg: ModelConfig) -> dict[str, tuple[str, Callable[[np.ndarray], np.ndarray]]]:
  """Our per-block parameter path -> (HF name template, transform from HF layout to ours)."""
  d, n, k, h = cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  a = "model.layers.{i}.self_attn."
  m = "model.layers.{i}.mlp."
  out = {
      "attn/q_proj": (a + "q_proj.weight", lambda w: w.T.reshape(d, n, h)),
      "attn/k_proj": (a + "k_proj.weight", lambda w: w.T.reshape(d, k, h)),
      "attn/v_proj": (a + "v_proj.weight", lambda w: w.T.reshape(d, k, h)),
      "attn/o_proj": (a + "o_proj.weight", lambda w: w.T.reshape(n, h, d)),
      "mlp/gate": (m + "gate_proj.weight", lambda w: w.T),
      "mlp/up": (m + "up_proj.weight", lambda w: w.T),
      "mlp/down": (m + "down_proj.weight", lambda w: w.T),
      "attn_norm/scale": ("model.layers.{i}.input_layernorm.weight", lambda w: w),
      "mlp_norm/scale": ("model.layers.{i}.post_attention_layernorm.weight", lambda w: w),
  }
  if cfg.qkv_bias:
    out["attn/q_bias"] = (a + "q_proj.bias", lambda b: b.reshape(n, h))
    out["attn/k_bias"] = (a + "k_proj.bias", lambda b: b.reshape(k, h))
    out["attn/v_bias"] = (a + "v_proj.bias", lambda b: b.reshape(k, h))
  return out


def _mesh_rules(mesh, rules):
  if mesh is None or rules is None:
    from prm_jax.configs import base
    mesh = mesh or sharding.make_mesh(base.get_config().mesh)
    rules = tuple(rules or base.RULES)
  return mesh, rules


def load_hf_causal_lm(path: str, dtype: str = "float32", *, param_dtype: str | None = None,
                      mesh: jax.sharding.Mesh | None = None,
                      rules: sharding.Rules | None = None, **overrides) -> CausalLM:
  """Reads a local HF folder into a `CausalLM` (logits for int32[B,T] tokens), sharded on `mesh`.

  `dtype` is the compute dtype; weights are stored in `param_dtype` (default: `dtype`). `mesh` and
  `rules` default to the base config's (`configs/base.py`).
  """
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype or dtype, **overrides)
  return _load(path, hf, cfg, lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), {},
               *_mesh_rules(mesh, rules))


def reward_convention(hf: dict[str, Any], convention: str | None = None) -> tuple[str, HeadSpec]:
  """(convention, head) a Hugging Face reward model's config.json implies; `convention` overrides
  (needed for "lm": a causal LM read as a PRM)."""
  arch = (hf.get("architectures") or ["?"])[0]
  family_of(arch)
  labels = int(hf.get("num_labels") or len(hf.get("id2label") or {}) or 2)
  if convention is None:
    convention = ("token_classification" if arch.endswith("ForTokenClassification") else
                  "qwen_prm" if arch.endswith("ForProcessRewardModel") else
                  "sequence_classification" if arch.endswith("ForSequenceClassification") else None)
  if convention is None:
    raise ValueError(f"{arch} is a causal LM: score with it as a PRM by setting "
                     "score.convention=lm (its '+' / '-' logits at the step tag)")
  if convention not in CONVENTIONS:
    raise ValueError(f"score.convention={convention!r}; expected one of {CONVENTIONS}")
  if convention == "token_classification":
    if labels not in (2, 3):
      raise ValueError(f"{arch}: {labels} labels; a token-classification PRM has 2 or 3")
    return convention, HeadSpec(labels)
  if convention == "sequence_classification":
    if labels != 1:
      raise ValueError(f"{arch}: {labels} labels; an ORM has one")
    return convention, HeadSpec(1)
  return convention, HeadSpec(2, hidden=convention == "qwen_prm")


def load_hf_reward_model(path: str, dtype: str = "float32", *, param_dtype: str | None = None,
                         mesh: jax.sharding.Mesh | None = None,
                         rules: sharding.Rules | None = None, convention: str | None = None,
                         good_bad_ids: tuple[int, int] | None = None, **overrides) -> RewardModel:
  """A released reward model from a local HF folder: `int32[B,T]` -> per-token logits `[B,T,C]`.

  `*ForTokenClassification` (2 or 3 labels) and `Qwen2ForProcessRewardModel` load as PRMs,
  `*ForSequenceClassification` (1 label) as an ORM, and with `convention="lm"` a causal LM as a PRM
  whose two classes are the logits of `good_bad_ids` (bad, good: e.g. the ids of "-" and "+").
  """
  with open(os.path.join(path, "config.json")) as f:
    hf = json.load(f)
  convention, spec = reward_convention(hf, convention)
  cfg = config_from_hf(hf, dtype=dtype, param_dtype=param_dtype or dtype, **overrides)
  kind = "orm" if spec.classes == 1 else "prm"
  if convention == "qwen_prm":
    head = {"head_w1": ("score.0.weight", lambda w: w.T), "head_b1": ("score.0.bias", None),
            "head_w": ("score.2.weight", lambda w: w.T), "head_b": ("score.2.bias", None)}
  elif convention == "lm":
    if good_bad_ids is None:
      raise ValueError("convention=lm needs the ids of the bad and good tokens")
    rows = list(good_bad_ids)  # (bad, good): class 1 is "ok"
    source = "model.embed_tokens.weight" if cfg.tie_embeddings else "lm_head.weight"
    head = {"head_w": (source, lambda w: w[rows].T), "head_b": (None, None)}
  else:
    head = {"head_w": ("score.weight", lambda w: w.T), "head_b": ("score.bias", None)}
  return _load(path, hf, cfg, lambda: RewardModel(cfg, kind, rngs=nnx.Rngs(0), spec=spec), head,
               *_mesh_rules(mesh, rules))


def _load(path: str, hf: dict, cfg: ModelConfig, make_model, head: dict, mesh, rules):
  """Streams a folder's tensors into `make_model()`'s parameters, each straight into its sharding.

  `head` maps our head parameters to (HF tensor name or None for zeros, transform or None)."""
  tensors = SafetensorsFolder(path)
  abstract = nnx.eval_shape(make_model)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = sharding.state_shardings(abstract_state, mesh, rules)
  layer_map = _layer_map(cfg)
  used: set[str] = set()

  def fetch(name: str, transform, want_shape) -> np.ndarray:
    arr = transform(tensors.get(name))
    if arr.shape != tuple(want_shape):
      raise ValueError(f"tensor {name!r}: checkpoint shape {tensors.shape(name)} gives "
                       f"{arr.shape} after conversion, but the model expects {tuple(want_shape)}")
    used.add(name)
    return arr

  def whole(name, transform, shape, np_dtype):
    full = functools.cache(lambda: fetch(name, transform or (lambda w: w), shape))
    return lambda idx: full()[idx].astype(np_dtype, copy=False)

  def source(ours: str, shape, np_dtype):
    """A callback index -> numpy slice for one of our parameters."""
    if ours in head:
      name, transform = head[ours]
      if name is None:
        return lambda idx: np.zeros(shape, np_dtype)[idx]
      if name.endswith(".bias") and name not in tensors.names():
        return lambda idx: np.zeros(shape, np_dtype)[idx]  # e.g. a bias-free classifier
      return whole(name, transform, shape, np_dtype)
    if ours == "transformer/embed":
      return whole("model.embed_tokens.weight", None, shape, np_dtype)
    if ours == "transformer/final_norm/scale":
      return whole("model.norm.weight", None, shape, np_dtype)
    if ours == "lm_head":
      return whole("lm_head.weight", lambda w: w.T, shape, np_dtype)
    match = re.fullmatch(r"transformer/layers/(\d+)/(.+)", ours)
    if match and not cfg.scan_layers:
      i, key = int(match.group(1)), match.group(2)
      template, tf = layer_map[key]
      return whole(template.format(i=i), tf, shape, np_dtype)
    match = re.fullmatch(r"transformer/layers/(.+)", ours)
    if match and cfg.scan_layers:
      template, tf = layer_map[match.group(1)]
      layer = functools.lru_cache(maxsize=2)(
          lambda i: fetch(template.format(i=i), tf, shape[1:]))

      def stacked(idx):
        layers = range(cfg.num_layers)[idx[0]]
        return np.stack([layer(i)[idx[1:]] for i in layers]).astype(np_dtype, copy=False)
      return stacked
    raise KeyError(f"no Hugging Face tensor maps to parameter {ours!r}")

  def load(path_, var, sh):
    ours = sharding.path_name(path_)
    return jax.make_array_from_callback(var.shape, sh, source(ours, var.shape, np.dtype(var.dtype)))

  flat, treedef = jax.tree_util.tree_flatten_with_path(abstract_state,
                                                       is_leaf=lambda x: isinstance(x, nnx.Variable))
  sh_leaves = jax.tree.leaves(shardings)
  values = [load(p, v, s) for (p, v), s in zip(flat, sh_leaves)]
  unused = sorted(n for n in tensors.names() - used if not _IGNORED.match(n)
                  and not (n == "lm_head.weight" and (cfg.tie_embeddings or head)))
  if unused:
    raise ValueError(f"{path}: checkpoint tensors not used by {hf['architectures'][0]} import: "
                     f"{unused[:5]}{' ...' if len(unused) > 5 else ''}")
  state = jax.tree_util.tree_unflatten(treedef, [v.replace(value=x) if isinstance(v, nnx.Variable)
                                                 else x for (_, v), x in zip(flat, values)])
  return nnx.merge(graphdef, state)
