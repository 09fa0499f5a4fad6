"""Runs out to Hugging Face folders that serve elsewhere (transformers, vLLM).

A generator becomes `{Llama,Qwen2,Mistral}ForCausalLM` (the family it came from: Qwen2 when it has
qkv biases, Mistral with a sliding window, else Llama), a PRM `*ForTokenClassification` with its
labels (`id2label` neg / neutral / pos; 2-class heads bad / good) or, with Qwen2.5-Math-PRM's hidden
layer, `Qwen2ForProcessRewardModel`, an ORM `*ForSequenceClassification` with one label. Beside the
safetensors (sharded past `max_shard_bytes`, with an index), config.json and the tokenizer files (a
sentencepiece run's tokenizer.model plus the tokenizer.json transformers reads to the same ids) sits
`prm_jax.json`: the run's step format and scoring settings, so the model is scored elsewhere the way
it was trained (`Run.open("hf:DIR")` reads it back).

Tensors stream one at a time from their shardings (each gathered alone, written by process 0), so a
model sharded over a pod never gathers whole onto one host.
"""

from __future__ import annotations

import json
import os
import struct
import sys
from typing import Any, Iterator

import jax
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


def _tensors(model, cfg: ModelConfig) -> Iterator[tuple[str, jax.Array, Any]]:
  """(HF name, our array, to_hf(numpy) -> numpy) for every tensor of the export."""
  d, n, k, h = cfg.dim, cfg.num_heads, cfg.num_kv_heads, cfg.head_dim
  t = model.transformer
  yield "model.embed_tokens.weight", t.embed[...], lambda w: w
  yield "model.norm.weight", t.final_norm.scale[...], lambda w: w
  per_layer = {
      "self_attn.q_proj.weight": (("attn", "q_proj"), lambda w: w.reshape(d, n * h).T),
      "self_attn.k_proj.weight": (("attn", "k_proj"), lambda w: w.reshape(d, k * h).T),
      "self_attn.v_proj.weight": (("attn", "v_proj"), lambda w: w.reshape(d, k * h).T),
      "self_attn.o_proj.weight": (("attn", "o_proj"), lambda w: w.reshape(n * h, d).T),
      "mlp.gate_proj.weight": (("mlp", "gate"), lambda w: w.T),
      "mlp.up_proj.weight": (("mlp", "up"), lambda w: w.T),
      "mlp.down_proj.weight": (("mlp", "down"), lambda w: w.T),
      "input_layernorm.weight": (("attn_norm", "scale"), lambda w: w),
      "post_attention_layernorm.weight": (("mlp_norm", "scale"), lambda w: w)}
  if cfg.qkv_bias:
    per_layer.update({
        "self_attn.q_proj.bias": (("attn", "q_bias"), lambda b: b.reshape(n * h)),
        "self_attn.k_proj.bias": (("attn", "k_bias"), lambda b: b.reshape(k * h)),
        "self_attn.v_proj.bias": (("attn", "v_bias"), lambda b: b.reshape(k * h))})
  for i in range(cfg.num_layers):
    for name, ((mod, attr), tf) in per_layer.items():
      if cfg.scan_layers:
        stacked = getattr(getattr(t.layers, mod), attr)[...]
        yield f"model.layers.{i}.{name}", stacked, (lambda w, i=i, tf=tf: tf(w[i]))
      else:
        yield f"model.layers.{i}.{name}", getattr(getattr(t.layers[i], mod), attr)[...], tf
  kind = getattr(model, "kind", "sft")
  if kind == "sft":
    if not cfg.tie_embeddings:
      yield "lm_head.weight", model.lm_head[...], lambda w: w.T
  elif model.spec.hidden:
    yield "score.0.weight", model.head_w1[...], lambda w: w.T
    yield "score.0.bias", model.head_b1[...], lambda w: w
    yield "score.2.weight", model.head_w[...], lambda w: w.T
    yield "score.2.bias", model.head_b[...], lambda w: w
  else:
    yield "score.weight", model.head_w[...], lambda w: w.T
    if kind == "prm":  # transformers' token classifier has a bias; its sequence classifier not
      yield "score.bias", model.head_b[...], lambda w: w


def _host(x: jax.Array) -> np.ndarray:
  """One tensor, whole, on this host (gathered alone across processes)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  from jax.experimental import multihost_utils
  return np.asarray(multihost_utils.process_allgather(x, tiled=True))


def _write_safetensors(path: str, tensors: list[tuple[str, np.ndarray]]) -> None:
  header: dict[str, Any] = {"__metadata__": {"format": "pt"}}
  offset = 0
  for name, arr in tensors:
    size = arr.nbytes
    header[name] = {"dtype": _DTYPES[arr.dtype], "shape": list(arr.shape),
                    "data_offsets": [offset, offset + size]}
    offset += size
  raw = json.dumps(header, separators=(",", ":")).encode()
  raw += b" " * (-len(raw) % 8)
  tmp = path + ".tmp"
  with open(tmp, "wb") as f:
    f.write(struct.pack("<Q", len(raw)))
    f.write(raw)
    for _, arr in tensors:
      f.write(np.ascontiguousarray(arr).tobytes())
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
  shards: list[list[tuple[str, np.ndarray]]] = [[]]
  sizes = [0]
  total = 0
  for name, value, to_hf in _tensors(model, cfg):
    arr = np.ascontiguousarray(to_hf(_host(value)))  # every process joins the gather
    if not main:
      continue
    if sizes[-1] and sizes[-1] + arr.nbytes > max_shard_bytes:
      shards.append([])
      sizes.append(0)
    shards[-1].append((name, arr))
    sizes[-1] += arr.nbytes
    total += arr.nbytes
  files = (["model.safetensors"] if len(shards) == 1 else
           [f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors" for i in range(len(shards))])
  if main:
    from prm_jax.records import write_json
    for f, shard in zip(files, shards):
      _write_safetensors(os.path.join(output, f), shard)
    if len(files) > 1:
      write_json(os.path.join(output, "model.safetensors.index.json"), {
          "metadata": {"total_size": total},
          "weight_map": {name: f for f, shard in zip(files, shards) for name, _ in shard}})
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
    if getattr(model, "kind", None) == "orm":  # transformers' sequence classifier has no bias
      sidecar["orm_bias"] = float(np.asarray(_host(model.head_b[...]))[0])
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
