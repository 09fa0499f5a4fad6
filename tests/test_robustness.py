"""Nothing lost, nothing hung (issue 19): a run directory is a contract `train` checks before it
writes; `sample` / `score` write their output exactly once (a lock, resume by record identity, a
torn tail cut and written again); every skipped row is counted and every NaN says why; grading
bounds 1 MB adversarial answers. The CLI is run as a subprocess where it is the subject; real
files and real locks throughout. Models come from the session fixture `runs` (conftest.py)."""

import hashlib
import json
import math
import os
import pathlib
import re
import shutil
import signal
import subprocess
import sys
import time

import pytest

from prm_jax.records import DataError, Solution, read_solutions, write_jsonl
from tests.conftest import ROOT, one_digit_sums, tiny_run_config

PRM_JAX = str(pathlib.Path(sys.executable).parent / "prm-jax")


def cli(*args, env=None, timeout=300):
  full = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1",
              JAX_PLATFORMS="cpu", **(env or {}))
  return subprocess.run([PRM_JAX, *args], capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, env=full)


def one_line_error(p, code=1) -> str:
  lines = p.stderr.strip().splitlines()
  assert p.returncode == code and len(lines) == 1 and "Traceback" not in p.stderr, (
      p.returncode, p.stderr[-3000:])
  return lines[0]


def tree_digest(path) -> dict:
  """Every file under `path` and its content hash: "unchanged" means byte for byte."""
  out = {}
  for root, _, files in os.walk(path):
    for f in files:
      full = os.path.join(root, f)
      out[os.path.relpath(full, path)] = hashlib.sha256(open(full, "rb").read()).hexdigest()
  return out


# ----------------------------------------------------------------------------- train: the workdir

TRAIN_FLAGS = ("--config.model.vocab_size=320", "--config.model.dim=32",
               "--config.model.num_layers=1", "--config.model.mlp_dim=64",
               "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
               "--config.model.max_seq_len=64", "--config.train.batch_size=16",
               "--config.train.seq_len=64", "--config.train.steps=70")


def fixture_train(workdir, runs, task="sft", steps=60, records=None, tokenizer=None, **changes):
  """`train` on the fixture run's own config (what `runs` trained with), with `changes`."""
  from prm_jax.tokenizer import load_tokenizer
  from prm_jax.train.loop import train
  c = tiny_run_config(workdir, task, steps)
  for key, value in changes.items():
    section, field = key.split("__")
    c[section][field] = value
  return train(c, records=records or one_digit_sums(300, 11),
               tokenizer=tokenizer or load_tokenizer(runs["tokenizer"]))


def test_train_refuses_another_run_in_its_workdir_and_changes_nothing(runs, tmp_path):
  gen = tmp_path / "home" / "gen"
  shutil.copytree(runs["sft"], gen)
  before = tree_digest(gen)
  # the issue's reproduction, on the command line: ~ and $VARS expand, the refusal is one line
  p = cli("train", "--config.workdir=~/gen", "--config.train.task=prm", "--config.train.data=$DATA",
          f"--config.tokenizer.path={runs['tokenizer']}", *TRAIN_FLAGS,
          env={"HOME": str(tmp_path / "home"), "DATA": runs["train_data"]})
  assert one_line_error(p).endswith(
      f"error: {gen} holds a sft run; this is prm: choose another --config.workdir")

  with pytest.raises(ValueError, match=r"model\.num_layers 1 != 2 \(its config\.json vs this"):
    fixture_train(gen, runs, model__num_layers=2)
  with pytest.raises(ValueError, match=r"train\.seq_len 64 != 48"):
    fixture_train(gen, runs, train__seq_len=48)
  with pytest.raises(ValueError, match=r"format\.preset 'newline' != 'double_newline'"):
    fixture_train(gen, runs, format__preset="double_newline")
  from prm_jax.tokenizer import train_sentencepiece
  other = train_sentencepiece(["Add.\n" + s.text for s in one_digit_sums(300, 5)], vocab_size=290)
  with pytest.raises(ValueError, match="another tokenizer than its tokenizer.model"):
    fixture_train(gen, runs, tokenizer=other)
  assert tree_digest(gen) == before  # the generator is untouched, so it still opens

  # final params/ and no checkpoint to resume from: training again would replace them
  done = tmp_path / "done"
  shutil.copytree(runs["sft"], done)
  shutil.rmtree(done / "checkpoints")
  before = tree_digest(done)
  with pytest.raises(ValueError, match="holds final params/ but no checkpoint to resume from"):
    fixture_train(done, runs, steps=80)
  # a folder with a run's files but no config.json was not written by training
  foreign = tmp_path / "foreign"
  shutil.copytree(runs["sft"], foreign)
  os.remove(foreign / "config.json")
  with pytest.raises(ValueError, match="holds params, checkpoints, metrics.jsonl, summary.json, "
                                       "tb but no config.json"):
    fixture_train(foreign, runs, steps=80)
  assert tree_digest(done) == before and (foreign / "params").is_dir()
  os.symlink(tmp_path / "nowhere", tmp_path / "dangling")
  with pytest.raises(ValueError, match="is a symlink to .*nowhere, which does not exist"):
    fixture_train(tmp_path / "dangling", runs)
  assert not (tmp_path / "nowhere").exists()


