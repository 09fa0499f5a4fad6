"""Hugging Face import: peak host memory and load time, against a peer measured in the same run.

Writes a random Llama-shaped checkpoint (float32, ~1.3 GB by default, several safetensors shards
with their index and config.json) into a temporary folder, then, each in a fresh process:
  - prm_jax: `load_hf_causal_lm` onto an 8-device CPU mesh with fsdp=8 (every large matrix split
    over the 8 devices), until every parameter is on its devices;
  - the peer: `safetensors.numpy.load_file` of every shard (what a NumPy/Flax script does first).
Peak host memory is the process's VmHWM minus its resident size after imports (and, for prm_jax,
after the mesh is built), reported against the checkpoint's bytes (one copy of the weights).

    python scripts/bench_import.py [--layers 4] [--dim 2048] [--shards 4]
"""

from __future__ import annotations

import argparse
import json
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def memory_kib(field: str) -> int:
  with open("/proc/self/status") as f:
    for line in f:
      if line.startswith(field + ":"):
        return int(line.split()[1])
  raise KeyError(field)


def write_checkpoint(path: str, layers: int, dim: int, mlp: int, vocab: int, heads: int,
                     kv_heads: int, shards: int, seed: int = 0) -> int:
  """A random LlamaForCausalLM folder, written one shard at a time; returns its tensor bytes."""
  import numpy as np
  from safetensors.numpy import save_file
  head_dim = dim // heads
  shapes = {"model.embed_tokens.weight": (vocab, dim)}
  for i in range(layers):
    a, m = f"model.layers.{i}.self_attn.", f"model.layers.{i}.mlp."
    shapes.update({a + "q_proj.weight": (heads * head_dim, dim),
                   a + "k_proj.weight": (kv_heads * head_dim, dim),
                   a + "v_proj.weight": (kv_heads * head_dim, dim),
                   a + "o_proj.weight": (dim, heads * head_dim),
                   m + "gate_proj.weight": (mlp, dim), m + "up_proj.weight": (mlp, dim),
                   m + "down_proj.weight": (dim, mlp),
                   f"model.layers.{i}.input_layernorm.weight": (dim,),
                   f"model.layers.{i}.post_attention_layernorm.weight": (dim,)})
  shapes.update({"model.norm.weight": (dim,), "lm_head.weight": (vocab, dim)})
  names = list(shapes)
  total = sum(int(np.prod(s)) * 4 for s in shapes.values())
  target, groups, cur, size = total / shards, [], [], 0
  for name in names:  # consecutive tensors, about total / shards bytes per file
    cur.append(name)
    size += int(np.prod(shapes[name])) * 4
    if size >= target * (len(groups) + 1) and len(groups) < shards - 1:
      groups.append(cur)
      cur = []
  groups.append(cur)
  rng = np.random.default_rng(seed)
  weight_map = {}
  for k, group in enumerate(groups):
    file = f"model-{k + 1:05d}-of-{len(groups):05d}.safetensors"
    save_file({n: rng.standard_normal(shapes[n], dtype=np.float32) * 0.02 for n in group},
              os.path.join(path, file))
    weight_map.update({n: file for n in group})
  with open(os.path.join(path, "model.safetensors.index.json"), "w") as f:
    json.dump({"metadata": {"total_size": total}, "weight_map": weight_map}, f)
  config = {"architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": vocab,
            "hidden_size": dim, "intermediate_size": mlp, "num_hidden_layers": layers,
            "num_attention_heads": heads, "num_key_value_heads": kv_heads, "rms_norm_eps": 1e-5,
            "rope_theta": 10000.0, "max_position_embeddings": 2048, "tie_word_embeddings": False,
            "torch_dtype": "float32"}
  with open(os.path.join(path, "config.json"), "w") as f:
    json.dump(config, f)
  return total


