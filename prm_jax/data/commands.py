"""Data-stage commands: `prm-jax convert`, `prm-jax build-tfds`, `prm-jax train-tokenizer`."""

from __future__ import annotations

import os
import sys

from tqdm.auto import tqdm

from prm_jax.records import ReadStats, write_jsonl

FORMATS = ("auto", "prm800k", "scored-samples", "solution", "math", "processbench", "prmbench")


def open_records(path: str, fmt: str = "auto", skip_invalid: bool = False,
                 stats: ReadStats | None = None, expand: bool = False):
  """Records of any supported input format: Solutions, or Problems for `math`."""
  from prm_jax.data import prm800k
  from prm_jax.data.math import read_math
  from prm_jax.records import read_solutions
  if fmt not in FORMATS:
    raise ValueError(f"data.format={fmt!r}; expected one of {FORMATS}")
  if fmt == "math":
    return read_math(path, skip_invalid, stats)
  from prm_jax.data import benchmarks
  if fmt == "auto":
    fmt = benchmarks.sniff(path) or fmt
  if fmt == "processbench":
    return benchmarks.read_processbench(path, skip_invalid, stats)
  if fmt == "prmbench":
    return benchmarks.read_prmbench(path, skip_invalid, stats)
  reader = {"auto": prm800k.read_any_solutions, "prm800k": prm800k.read_prm800k,
            "scored-samples": prm800k.read_scored_samples, "solution": read_solutions}[fmt]
  it = reader(path, skip_invalid=skip_invalid, stats=stats)
  return prm800k.expand_alternatives(it) if expand else it


def convert(input_path: str, output_path: str, fmt: str = "auto", skip_invalid: bool = False,
            expand: bool = False) -> ReadStats:
  """Any supported format -> our JSONL records (written atomically)."""
  stats = ReadStats()
  records = tqdm(open_records(input_path, fmt, skip_invalid, stats, expand), desc="convert",
                 unit=" rec", disable=None)
  n = write_jsonl(output_path, records)
  extra = f", {stats.dropped} dropped by filters" if stats.dropped else ""
  print(f"wrote {n} records to {output_path} ({stats.lines} lines read, {stats.skipped} invalid "
        f"skipped{extra})")
  return stats


def build_tfds(dataset: str, manual_dir: str, data_dir: str) -> None:
  import tensorflow_datasets as tfds
  from prm_jax.data.tfds_builders import MathProblems, Prm800k
  builders = {"prm800k": Prm800k, "math": MathProblems}
  if dataset not in builders:
    raise ValueError(f"data.dataset={dataset!r}; expected one of {sorted(builders)}")
  if not os.path.isdir(manual_dir):
    raise FileNotFoundError(f"--input={manual_dir} is not a directory (the downloaded files)")
  b = builders[dataset](data_dir=data_dir)
  b.download_and_prepare(download_config=tfds.download.DownloadConfig(manual_dir=manual_dir))
  for split, info in b.info.splits.items():
    print(f"{dataset}/{split}: {info.num_examples} examples in {b.data_dir}")


def train_tokenizer(inputs: list[str], output: str, vocab_size: int, model_type: str,
                    fmt: str = "auto") -> None:
  from prm_jax.records import Problem
  from prm_jax.tokenizer import train_sentencepiece

  def texts():
    for path in inputs:
      for r in open_records(path, fmt):
        if isinstance(r, Problem):
          yield r.problem + "\n" + (r.solution or "")
        else:
          yield r.problem + "\n" + r.text
  tok = train_sentencepiece(texts(), vocab_size=vocab_size, model_type=model_type, path=output)
  print(f"wrote {output}: {tok.vocab_size} pieces ({model_type}, byte fallback)", file=sys.stdout)
