"""The grain input pipeline: records -> step-aware tokens -> packed (or padded) rows -> batches.

Every example is a dict of per-token arrays, so packing treats them uniformly:
  tokens      int32  the solution's tokens in the step format (`[BOS] problem <nl> step <nl> ... [EOS]`)
  loss_mask   int32  1 on solution tokens (what SFT learns to write), 0 on the prompt
  step_label  int32  -1/0/1 at each step's end (its newline or tag), IGNORE elsewhere (PRM targets)
  outcome     int32  1/0 (final answer correct) at the last token, IGNORE elsewhere (ORM targets)
Packing adds `segment_ids` (0 = padding) and `positions`. The iterator's state is a small dict that
is saved with each checkpoint, so training resumes at exactly the next example. Multi-host: each
process reads its own slice of the (shuffled) record order and builds `global_batch / processes` rows.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Sequence

import grain
import grain.experimental as grain_exp
import numpy as np

from prm_jax.records import Solution
from prm_jax.step_format import StepFormat
from prm_jax.tokenizer import IGNORE, Tokenizer

FEATURES = ("tokens", "loss_mask", "step_label", "outcome")
PADDING = {"tokens": 0, "loss_mask": 0, "step_label": IGNORE, "outcome": IGNORE}


@dataclasses.dataclass
class PipelineStats:
  """Counters of the in-process pipeline (steps cut by truncation, solutions dropped as empty)."""

  examples: int = 0
  truncated_steps: int = 0
  truncated_examples: int = 0
  dropped_empty: int = 0


def tokenize(tok: Tokenizer, sol: Solution, max_len: int, stats: PipelineStats | None = None,
             fmt: StepFormat | None = None) -> dict[str, np.ndarray] | None:
  """Per-token arrays for one solution in the step format; None when not even one step fits."""
  enc = (fmt or StepFormat()).encode(tok, sol.problem, sol.steps, sol.step_labels, max_len=max_len)
  if stats is not None:
    stats.examples += 1
    stats.truncated_steps += enc.truncated_steps
    stats.truncated_examples += int(enc.truncated_steps > 0)
  if len(enc.step_ends) == 0 and len(sol.steps) > 0:
    if stats is not None:
      stats.dropped_empty += 1
    return None
  n = len(enc.tokens)
  loss_mask = np.zeros(n, np.int32)
  loss_mask[enc.prompt_len:] = 1
  step_label = np.full(n, IGNORE, np.int32)
  step_label[enc.step_ends] = enc.step_labels
  outcome = np.full(n, IGNORE, np.int32)
  if sol.is_correct is not None and enc.truncated_steps == 0:
    outcome[n - 1] = int(sol.is_correct)
  return {"tokens": enc.tokens, "loss_mask": loss_mask, "step_label": step_label,
          "outcome": outcome}


def pad_example(ex: dict[str, np.ndarray], seq_len: int) -> dict[str, np.ndarray]:
  """One solution per row (the unpacked layout), with the same keys packing produces."""
  out = {}
  n = len(ex["tokens"])
  for k in FEATURES:
    a = np.full(seq_len, PADDING[k], np.int32)
    a[:n] = ex[k]
    out[k] = a
  out["segment_ids"] = (np.arange(seq_len) < n).astype(np.int32)
  out["positions"] = np.where(np.arange(seq_len) < n, np.arange(seq_len), 0).astype(np.int32)
  return out


def _rename_packed(ex: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
  out = {k: ex[k] for k in FEATURES}
  out["segment_ids"] = ex["tokens_segment_ids"]
  out["positions"] = ex["tokens_positions"]
  return out


def make_dataset(records: Sequence[Any], tokenizer: Tokenizer, *, seq_len: int, global_batch: int,
                 fmt: StepFormat | None = None,
                 seed: int = 0, decode: Callable[[Any], Solution] | None = None,
                 shuffle: bool = True, pack: bool = True, num_epochs: int | None = None,
                 process_index: int = 0, process_count: int = 1,
                 stats: PipelineStats | None = None) -> grain.IterDataset:
  """A checkpointable dataset of `{feature: int32[global_batch // process_count, seq_len]}` batches.

  `records` is any random-access sequence: a list of `Solution`s, or a TFDS data source with `decode`
  (e.g. `tfds_builders.decode_solution`). `num_epochs=None` repeats forever.
  """
  if global_batch % process_count:
    raise ValueError(f"global batch {global_batch} is not divisible by {process_count} processes")
  per_process = global_batch // process_count
  ds = grain.MapDataset.source(records)
  if shuffle:
    ds = ds.shuffle(seed=seed)
  ds = ds.repeat(num_epochs)
  ds = ds[process_index::process_count]
  to_solution = decode or (lambda r: r)
  dropped_in_a_row = [0]

  def to_example(r):
    ex = tokenize(tokenizer, to_solution(r), seq_len, stats, fmt)
    dropped_in_a_row[0] = 0 if ex is not None else dropped_in_a_row[0] + 1
    if dropped_in_a_row[0] > len(records):  # a whole pass without one usable example
      raise ValueError(f"no solution has even one step within seq_len={seq_len} (problem plus "
                       "first step are longer); raise seq_len")
    return ex
  ds = ds.map(to_example)
  ds = ds.filter(lambda ex: ex is not None)
  it = ds.to_iter_dataset()
  if pack:
    it = grain_exp.FirstFitPackIterDataset(
        it, length_struct={k: seq_len for k in FEATURES}, num_packing_bins=per_process, seed=seed,
        shuffle_bins=shuffle, padding_struct=dict(PADDING))
    it = it.map(_rename_packed)
  else:
    it = it.map(lambda ex: pad_example(ex, seq_len))
  return it.batch(per_process, drop_remainder=True)
