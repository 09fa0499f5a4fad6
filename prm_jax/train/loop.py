"""`train(config)`: the one training loop for `sft`, `orm` and `prm`, writing a run directory
(`prm_jax.runs.RunDir`: config.json, tokenizer.model, checkpoints/, params/, metrics.jsonl, summary.json).
`train_run` is how the demo and active learning train a stage from their own config.
"""

from __future__ import annotations

import dataclasses
import os
import signal
import time
from typing import Any, Sequence

import jax
import ml_collections
from flax import nnx
from tqdm.auto import tqdm

from prm_jax import distributed, sharding
from prm_jax.configs import derive
from prm_jax.data.pipeline import PipelineStats, make_dataset
from prm_jax.model import TASKS, ModelConfig, build_model
from prm_jax.records import Solution
from prm_jax.runs import Run, RunDir, abstract_with_shardings, is_hf, model_config_of, tokenizer_of
from prm_jax.step_format import StepFormat
from prm_jax.tokenizer import load_tokenizer, train_sentencepiece
from prm_jax.train import trainer
from prm_jax.train.checkpoints import Checkpointer
from prm_jax.train.metrics import MetricWriter, peak_flops_per_device, train_flops_per_token


class TrainingDiverged(ValueError):
  """The loss or gradient became NaN/inf; the last good checkpoint is kept."""


def load_records(spec: str, expand_alternatives: bool = False, data_dir: str | None = None):
  """A random-access record source from `path.jsonl` (any supported format) or `tfds:NAME/SPLIT`."""
  if spec.startswith("tfds:"):
    from prm_jax.data.tfds_builders import (ExpandedSource, MathProblems, Prm800k,
                                            decode_solution)
    name, split = spec[5:].split("/", 1)
    builder = {"prm800k": Prm800k, "math": MathProblems}[name](data_dir=data_dir)
    source = builder.as_data_source(split=split)
    if name == "prm800k" and expand_alternatives:  # phase 2's rated alternatives, as from JSONL
      return ExpandedSource(source), None
    return source, decode_solution
  from prm_jax.data.commands import open_records
  if not os.path.exists(spec):
    raise FileNotFoundError(f"training data {spec!r} does not exist")
  return list(open_records(spec, "auto", expand=expand_alternatives)), None


def tokenizer_for(config, records, decode, run: RunDir):
  """The tokenizer the data is encoded with, in this order: `tokenizer.path`; the one saved in the
  workdir (a resume); the starting run's (`train.init_from`: its embedding table was trained with
  it); else a new sentencepiece model trained on the data (by process 0, read by the others)."""
  start = config.train.init_from
  path = config.tokenizer.path or (run.tokenizer_path if os.path.exists(run.tokenizer_path) else "")
  if path:
    return load_tokenizer(path)
  if start:
    tok = tokenizer_of(start)
    if tok is None:
      raise ValueError(f"train.init_from={start} ships no tokenizer, and a new one would not match "
                       "its embedding table; set --config.tokenizer.path to its tokenizer")
    return tok
  if distributed.is_main():
    texts = ((decode(r) if decode else r) for r in records)
    train_sentencepiece((s.problem + "\n" + s.text for s in texts),
                        vocab_size=config.tokenizer.vocab_size,
                        model_type=config.tokenizer.model_type, path=run.tokenizer_path)
  distributed.barrier("tokenizer")
  return load_tokenizer(run.tokenizer_path)


def _adopt_starting_architecture(config) -> ml_collections.ConfigDict:
  """`train.init_from` fixes the architecture: its model section replaces ours (a Hugging Face
  folder keeps our dtype / remat / scan settings, which say how to hold it, not what it is)."""
  spec = config.train.init_from
  if is_hf(spec):
    m = config.model
    cfg = model_config_of(spec, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                          scan_layers=m.scan_layers)
  else:
    cfg = model_config_of(spec)
  model = dataclasses.asdict(cfg)
  return derive(config, {"model": ml_collections.ConfigDict(model)})


def _load_starting_weights(model, spec: str, mesh, rules) -> None:
  """Copies the starting run's weights in: all of them into a generator, the transformer into a
  reward model (its head starts fresh, as in the paper)."""
  start = Run.open(spec, mesh, rules, **({"dtype": model.cfg.dtype,
                                          "param_dtype": model.cfg.param_dtype,
                                          "scan_layers": model.cfg.scan_layers,
                                          "remat": model.cfg.remat} if is_hf(spec) else {}))
  if type(model) is type(start.model) and getattr(model, "kind", None) == getattr(
      start.model, "kind", None):
    nnx.update(model, nnx.state(start.model, nnx.Param))
  else:
    nnx.update(model.transformer, nnx.state(start.model.transformer, nnx.Param))


