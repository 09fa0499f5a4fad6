"""Eight virtual CPU devices for every test (scripts/test.sh sets this too; here for bare pytest)."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import collections  # noqa: E402
import contextlib  # noqa: E402
import functools  # noqa: E402
import hashlib  # noqa: E402
import pathlib  # noqa: E402
import shutil  # noqa: E402
import time  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
HF_FIXTURES = FIXTURES / "hf"

# The shared tiny models are trained once and kept on disk between sessions, keyed by a hash of
# everything that trains them: a stale hash retrains. PRM_JAX_TEST_CACHE moves the cache; CI starts
# from a fresh clone, so from an empty cache.
CACHE_SOURCES = ("prm_jax/**/*.py", "configs/*.py", "tests/conftest.py")


def model_cache_key(root=ROOT) -> str:
  """sha256 over the paths and contents of the files that train the cached test models."""
  h = hashlib.sha256()
  root = pathlib.Path(root)
  files = sorted({f for pat in CACHE_SOURCES for f in root.glob(pat) if f.is_file()})
  for f in files:
    h.update(str(f.relative_to(root)).encode() + b"\0" + f.read_bytes() + b"\0")
  return h.hexdigest()[:16]


@functools.cache
def _session_key() -> str:
  """The key of the code this session imported: computed once, so an edit mid-session neither
  retrains nor removes what the session uses."""
  return model_cache_key()


def model_cache_dir() -> pathlib.Path:
  default = ROOT / ".pytest_cache" / "prm_jax_models"  # git-ignored; `pytest --cache-clear` empties it
  return pathlib.Path(os.environ.get("PRM_JAX_TEST_CACHE") or default)


@contextlib.contextmanager
def _locked(path: pathlib.Path):
  import fcntl
  path.parent.mkdir(parents=True, exist_ok=True)
  with open(path, "w") as f:
    fcntl.flock(f, fcntl.LOCK_EX)
    try:
      yield
    finally:
      fcntl.flock(f, fcntl.LOCK_UN)


def cached_build(name: str, build, extra=(), key: str | None = None) -> pathlib.Path:
  """The directory `<cache>/<name>-<key>`, filled by `build(directory)` unless an earlier session
  finished it. A file lock serialises concurrent pytest processes; the directory counts only once
  its DONE file exists, so an interrupted build is thrown away and redone; other keys' models are
