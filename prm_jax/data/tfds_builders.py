"""TFDS builders for PRM800K and MATH over the user's downloaded files (`manual_dir`).

Written as array_record and read back with `tfds.data_source` (random access, no TensorFlow). Each
example stores the `Solution` / `Problem` record as JSON text, so the dataset carries exactly the
project's record contract and the reader's drops and checks run once, at build time.

    builder = Prm800k(data_dir="~/tensorflow_datasets")
    builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
        manual_dir="/path/to/prm800k/prm800k/data"))
    source = builder.as_data_source(split="phase2_train")
"""

from __future__ import annotations

import abc
import json
import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from prm_jax.data.math import read_math
from prm_jax.data.prm800k import alternative, read_prm800k
from prm_jax.records import Problem, Solution

_FORMAT = tfds.core.FileFormat.ARRAY_RECORD


def _present(manual_dir: str, names: dict[str, str]) -> dict[str, str]:
  found = {split: os.path.join(manual_dir, f) for split, f in names.items()
           if os.path.exists(os.path.join(manual_dir, f))}
  if not found:
    raise FileNotFoundError(f"{manual_dir}: none of {sorted(names.values())} found")
  return found


class _ManualJsonl(tfds.core.GeneratorBasedBuilder):
  """A builder over JSONL files in `manual_dir`, one split per file present, one record per line.

  Abstract (tfds registers only the concrete subclasses): a subclass names its FILES, its homepage
  and how to read one file into records.
  """

  FILES: dict[str, str] = {}
  HOMEPAGE = ""

  def __init__(self, *, file_format=_FORMAT, **kwargs):
    super().__init__(file_format=file_format, **kwargs)

  @abc.abstractmethod
  def read(self, path: str) -> Iterator[Problem | Solution]:
    """The records of one manual file (the reader's drops and errors apply)."""

  def _info(self) -> tfds.core.DatasetInfo:
    return self.dataset_info_from_configs(
        features=tfds.features.FeaturesDict({"record": tfds.features.Text(),
                                             "problem_id": tfds.features.Text()}),
        homepage=self.HOMEPAGE)

  def _split_generators(self, dl_manager):
    paths = _present(os.fspath(dl_manager.manual_dir), self.FILES)
    return {split: self._generate_examples(path) for split, path in paths.items()}

  def _generate_examples(self, path):
    for i, rec in enumerate(self.read(path)):
      yield i, {"record": json.dumps(rec.to_dict(), ensure_ascii=False), "problem_id": rec.problem_id}


class Prm800k(_ManualJsonl):
  """PRM800K step labels as `Solution` records (quality-control / screening / bad_problem dropped)."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Clone github.com/openai/prm800k with git-lfs and point manual_dir at prm800k/data/, which "
      "holds phase1_train.jsonl, phase1_test.jsonl, phase2_train.jsonl, phase2_test.jsonl.")
  FILES = {f"phase{p}_{s}": f"phase{p}_{s}.jsonl" for p in (1, 2) for s in ("train", "test")}
  HOMEPAGE = "https://github.com/openai/prm800k"

  def read(self, path: str) -> Iterator[Solution]:
    return read_prm800k(path)


class MathProblems(_ManualJsonl):
  """The MATH splits PRM800K uses (`math_splits/{train,test}.jsonl`) as `Problem` records."""

  VERSION = tfds.core.Version("1.0.0")
  MANUAL_DOWNLOAD_INSTRUCTIONS = (
      "Point manual_dir at prm800k/math_splits/ of github.com/openai/prm800k (train.jsonl, "
      "test.jsonl), or any folder with MATH-format train.jsonl / test.jsonl.")
  FILES = {"train": "train.jsonl", "test": "test.jsonl"}
  HOMEPAGE = "https://github.com/hendrycks/math"

  def read(self, path: str) -> Iterator[Problem]:
    return read_math(path)


class ExpandedSource:
  """A PRM800K data source with every rated alternative as an extra record (random access).

  The builder stores one record per labelled walk; training with `expand_alternatives` needs the
  alternatives too. One pass over the source indexes (record, alternative) pairs; items are
  decoded `Solution`s, so the pipeline needs no `decode`.
  """

  def __init__(self, source):
    self.source = source
    index = []
    for i in range(len(source)):
      n = len(decode_solution(source[i]).meta.get("alternatives") or ())
      index.extend((i, k) for k in range(-1, n))
    self.index = np.asarray(index, np.int64).reshape(-1, 2)

  def __len__(self) -> int:
    return len(self.index)

  def __getitem__(self, j: int) -> Solution:
    i, k = (int(x) for x in self.index[j])
    sol = decode_solution(self.source[i])
    return sol if k < 0 else alternative(sol, k)


def decode_solution(example) -> Solution:
  rec = example["record"]
  return Solution.from_dict(json.loads(rec.decode() if isinstance(rec, bytes) else rec))


def decode_problem(example) -> Problem:
  rec = example["record"]
  return Problem.from_dict(json.loads(rec.decode() if isinstance(rec, bytes) else rec))