def child_prm_jax(path: str) -> dict:
  os.environ["XLA_FLAGS"] = ("--xla_force_host_platform_device_count=8 "
                             + os.environ.get("XLA_FLAGS", ""))
  os.environ.setdefault("JAX_PLATFORMS", "cpu")
  sys.path.insert(0, str(ROOT))
  import jax
  from prm_jax import sharding
  from prm_jax.configs import base
  from prm_jax.model.hf_import import load_hf_causal_lm
  mesh = sharding.make_mesh({"data": 1, "fsdp": 8, "tensor": 1})
  baseline = memory_kib("VmRSS")
  t = time.perf_counter()
  model = load_hf_causal_lm(path, mesh=mesh, rules=base.RULES)
  leaves = jax.tree.leaves(jax.tree.map(lambda v: v[...], __import__("flax").nnx.state(model)))
  jax.block_until_ready(leaves)
  seconds = time.perf_counter() - t
  on_devices = sum(s.data.nbytes for x in leaves for s in x.addressable_shards)
  return {"seconds": seconds, "peak_kib": memory_kib("VmHWM") - baseline,
          "rss_after_kib": memory_kib("VmRSS") - baseline, "device_bytes": on_devices,
          "devices": len(mesh.devices.flat)}


def child_safetensors(path: str) -> dict:
  from safetensors.numpy import load_file
  baseline = memory_kib("VmRSS")
  t = time.perf_counter()
  tensors = {}
  for f in sorted(os.listdir(path)):
    if f.endswith(".safetensors"):
      tensors.update(load_file(os.path.join(path, f)))
  seconds = time.perf_counter() - t
  return {"seconds": seconds, "peak_kib": memory_kib("VmHWM") - baseline,
          "bytes": sum(v.nbytes for v in tensors.values())}


def run_child(kind: str, path: str) -> dict:
  out = subprocess.run([sys.executable, __file__, "--child", kind, path], check=True,
                       capture_output=True, text=True)
  return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--layers", type=int, default=4)
  ap.add_argument("--dim", type=int, default=2048)
  ap.add_argument("--mlp", type=int, default=5632)
  ap.add_argument("--vocab", type=int, default=32000)
  ap.add_argument("--heads", type=int, default=16)
  ap.add_argument("--kv-heads", type=int, default=4)
  ap.add_argument("--shards", type=int, default=4)
  ap.add_argument("--repeats", type=int, default=2, help="runs of each loader; the fastest counts")
  ap.add_argument("--child", nargs=2, help=argparse.SUPPRESS)
  args = ap.parse_args()
  if args.child:
    kind, path = args.child
    print(json.dumps(child_prm_jax(path) if kind == "prm_jax" else child_safetensors(path)))
    return
  with tempfile.TemporaryDirectory(prefix="bench_import_") as d:
    total = write_checkpoint(d, args.layers, args.dim, args.mlp, args.vocab, args.heads,
                             args.kv_heads, args.shards)
    files = sorted(f for f in os.listdir(d) if f.endswith(".safetensors"))
    print(f"checkpoint: LlamaForCausalLM, {args.layers} layers, dim {args.dim}, vocab "
          f"{args.vocab}, float32, {total / 2**30:.2f} GiB in {len(files)} shards")
    runs = {"prm_jax": [], "safetensors": []}
    for _ in range(args.repeats):  # alternate, so both see the same page cache
      for kind in runs:
        runs[kind].append(run_child(kind, d))
  ours = min(runs["prm_jax"], key=lambda r: r["seconds"])
  peer = min(runs["safetensors"], key=lambda r: r["seconds"])
  peak = max(r["peak_kib"] for r in runs["prm_jax"]) * 1024
  peer_peak = max(r["peak_kib"] for r in runs["safetensors"]) * 1024
  print(f"prm_jax load_hf_causal_lm onto {ours['devices']} CPU devices (fsdp=8): "
        f"{ours['seconds']:.2f} s, peak host memory {peak / 2**30:.2f} GiB = "
        f"{peak / total:.2f}x the weights ({ours['device_bytes'] / total:.2f}x on the devices)")
  print(f"safetensors.numpy.load_file of every shard: {peer['seconds']:.2f} s, peak "
        f"{peer_peak / 2**30:.2f} GiB = {peer_peak / total:.2f}x the weights")
  print(f"-> peak memory {peak / total:.2f}x one copy of the weights (goal <= 1.3x); load time "
        f"{ours['seconds'] / peer['seconds']:.2f}x safetensors.numpy's (onto sharded devices vs "
        "into host arrays)")


if __name__ == "__main__":
  main()