removed once unused for a day. (Built in place rather
  than in a temp dir and renamed: runs record their absolute paths, which a rename would break.)"""
  if "MUTANT_UNDER_TEST" in os.environ:  # mutmut: a mutant must train its own models
    import tempfile
    out = pathlib.Path(tempfile.mkdtemp(prefix=f"{name}-"))
    build(out)
    return out
  if key is None:
    h = hashlib.sha256(_session_key().encode())
    for f in extra:  # e.g. the test module whose fixture trains the model
      h.update(pathlib.Path(f).read_bytes())
    key = h.hexdigest()[:16]
  out = model_cache_dir() / f"{name}-{key}"
  done = out / "DONE"
  if done.exists():
    os.utime(done)
    return out
  with _locked(model_cache_dir() / f".{name}.lock"):
    if done.exists():
      return out
    shutil.rmtree(out, ignore_errors=True)  # a half-built one
    for stale in model_cache_dir().glob(f"{name}-*"):
      # other keys' models, once unused for a day (another checkout may share PRM_JAX_TEST_CACHE)
      if not (stale / "DONE").exists() or time.time() - (stale / "DONE").stat().st_mtime > 86400:
        shutil.rmtree(stale, ignore_errors=True)
    out.mkdir(parents=True)
    build(out)
    tmp = out / "DONE.tmp"
    tmp.write_text(key + "\n")
    tmp.rename(done)
  return out


@functools.cache
def _jitted_call():
  from flax import nnx
  return nnx.jit(lambda model, *args: model(*args))


def forward(model, *args):
  """`model(*args)` as one jitted program, compiled once per model structure and input shape: how
  tests run a forward pass (run eagerly, every operation is its own XLA compile per shape)."""
  return _jitted_call()(model, *args)


@contextlib.contextmanager
def compiled_programs():
  """The names of the XLA programs compiled inside the block (a list, filled as they compile)."""
  from jax import monitoring
  names = []

  def on_compile(event, seconds, **kw):
    if event == "/jax/core/compile/backend_compile_duration":
      names.append(kw.get("fun_name", "?"))

  monitoring.register_event_duration_secs_listener(on_compile)
  try:
    yield names
  finally:
    monitoring.unregister_event_duration_listener(on_compile)


@pytest.fixture(scope="session")
def tiny_cfg():
  from prm_jax.model import ModelConfig
  # Every sharded dimension divisible by 2 and 4, so all test meshes really split it.
  return ModelConfig(vocab_size=128, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                     mlp_dim=128)


def one_digit_sums(n: int, seed: int):
  """A tiny step-labelled task for trainer tests: one-digit sums, right (+1), off by one (-1), or a
  neutral remark (0). Labels stop at the first wrong step, as in PRM800K."""
  import numpy as np
  from prm_jax.records import Solution
  rng = np.random.default_rng(seed)
  out = []
  for i in range(n):
    steps, labels = [], []
    for _ in range(int(rng.integers(2, 5))):
      kind = rng.choice(["right", "wrong", "neutral"], p=[0.55, 0.3, 0.15])
      a, b = (int(x) for x in rng.integers(0, 5, size=2))
      if kind == "neutral":
        steps.append("so far so good")
        labels.append(0)
      else:
        steps.append(f"{a}+{b}={a + b + (kind == 'wrong')}")
        labels.append(1 if kind == "right" else -1)
      if labels[-1] == -1:
        break
    out.append(Solution(problem_id=f"t{i}", problem="Add.", steps=steps, step_labels=labels,
                        is_correct=-1 not in labels))
  return out


def tiny_train_config(workdir, task: str, steps: int, **train):
  """A 2-layer, 64-wide model on 128-token rows: the tests' trainable size."""
  from prm_jax.configs import base
  c = base.get_config("tiny")
  c.workdir = str(workdir)
  c.model.update(dict(vocab_size=512, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      mlp_dim=128, max_seq_len=128))
  c.train.update(dict(task=task, steps=steps, batch_size=16, seq_len=128, learning_rate=3e-3,
                      warmup_steps=20, weight_decay=0.0, log_every=steps, save_every=steps))
  c.train.update(train)
  c.sample.update(dict(batch_size=64, max_new_tokens=48, temperature=0.7))
  c.score.update(dict(seq_len=128, rows=8, chunk=256))
  return c


@pytest.fixture(scope="session")
def synthetic_generator():
  """A generator SFT'd on reference solutions of level-1 synthetic problems (right often, not
  always), trained once per session: (workdir, tokenizer, training problems)."""
  from prm_jax.data import synthetic
  from prm_jax.tokenizer import SentencePieceTokenizer, train_sentencepiece
  from prm_jax.train.loop import train
  probs = synthetic.make_problems(1500, 4, levels=(1,))

  def build(root):
    refs = [synthetic.reference_solution(p) for p in probs]
    tok = train_sentencepiece([s.problem + "\n" + s.text for s in refs[:300]], vocab_size=400,
                              path=str(root / "tok.model"))
    train(tiny_train_config(root / "sft", "sft", 500), records=refs, tokenizer=tok)

  root = cached_build("synthetic_generator", build)
  return str(root / "sft"), SentencePieceTokenizer.load(str(root / "tok.model")), probs


def tiny_run_config(workdir, task: str, steps: int = 60):
  """The shared tiny runs' config: 1 layer, 32 wide, 64-token rows."""
  from prm_jax.configs import base
  c = base.get_config("tiny")
  c.workdir = str(workdir)
  c.model.update(dict(vocab_size=320, dim=32, num_layers=1, num_heads=2, num_kv_heads=1,
                      mlp_dim=64, max_seq_len=64))
  c.train.update(dict(task=task, steps=steps, batch_size=16, seq_len=64, learning_rate=1e-2,
                      warmup_steps=5, log_every=steps, save_every=steps))
  return c


