"""`train(config)`: the one training loop for `sft`, `orm` and `prm`, writing a run directory
(`prm_jax.runs.RunDir`: config.json, tokenizer.model, checkpoints/, params/, metrics.jsonl, summary.json).
`train_run` is how the demo and active learning train a stage from their own config.
"""

from __future__ import annotations

import dataclasses
import json
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
from prm_jax.paths import WriterLock
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
    if name == "math":
      raise ValueError(f"{spec} holds problems, not solutions: training needs solutions (sample "
                       "some with `prm-jax sample`, or train on tfds:prm800k/SPLIT)")
    builder = {"prm800k": Prm800k, "math": MathProblems}[name](data_dir=data_dir)
    source = builder.as_data_source(split=split)
    if name == "prm800k" and expand_alternatives:  # phase 2's rated alternatives, as from JSONL
      return ExpandedSource(source), None
    return source, decode_solution
  from prm_jax.data.commands import open_records
  if not os.path.exists(spec):
    raise FileNotFoundError(f"training data {spec!r} does not exist")
  return list(open_records(spec, "auto", expand=expand_alternatives)), None


def known_tokenizer(config, run: RunDir):
  """The tokenizer the data is encoded with, when one exists (read only): `tokenizer.path`; the
  one saved in the workdir (a resume); the starting run's (`train.init_from`: its embedding table
  was trained with it). None: a new sentencepiece model is to be trained on the data."""
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
  return None


def new_tokenizer(config, records, decode, run: RunDir):
  """A sentencepiece model trained on the data (by process 0, read by the others)."""
  if distributed.is_main():
    texts = ((decode(r) if decode else r) for r in records)
    train_sentencepiece((s.problem + "\n" + s.text for s in texts),
                        vocab_size=config.tokenizer.vocab_size,
                        model_type=config.tokenizer.model_type, path=run.tokenizer_path)
  distributed.barrier("tokenizer")
  return load_tokenizer(run.tokenizer_path)


# ----------------------------------------------------------------------------- the run contract

# A resume may change how long and how fast a run trains (train.steps, the learning-rate schedule,
# the optimizer's hyperparameters), how often it logs and saves, its data, mesh and seed, and how
# its weights are held (below). Everything that makes the run what it is must match config.json:
# the task, the architecture, the step format, the tokenizer, and what shapes the optimizer state
# and the data iterator's checkpointed position.
FIXED_TRAIN = ("task", "seq_len", "batch_size", "pack", "grad_accum", "prm_mode",
               "neutral_is_positive", "orm_all_tokens")
# model fields that leave the parameters as they are
HOW_HELD = ("dtype", "remat", "init_std", "attention_block")
STATES = ("new", "resume", "done")


def _tokenizer_key(tok) -> tuple:
  proto = getattr(tok, "proto", None)
  return (type(tok).__name__, proto if proto is not None else tuple(tok.token_texts()))


def _checkpoint_steps(run: RunDir) -> list[int]:
  try:
    return sorted(int(n) for n in os.listdir(run.checkpoints_path) if n.isdigit())
  except (FileNotFoundError, NotADirectoryError):
    return []


def _trained_step(run: RunDir) -> int | None:
  """The step a finished training wrote its params at (summary.json), if it finished."""
  try:
    with open(run.summary_path) as f:
      step = json.load(f).get("step")
  except (OSError, ValueError, AttributeError):
    return None
  return step if isinstance(step, int) and os.path.isdir(run.params_path) else None


def check_workdir(config, run: RunDir, tok) -> str:
  """What training `config` into `run` means, decided by reading only: "new" (nothing trained
  there yet), "resume" (the same run, from its last checkpoint) or "done" (already trained to
  train.steps; nothing to do).
  Anything else is a one-line ValueError naming the difference: training never replaces, or
  deletes, what another run wrote."""
  path, task = run.path, config.train.task
  again = "choose another --config.workdir"
  if not os.path.exists(run.config_path):
    theirs = run.written()
    if theirs:
      raise ValueError(f"{path} holds {', '.join(theirs)} but no config.json: not a run that "
                       f"training wrote; {again}")
    if tok is not None and os.path.exists(run.tokenizer_path) and (
        _tokenizer_key(load_tokenizer(run.tokenizer_path)) != _tokenizer_key(tok)):
      raise ValueError(f"{run.tokenizer_path} is another tokenizer than this run's; {again}")
    return "new"
  saved = run.read_config()
  if not (isinstance(saved, dict) and isinstance(saved.get("train"), dict)
          and isinstance(saved.get("model"), dict)):
    raise ValueError(f"{run.config_path} is not a prm_jax run's config (no train and model "
                     f"sections): training would replace it; {again}")
  was = saved["train"].get("task")
  if was != task:
    raise ValueError(f"{path} holds a {was} run; this is {task}: {again}")
  now = json.loads(config.to_json_best_effort())
  diffs = []
  old_model = dataclasses.asdict(ModelConfig.from_dict(saved["model"]))
  new_model = dataclasses.asdict(ModelConfig.from_dict(config.model))
  diffs += [f"model.{k} {old_model[k]} != {v}" for k, v in new_model.items()
            if k not in HOW_HELD and old_model[k] != v]
  for section, keys in (("train", FIXED_TRAIN), ("format", tuple(now.get("format") or ()))):
    old, new = saved.get(section) or {}, now.get(section) or {}
    diffs += [f"{section}.{k} {old[k]!r} != {new.get(k)!r}" for k in keys
              if k in old and old[k] != new.get(k)]
  if tok is not None and os.path.exists(run.tokenizer_path) and (
      _tokenizer_key(load_tokenizer(run.tokenizer_path)) != _tokenizer_key(tok)):
    diffs.append(f"another tokenizer than its {os.path.basename(run.tokenizer_path)}")
  trained, steps = _trained_step(run), _checkpoint_steps(run)
  if diffs:
    more = f" (and {len(diffs) - 3} more)" if len(diffs) > 3 else ""
    unused = "" if steps or os.path.isdir(run.params_path) else (
        " (it holds no checkpoint yet: remove it to start over)")
    raise ValueError(f"{path} holds a run with {'; '.join(diffs[:3])}{more} (its config.json vs "
                     "this config): a resume may change train.steps, the learning rate, logging "
                     f"and the mesh, not what the run is; {again}{unused}")
  if trained is not None and trained >= config.train.steps:
    return "done"
  if os.path.isdir(run.params_path) and not steps:
    raise ValueError(f"{path} holds final params/ but no checkpoint to resume from: training again "
                     f"would replace them; {again}")
  return "resume" if steps else "new"


