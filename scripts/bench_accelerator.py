"""Accelerator figures (issue 18 item 5): training-step MFU, PRM scoring tokens/s, decode tokens/s
as a fraction of the HBM roofline, and the attention path XLA actually took.

One short run per part, random weights and tokens, at a model size from configs/model_sizes.py:
  train   the jitted SFT train step (trainer.make_train_step: AdamW, fp32 master weights, bf16
          compute, remat/scan as the size sets them) on packed rows; MFU = achieved FLOP/s over
          the chip's dense bf16 peak (train/metrics.py's table), with 6N + 12*L*d*T FLOPs a token.
  score   the Scorer's program (score_packed: forward, step-end gather, aggregation) on packed
          rows of 16 solutions each, bf16 weights; tokens/s.
  decode  prefill a prompt, then one token at a time through `model.decode` with the KV cache
          (the sampler's decode step, greedy, without its stop checks), bf16 weights; tokens/s
          and the HBM roofline: every step reads the weights and the filled cache once.
The attention path is read from the compiled train step: cuDNN's fused attention shows as a
`__cudnn$fmha` custom call; otherwise XLA's own (prm_jax.model.transformer.attend on CPU/TPU).

    python scripts/bench_accelerator.py [--size 1b] [--parts train,score,decode] [--batch 4]
        [--seq-len 4096] [--steps 5] [--decode-batch 64] [--prompt 512] [--new 128]
Runs on CPU too (`--size tiny`: a check that it works, no peak to compare with).
"""

import argparse
import dataclasses
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from prm_jax import sharding  # noqa: E402
from prm_jax.configs import base, model_sizes  # noqa: E402
from prm_jax.model import CausalLM, ModelConfig, RewardModel  # noqa: E402
from prm_jax.model.transformer import KVCache  # noqa: E402
from prm_jax.scoring import PACKED_KEYS, score_packed  # noqa: E402
from prm_jax.train import trainer  # noqa: E402
from prm_jax.train.metrics import (hbm_bytes_per_s, peak_flops_per_device,  # noqa: E402
                                   train_flops_per_token)