def train_run(config: ml_collections.ConfigDict, workdir: str, task: str,
              records: Sequence[Solution] | None = None, tokenizer=None, desc: str | None = None,
              **overrides) -> dict[str, Any]:
  """Trains `task` into `workdir` with `config`'s settings and `train.*` overrides (the caller's
  config is not changed)."""
  updates = {"workdir": workdir, "train.task": task}
  updates.update({f"train.{k}": v for k, v in overrides.items()})
  return train(derive(config, updates), records=records, tokenizer=tokenizer, desc=desc or task)


def train(config: ml_collections.ConfigDict, records: Sequence[Solution] | None = None,
          tokenizer=None, desc: str | None = None) -> dict[str, Any]:
  """Trains (or resumes) `config.train.task` in `config.workdir`; returns a summary."""
  tc, run = config.train, RunDir(config.workdir)
  task = tc.task
  if task not in TASKS:
    raise ValueError(f"train.task={task!r}; expected one of {TASKS}")
  mesh, rules = sharding.make_mesh(config.mesh), tuple(config.rules)
  decode = None
  if records is None:
    if not tc.data:
      raise ValueError("no training data: set --config.train.data=PATH.jsonl or tfds:NAME/SPLIT")
    records, decode = load_records(tc.data, tc.expand_alternatives, config.get("data_dir"))
  if len(records) == 0:
    raise ValueError(f"training data {tc.data or '(records)'} holds no records")
  if tc.init_from:
    config = _adopt_starting_architecture(config)
  os.makedirs(run.path, exist_ok=True)
  tok = tokenizer or tokenizer_for(config, records, decode, run)
  if config.model.vocab_size < tok.vocab_size:
    raise ValueError(f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
                     f"{tok.vocab_size} pieces ({getattr(tok, 'source', 'the tokenizer')}): its ids "
                     "would not index the embedding table")
  fmt = StepFormat.from_config(config.get("format"))
  fmt.check(tok)
  if distributed.is_main():  # a finished run is self-contained: sampling/scoring read it back
    tok.save_pretrained(run.path)
  cfg = ModelConfig.from_dict(config.model)
  run.write_config(config)

  model = sharding.init_sharded(lambda: build_model(task, cfg, nnx.Rngs(config.seed)), mesh, rules)
  ckpt = Checkpointer(run.checkpoints_path, tc.save_every, tc.keep, tc.async_checkpoint)
  resuming = ckpt.latest_step() is not None
  if tc.init_from and not resuming:
    _load_starting_weights(model, tc.init_from, mesh, rules)
  tx = trainer.make_optimizer(tc)
  graphdef, state, state_sh = trainer.create_train_state(model, tx, mesh, rules)
  del model
  stats = PipelineStats()
  dataset = make_dataset(records, tok, fmt=fmt, seq_len=tc.seq_len, global_batch=tc.batch_size,
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
  writer = MetricWriter(run.path, resume_step=start)
  flops_tok = train_flops_per_token(cfg.num_params(), cfg.num_layers, cfg.dim, tc.seq_len)
  peak = peak_flops_per_device()

  preempted = []
  previous = signal.signal(signal.SIGTERM, lambda *_: preempted.append(True))
  bar = tqdm(total=tc.steps, initial=start, desc=desc or task, dynamic_ncols=True,
             disable=None if distributed.is_main() else True)
  tokens_since, t_last, history = 0, time.perf_counter(), []
  step = start
  try:
    while step < tc.steps and not preempted:
      host_batch = next(it)
      tokens_since += int((host_batch["segment_ids"] > 0).sum()) * jax.process_count()
      state, metrics = step_fn(state, sharding.shard_batch(host_batch, mesh, rules))
      step += 1
      if step % tc.log_every == 0 or step == tc.steps or preempted:
        m = {k: float(sharding.to_host(v)) for k, v in metrics.items()}
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
  summary = {"task": task, "preempted": bool(preempted), "step": step,
             "num_params": cfg.num_params(), **distributed.mesh_summary(mesh)}
  if preempted:
    ckpt.close()
    return dict(summary, history=history)
  if ckpt.latest_step() != step:
    ckpt.save(step, state, {"iterator": it.get_state()}, force=True)
  ckpt.close()
  run.save_params(state.params)
  summary["truncated_steps"] = stats.truncated_steps
  run.write_summary(summary)
  return dict(summary, history=history)
