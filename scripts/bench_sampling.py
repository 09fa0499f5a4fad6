"""Sampling throughput: this project's jitted KV-cache sampler vs `transformers`' `generate()`.

Same tiny LLaMA in both (4 layers, d=256, GQA; weights saved by transformers and imported with
prm_jax.model.hf_import), same CPU, same batch, prompt length and number of new tokens, sampling with
the KV cache on, no early stop. Also runs the packed vs one-solution-per-row scorer comparison.

Each side runs in its own process (torch's OpenMP threads keep spinning after `generate()` and would
slow whatever runs next on the same cores). Needs the benchmark extras (never runtime dependencies):
    pip install -e ".[bench]"      # torch==2.13.0 (CPU) + transformers
    python scripts/bench_sampling.py [--batch 16] [--prompt 32] [--new 128] [--dtype float32]
"""

import argparse
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def bench_transformers(path, prompts, new, threads):
  import torch
  import transformers
  torch.set_num_threads(threads)
  model = transformers.AutoModelForCausalLM.from_pretrained(path, torch_dtype=torch.float32).eval()
  x = torch.from_numpy(prompts).long()

  def run():
    with torch.no_grad():
      out = model.generate(x, do_sample=True, max_new_tokens=new, min_new_tokens=new, top_k=0,
                           top_p=1.0, temperature=1.0, use_cache=True, pad_token_id=0,
                           attention_mask=torch.ones_like(x))
    assert out.shape[1] == x.shape[1] + new
  run()
  t = time.perf_counter()
  run()
  return time.perf_counter() - t


def bench_prm_jax(path, prompts, new, dtype):
  """The Sampler's own path: sharded jit with the cache placed on the mesh and donated."""
  import jax
  import jax.numpy as jnp
  from flax import nnx
  from prm_jax import sharding
  from prm_jax.configs import base
  from prm_jax.model.hf_import import load_hf_causal_lm
  from prm_jax.sampling import SamplingConfig, left_pad, make_generate_fn, row_keys
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  model = load_hf_causal_lm(path, dtype=dtype, param_dtype="float32", mesh=mesh)
  graphdef, params = nnx.split(model)
  b, p = prompts.shape
  sc = SamplingConfig(max_new_tokens=new, temperature=1.0, eos_id=-1, nl_id=-1, pad_id=0, bos_id=0)
  fn, cache = make_generate_fn(graphdef, params, model.cfg, sc, b, p, mesh, base.RULES)
  tokens, positions = left_pad(prompts.tolist(), p, 0)
  keys = jax.random.key_data(row_keys(0, [f"p{i}" for i in range(b)], [0] * b))
  out, lengths, cache = fn(params, cache, tokens, positions, keys)
  jax.block_until_ready(out)
  assert int(jnp.min(lengths)) == new
  t = time.perf_counter()
  out, lengths, cache = fn(params, cache, tokens, positions, keys)
  jax.block_until_ready(out)
  return time.perf_counter() - t


def _isolated(which, d, args):
  import subprocess
  code = (f"import sys, numpy as np; sys.path.insert(0, {str(ROOT)!r}); "
          f"from scripts.bench_sampling import bench_{which}; "
          f"p = np.load({os.path.join(d, 'prompts.npy')!r}); "
          + (f"print(bench_transformers({d!r}, p, {args.new}, {os.cpu_count() or 1}))"
             if which == "transformers" else
             f"print(bench_prm_jax({d!r}, p, {args.new}, {args.dtype!r}))"))
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
  return float(out.stdout.strip().splitlines()[-1])


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt", type=int, default=32)
  ap.add_argument("--new", type=int, default=128)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--skip-scoring", action="store_true")
  args = ap.parse_args()
  import numpy as np
  import torch
  import transformers
  cfg = transformers.LlamaConfig(vocab_size=1024, hidden_size=256, intermediate_size=688,
                                 num_hidden_layers=4, num_attention_heads=4, num_key_value_heads=2,
                                 max_position_embeddings=1024, tie_word_embeddings=False)
  cfg.architectures = ["LlamaForCausalLM"]
  torch.manual_seed(0)
  prompts = np.random.default_rng(0).integers(1, 1024, size=(args.batch, args.prompt)).astype(np.int32)
  threads = os.cpu_count() or 1
  with tempfile.TemporaryDirectory() as d:
    transformers.LlamaForCausalLM(cfg).save_pretrained(d, safe_serialization=True)
    np.save(os.path.join(d, "prompts.npy"), prompts)
    t_hf = _isolated("transformers", d, args)
    t_ours = _isolated("prm_jax", d, args)
  n = args.batch * args.new
  import jax
  print(f"device: {jax.devices()[0].device_kind}; batch {args.batch}, prompt {args.prompt}, "
        f"{args.new} new tokens, sampling with KV cache")
  print(f"prm_jax sampler: {n / t_ours:,.0f} tokens/s; transformers generate(): {n / t_hf:,.0f} "
        f"tokens/s (torch {torch.__version__}, {threads} threads) -> ratio {t_hf / t_ours:.2f}x")
  if not args.skip_scoring:
    from scripts.bench_scoring import bench_scorer
    bench_scorer("tiny", args.dtype, 512, 256, 16)


if __name__ == "__main__":
  main()
