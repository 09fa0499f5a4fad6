"""Scoring benchmarks, each a ratio against a peer measured in the same run.

1. Per-solution aggregation of 100k solutions (prod, min, last; 8 and 15 steps per solution on
   average) with `aggregate_step_scores`' contiguous-run path (layout "sorted" / "grouped") and its
   general segment-reduction path, and with `aggregate_ragged` (the steps as values + per-solution
   lengths, the loop's own input), vs a Python loop over solutions (how most PRM evaluation
   scripts do it).
2. The full scorer (forward + step-end gather + aggregate) on packed rows vs one solution per row,
   same model, same solutions.
3. `Scorer` (packing, the project's default path) vs the common peer: the same randomly initialised
   PRM exported to Hugging Face (`hf_export.export`) and run in `transformers` as a token
   classifier in padded batches, one solution per row, P(ok) read at the step ends (how TRL /
   ProcessBench scripts score), on the same token ids; solutions per second at each `--peer-sizes`,
   for packed rows of each `--peer-seq-lens` (score.seq_len; 1024 is the config's default), on
   each of `--peer-data`: synthetic PRM800K-shaped solutions (~100-256 tokens; 16% padding)
   and real ProcessBench sample solutions (tests/fixtures/processbench, ~150-1000 tokens after
   the cut at a row; 24-42% of a padded batch is padding), the latter in rows of 1024 only. The
   peer runs in `--torch-python` (an interpreter with torch and transformers; default: this one;
   "" skips it) with the faster, on a warm-up batch, of torch's default thread count and one
   thread (on a busy machine torch's spinning threads can be ten times slower). Each set ends
   with a floor: the time the Scorer's linear layers alone take on the real tokens (its last
   layer's queries and MLP at the step ends only) at XLA's own float32 dot rate on this host
   (measured in the same run), so the best ratio any XLA program doing the Scorer's forward
   could reach against the peer.

    python scripts/bench_scoring.py [--solutions 100000] [--size tiny|small] [--dtype bfloat16]
        [--torch-python PYTHON] [--peer-sizes tiny,small] [--peer-data synthetic,processbench]
        [--parts aggregation,scorer,peer]
"""

import argparse
import dataclasses
import json
import math
import os
import pathlib
import subprocess
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]


def transformers_peer(folder: str, batch: int) -> None:
  """The peer, in the torch interpreter: `AutoModelForTokenClassification` over `folder`'s export,
  padded batches of `batch` solutions in input order, per-solution prod / min / last in Python.
  Prints {"seconds", "prod"} as JSON."""
  import torch
  import transformers
  torch.manual_seed(0)
  model = transformers.AutoModelForTokenClassification.from_pretrained(
      folder, dtype=torch.float32).eval()
  with open(os.path.join(folder, "solutions.json")) as f:
    sols = json.load(f)

  def score(rows):
    out = []
    width = max(len(r["tokens"]) for r in rows)
    ids = torch.zeros((len(rows), width), dtype=torch.long)
    mask = torch.zeros((len(rows), width), dtype=torch.long)
    for i, r in enumerate(rows):
      ids[i, :len(r["tokens"])] = torch.tensor(r["tokens"])
      mask[i, :len(r["tokens"])] = 1
    with torch.inference_mode():
      probs = model(input_ids=ids, attention_mask=mask).logits.softmax(-1)
    for i, r in enumerate(rows):
      ok = (1 - probs[i, r["step_ends"], 0]).tolist()  # neutral counts as ok: 1 - P(neg)
      out.append({"prod": math.prod(ok), "min": min(ok, default=0.0),
                  "last": ok[-1] if ok else 0.0})
    return out
  timing = {}
  for threads in sorted({torch.get_num_threads(), 1}, reverse=True):  # warm-up; keep the faster
    torch.set_num_threads(threads)
    score(sols[:batch])
    t = time.perf_counter()
    score(sols[:batch])
    timing[threads] = time.perf_counter() - t
  torch.set_num_threads(min(timing, key=timing.get))
  t = time.perf_counter()
  scores = [s for i in range(0, len(sols), batch) for s in score(sols[i:i + batch])]
  seconds = time.perf_counter() - t
  print(json.dumps({"seconds": seconds, "prod": [s["prod"] for s in scores],
                    "threads": torch.get_num_threads()}))


if __name__ == "__main__" and "--transformers-peer" in sys.argv:  # before importing JAX
  transformers_peer(sys.argv[-2], int(sys.argv[-1]))
  sys.exit(0)

sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from prm_jax.configs import model_sizes  # noqa: E402
from prm_jax.model import ModelConfig, RewardModel  # noqa: E402
from prm_jax.scoring import (METHODS, aggregate_ragged, aggregate_step_scores,  # noqa: E402
                             pack_for_scoring, score_packed)


def timed(fn, repeats=3):
  fn()  # warm-up / compile
  best = math.inf
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    best = min(best, time.perf_counter() - t)
  return best


def bench_aggregation(n_solutions: int, max_steps: int, seed: int = 0):
  """prod / min / last of `n_solutions` ragged solutions (1..max_steps steps each, sorted owners):
  the contiguous-run path (layout="sorted", and "grouped", which does not use the order) and the
  segment path (layout="any") vs a Python loop of per-solution products."""
  rng = np.random.default_rng(seed)
  steps_per = rng.integers(1, max_steps + 1, size=n_solutions)
  ids = np.repeat(np.arange(n_solutions, dtype=np.int32), steps_per)
  probs = rng.random(len(ids)).astype(np.float32)
  p_dev, i_dev = jnp.asarray(probs), jnp.asarray(ids)

  lengths = jnp.asarray(steps_per, jnp.int32)  # "ragged" takes them as an argument, not a constant

  def jitted(layout):
    if layout == "ragged":
      by_lengths = jax.jit(lambda p, n: {m: aggregate_ragged(p, n, m) for m in METHODS})
      agg = lambda p, i: by_lengths(p, lengths)  # noqa: E731
    else:
      agg = jax.jit(lambda p, i: {m: aggregate_step_scores(p, i, n_solutions, m, layout=layout)
                                  for m in METHODS})
    return (lambda: jax.block_until_ready(agg(p_dev, i_dev))), agg

  def python_loop():  # group then reduce per solution, the common evaluation-script pattern
    out = {m: [] for m in METHODS}
    bounds = np.concatenate([[0], np.cumsum(steps_per)])
    for s in range(n_solutions):
      p = probs[bounds[s]:bounds[s + 1]].tolist()
      out["prod"].append(math.prod(p))
      out["min"].append(min(p))
      out["last"].append(p[-1])
    return out
  ref = python_loop()
  runs, errs = {"python": python_loop}, {}
  for layout in ("ragged", "sorted", "grouped", "any"):
    runs[layout], agg = jitted(layout)
    runs[layout]()  # compile
    got = agg(p_dev, i_dev)
    errs[layout] = max(float(np.max(np.abs(np.asarray(got[m]) - np.asarray(ref[m]))))
                       for m in METHODS)
  times = {k: math.inf for k in runs}
  for _ in range(9):  # interleaved, best of each: a busy machine slows every contender alike
    for k, run in runs.items():
      t = time.perf_counter()
      run()
      times[k] = min(times[k], time.perf_counter() - t)
  t_py = times["python"]
  print(f"aggregation (prod, min, last), {n_solutions:,} solutions / {len(ids):,} steps "
        f"(1-{max_steps} each): python loop {t_py * 1e3:.0f} ms")
  for layout, name in (("ragged", "values + lengths (ragged)"),
                       ("sorted", "contiguous path, sorted"),
                       ("grouped", "contiguous path, grouped"), ("any", "segment path")):
    print(f"  {name:26s} {times[layout] * 1e3:7.2f} ms  {t_py / times[layout]:5.0f}x the loop, "
          f"{times['any'] / times[layout]:4.1f}x the segment path  (max |diff| {errs[layout]:.1e})")


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


def synthetic_solutions(n: int, seed: int = 0):
  """Solutions shaped like PRM800K's: a problem, 3-15 steps of words and numbers (with the
  sentencepiece model trained on them, ~100-300 tokens)."""
  from prm_jax.records import Solution
  rng = np.random.default_rng(seed)
  words = ["the", "of", "so", "we", "get", "then", "sum", "is", "let", "be", "and", "equals",
           "hence", "total", "each", "number", "x", "y", "+", "-", "=", "\\frac", "times"]

  def sentence(lo, hi):
    return " ".join(str(rng.integers(0, 1000)) if rng.random() < 0.25 else words[rng.integers(
        len(words))] for _ in range(rng.integers(lo, hi)))
  return [Solution(problem_id=str(i), problem=sentence(10, 40),
                   steps=[sentence(4, 24) for _ in range(rng.integers(3, 16))])
          for i in range(n)]