def packed_rows(rng, rows: int, seq_len: int, vocab: int, per_row: int = 4) -> dict:
  """Random packed rows: `per_row` segments each, every token a solution token."""
  seg = np.repeat(np.arange(1, per_row + 1), -(-seq_len // per_row))[:seq_len]
  pos = np.concatenate([np.arange(n) for n in np.bincount(seg)[1:]])
  return dict(tokens=rng.integers(1, vocab, (rows, seq_len)).astype(np.int32),
              segment_ids=np.broadcast_to(seg, (rows, seq_len)).astype(np.int32),
              positions=np.broadcast_to(pos, (rows, seq_len)).astype(np.int32))


def timed(fn, steps: int) -> float:
  """Seconds per call after one warm-up (compile) call; `fn` returns something to block on."""
  jax.block_until_ready(fn())
  t = time.perf_counter()
  for _ in range(steps):
    out = fn()
  jax.block_until_ready(out)
  return (time.perf_counter() - t) / steps


def attention_path(compiled_text: str) -> str:
  if "cudnn$fmha" in compiled_text:
    return "cuDNN fused attention"
  return "XLA (prm_jax attend)" if jax.default_backend() != "gpu" else "XLA (not fused)"


def bench_train(cfg: ModelConfig, mesh, rules, batch: int, seq_len: int, steps: int) -> dict:
  config = base.get_config()
  tc = config.train
  tc.update(dict(seq_len=seq_len, batch_size=batch, steps=1000, warmup_steps=10))
  model = sharding.init_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh, rules)
  tx = trainer.make_optimizer(tc)
  graphdef, state, state_sh = trainer.create_train_state(model, tx, mesh, rules)
  del model
  keys = ("tokens", "loss_mask", "segment_ids", "positions")
  batch_sh = sharding.logical_sharding(("batch", None), (batch, seq_len), mesh, rules)
  step = trainer.make_train_step(graphdef, tx, trainer.task_loss("sft", tc), state_sh,
                                 {k: batch_sh for k in keys}, mesh, rules)
  host = packed_rows(np.random.default_rng(0), batch, seq_len, cfg.vocab_size)
  host["loss_mask"] = np.ones((batch, seq_len), np.int32)
  data = {k: jax.device_put(host[k], batch_sh) for k in keys}
  compiled = step.lower(state, data).compile()  # compiled once: its text names the attention
  holder = [state]

  def run():
    holder[0], metrics = compiled(holder[0], data)
    return metrics["loss"]
  seconds = timed(run, steps)
  tokens = batch * seq_len
  flops = train_flops_per_token(cfg.num_params(), cfg.num_layers, cfg.dim, seq_len) * tokens
  peak = peak_flops_per_device()
  achieved = flops / seconds / jax.device_count()
  return dict(step_s=seconds, tokens_per_s=tokens / seconds, tflops_per_device=achieved / 1e12,
              mfu=achieved / peak if peak else None,
              attention=attention_path(compiled.as_text()))


def inference_config(cfg: ModelConfig) -> ModelConfig:
  """bf16 weights for inference when the model computes in bf16 (no fp32 master copy to read)."""
  return dataclasses.replace(cfg, param_dtype=cfg.dtype)


def bench_score(cfg: ModelConfig, mesh, rules, rows: int, seq_len: int, steps: int) -> dict:
  cfg = inference_config(cfg)
  model = sharding.init_sharded(lambda: RewardModel(cfg, "prm", rngs=nnx.Rngs(0)), mesh, rules)
  graphdef, params = nnx.split(model)
  param_sh = sharding.state_shardings(params, mesh, rules)
  row = sharding.logical_sharding(("batch", None), (rows, seq_len), mesh, rules)
  replicated = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())
  cap = rows * seq_len // 2  # the Scorer's (Scorer._cap)
  fn = sharding.jit_apply(score_packed, graphdef, param_sh, ({k: row for k in PACKED_KEYS},),
                          replicated, mesh, rules,
                          static=dict(max_steps=cap, max_solutions=cap, layout="sorted"))
  rng = np.random.default_rng(1)
  host = packed_rows(rng, rows, seq_len, cfg.vocab_size, per_row=16)
  solution = (host["segment_ids"] - 1) + 16 * np.arange(rows)[:, None]
  host.update(solution_id=solution.astype(np.int32),
              step_end=(rng.random((rows, seq_len)) < 1 / 32).astype(np.int32))
  batch = {k: jax.device_put(host[k], row) for k in PACKED_KEYS}
  seconds = timed(lambda: fn(params, batch)["prod"], steps)
  return dict(batch_s=seconds, tokens_per_s=rows * seq_len / seconds)


def bench_decode(cfg: ModelConfig, mesh, rules, batch: int, prompt: int, new: int) -> dict:
  cfg = inference_config(cfg)
  model = sharding.init_sharded(lambda: CausalLM(cfg, rngs=nnx.Rngs(0)), mesh, rules)
  graphdef, params = nnx.split(model)
  length = prompt + new

  @jax.jit
  def run(params, tokens):
    m = nnx.merge(graphdef, params)
    with sharding.use_rules(mesh, rules):
      cache = KVCache.init(cfg, batch, length)
      logits, cache = m.decode(tokens, cache)

      def one(_, carry):
        last, cache = carry
        nxt = jnp.argmax(last, axis=-1).astype(jnp.int32)[:, None]
        logits, cache = m.decode(nxt, cache)
        return logits[:, -1], cache
      last, cache = jax.lax.fori_loop(0, new, one, (logits[:, -1], cache))
    return last

  tokens = jnp.asarray(np.random.default_rng(2).integers(1, cfg.vocab_size, (batch, prompt)),
                       jnp.int32)
  prefill = jax.jit(lambda p, t: nnx.merge(graphdef, p).decode(
      t, KVCache.init(cfg, batch, length))[0][:, -1])
  t_prefill = timed(lambda: prefill(params, tokens), 2)
  t_all = timed(lambda: run(params, tokens), 2)
  per_step = max(t_all - t_prefill, 1e-9) / new
  weight_bytes = sum(x.nbytes for x in jax.tree.leaves(params))
  kv_bytes = (2 * cfg.num_layers * batch * (prompt + new / 2) * cfg.num_kv_heads * cfg.head_dim
              * jnp.dtype(cfg.compute_dtype).itemsize)  # the cache filled halfway, on average
  bw = hbm_bytes_per_s()
  roofline = batch * bw * jax.device_count() / (weight_bytes + kv_bytes) if bw else None
  measured = batch / per_step
  return dict(step_ms=per_step * 1e3, tokens_per_s=measured, roofline_tokens_per_s=roofline,
              fraction=measured / roofline if roofline else None,
              bytes_per_step_gb=(weight_bytes + kv_bytes) / 1e9)


