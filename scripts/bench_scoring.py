"""Scoring benchmarks, each a ratio against a peer measured in the same run.

1. Per-solution aggregation of 100k solutions (prod, min, last) with the jitted segment-reduction
   scorer vs a Python loop over solutions (how most PRM evaluation scripts do it).
2. The full scorer (forward + step-end gather + aggregate) on packed rows vs one solution per row,
   same model, same solutions.

    python scripts/bench_scoring.py [--solutions 100000] [--size tiny|small] [--dtype bfloat16]
"""

import argparse
import math
import os
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from prm_jax.configs import model_sizes  # noqa: E402
from prm_jax.model import ModelConfig, RewardModel  # noqa: E402
from prm_jax.scoring import METHODS, aggregate_step_scores, pack_for_scoring, score_packed  # noqa


def timed(fn, repeats=3):
  fn()  # warm-up / compile
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def bench_aggregation(n_solutions: int, seed: int = 0):
  rng = np.random.default_rng(seed)
  steps_per = rng.integers(1, 30, size=n_solutions)
  ids = np.repeat(np.arange(n_solutions, dtype=np.int32), steps_per)
  probs = rng.random(len(ids)).astype(np.float32)
  p_dev, i_dev = jnp.asarray(probs), jnp.asarray(ids)
  agg = jax.jit(lambda p, i: {m: aggregate_step_scores(p, i, n_solutions, m) for m in METHODS})

  def jitted():
    jax.block_until_ready(agg(p_dev, i_dev))

  def python_loop():  # group then reduce per solution, the common evaluation-script pattern
    out = {m: [] for m in METHODS}
    bounds = np.concatenate([[0], np.cumsum(steps_per)])
    for s in range(n_solutions):
      p = probs[bounds[s]:bounds[s + 1]].tolist()
      out["prod"].append(math.prod(p))
      out["min"].append(min(p))
      out["last"].append(p[-1])
    return out
  t_jit, t_py = timed(jitted), timed(python_loop, repeats=1)
  ref = python_loop()
  got = agg(p_dev, i_dev)
  err = max(float(np.max(np.abs(np.asarray(got[m]) - np.asarray(ref[m])))) for m in METHODS)
  print(f"aggregation, {n_solutions:,} solutions / {len(ids):,} steps: jitted {t_jit * 1e3:.1f} ms, "
        f"python loop {t_py * 1e3:.0f} ms -> {t_py / t_jit:.0f}x faster (max |diff| {err:.1e})")


def bench_scorer(size: str, dtype: str, n: int, seq_len: int, rows: int, seed: int = 0):
  cfg = ModelConfig.from_dict(dict(model_sizes.get(size).to_dict(), dtype=dtype))
  model = RewardModel(cfg, "prm", rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  rng = np.random.default_rng(seed)
  sols = []
  for _ in range(n):  # lengths like real solutions: mostly short, a long tail
    length = int(min(seq_len, max(8, rng.lognormal(math.log(seq_len / 6), 0.6))))
    tokens = rng.integers(4, cfg.vocab_size, size=length).astype(np.int32)
    k = max(1, length // 25)
    ends = np.sort(rng.choice(np.arange(1, length), size=min(k, length - 1), replace=False))
    sols.append((tokens, ends.astype(np.int32)))
  fn = jax.jit(lambda s, b: score_packed(nnx.merge(graphdef, s), b, max_steps=rows * seq_len // 8,
                                         max_solutions=rows * 16))
  results = {}
  for pack in (True, False):
    batches = [{k: jnp.asarray(v) for k, v in pb.arrays.items()}
               for pb in pack_for_scoring(sols, seq_len, rows, pack=pack)]

    def run():
      for b in batches:
        out = fn(state, b)
      jax.block_until_ready(out)
    results[pack] = (timed(run, repeats=2), len(batches))
  (tp, bp), (tu, bu) = results[True], results[False]
  tokens = sum(len(t) for t, _ in sols)
  print(f"full scorer ({size}, {dtype}, {n} solutions, {tokens:,} tokens, rows of {seq_len}): "
        f"packed {bp} batches {tp:.2f}s ({n / tp:,.0f} sol/s), one per row {bu} batches {tu:.2f}s "
        f"({n / tu:,.0f} sol/s) -> packed {tu / tp:.1f}x faster")


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--solutions", type=int, default=100_000)
  ap.add_argument("--size", default="tiny")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--scorer-solutions", type=int, default=512)
  ap.add_argument("--seq-len", type=int, default=256)
  ap.add_argument("--rows", type=int, default=16)
  args = ap.parse_args()
  print(f"devices: {jax.devices()}")
  bench_aggregation(args.solutions)
  bench_scorer(args.size, args.dtype, args.scorer_solutions, args.seq_len, args.rows)


if __name__ == "__main__":
  main()