def processbench_solutions(n: int, seed: int = 0):
  """`n` solutions drawn (seeded, with repeats) from the ProcessBench sample items in
  tests/fixtures/processbench: real problems and steps, so real lengths (gsm8k's short ones to
  olympiadbench's long ones) and the padding a padded batch of them really carries."""
  import glob
  from prm_jax.data.benchmarks import read_processbench
  items = [s for f in sorted(glob.glob(str(ROOT / "tests/fixtures/processbench/*.json")))
           for s in read_processbench(f)]
  rng = np.random.default_rng(seed)
  return [dataclasses.replace(items[i], problem_id=f"{items[i].problem_id}#{k}")
          for k, i in enumerate(rng.integers(0, len(items), size=n))]


def dense_flops(cfg: ModelConfig, tokens: int, reads: int | None = None) -> int:
  """FLOPs of the dense products of a forward over `tokens`: q, k, v, o and the gated MLP of
  every layer (the embedding is a lookup, the head small). With `reads`, the last layer as the
  Scorer runs it: keys and values for every token, the rest at the `reads` step ends alone."""
  kv = 2 * cfg.dim * cfg.head_dim * cfg.num_kv_heads
  rest = 2 * cfg.dim * cfg.head_dim * cfg.num_heads + 3 * cfg.dim * cfg.mlp_dim
  if reads is None:
    return 2 * tokens * cfg.num_layers * (kv + rest)
  return 2 * (tokens * ((cfg.num_layers - 1) * (kv + rest) + kv) + reads * rest)


def dot_flops_per_s(m: int, k: int, n: int, repeats: int = 5) -> float:
  """XLA's float32 matmul rate on this host, [m,k] x [k,n], best of `repeats`."""
  a, b = jnp.ones((m, k), jnp.float32), jnp.ones((k, n), jnp.float32)
  dot = jax.jit(jnp.dot)
  return 2 * m * k * n / timed(lambda: jax.block_until_ready(dot(a, b)), repeats)