def main():
  ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  ap.add_argument("--size", default="1b")
  ap.add_argument("--parts", default="train,score,decode")
  ap.add_argument("--batch", type=int, default=4, help="train: rows per step")
  ap.add_argument("--seq-len", type=int, default=4096, help="train and score: tokens per row")
  ap.add_argument("--steps", type=int, default=5)
  ap.add_argument("--score-rows", type=int, default=16)
  ap.add_argument("--decode-batch", type=int, default=64)
  ap.add_argument("--prompt", type=int, default=512)
  ap.add_argument("--new", type=int, default=128)
  args = ap.parse_args()
  cfg = ModelConfig.from_dict(model_sizes.get(args.size).to_dict())
  seq_len = min(args.seq_len, cfg.max_seq_len)
  mesh = sharding.make_mesh({"data": 1, "fsdp": -1, "tensor": 1})
  rules = base.RULES
  dev = jax.devices()[0]
  print(f"{jax.device_count()} x {dev.device_kind} ({jax.default_backend()}), size {args.size}: "
        f"{cfg.num_params() / 1e6:,.1f}M parameters, {cfg.num_layers} layers, dim {cfg.dim}, "
        f"compute {cfg.dtype}, jax {jax.__version__}")
  parts = args.parts.split(",")
  if "train" in parts:
    r = bench_train(cfg, mesh, rules, args.batch, seq_len, args.steps)
    mfu = f"{100 * r['mfu']:.1f}%" if r["mfu"] is not None else "n/a (no peak known for it)"
    print(f"train (sft, {args.batch} x {seq_len} tokens a step): {r['step_s'] * 1e3:.0f} ms a "
          f"step, {r['tokens_per_s']:,.0f} tokens/s, {r['tflops_per_device']:.1f} TFLOP/s a "
          f"device, MFU {mfu}; attention: {r['attention']}")
  if "score" in parts:
    r = bench_score(cfg, mesh, rules, args.score_rows, seq_len, args.steps)
    print(f"score (prm, {args.score_rows} x {seq_len} packed tokens a batch): "
          f"{r['batch_s'] * 1e3:.0f} ms a batch, {r['tokens_per_s']:,.0f} tokens/s")
  if "decode" in parts:
    r = bench_decode(cfg, mesh, rules, args.decode_batch, args.prompt, args.new)
    roof = (f"{r['roofline_tokens_per_s']:,.0f} tokens/s at the HBM roofline "
            f"({r['bytes_per_step_gb']:.2f} GB a step): {100 * r['fraction']:.0f}%"
            if r["fraction"] is not None else "no HBM bandwidth known for it")
    print(f"decode (batch {args.decode_batch}, prompt {args.prompt}, {args.new} new): "
          f"{r['step_ms']:.2f} ms a step, {r['tokens_per_s']:,.0f} tokens/s; {roof}")


if __name__ == "__main__":
  main()
