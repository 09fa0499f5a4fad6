"""`prm-jax demo`.

Foundation stage: trains the tiny generator (SFT) on generated arithmetic solutions, byte-tokenised, on
the configured mesh, and reports held-out loss before and after. The full paper loop (tokenizer,
sampling, labelling, ORM/PRM, best-of-N) replaces this as the later stages land.
"""

from __future__ import annotations

import json
import os
import time

import jax
import ml_collections
import numpy as np
from flax import nnx

from prm_jax import sharding
from prm_jax.model import CausalLM, ModelConfig
from prm_jax.train import losses, trainer

PAD, BOS, EOS, BYTE_OFFSET = 0, 1, 2, 3


def arithmetic_solution(rng: np.random.Generator) -> str:
  """A problem and a newline-stepped solution with carried intermediate results."""
  n = int(rng.integers(2, 5))
  nums = rng.integers(1, 20, size=n)
  ops = rng.choice(["+", "-", "*"], size=n - 1)
  expr = str(nums[0]) + "".join(f"{o}{v}" for o, v in zip(ops, nums[1:]))
  lines, acc = [], int(nums[0])
  for o, v in zip(ops, nums[1:]):
    new = acc + int(v) if o == "+" else acc - int(v) if o == "-" else acc * int(v)
    lines.append(f"{acc}{o}{v}={new}")
    acc = new
  return f"Compute {expr} left to right.\n" + "\n".join(lines) + f"\n# Answer\n{acc}"


def encode_rows(texts: list[str], seq_len: int) -> np.ndarray:
  rows = np.full((len(texts), seq_len + 1), PAD, np.int32)
  for i, t in enumerate(texts):
    ids = [BOS] + [b + BYTE_OFFSET for b in t.encode("utf-8")] + [EOS]
    ids = ids[: seq_len + 1]
    rows[i, : len(ids)] = ids
  return rows


def batches(rows: np.ndarray, batch_size: int, seed: int):
  rng = np.random.default_rng(seed)
  while True:
    idx = rng.integers(0, len(rows), size=batch_size)
    r = rows[idx]
    yield {"inputs": r[:, :-1], "targets": r[:, 1:], "weights": (r[:, 1:] != PAD).astype(np.float32)}


def lm_loss(model: CausalLM, batch):
  return losses.sft_loss(model(batch["inputs"]), batch["targets"], batch["weights"])


def run(config: ml_collections.ConfigDict) -> dict:
  print("prm-jax demo — foundation stage: SFT of the tiny generator on synthetic arithmetic text.\n"
        "Sampling, ORM/PRM training and best-of-N are not part of this stage yet.")
  tc = config.train
  steps = max(1, int(tc.steps * config.get("scale", 1.0)))
  cfg = ModelConfig.from_dict(config.model)
  mesh = sharding.make_mesh(config.mesh)
  rules = tuple(config.rules)
  rng = np.random.default_rng(config.seed)
  train_rows = encode_rows([arithmetic_solution(rng) for _ in range(max(256, steps * 8))],
                           tc.seq_len)
  test_rows = encode_rows([arithmetic_solution(rng) for _ in range(128)], tc.seq_len)

  t0 = time.perf_counter()
  model = sharding.init_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(config.seed)), mesh, rules)
  tc = ml_collections.ConfigDict(dict(tc.to_dict(), steps=steps))
  tx = trainer.make_optimizer(tc)
  graphdef, state, state_sh = trainer.create_train_state(model, tx, mesh, rules)
  batch_sh = sharding.logical_sharding(("batch", None), (tc.batch_size, tc.seq_len), mesh, rules)
  step_fn = trainer.make_train_step(graphdef, tx, lm_loss, state_sh, batch_sh, mesh, rules)

  eval_batch = sharding.shard_batch(next(batches(test_rows, len(test_rows), 0)), mesh, rules)
  evaluate = jax.jit(lambda p, b: lm_loss(nnx.merge(graphdef, p), b)[1])
  before = {k: float(v) for k, v in evaluate(state.params, eval_batch).items()}
  state, history = trainer.fit(step_fn, state, batches(train_rows, tc.batch_size, config.seed + 1),
                               steps, mesh, rules, log_every=tc.log_every, desc="sft")
  after = {k: float(v) for k, v in evaluate(state.params, eval_batch).items()}
  seconds = time.perf_counter() - t0

  result = {"stage": "foundation-sft", "steps": steps, "devices": jax.device_count(),
            "mesh": dict(mesh.shape), "num_params": cfg.num_params(),
            "heldout_before": before, "heldout_after": after, "history": history,
            "seconds": seconds}
  os.makedirs(config.workdir, exist_ok=True)
  path = os.path.join(config.workdir, "metrics.json")
  with open(path, "w") as f:
    json.dump(result, f, indent=1)
  print(f"held-out loss {before['loss']:.3f} -> {after['loss']:.3f}, token accuracy "
        f"{before['token_accuracy']:.3f} -> {after['token_accuracy']:.3f} "
        f"({steps} steps, {seconds:.1f}s on {jax.device_count()} device(s)); wrote {path}")
  return result
