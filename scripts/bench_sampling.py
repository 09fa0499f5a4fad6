"""Sampling throughput: this project's jitted KV-cache sampler vs `transformers`' `generate()`.

Same tiny LLaMA in both (4 layers, d=256, GQA; weights saved by transformers and imported with
prm_jax.model.hf_import), same CPU, same batch, prompt length and number of new tokens, sampling with
the KV cache on, no early stop. Then shared vs replicated prompt prefill (N samples of one problem at
a long prompt: one prefill copied to N cache rows vs N prefills). Also runs the packed vs
one-solution-per-row scorer comparison.

Each side runs in its own process (torch's OpenMP threads keep spinning after `generate()` and would
slow whatever runs next on the same cores). Needs the benchmark extras (never runtime dependencies):
    pip install -e ".[bench]"      # torch==2.13.0 (CPU) + transformers
    python scripts/bench_sampling.py [--batch 16] [--prompt 32] [--new 128] [--dtype float32]
                                     [--shared-prompt 512] [--n 16] [--skip-scoring]
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
  """Seconds per `generate()` call (best of 3, after a warm-up)."""
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
  times = []
  for _ in range(3):
    t = time.perf_counter()
    run()
    times.append(time.perf_counter() - t)
  return min(times)


def bench_prm_jax(path, prompts, new, dtype, unique=None, out=None, repeats=3):
  """The Sampler's own path: sharded jit with the cache placed on the mesh and donated. With
  `unique=U`, rows share the prefill of the first U prompts (row r continues prompt r % U), as the
  Sampler does for the N samples of a problem. Seconds per batch (best of `repeats`); the tokens go
  to `out` (.npy) when given."""
  import jax
  import numpy as np
  from flax import nnx
  from prm_jax import sharding
  from prm_jax.configs import base
  from prm_jax.model.hf_import import load_hf_causal_lm
  from prm_jax.sampling import SamplingConfig, left_pad, make_generate_fn, row_keys
  from prm_jax.stopping import StopTables
  mesh = sharding.make_mesh({"data": -1, "fsdp": 1, "tensor": 1})
  model = load_hf_causal_lm(path, dtype=dtype, param_dtype="float32", mesh=mesh)
  graphdef, params = nnx.split(model)
  b, p = prompts.shape
  sc = SamplingConfig(max_new_tokens=new, temperature=1.0, eos_id=-1, pad_id=0)
  fn, cache = make_generate_fn(graphdef, params, model.cfg, sc, b, p, mesh, base.RULES, unique)
  stops = StopTables.build([], ["x"] * model.cfg.vocab_size)
  tokens, positions = left_pad(prompts[:unique or b].tolist(), p, 0)
  keys = jax.random.key_data(row_keys(0, [f"p{i}" for i in range(b)], range(b)))
  rows = () if unique is None else (np.arange(b, dtype=np.int32) % unique,)
  times = []
  for _ in range(repeats + 1):  # the first call compiles
    t = time.perf_counter()
    tok, lengths, cache = fn(params, cache, tokens, positions, keys, stops.next, stops.accept, *rows)
    jax.block_until_ready(tok)
    times.append(time.perf_counter() - t)
  assert int(np.min(lengths)) == new
  if out:
    np.save(out, np.asarray(tok))
  return min(times[1:])


def _isolated(code, python=sys.executable, number=True):
  """Runs `code` (which prints seconds last) in a fresh interpreter: nothing left spinning from
  the other side, no compilation cache shared."""
  import subprocess
  code = f"import sys, numpy as np; sys.path.insert(0, {str(ROOT)!r}); " + code
  out = subprocess.run([python, "-c", code], capture_output=True, text=True)
  if out.returncode:
    raise RuntimeError(out.stderr[-3000:])
  return float(out.stdout.strip().splitlines()[-1]) if number else out.stdout.strip()


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--batch", type=int, default=16)
  ap.add_argument("--prompt", type=int, default=32)
  ap.add_argument("--new", type=int, default=128)
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--shared-prompt", type=int, default=512, help="prompt of the shared-prefill run")
  ap.add_argument("--n", type=int, default=16, help="samples per problem in the shared-prefill run")
  ap.add_argument("--skip-scoring", action="store_true")
  ap.add_argument("--jax-python", default=sys.executable,
                  help="interpreter for the prm_jax side, when torch lives in another venv")
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
    load = (f"from scripts.bench_sampling import bench_transformers, bench_prm_jax; "
            f"p = np.load({os.path.join(d, 'prompts.npy')!r}); ")
    t_hf = _isolated(load + f"print(bench_transformers({d!r}, p, {args.new}, {threads}))")
    t_ours = _isolated(load + f"print(bench_prm_jax({d!r}, p, {args.new}, {args.dtype!r}))",
                       args.jax_python)
    # Shared-prompt prefill: the N samples of one problem (one prompt, N rows), prefilled once
    # and copied vs prefilled on every row (the same tokens either way).
    one = np.repeat(np.random.default_rng(1).integers(1, 1024, size=(1, args.shared_prompt)),
                    args.n, axis=0).astype(np.int32)
    np.save(os.path.join(d, "one.npy"), one)
    shared = {}
    for u in (None, 1):  # a whole batch (prefill + decode), then the prefill alone (1 new token)
      shared[u] = [float(x) for x in _isolated(
          f"from scripts.bench_sampling import bench_prm_jax; "
          f"p = np.load({os.path.join(d, 'one.npy')!r}); print(bench_prm_jax({d!r}, p, "
          f"{args.new}, {args.dtype!r}, {u}, {os.path.join(d, f'out{u}.npy')!r}), "
          f"bench_prm_jax({d!r}, p, 1, {args.dtype!r}, {u}))",
          args.jax_python, False).splitlines()[-1].split()]
    same = np.array_equal(np.load(os.path.join(d, "outNone.npy")),
                          np.load(os.path.join(d, "out1.npy")))
  n = args.batch * args.new
  kind = _isolated("import jax; print(jax.devices()[0].device_kind)", args.jax_python, False)
  print(f"device: {kind} ({threads} cores); batch {args.batch}, prompt {args.prompt}, "
        f"{args.new} new tokens, sampling with KV cache")
  print(f"prm_jax sampler: {n / t_ours:,.0f} tokens/s; transformers generate(): {n / t_hf:,.0f} "
        f"tokens/s (torch {torch.__version__}, {threads} threads) -> ratio {t_hf / t_ours:.2f}x")
  ((t_rep, p_rep), (t_sh, p_sh)), m = (shared[None], shared[1]), args.n * args.new
  print(f"shared-prompt prefill (prompt {args.shared_prompt}, N={args.n} samples of one problem, "
        f"{args.new} new tokens): replicated {t_rep:.3f}s/batch ({m / t_rep:,.0f} tokens/s), "
        f"shared {t_sh:.3f}s/batch ({m / t_sh:,.0f} tokens/s) -> {t_rep / t_sh:.2f}x; "
        f"same tokens: {same}")
  print(f"  the prefill alone (1 new token): replicated {p_rep:.3f}s, shared {p_sh:.3f}s -> "
        f"{p_rep / p_sh:.2f}x")
  if not args.skip_scoring:
    print(_isolated(f"from scripts.bench_scoring import bench_scorer; "
                    f"bench_scorer('tiny', {args.dtype!r}, 512, 256, 16)", args.jax_python, False))


if __name__ == "__main__":
  main()
