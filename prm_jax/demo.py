"""`prm-jax demo`.

Current stage: SFT of the tiny generator on generated arithmetic solutions (one step per line, a
`# Answer` line), through the real stack: sentencepiece tokenizer, packed grain pipeline, sharded
jitted train step, orbax checkpoints. Sampling, labelling, ORM/PRM training and best-of-N join as their
stages land.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np

from prm_jax.records import Solution
from prm_jax.train.loop import train


def arithmetic_solution(rng: np.random.Generator, idx: int) -> Solution:
  """A problem and a newline-stepped solution with carried intermediate results."""
  n = int(rng.integers(2, 5))
  nums = rng.integers(1, 20, size=n)
  ops = rng.choice(["+", "-", "*"], size=n - 1)
  expr = str(nums[0]) + "".join(f"{o}{v}" for o, v in zip(ops, nums[1:]))
  steps, acc = [], int(nums[0])
  for o, v in zip(ops, nums[1:]):
    new = acc + int(v) if o == "+" else acc - int(v) if o == "-" else acc * int(v)
    steps.append(f"{acc}{o}{v}={new}")
    acc = new
  steps += ["# Answer", str(acc)]
  return Solution(problem_id=f"arith-{idx}", problem=f"Compute {expr} left to right.",
                  steps=steps, answer=str(acc), ground_truth_answer=str(acc), is_correct=True)


def run(config: ml_collections.ConfigDict) -> dict:
  print("prm-jax demo — current stage: SFT of the tiny generator on generated arithmetic "
        "solutions.\nSampling, ORM/PRM training and best-of-N are not part of this stage yet.")
  rng = np.random.default_rng(config.seed)
  scale = float(config.get("scale", 1.0))
  sols = [arithmetic_solution(rng, i) for i in range(max(64, int(2000 * scale)))]
  sft = ml_collections.ConfigDict(config.to_dict())
  sft.workdir = os.path.join(config.workdir, "generator")
  sft.train.task = "sft"
  sft.train.steps = max(1, int(config.train.steps * scale))
  t0 = time.perf_counter()
  summary = train(sft, records=sols, desc="sft")
  seconds = time.perf_counter() - t0
  hist = summary["history"]
  result = {"stage": "sft", "steps": summary["step"], "devices": jax.device_count(),
            "mesh": {k: int(v) for k, v in config.mesh.items()}, "num_params": summary["num_params"],
            "loss_first": hist[0]["loss"], "loss_last": hist[-1]["loss"], "history": hist,
            "seconds": seconds}
  with open(os.path.join(config.workdir, "metrics.json"), "w") as f:
    json.dump(result, f, indent=1)
  print(f"SFT loss {hist[0]['loss']:.3f} (step {hist[0]['step']}) -> {hist[-1]['loss']:.3f} "
        f"(step {hist[-1]['step']}), {seconds:.1f}s on {jax.device_count()} device(s); "
        f"generator in {sft.workdir}")
  return result