def bench_vs_transformers(size: str, n: int, torch_python: str, batch: int,
                          seq_lens: list[int], data: str = "synthetic", seed: int = 0):
  """Scorer (packed rows of each of `seq_lens` tokens; the config's default first) vs
  transformers' token-classification forward on the same ids, solutions per second. `data`:
  "synthetic" (PRM800K-shaped, ~100-300 tokens) or "processbench" (real texts, ~150-1500
  tokens: scored in rows of the first of `seq_lens` only, the config's default 1024, with the
  model's context raised to it; solutions longer than a row are cut to their whole steps that fit,
  the same cut on both sides)."""
  from prm_jax.configs import base
  from prm_jax.model.hf_export import export
  from prm_jax.scoring import Scorer
  from prm_jax.step_format import StepFormat
  from prm_jax.tokenizer import train_sentencepiece
  sizes = dict(model_sizes.get(size).to_dict(), dtype="float32", param_dtype="float32")
  if data == "processbench":
    seq_lens = seq_lens[:1]
    sizes["max_seq_len"] = max(sizes["max_seq_len"], seq_lens[0])
    sols = processbench_solutions(n, seed)
  else:
    sols = synthetic_solutions(n, seed)
  cfg = ModelConfig.from_dict(sizes)
  tok = train_sentencepiece([s.problem + "\n" + s.text for s in sols[:2000]],
                            vocab_size=min(cfg.vocab_size, 2000))
  model = RewardModel(cfg, "prm", rngs=nnx.Rngs(seed))
  encode = StepFormat.from_config(base.get_config().get("format")).encode  # the scorer's
  longest = min([cfg.max_seq_len] + seq_lens) - 1  # every solution whole on both sides
  sols = [dataclasses.replace(s, steps=s.steps[:len(s.steps) - encode(
      tok, s.problem, s.steps, max_len=longest).truncated_steps]) for s in sols]
  encoded = [encode(tok, s.problem, s.steps) for s in sols]
  tokens = sum(len(e.tokens) for e in encoded)
  width = sum(max(len(e.tokens) for e in encoded[i:i + batch]) * len(encoded[i:i + batch])
              for i in range(0, n, batch))
  print(f"PRM scoring, {size} ({cfg.num_layers} layers, dim {cfg.dim}, vocab {cfg.vocab_size}, "
        f"float32), {n} {data} solutions, {tokens:,} tokens (mean {tokens / n:.0f}, longest "
        f"{max(len(e.tokens) for e in encoded)}; padded batches of {batch}: {width:,} slots, "
        f"{1 - tokens / width:.0%} padding):")
  ours = {}
  for seq_len in seq_lens:
    config = base.get_config()
    config.score.seq_len = seq_len
    scorer = Scorer(model, tok, config)
    list(scorer.score(sols[:scorer.chunk]))  # compile
    t = time.perf_counter()
    scored = list(scorer.score(sols))
    ours[seq_len] = (time.perf_counter() - t, scored, scorer.rows)
  peer = None
  if torch_python:
    with tempfile.TemporaryDirectory() as d:
      export(model, tok, d)
      with open(os.path.join(d, "solutions.json"), "w") as f:
        json.dump([{"tokens": e.tokens.tolist(), "step_ends": e.step_ends.tolist()}
                   for e in encoded], f)
      out = subprocess.run([torch_python, __file__, "--transformers-peer", d, str(batch)],
                           check=True, capture_output=True, text=True)
    peer = json.loads(out.stdout.strip().splitlines()[-1])
    print(f"  transformers AutoModelForTokenClassification, padded batches of {batch} (one "
          f"solution per row), {peer['threads']} torch thread(s): {peer['seconds']:.2f}s = "
          f"{n / peer['seconds']:,.1f} sol/s")
  for seq_len, (seconds, scored, rows) in ours.items():
    line = (f"  prm_jax Scorer, packed rows of {seq_len} ({rows} per batch): {seconds:.2f}s = "
            f"{n / seconds:,.1f} sol/s")
    if peer:
      diff = max(abs(a.scores["prm"] - b) for a, b in zip(scored, peer["prod"]))
      line += (f" -> {peer['seconds'] / seconds:.2f}x the peer's solutions/s "
               f"(max |prod diff| {diff:.1e})")
    print(line)
  # The floor: the Scorer's linear layers alone, on real tokens only, at the rate of XLA's own
  # dense dot (the MLP's up-projection shape, measured now). No XLA program doing the Scorer's
  # forward is faster.
  reads = sum(len(e.step_ends) for e in encoded)
  flops = dense_flops(cfg, tokens, reads)
  rate = dot_flops_per_s(4096, cfg.dim, cfg.mlp_dim)
  line = (f"  floor: the Scorer's linear layers on the {tokens:,} real tokens alone ("
          f"{flops / 1e9:,.0f} GFLOP, the last layer's queries and MLP at the {reads:,} step ends) "
          f"at XLA's float32 dot rate here ({rate / 1e9:.0f} GFLOP/s on [4096,{cfg.dim}]"
          f"x[{cfg.dim},{cfg.mlp_dim}]) take {flops / rate:.2f}s")
  if peer:
    peer_flops = dense_flops(cfg, width)
    line += (f": at most {peer['seconds'] * rate / flops:.2f}x the peer's solutions/s (the peer "
             f"ran its {width:,} slots' linear layers at {peer_flops / peer['seconds'] / 1e9:.0f}"
             f" GFLOP/s, attention on top)")
  print(line)


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--solutions", type=int, default=100_000)
  ap.add_argument("--size", default="tiny")
  ap.add_argument("--dtype", default="float32")
  ap.add_argument("--scorer-solutions", type=int, default=512)
  ap.add_argument("--seq-len", type=int, default=256)
  ap.add_argument("--rows", type=int, default=16)
  ap.add_argument("--torch-python", default=sys.executable)
  ap.add_argument("--peer-sizes", default="tiny,small")
  ap.add_argument("--peer-solutions", type=int, default=256)
  ap.add_argument("--peer-batch", type=int, default=16)
  ap.add_argument("--peer-seq-lens", default="1024,256",
                  help="the Scorer's packed row lengths (score.seq_len; 1024 is the default)")
  ap.add_argument("--peer-data", default="synthetic,processbench",
                  help="solutions for the peer comparison: synthetic and/or processbench (real)")
  ap.add_argument("--parts", default="aggregation,scorer,peer")
  args = ap.parse_args()
  parts = set(args.parts.split(","))
  print(f"devices: {jax.devices()}")
  if "aggregation" in parts:
    for max_steps in (15, 29):  # 8 steps per solution on average; 15 (1.5M steps at 100k)
      bench_aggregation(args.solutions, max_steps)
  if "scorer" in parts:
    bench_scorer(args.size, args.dtype, args.scorer_solutions, args.seq_len, args.rows)
  if "peer" in parts:
    for data in args.peer_data.split(","):
      for size in args.peer_sizes.split(","):
        bench_vs_transformers(size, args.peer_solutions, args.torch_python, args.peer_batch,
                              [int(x) for x in args.peer_seq_lens.split(",")], data)


if __name__ == "__main__":
  main()