def test_train_refuses_a_config_json_that_no_prm_jax_run_wrote(runs, tmp_path):
  """A Hugging Face folder (or any JSON) as the workdir: one line naming the file, nothing
  written (before: "holds a None run", or an AttributeError on a JSON list)."""
  for name, content in [("hf", {"architectures": ["LlamaForCausalLM"], "hidden_size": 32}),
                        ("list", [1, 2]), ("no-model", {"train": {"task": "sft"}})]:
    work = tmp_path / name
    work.mkdir()
    (work / "config.json").write_text(json.dumps(content))
    before = tree_digest(work)
    with pytest.raises(ValueError, match=rf"^{re.escape(str(work / 'config.json'))} is not a "
                                         r"prm_jax run's config \(no train and model sections\)"):
      fixture_train(work, runs)
    assert tree_digest(work) == before


@pytest.mark.slow
def test_a_second_train_into_a_workdir_in_use_fails_at_once(runs, tmp_path):
  """Two real `prm-jax train` processes on one workdir: the second fails in one line naming the
  first (its pid), writes nothing; the first trains to the end untouched."""
  work = tmp_path / "run"
  flags = ("train", f"--config.workdir={work}", "--config.train.task=sft",
           f"--config.train.data={runs['train_data']}",
           f"--config.tokenizer.path={runs['tokenizer']}", *TRAIN_FLAGS)
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  first = subprocess.Popen([PRM_JAX, *flags, "--config.train.steps=200"], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
  try:
    deadline = time.time() + 240
    while not (work / ".lock").exists() and time.time() < deadline and first.poll() is None:
      time.sleep(0.2)
    assert (work / ".lock").exists(), first.stdout.read() if first.poll() is not None else ""
    before = sorted(os.listdir(work))
    line = one_line_error(cli(*flags))
    assert f"{work} is being written by pid {first.pid} on host " in line, line
    assert line.endswith("choose another --config.workdir")
    assert first.poll() is None or first.returncode == 0  # the first is not disturbed
    out, _ = first.communicate(timeout=600)
  finally:
    if first.poll() is None:
      first.kill()
  assert first.returncode == 0, out[-3000:]
  steps = [json.loads(l)["step"] for l in (work / "metrics.jsonl").read_text().splitlines()]
  assert steps == sorted(set(steps)) and steps[-1] == 200
  assert set(before) - {".lock"} <= set(os.listdir(work)) and not (work / ".lock").exists()


@pytest.mark.slow
def test_train_resumes_the_same_run_through_a_symlink_and_keeps_its_metrics(runs, tmp_path):
  real = tmp_path / "real"
  shutil.copytree(runs["sft"], real)
  os.symlink(real, tmp_path / "link")
  first = (real / "metrics.jsonl").read_text()
  # a longer run at another learning rate, logging more often: a resume, not another run
  s = fixture_train(tmp_path / "link", runs, steps=62, train__learning_rate=5e-3,
                    train__log_every=1)
  assert s["step"] == 62 and not s.get("already_trained")
  assert [h["step"] for h in s["history"]] == [61, 62]  # from the step-60 checkpoint
  metrics = (real / "metrics.jsonl").read_text()
  assert metrics.startswith(first) and [json.loads(l)["step"] for l in metrics.splitlines()] == [
      60, 61, 62]
  assert json.loads((real / "config.json").read_text())["train"]["steps"] == 62
  assert not (real / ".lock").exists()
  before = tree_digest(real)
  again = fixture_train(real, runs, steps=62)  # trained that far already: nothing is written
  assert again["already_trained"] and again["step"] == 62 and tree_digest(real) == before


def test_unset_variables_in_paths_are_refused_on_the_command_line(monkeypatch):
  from prm_jax import cli as cli_mod
  monkeypatch.delenv("PRM_JAX_NOPE", raising=False)
  monkeypatch.setenv("PRM_JAX_OUT", "/tmp/prm_jax_out")
  monkeypatch.setenv("HOME", "/tmp/prm_jax_home")
  cmd = cli_mod.COMMANDS["score"]
  config, args = cli_mod.parse(cmd, ["--checkpoint=hf:~/m", "--input=$PRM_JAX_OUT/in.jsonl",
                                     "--output=${PRM_JAX_OUT}/o.jsonl"])
  assert (args.checkpoint, args.input, args.output) == (
      "hf:/tmp/prm_jax_home/m", "/tmp/prm_jax_out/in.jsonl", "/tmp/prm_jax_out/o.jsonl")
  config, _ = cli_mod.parse(cli_mod.COMMANDS["train"], ["--config.workdir=~/runs/x",
                                                        "--config.train.data=tfds:prm800k/x"])
  assert config.workdir == "/tmp/prm_jax_home/runs/x" and config.train.data == "tfds:prm800k/x"
  with pytest.raises(cli_mod.UsageError, match=r"--output='\$PRM_JAX_NOPE/o.jsonl': "
                                               r"\$PRM_JAX_NOPE is not set"):
    cli_mod.parse(cmd, ["--checkpoint=x", "--input=y", "--output=$PRM_JAX_NOPE/o.jsonl"])
  with pytest.raises(cli_mod.UsageError, match=r"config.workdir='~no_such_user_xyz/r': no user"):
    cli_mod.parse(cli_mod.COMMANDS["train"], ["--config.workdir=~no_such_user_xyz/r"])


# ----------------------------------------------------------------------------- the output lock

def test_writer_lock_names_its_holder_and_is_gone_after_release(tmp_path):
  from prm_jax.paths import LockBusy, output_lock
  out = str(tmp_path / "o.jsonl")
  os.symlink(out, tmp_path / "alias.jsonl")
  with output_lock(out):
    with pytest.raises(LockBusy, match=rf"is being written by pid {os.getpid()} on host "):
      output_lock(str(tmp_path / "alias.jsonl")).acquire()  # one lock, whatever the name
  assert not os.path.exists(out + ".lock")
  with output_lock(out):
    pass


HOLD = ("import sys, time; from prm_jax.paths import output_lock; output_lock(sys.argv[1]).acquire(); "
        "print('locked', flush=True); time.sleep(600)")


@pytest.mark.slow
def test_a_second_score_fails_at_once_and_a_killed_holder_blocks_nothing(runs, tmp_path):
  data = tmp_path / "in.jsonl"
  write_jsonl(str(data), list(read_solutions(runs["solutions"]))[:48])
  out = tmp_path / "scored.jsonl"
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
  try:
    assert holder.stdout.readline().strip() == "locked"
    t = time.perf_counter()
    p = cli("score", f"--checkpoint={runs['prm']}", f"--input={data}", f"--output={out}",
            "--config.score.seq_len=64", "--config.score.rows=8", "--config.score.chunk=16")
    took = time.perf_counter() - t
    line = one_line_error(p)
    assert f"{out} is being written by pid {holder.pid} on host " in line
    assert line.endswith("wait for it to finish or choose another --output")
    assert not out.exists() and took < 60
  finally:
    holder.send_signal(signal.SIGKILL)  # dies holding it: the kernel drops the flock
    holder.wait()
  assert (tmp_path / "scored.jsonl.lock").exists()  # left behind, and harmless
  p = cli("score", f"--checkpoint={runs['prm']}", f"--input={data}", f"--output={out}",
          "--config.score.seq_len=64", "--config.score.rows=8", "--config.score.chunk=16")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "scored 48 solutions" in p.stdout and len(out.read_text().splitlines()) == 48
  assert not (tmp_path / "scored.jsonl.lock").exists()

  # an output written from another input: one line, and the output is left as it was
  foreign = tmp_path / "foreign.jsonl"
  write_jsonl(str(foreign), one_digit_sums(5, 99))
  before = foreign.read_bytes()
  line = one_line_error(cli("score", f"--checkpoint={runs['prm']}", f"--input={data}",
                            f"--output={foreign}", "--config.score.seq_len=64"))
  assert f"{foreign}:1: differs from input row 1 in " in line
  assert line.endswith("it was written from another input; choose another --output")
  assert foreign.read_bytes() == before


def test_a_second_sample_fails_at_once_and_a_foreign_output_is_one_line(runs, tmp_path):
  """`sample` under the same contract as `score`: a second writer of its output fails at once
  naming the holder; an output holding another run's samples is refused and left as it was."""
  problems = tmp_path / "problems.jsonl"
  problems.write_text("".join(open(runs["problems"]).readlines()[:4]))
  out = tmp_path / "samples.jsonl"
  args = ("sample", f"--checkpoint={runs['sft']}", f"--input={problems}", f"--output={out}",
          "--config.sample.n=2", "--config.sample.max_new_tokens=8", "--config.sample.batch_size=8")
  holder = subprocess.Popen([sys.executable, "-c", HOLD, str(out)], stdout=subprocess.PIPE,
                            text=True, cwd=ROOT)
  try:
    assert holder.stdout.readline().strip() == "locked"
    line = one_line_error(cli(*args))
    assert f"{out} is being written by pid {holder.pid} on host " in line
    assert line.endswith("wait for it to finish or choose another --output") and not out.exists()
  finally:
    holder.send_signal(signal.SIGKILL)
    holder.wait()
  p = cli(*args)
  assert p.returncode == 0, p.stderr[-3000:]
  assert len(out.read_text().splitlines()) == 8
  # the same output resumed with another seed: another run's samples
  before = out.read_bytes()
  line = one_line_error(cli(*args, "--config.seed=5"))
  assert f"{out}:1: was sampled with seed 0, this run has config.seed=5" in line, line
  # solutions of other problems (say a scored file) as the output
  foreign = tmp_path / "foreign.jsonl"
  write_jsonl(str(foreign), one_digit_sums(3, 99))
  before_foreign = foreign.read_bytes()
  line = one_line_error(cli(*args[:4], f"--output={foreign}", *args[5:]))
  assert line == (f"prm-jax sample: error: {foreign}:1: holds sample ('t0', None), but this "
                  "run's row 1 is ('q0', 0); it was written from other problems or another n: "
                  "choose another --output"), line
  assert out.read_bytes() == before and foreign.read_bytes() == before_foreign


def test_a_difference_in_a_field_only_the_input_has_is_named():
  from prm_jax.scoring import _difference
  a = Solution("p", "q", ["a"])
  b = Solution("p", "q", ["a"], ground_truth_answer="4")
  assert _difference(a, b) == 'ground_truth_answer (null there, "4" in the input)'
  assert _difference(b, a) == 'ground_truth_answer ("4" there, null in the input)'
  assert _difference(a, a) == "nothing (the rows are the same)"


# ----------------------------------------------------------------------------- resume by identity

class StubScorer:
  """Scores as a pure function of each row (the real scorer's resume is tested byte for byte in
  test_multihost.py): what is under test here is which rows get written."""

  chunk = 4

  def __init__(self):
    import jax
    import numpy as np
    self.mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))
    self.scored = 0

  def score(self, rows):
    import dataclasses
    for s in rows:
      self.scored += 1
      yield dataclasses.replace(s, scores={"prm": len(s.text) / 100})


