"""Runs out to Hugging Face folders that serve elsewhere (transformers, vLLM).

A generator becomes `{Llama,Qwen2,Mistral}ForCausalLM` (the family it came from: Qwen2 when it has
qkv biases, Mistral with a sliding window, else Llama), a PRM `*ForTokenClassification` with its
labels (`id2label` neg / neutral / pos; 2-class heads bad / good) or, with Qwen2.5-Math-PRM's hidden
layer, `Qwen2ForProcessRewardModel`, an ORM `*ForSequenceClassification` with one label. Beside the
safetensors (sharded past `max_shard_bytes`, with an index), config.json and the tokenizer files (a
sentencepiece run's tokenizer.model plus the tokenizer.json transformers reads to the same ids) sits
`prm_jax.json`: the run's step format and scoring settings, so the model is scored elsewhere the way
it was trained (`Run.open("hf:DIR")` reads it back).

Tensors stream one at a time from their shardings: the files and their headers are planned from
shapes alone, then each tensor (of a scanned model, one layer's slice) is transformed on device,
gathered alone, appended by process 0 and dropped, so a model sharded over a pod never gathers
whole onto one host and no host holds more than one tensor of it.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import os
import struct
import sys
from typing import Any, Iterator

import jax
import jax.numpy as jnp
import ml_dtypes
import numpy as np
from flax import nnx

from prm_jax import distributed
from prm_jax.model.config import ModelConfig

SIDECAR = "prm_jax.json"
_DTYPES = {np.dtype(np.float32): "F32", np.dtype(ml_dtypes.bfloat16): "BF16",
           np.dtype(np.float16): "F16"}
PRM_LABELS = {3: ("neg", "neutral", "pos"), 2: ("bad", "good")}


def family(cfg: ModelConfig) -> str:
  return "Qwen2" if cfg.qkv_bias else "Mistral" if cfg.sliding_window else "Llama"


def architecture(cfg: ModelConfig, model) -> str:
  kind = getattr(model, "kind", "sft")
  if kind == "sft":
    return family(cfg) + "ForCausalLM"
  if kind == "orm":
    return family(cfg) + "ForSequenceClassification"
  if model.spec.hidden:
    if family(cfg) != "Qwen2":
      raise ValueError("a PRM with a hidden head layer exports only as Qwen2ForProcessRewardModel")
    return "Qwen2ForProcessRewardModel"
  return family(cfg) + "ForTokenClassification"


def hf_config(cfg: ModelConfig, model, tokenizer) -> dict[str, Any]:
  """config.json in transformers' layout for the run's architecture."""
  arch = architecture(cfg, model)
  fam = family(cfg)
  out: dict[str, Any] = {
      "architectures": [arch], "model_type": fam.lower(), "vocab_size": cfg.vocab_size,
      "hidden_size": cfg.dim, "intermediate_size": cfg.mlp_dim,
      "num_hidden_layers": cfg.num_layers, "num_attention_heads": cfg.num_heads,
      "num_key_value_heads": cfg.num_kv_heads, "head_dim": cfg.head_dim,
      "rms_norm_eps": cfg.norm_eps, "rope_theta": cfg.rope_theta, "hidden_act": "silu",
      "max_position_embeddings": cfg.max_seq_len, "tie_word_embeddings": cfg.tie_embeddings,
      "torch_dtype": "bfloat16" if cfg.param_dtype == "bfloat16" else "float32",
      "initializer_range": cfg.init_std, "use_cache": True,
      "bos_token_id": tokenizer.bos_id, "eos_token_id": tokenizer.eos_id,
      "pad_token_id": tokenizer.pad_id}
  if cfg.rope_scaling is not None:
    r = cfg.rope_scaling
    out["rope_scaling"] = {"rope_type": "llama3", "factor": r.factor,
                           "low_freq_factor": r.low_freq_factor,
                           "high_freq_factor": r.high_freq_factor,
                           "original_max_position_embeddings": r.original_max_position_embeddings}
  if fam == "Llama":
    out.update(attention_bias=False, mlp_bias=False)
  if fam == "Qwen2":
    out.update(use_sliding_window=bool(cfg.sliding_window),
               sliding_window=cfg.sliding_window, max_window_layers=cfg.num_layers)
  if fam == "Mistral":
    out["sliding_window"] = cfg.sliding_window
  kind = getattr(model, "kind", "sft")
  if kind != "sft":
    labels = ("correct",) if kind == "orm" else PRM_LABELS[model.spec.classes]
    out.update(num_labels=len(labels), id2label={str(i): l for i, l in enumerate(labels)},
               label2id={l: i for i, l in enumerate(labels)})
  return out


@dataclasses.dataclass(frozen=True)
class _Tensor:
  """One tensor of the export, planned before anything moves: our parameter (stacked over layers
  with `scan_layers`: `layer` picks the slice), the reshape / transpose that gives the HF layout,
  and the HF shape and dtype (abstract: planning gathers nothing)."""

  name: str
  value: jax.Array
  layer: int | None
  reshape: tuple[int, ...] | None
  transpose: bool
  shape: tuple[int, ...]
  dtype: np.dtype

  @property
  def nbytes(self) -> int:
    return math.prod(self.shape) * self.dtype.itemsize

  def gather(self) -> np.ndarray:
    """This tensor alone, in HF layout, whole on this host (every process must call it). The
    slice and transform run on device into a fresh array, so only it crosses to the host and the
    parameter keeps no host copy (`np.asarray` caches one on the array it reads)."""
    layer = None if self.layer is None else np.int32(self.layer)
    return _host(_hf_view(self.value, layer, reshape=self.reshape, transpose=self.transpose))


@functools.partial(jax.jit, static_argnames=("reshape", "transpose"))
def _hf_view(w: jax.Array, layer, *, reshape, transpose) -> jax.Array:
  if layer is not None:  # a traced index: one compile per parameter, not per layer
    w = jax.lax.dynamic_index_in_dim(w, layer, 0, keepdims=False)
  if reshape is not None:
    w = w.reshape(reshape)
  return jnp.copy(w.T if transpose else w)


def _plan(model, cfg: ModelConfig) -> list[_Tensor]:
  """Every tensor of the export, in file order, with its HF shape (from `jax.eval_shape`)."""
  d, n, k, h = cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  t = model.transformer
  out: list[_Tensor] = []

  def add(name, value, reshape=None, transpose=False, layer=None):
    view = functools.partial(_hf_view, reshape=reshape, transpose=transpose)
    abstract = jax.eval_shape(view, value, None if layer is None else np.int32(layer))
    out.append(_Tensor(name, value, layer, reshape, transpose, tuple(abstract.shape),
                       np.dtype(abstract.dtype)))

  add("model.embed_tokens.weight", t.embed[...])
  add("model.norm.weight", t.final_norm.scale[...])
  per_layer = {  # HF name: ((module, attribute), reshape, transpose)
      "self_attn.q_proj.weight": (("attn", "q_proj"), (d, n * h), True),
      "self_attn.k_proj.weight": (("attn", "k_proj"), (d, k * h), True),
      "self_attn.v_proj.weight": (("attn", "v_proj"), (d, k * h), True),
      "self_attn.o_proj.weight": (("attn", "o_proj"), (n * h, d), True),
      "mlp.gate_proj.weight": (("mlp", "gate"), None, True),
      "mlp.up_proj.weight": (("mlp", "up"), None, True),
      "mlp.down_proj.weight": (("mlp", "down"), None, True),
      "input_layernorm.weight": (("attn_norm", "scale"), None, False),
      "post_attention_layernorm.weight": (("mlp_norm", "scale"), None, False)}
  if cfg.qkv_bias:
    per_layer.update({
        "self_attn.q_proj.bias": (("attn", "q_bias"), (n * h,), False),
        "self_attn.k_proj.bias": (("attn", "k_bias"), (k * h,), False),
        "self_attn.v_proj.bias": (("attn", "v_bias"), (k * h,), False)})
  for i in range(cfg.num_layers):
    for name, ((mod, attr), reshape, transpose) in per_layer.items():
      if cfg.scan_layers:  # the stacked parameter, sliced on device
        add(f"model.layers.{i}.{name}", getattr(getattr(t.layers, mod), attr)[...], reshape,
            transpose, layer=i)
      else:
        add(f"model.layers.{i}.{name}", getattr(getattr(t.layers[i], mod), attr)[...], reshape,
            transpose)
  kind = getattr(model, "kind", "sft")
  if kind == "sft":
    if not cfg.tie_embeddings:
      add("lm_head.weight", model.lm_head[...], transpose=True)
  elif model.spec.hidden:
    add("score.0.weight", model.head_w1[...], transpose=True)
    add("score.0.bias", model.head_b1[...])
    add("score.2.weight", model.head_w[...], transpose=True)
    add("score.2.bias", model.head_b[...])
  else:
    add("score.weight", model.head_w[...], transpose=True)
    if kind == "prm":  # transformers' token classifier has a bias; its sequence classifier not
      add("score.bias", model.head_b[...])
  return out


def _host(x: jax.Array) -> np.ndarray:
  """One tensor, whole, on this host (gathered alone across processes)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _shards(plan: list[_Tensor], max_shard_bytes: int) -> list[list[_Tensor]]:
  """The tensors in files of at most `max_shard_bytes` (a larger tensor gets a file alone)."""
  shards: list[list[_Tensor]] = [[]]
  size = 0
  for t in plan:
    if size and size + t.nbytes > max_shard_bytes:
      shards.append([])
      size = 0
    shards[-1].append(t)
    size += t.nbytes
  return shards