def resolve_workdir(workdir: str) -> str:
  """The workdir as given, once it is known to be (or to become) a folder: a symlink to one is
  followed, a dangling symlink or a file is refused. (The command line expands ~ and $VARS.)"""
  path = str(workdir or "")
  if not path:
    raise ValueError("config.workdir is empty: name the run directory to write")
  if os.path.islink(path) and not os.path.exists(path):
    raise ValueError(f"workdir {path} is a symlink to {os.readlink(path)}, which does not exist")
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"workdir {path} is a file, not a folder")
  return path


def _claim(config, run: RunDir, tok):
  """Locks the workdir (process 0) and checks it; every process learns the verdict, or fails."""
  lock, verdict, error = None, -1, None
  if distributed.is_main():
    try:
      lock = WriterLock(run.lock_path, run.path, "another --config.workdir").acquire()
      verdict = STATES.index(check_workdir(config, run, tok))
    except BaseException as e:  # noqa: BLE001  (told to the other processes, then re-raised)
      error = e
      if lock is not None:
        lock.release()
  verdict = distributed.broadcast_int(verdict)
  if error is not None:
    raise error
  if verdict < 0:
    raise RuntimeError(f"process 0 refused {run.path}; its error says why")
  return STATES[verdict], lock


def _adopt_starting_architecture(config) -> ml_collections.ConfigDict:
  """`train.init_from` fixes the architecture: its model section replaces ours (a Hugging Face
  folder keeps our dtype / remat / scan settings, which say how to hold it, not what it is)."""
  spec = config.train.init_from
  if is_hf(spec):
    m = config.model
    cfg = model_config_of(spec, dtype=m.dtype, param_dtype=m.param_dtype, remat=m.remat,
                          scan_layers=m.scan_layers, attention_block=m.get("attention_block", 128))
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
  """Trains (or resumes) `config.train.task` in `config.workdir`; returns a summary.

  The workdir is a contract (`check_workdir`), checked before anything is written: a new run, or
  the same run resumed from its last checkpoint, or nothing to do; anything else is refused. The
  workdir is locked while training writes it (a second `train` into it fails at once).
  """
  tc = config.train
  task = tc.task
  if task not in TASKS:
    raise ValueError(f"train.task={task!r}; expected one of {TASKS}")
  run = RunDir(resolve_workdir(config.workdir))
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
  tok = tokenizer or known_tokenizer(config, run)
  vocab = tok.vocab_size if tok is not None else config.tokenizer.vocab_size
  if config.model.vocab_size < vocab:
    raise ValueError(f"model.vocab_size={config.model.vocab_size} is smaller than the tokenizer's "
                     f"{vocab} pieces ({getattr(tok, 'source', None) or 'tokenizer.vocab_size'}): "
                     "its ids would not index the embedding table")
  fmt = StepFormat.from_config(config.get("format"))
  if tok is not None:
    fmt.check(tok)
  state, lock = _claim(config, run, tok)
  try:
    if state == "done":
      with open(run.summary_path) as f:
        summary = json.load(f)
      return dict(summary, already_trained=True, history=[])
    return _train(config, run, records, decode, tok, fmt, mesh, rules, desc)
  finally:
    if lock is not None:
      lock.release()


def _train(config, run: RunDir, records, decode, tok, fmt, mesh, rules, desc) -> dict[str, Any]:
  tc, task = config.train, config.train.task
  run.write_config(config)  # first: whatever follows in this folder belongs to this run
  if tok is None:
    tok = new_tokenizer(config, records, decode, run)
    fmt.check(tok)
  if distributed.is_main():  # a finished run is self-contained: sampling/scoring read it back
    tok.save_pretrained(run.path)
  cfg = ModelConfig.from_dict(config.model)

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