def test_score_resumes_by_record_identity_and_repairs_a_torn_tail(tmp_path):
  from prm_jax.scoring import score_to_file
  rows = one_digit_sums(10, 3)
  ref = tmp_path / "ref.jsonl"
  r = score_to_file(StubScorer(), rows, str(ref))
  assert r["written"] == 10 and r["repaired_tail_lines"] == 0
  lines = ref.read_bytes().splitlines(keepends=True)
  out = tmp_path / "out.jsonl"

  for tail in (lines[6][:30] + b"\n", lines[6][:30], b"\n", b"\x00\x00\x00\n"):
    out.write_bytes(b"".join(lines[:6]) + tail)  # a line torn by a crash, newline or not
    scorer = StubScorer()
    r = score_to_file(scorer, rows, str(out))
    assert (r["resumed_from"], r["written"], r["repaired_tail_lines"]) == (6, 4, 1), tail
    assert out.read_bytes() == ref.read_bytes() and scorer.scored == 6  # chunk-aligned: 4..9
  r = score_to_file(StubScorer(), rows, str(out))  # run again: complete, nothing written twice
  assert r["written"] == 0 and out.read_bytes() == ref.read_bytes()

  out.write_bytes(b"".join(lines[:3]) + b"{oops\n" + b"".join(lines[4:6]))
  before = out.read_bytes()
  with pytest.raises(DataError, match=r"out.jsonl:4: malformed JSON.*good records follow it"):
    score_to_file(StubScorer(), rows, str(out))
  assert out.read_bytes() == before  # damage is reported, never cut

  other = one_digit_sums(10, 4)
  out.write_bytes(b"".join(lines[:5]))
  with pytest.raises(ValueError, match=r"out.jsonl:1: differs from input row 1 in "):
    score_to_file(StubScorer(), other, str(out))
  with pytest.raises(ValueError, match=r"out.jsonl:5: differs from input row 5 in "):
    score_to_file(StubScorer(), rows[:4] + other[4:], str(out))  # the 5th row is not its own
  with pytest.raises(ValueError, match=r"out.jsonl:4: the output has more rows than the input"):
    score_to_file(StubScorer(), rows[:3], str(out))
  assert out.read_bytes() == b"".join(lines[:5])
  assert not os.path.exists(str(out) + ".lock")


