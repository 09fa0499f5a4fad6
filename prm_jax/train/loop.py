"""`train(config)`: the one training loop for `sft`, `orm` and `prm`.

    workdir/
      config.json        the resolved config
      tokenizer.model    sentencepiece model used for the data
      checkpoints/N/     orbax: train state + data iterator position (async, last `keep` kept)
      params/            final parameters (what sampling, scoring and reward-model init load)
      metrics.jsonl, tb/ one line / event per logged step
"""

from __future__ import annotations

import json
import math
import os
import signal
import time
from typing import Any, Sequence

import jax
import ml_collections
import numpy as np
from flax import nnx
from tqdm.auto import tqdm

from prm_jax import sharding
from prm_jax.data.pipeline import PipelineStats, make_dataset
from prm_jax.model import ModelConfig
from prm_jax.records import Solution
from prm_jax.tokenizer import SentencePieceTokenizer, train_sentencepiece
from prm_jax.train import trainer
from prm_jax.train.checkpoints import (Checkpointer, abstract_with_shardings, export_params,
                                      load_params, read_run_config)
from prm_jax.train.metrics import MetricWriter, peak_flops_per_device, train_flops_per_token


class TrainingDiverged(ValueError):
  """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def load_records(spec: str, expand_alternatives: bool = False, data_dir: str | None = None):
  """A random-access record source from `path.jsonl` (any supported format) or `tfds:NAME/SPLIT`."""
  if spec.startswith("tfds:"):
    from prm_jax.data.tfds_builders import MathProblems, Prm800k, decode_solution
    name, split = spec[5:].split("/", 1)
    builder = {"prm800k": Prm800k, "math": MathProblems}[name](data_dir=data_dir)
    return builder.as_data_source(split=split), decode_solution
  from prm_jax.data.commands import open_records
  if not os.path.exists(spec):
    raise FileNotFoundError(f"training data {spec!r} does not exist")
  return list(open_records(spec, "auto", expand=expand_alternatives)), None


def tokenizer_for(config, records, decode, workdir: str):
  """The configured tokenizer, the one saved in `workdir` on resume, or one trained on the data."""
  saved = os.path.join(workdir, "tokenizer.model")
  path = config.tokenizer.path or (saved if os.path.exists(saved) else "")
  if path:
    tok = SentencePieceTokenizer.load(path)
  else:
    texts = ((decode(r) if decode else r) for r in records)
    tok = train_sentencepiece((s.problem + "\n" + s.text for s in texts),
                              vocab_size=config.tokenizer.vocab_size,
                              model_type=config.tokenizer.model_type)
  return tok


def _init_from(model, spec: str, cfg: ModelConfig, mesh, rules) -> None:
  """Reward models start from a generator: a prm_jax SFT workdir, or `hf:PATH` weights."""
  if spec.startswith("hf:"):
    from prm_jax.model.hf_import import load_hf_causal_lm
    lm = load_hf_causal_lm(spec[3:], dtype=cfg.dtype, param_dtype=cfg.param_dtype, mesh=mesh,
                           rules=rules)
    nnx.update(model.transformer, nnx.state(lm.transformer))
    return
  from prm_jax.model import CausalLM
  _, abstract = nnx.split(nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0))), nnx.Param)
  placed = abstract_with_shardings(abstract, sharding.state_shardings(abstract, mesh, rules))
  lm_params = load_params(os.path.join(spec, "params"), placed)
  if hasattr(model, "lm_head") or not hasattr(model, "head_w"):
    nnx.update(model, lm_params)
  else:
    nnx.update(model.transformer, lm_params["transformer"])


def train(config: ml_collections.ConfigDict, records: Sequence[Solution] | None = None,
          tokenizer=None, desc: str | None = None) -> dict[str, Any]:
  """Trains (or resumes) `config.train.task` in `config.workdir`; returns a summary."""
  tc, workdir = config.train, config.workdir
  task = tc.task
  os.makedirs(workdir, exist_ok=True)
  mesh, rules = sharding.make_mesh(config.mesh), tuple(config.rules)
  decode = None
  if records is None:
    if not tc.data:
      raise ValueError("no training data: set --config.train.data=PATH.jsonl or tfds:NAME/SPLIT")
    records, decode = load_records(tc.data, tc.expand_alternatives, config.get("data_dir"))
  tok = tokenizer or tokenizer_for(config, records, decode, workdir)
  if jax.process_index() == 0:  # a finished run is self-contained: sampling/scoring read it back
    tok.save(os.path.join(workdir, "tokenizer.model"))
  model_dict = dict(config.model.to_dict())
  if tc.init_from and not tc.init_from.startswith("hf:"):
    # the starting weights fix the architecture
    model_dict = dict(read_run_config(tc.init_from, "params", hint=" (hf:PATH loads Hugging Face "
                                      "weights)")["model"])
    config = ml_collections.ConfigDict(config.to_dict())
    config.model = ml_collections.ConfigDict(model_dict)
  if model_dict["vocab_size"] < tok.vocab_size:
    raise ValueError(f"model vocab_size {model_dict['vocab_size']} < tokenizer's {tok.vocab_size}")
  cfg = ModelConfig.from_dict(model_dict)
  if jax.process_index() == 0:
    with open(os.path.join(workdir, "config.json"), "w") as f:
      f.write(config.to_json_best_effort(indent=1))

  model = sharding.init_sharded(lambda: trainer.build_model(task, cfg, nnx.Rngs(config.seed)),
                                mesh, rules)
  ckpt = Checkpointer(os.path.join(workdir, "checkpoints"), tc.save_every, tc.keep,
                      tc.async_checkpoint)
  resuming = ckpt.latest_step() is not None
  if tc.init_from and not resuming:
    _init_from(model, tc.init_from, cfg, mesh, rules)
  tx = trainer.make_optimizer(tc)
  graphdef, state, state_sh = trainer.create_train_state(model, tx, mesh, rules)
  del model
  stats = PipelineStats()
  dataset = make_dataset(records, tok, seq_len=tc.seq_len, global_batch=tc.batch_size,
                         seed=config.seed, decode=decode, pack=tc.pack,
                         process_index=jax.process_index(), process_count=jax.process_count(),
                         stats=stats)
  it = iter(dataset)
  start = 0
  if resuming:
    state, data_state, start = ckpt.restore(abstract_with_shardings(state, state_sh))
    it.set_state(data_state["iterator"])
  batch_sh = sharding.logical_sharding(("batch", None), (tc.batch_size, tc.seq_len), mesh, rules)
  step_fn = trainer.make_train_step(graphdef, tx, trainer.task_loss(task, tc), state_sh,
                                    {k: batch_sh for k in ("tokens", "loss_mask", "step_label",
                                                           "outcome", "segment_ids", "positions")},
                                    mesh, rules)
  writer = MetricWriter(workdir, resume_step=start)
  flops_tok = train_flops_per_token(cfg.num_params(), cfg.num_layers, cfg.dim, tc.seq_len)
  peak = peak_flops_per_device()

  preempted = []
  previous = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  bar = tqdm(total=tc.steps, initial=start, desc=desc or task, dynamic_ncols=True, disable=None)
  tokens_since, t_last, history = 0, time.perf_counter(), []
  step = start
  try:
    while step < tc.steps and not preempted:
      host_batch = next(it)
      tokens_since += int((host_batch["segment_ids"] > 0).sum()) * jax.process_count()
      state, metrics = step_fn(state, sharding.shard_batch(host_batch, mesh, rules))
      step += 1
      if step % tc.log_every == 0 or step == tc.steps or preempted:
        m = {k: float(v) for k, v in jax.device_get(metrics).items()}
        if not m.pop("finite"):
          raise TrainingDiverged(
              f"{task}: non-finite loss or gradient at step {step} (loss={m['loss']}); stopped, "
              f"the last good checkpoint in {ckpt.directory} is kept (try a lower learning rate)")
        dt = time.perf_counter() - t_last
        m["tokens_per_s"] = tokens_since / dt
        m["mfu"] = (flops_tok * m["tokens_per_s"] / (peak * jax.device_count())) if peak else None
        m["lr_step"] = step
        tokens_since, t_last = 0, time.perf_counter()
        writer.write(step, {k: v for k, v in m.items() if v is not None})
        history.append(dict(m, step=step))
        bar.set_postfix(loss=f"{m['loss']:.4f}", refresh=False)
      bar.update(1)
      ckpt.save(step, state, {"iterator": it.get_state()}, force=bool(preempted))
  finally:
    bar.close()
    signal.signal(signal.SIGTERM, previous)
    writer.close()
    ckpt.wait()
  if preempted:
    ckpt.close()
    return {"task": task, "preempted": True, "step": step, "history": history}
  if ckpt.latest_step() != step:
    ckpt.save(step, state, {"iterator": it.get_state()}, force=True)
  ckpt.close()
  export_params(os.path.join(workdir, "params"), state.params)
  return {"task": task, "preempted": False, "step": step, "history": history,
          "truncated_steps": stats.truncated_steps, "num_params": cfg.num_params()}