def _write_safetensors(path: str, planned: list[_Tensor], arrays: Iterator[np.ndarray]) -> None:
  """One safetensors file: the header from the plan, then each tensor's bytes as it arrives (one
  in memory at a time); written to a temporary name and renamed when whole."""
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for t in planned:
    header[t.name] = {"dtype": _DTYPES[t.dtype], "shape": list(t.shape),
                      "data_offsets": [offset, offset + t.nbytes]}
    offset += t.nbytes
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for t, arr in zip(planned, arrays, strict=True):
      if arr.shape != t.shape or arr.dtype != t.dtype:
        raise AssertionError(f"{t.name}: gathered {arr.dtype}{list(arr.shape)}, planned "
                             f"{t.dtype}{list(t.shape)}")
      f.write(np.ascontiguousarray(arr).reshape(-1).view(np.uint8).data)
  os.replace(tmp, path)


def export(model: nnx.Module, tokenizer, output: str, *, fmt: dict[str, Any] | None = None,
           neutral_is_positive: bool = True, max_shard_bytes: int = 5 * 10**9) -> dict[str, Any]:
  """Writes `model` (CausalLM or RewardModel) and `tokenizer` as a Hugging Face folder at `output`.

  Returns a summary (architecture, shards, bytes). Process 0 writes; every process takes part in
  gathering each tensor."""
  cfg = model.cfg
  config = hf_config(cfg, model, tokenizer)
  main = distributed.is_main()
  if main:
    os.makedirs(output, exist_ok=True)
  shards = _shards(_plan(model, cfg), max_shard_bytes)
  total = sum(t.nbytes for shard in shards for t in shard)
  files = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  for f, shard in zip(files, shards):
    arrays = (t.gather() for t in shard)  # every process joins each gather, in the same order
    if main:
      _write_safetensors(os.path.join(output, f), shard, arrays)
    else:
      for _ in arrays:
        pass
  orm_bias = None
  if getattr(model, "kind", None) == "orm":  # transformers' sequence classifier has no bias
    orm_bias = float(_host(_hf_view(model.head_b[...], None, reshape=None, transpose=False))[0])
  if main:
    from prm_jax.records import write_json
    if len(files) > 1:
      write_json(os.path.join(output, "model.safetensors.index.json"), {
          "metadata": {"total_size": total},
          "weight_map": {t.name: f for f, shard in zip(files, shards) for t in shard}})
    write_json(os.path.join(output, "config.json"), config)
    if hasattr(tokenizer, "hf"):
      tokenizer.hf.save_pretrained(output)  # tokenizer.json, tokenizer_config.json, template
    else:  # the project's sentencepiece model: tokenizer.json etc. beside its tokenizer.model
      try:
        tokenizer.save_hf(output, model_max_length=cfg.max_seq_len,
                          chat_template=getattr(tokenizer, "chat_template", None))
      except ValueError as e:  # a sentencepiece model train_sentencepiece did not write
        tokenizer.save_pretrained(output)
        print(f"export: {e}; wrote tokenizer.model only", file=sys.stderr, flush=True)
    sidecar = {"task": getattr(model, "kind", "sft"), "format": fmt or {},
               "neutral_is_positive": neutral_is_positive}
    if orm_bias is not None:
      sidecar["orm_bias"] = orm_bias
    write_json(os.path.join(output, SIDECAR), sidecar)
  distributed.barrier("export")
  return {"architecture": config["architectures"][0], "files": files, "bytes": total,
          "output": output}


def export_run(spec: str, output: str, config) -> dict[str, Any]:
  """`prm-jax export`: opens a run on `config.mesh` and exports it (the edge that takes paths)."""
  from prm_jax import sharding
  from prm_jax.runs import Run
  if os.path.exists(os.path.join(output, "config.json")) and not os.path.exists(
      os.path.join(output, SIDECAR)):
    raise ValueError(f"{output} already holds a model that prm_jax did not export; choose another "
                     "--output")
  mesh, rules = sharding.make_mesh(config.mesh), tuple(config.rules)
  run = Run.open(spec, mesh, rules, **Run.holding(spec, config)).require(
      "export", "sft", "orm", "prm")
  return export(run.model, run.tokenizer, output, fmt=run.config.get("format"),
                neutral_is_positive=bool(run.train_config.get("neutral_is_positive", True)),
                max_shard_bytes=int(config.export.max_shard_mb * 2**20))