class StubSampler:
  def __init__(self):
    import jax
    import numpy as np
    self.mesh = jax.sharding.Mesh(np.asarray(jax.devices()[:1]), ("data",))

  def iter_batches(self, problems, n, seed, start=0, progress=False):
    jobs = [(p, k) for p in problems for k in range(n)]
    for lo in range(start, len(jobs), 3):
      yield [Solution(p.problem_id, p.problem, [f"{p.problem_id}/{k}/{seed}"],
                      meta={"sample_idx": k, "seed": seed}) for p, k in jobs[lo:lo + 3]]


def test_sample_resumes_only_its_own_rows(tmp_path):
  from prm_jax.records import Problem
  from prm_jax.sampling import sample_to_file
  problems = [Problem(f"q{i}", "Add.") for i in range(4)]
  ref, out = tmp_path / "ref.jsonl", tmp_path / "out.jsonl"
  sample_to_file(StubSampler(), problems, str(ref), 2, 7)
  lines = ref.read_bytes().splitlines(keepends=True)
  out.write_bytes(b"".join(lines[:5]) + lines[5][:20] + b"\n")
  r = sample_to_file(StubSampler(), problems, str(out), 2, 7)
  assert (r["resumed_from"], r["repaired_tail_lines"]) == (5, 1)
  assert out.read_bytes() == ref.read_bytes()
  with pytest.raises(ValueError, match=r"out.jsonl:1: was sampled with seed 7, this run has "
                                       r"config.seed=8"):
    sample_to_file(StubSampler(), problems, str(out), 2, 8)
  with pytest.raises(ValueError, match=r"out.jsonl:3: holds sample \('q1', 0\), but this run's "
                                       r"row 3 is \('q0', 2\)"):
    sample_to_file(StubSampler(), problems, str(out), 3, 7)
  assert out.read_bytes() == ref.read_bytes()