@pytest.fixture(scope="session")
def runs():
  """A tiny generator (SFT) and PRM trained once per session on the one-digit-sums step task, with
  its data files: {"sft", "prm", "problems", "solutions", "train_data", "tokenizer"} -> path."""
  import json
  from prm_jax.records import write_jsonl
  from prm_jax.tokenizer import train_sentencepiece
  from prm_jax.train.loop import train

  def build(root):
    sols = one_digit_sums(300, 11)
    tok = train_sentencepiece(["Add.\n" + s.text for s in sols], vocab_size=300,
                              path=str(root / "tok.model"))
    write_jsonl(str(root / "train.jsonl"), sols)
    for task in ("sft", "prm"):
      train(tiny_run_config(root / task, task), records=sols, tokenizer=tok)
    (root / "problems.jsonl").write_text("".join(
        json.dumps({"problem_id": f"q{i}", "problem": "Add.", "answer": str(i % 9)}) + "\n"
        for i in range(40)))
    write_jsonl(str(root / "solutions.jsonl"), one_digit_sums(2000, 12))  # long enough to kill mid-run

  root = cached_build("runs", build)
  return {"tokenizer": str(root / "tok.model"), "train_data": str(root / "train.jsonl"),
          "sft": str(root / "sft"), "prm": str(root / "prm"),
          "problems": str(root / "problems.jsonl"), "solutions": str(root / "solutions.jsonl")}


# ----------------------------------------------------------------------------- compile report
# How many XLA programs each test module compiled and how long that took, printed at the end of a
# run (`PRM_JAX_COMPILES=0` hides it). A forward pass that is jitted again in every test instead of
# once per module shows up as one function compiled many times.
_COMPILES: dict[str, collections.Counter] = {}
_COMPILE_SECONDS: dict[str, float] = {}
_MODULE: list = [None]


def _on_compile_event(event: str, seconds: float, **kw) -> None:
  if event == "/jax/core/compile/backend_compile_duration" and _MODULE[0]:
    _COMPILES.setdefault(_MODULE[0], collections.Counter())[kw.get("fun_name", "?")] += 1
    _COMPILE_SECONDS[_MODULE[0]] = _COMPILE_SECONDS.get(_MODULE[0], 0.0) + seconds


def pytest_sessionstart(session):
  from jax import monitoring
  monitoring.register_event_duration_secs_listener(_on_compile_event)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
  _MODULE[0] = item.nodeid.split("::")[0]  # fixtures set up for the item count as its module's
  yield


def pytest_sessionfinish(session):
  worker_output = getattr(session.config, "workeroutput", None)
  if worker_output is not None:  # a pytest-xdist worker: hand its counts to the controller
    worker_output["prm_jax_compiles"] = {m: dict(c) for m, c in _COMPILES.items()}
    worker_output["prm_jax_compile_seconds"] = dict(_COMPILE_SECONDS)


@pytest.hookimpl(optionalhook=True)
def pytest_testnodedown(node, error):
  """pytest-xdist's controller: add up what each worker compiled (loadfile keeps a module on one
  worker, so per-module counts are what that worker saw)."""
  out = getattr(node, "workeroutput", {})
  for module, counts in out.get("prm_jax_compiles", {}).items():
    _COMPILES.setdefault(module, collections.Counter()).update(counts)
  for module, seconds in out.get("prm_jax_compile_seconds", {}).items():
    _COMPILE_SECONDS[module] = _COMPILE_SECONDS.get(module, 0.0) + seconds


def pytest_terminal_summary(terminalreporter):
  if not _COMPILES or os.environ.get("PRM_JAX_COMPILES") == "0":
    return
  w = terminalreporter
  w.section("JAX compiles per test module (the 12 slowest to compile)")
  for module in sorted(_COMPILE_SECONDS, key=_COMPILE_SECONDS.get, reverse=True)[:12]:
    counts = _COMPILES[module]
    top = ", ".join(f"{n} x{c}" for n, c in counts.most_common(3))
    w.write_line(f"{_COMPILE_SECONDS[module]:7.1f}s {sum(counts.values()):5d} compiles  {module}: "
                 f"{top}")
