"""Eight virtual CPU devices for every test (scripts/test.sh sets this too; here for bare pytest)."""

import os

if "xla_force_host_platform_device_count" not in os.environ.get("XLA_FLAGS", ""):
  os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                             " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")

import pathlib  # noqa: E402

import pytest  # noqa: E402

ROOT = pathlib.Path(__file__).resolve().parents[1]
FIXTURES = ROOT / "tests" / "fixtures"
HF_FIXTURES = FIXTURES / "hf"


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
def synthetic_generator(tmp_path_factory):
  """A generator SFT'd on reference solutions of level-1 synthetic problems (right often, not
  always), trained once per session: (workdir, tokenizer, training problems)."""
  from prm_jax.data import synthetic
  from prm_jax.tokenizer import train_sentencepiece
  from prm_jax.train.loop import train
  probs = synthetic.make_problems(1500, 4, levels=(1,))
  refs = [synthetic.reference_solution(p) for p in probs]
  tok = train_sentencepiece([s.problem + "\n" + s.text for s in refs[:300]], vocab_size=400)
  workdir = tmp_path_factory.mktemp("synthetic") / "sft"
  train(tiny_train_config(workdir, "sft", 500), records=refs, tokenizer=tok)
  return str(workdir), tok, probs


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
def runs(tmp_path_factory):
  """A tiny generator (SFT) and PRM trained once per session on the one-digit-sums step task, with
  its data files: {"sft", "prm", "problems", "solutions", "train_data", "tokenizer"} -> path."""
  import json
  from prm_jax.records import write_jsonl
  from prm_jax.tokenizer import train_sentencepiece
  from prm_jax.train.loop import train
  root = tmp_path_factory.mktemp("runs")
  sols = one_digit_sums(300, 11)
  tok = train_sentencepiece(["Add.\n" + s.text for s in sols], vocab_size=300,
                            path=str(root / "tok.model"))
  out = {"tokenizer": str(root / "tok.model"), "train_data": str(root / "train.jsonl")}
  write_jsonl(out["train_data"], sols)
  for task in ("sft", "prm"):
    train(tiny_run_config(root / task, task), records=sols, tokenizer=tok)
    out[task] = str(root / task)
  problems = root / "problems.jsonl"
  problems.write_text("".join(json.dumps({"problem_id": f"q{i}", "problem": "Add.",
                                          "answer": str(i % 9)}) + "\n" for i in range(40)))
  out["problems"] = str(problems)
  solutions = root / "solutions.jsonl"
  write_jsonl(str(solutions), one_digit_sums(2000, 12))  # long enough to kill mid-run
  out["solutions"] = str(solutions)
  return out