# ----------------------------------------------------------------------------- counted skips, NaN

def test_process_eval_counts_every_skipped_row_and_says_why_auroc_is_nan(tmp_path):
  rows = [Solution(f"p{i}", "x", ["a", "b"], step_labels=[1, 1],
                   scores={"prm": 0.7, "prm_steps": [0.9, 0.8]}) for i in range(12)]
  rows += [Solution("z0", "x", [], step_labels=[], scores={"prm": 0.0, "prm_steps": []}),
           Solution("z1", "x", ["a"], scores={"prm": 0.5, "prm_steps": [0.5]}),
           Solution("z2", "x", ["a"], step_labels=[1])]
  data = tmp_path / "in.jsonl"
  write_jsonl(str(data), rows)
  p = cli("process-eval", f"--input={data}", f"--output={tmp_path / 'eval'}")
  assert p.returncode == 0, p.stderr[-3000:]
  assert ("skipped 3 rows: 1 without steps, 1 without step labels, 1 without scores.prm_steps"
          in p.stdout)
  assert "step AUROC nan (no negative steps)" in p.stdout
  assert "earliest-error F1 nan (no erroneous solutions)" in p.stdout
  r = json.loads((tmp_path / "eval" / "process.json").read_text())
  assert r["skipped"] == {"no_steps": 1, "no_step_labels": 1, "no_step_scores": 1}
  assert r["num_rows"] == 15 and r["step_auroc_reason"] == "no negative steps"
  md = (tmp_path / "eval" / "process.md").read_text()
  assert "| step AUROC | nan (no negative steps) |" in md and "skipped 3 rows" in md

  from prm_jax.evaluation import process_eval
  wrong = [Solution(f"p{i}", "x", ["a"], step_labels=[-1], scores={"prm_steps": [0.2]})
           for i in range(4)]
  r = process_eval(wrong, threshold=0.5)
  assert math.isnan(r["step_auroc"]) and r["step_auroc_reason"] == "no positive steps"
  unlabelled = [Solution("p", "x", ["a"], step_labels=[None], scores={"prm_steps": [0.2]})]
  r = process_eval(unlabelled, threshold=0.5)
  assert r["step_auroc_reason"] == "no labelled steps" and math.isnan(r["calibration"]["ece"])
  with pytest.raises(ValueError, match=r"no solutions with both step_labels and scores.prm_steps "
                                       r"\(skipped 1 rows: 1 without step labels\)"):
    process_eval([Solution("p", "x", ["a"], scores={"prm_steps": [0.2]})])


