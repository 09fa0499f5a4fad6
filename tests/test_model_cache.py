"""The on-disk cache of the shared tiny test models (tests/conftest.py): keyed by the code that
trains them, reused without retraining, and never half-built."""

import os
import pathlib
import shutil

import pytest

from tests import conftest
from tests.conftest import ROOT, cached_build, model_cache_key


def copy_sources(dst: pathlib.Path):
  for f in ["prm_jax/train/loop.py", "prm_jax/model/config.py", "configs/base.py",
            "tests/conftest.py"]:
    (dst / f).parent.mkdir(parents=True, exist_ok=True)
    shutil.copy(ROOT / f, dst / f)


def test_the_key_changes_when_a_training_source_changes(tmp_path):
  copy_sources(tmp_path)
  key = model_cache_key(tmp_path)
  assert model_cache_key(tmp_path) == key and len(key) == 16
  loop = tmp_path / "prm_jax" / "train" / "loop.py"
  loop.write_text(loop.read_text() + "\n# a change\n")
  changed = model_cache_key(tmp_path)
  assert changed != key
  (tmp_path / "configs" / "new.py").write_text("X = 1\n")  # a new config file counts too
  assert model_cache_key(tmp_path) != changed
  before = model_cache_key(tmp_path)
  (tmp_path / "README.md").write_text("not a training source")
  assert model_cache_key(tmp_path) == before
  assert model_cache_key(ROOT) != key  # the real tree hashes every prm_jax/**/*.py


def test_a_cached_build_is_reused_and_an_interrupted_one_redone(tmp_path, monkeypatch):
  monkeypatch.setenv("PRM_JAX_TEST_CACHE", str(tmp_path / "cache"))
  calls = []

  def build(d):
    calls.append(d)
    (d / "model").write_text(str(len(calls)))

  a = cached_build("m", build, key="k1")
  assert a == tmp_path / "cache" / "m-k1" and (a / "model").read_text() == "1"
  assert cached_build("m", build, key="k1") == a and len(calls) == 1  # reused, not retrained

  def interrupted(d):
    (d / "half").write_text("x")
    raise KeyboardInterrupt

  with pytest.raises(KeyboardInterrupt):
    cached_build("m", interrupted, key="k2")
  assert not (tmp_path / "cache" / "m-k2" / "DONE").exists()
  b = cached_build("m", build, key="k2")  # the half-built directory is thrown away
  assert len(calls) == 2 and not (b / "half").exists() and (b / "model").read_text() == "2"
  assert a.exists()  # another key's models stay while recently used ...
  os.utime(a / "DONE", (0, 0))
  cached_build("m", build, key="k3")
  assert not a.exists() and b.exists()  # ... and go once unused for a day


def test_the_extra_files_are_part_of_the_key(tmp_path, monkeypatch):
  monkeypatch.setenv("PRM_JAX_TEST_CACHE", str(tmp_path / "cache"))
  src = tmp_path / "fixture.py"
  src.write_text("A = 1\n")
  a = cached_build("e", lambda d: None, extra=[src])
  src.write_text("A = 2\n")
  assert cached_build("e", lambda d: None, extra=[src]) != a


@pytest.mark.skipif("MUTANT_UNDER_TEST" in os.environ, reason="mutmut: no cache")
def test_the_session_runs_come_from_the_cache(runs):
  """The shared generator and PRM were trained by this key's build (or an earlier session's), and
  asking again returns them without training."""
  d = pathlib.Path(runs["sft"]).parent
  assert d.parent == conftest.model_cache_dir() and d.name.startswith("runs-")
  assert (d / "DONE").exists()

  def boom(_):
    raise AssertionError("retrained")

  assert cached_build("runs", boom) == d