# ----------------------------------------------------------------------------- bounded grading

def test_best_of_n_over_1mb_adversarial_answers_takes_seconds():
  """Answers are model output: a megabyte of spaces, nested \\text{, power towers, braces. Each
  distinct one took ~6 s to group (C regexes no time limit interrupts) before long answers were
  kept out of normalisation; grouping, pooling and best-of-N now take well under a second each."""
  from prm_jax.evaluation import best_of_n, build_pools, group_answers
  mb = 1 << 20
  adversarial = ["1" + " " * mb + "2", "\\text{" * (mb // 6) + "x" + "}" * (mb // 6),
                 "2" + "^2" * (mb // 2), "2^{" * (mb // 4) + "2" + "}" * (mb // 4),
                 "{" * (mb // 2) + "}" * (mb // 2), "\\frac{1}{2}" * (mb // 11),
                 "\\sqrt{" * (mb // 7), "(" * mb, "9!" * (mb // 2), "\\boxed{" * (mb // 7)]
  t = time.perf_counter()
  groups = group_answers(adversarial + ["2", adversarial[0], "2.0"])
  assert time.perf_counter() - t < 10
  assert groups.tolist() == list(range(11)) + [0, 10]  # equal only to themselves
  sols = [Solution(f"p{i % 3}", "q", ["s"], answer=a, ground_truth_answer="2",
                   scores={"prm": 0.9, "orm": 0.9}) for i, a in enumerate(adversarial)]
  sols += [Solution(f"p{i}", "q", ["s"], answer="2", ground_truth_answer="2",
                    scores={"prm": 0.5, "orm": 0.5}) for i in range(3)]
  t = time.perf_counter()
  r = best_of_n(build_pools(sols), [1, 2, 4], trials=50)
  assert time.perf_counter() - t < 20
  assert r["num_problems"] == 3 and r["methods"]["majority"]["mean"][2] > 0


def test_bon_eval_over_megabyte_answers_finishes_in_seconds(tmp_path):
  """The issue's reproduction end to end: `prm-jax bon-eval` (a subprocess) over samples whose
  answers are a megabyte each (spaces, nested \\text{, power towers, unclosed boxes). Before, one
  such answer did not finish in 60 s; the identical copy of the truth still counts as solved."""
  mb = 1 << 20
  long_truth = "1" * (mb // 4)
  bad = ["1" + " " * mb + "2", "\\text{" * (mb // 6) + "2" + "}" * (mb // 6),
         "2^{" * (mb // 4) + "2" + "}" * (mb // 4), "\\boxed{" * (mb // 7), "2" + " " * mb]
  rows = [Solution(f"p{k}", "q", ["s"], answer=a, ground_truth_answer="2",
                   scores={"prm": 0.9, "orm": 0.9}, meta={"sample_idx": i})
          for k in range(2) for i, a in enumerate(bad)]
  rows += [Solution(f"p{k}", "q", ["s"], answer="2", ground_truth_answer="2",
                    scores={"prm": 0.1, "orm": 0.1}, meta={"sample_idx": len(bad)}) for k in range(2)]
  rows += [Solution("p2", "q", ["s"], answer=a, ground_truth_answer=long_truth,
                    scores={"prm": p, "orm": p}, meta={"sample_idx": i})
           for i, (a, p) in enumerate([(long_truth, 0.8), (long_truth + "1", 0.9)])]
  data = tmp_path / "samples.jsonl"
  write_jsonl(str(data), rows)
  t = time.perf_counter()
  p = cli("bon-eval", f"--input={data}", f"--output={tmp_path / 'bon'}", "--config.eval.n=1,2",
          "--config.eval.trials=50", timeout=120)
  took = time.perf_counter() - t
  assert p.returncode == 0, p.stderr[-3000:]
  assert took < 60, took
  r = json.loads((tmp_path / "bon" / "bon.json").read_text())
  assert r["num_problems"] == 3
  # right answers: "2" (prm 0.1) and "2" + a megabyte of spaces (0.9, the same answer stripped)
  # among four wrong at 0.9 in p0 and p1 (AUROC (4 ties / 2) / 8 = 0.25); for p2 the megabyte-long
  # copy of its truth (0.8) below a wrong one (0.9): 0. Were the long ones never right, p2 would
  # have no right answer and p0, p1 would score 0.
  auroc = r["within_problem_auroc"]["prm"]
  assert auroc["problems"] == 3 and auroc["mean"] == pytest.approx((0.25 + 0.25 + 0) / 3)


def test_bon_eval_says_when_its_input_holds_samples_twice(tmp_path):
  """The issue's doubled output (two writers on one file, before the lock): bon-eval counted the
  doubled pools without a word. Now it says how many rows repeat a sample."""
  from prm_jax.evaluation import repeated_samples, run_bon_eval
  rows = [Solution(f"q{i}", "x", ["a"], answer=str(k % 2), ground_truth_answer="1",
                   is_correct=k % 2 == 1, scores={"prm": 0.1 * k}, meta={"sample_idx": k, "seed": 0})
          for i in range(3) for k in range(4)]
  assert repeated_samples(rows) == 0 and repeated_samples(rows[:1] + one_digit_sums(3, 1)) == 0
  r = run_bon_eval(rows + rows[:5], [1, 2], 10, 0, str(tmp_path / "bon"))
  assert r["repeated_samples"] == 5
  assert "Warning: 5 rows repeat an earlier row's" in (tmp_path / "bon" / "bon.md").read_text()
