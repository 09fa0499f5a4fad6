"""The `prm-jax` console script, run as a real subprocess with absl config flags."""

import json
import os
import pathlib
import subprocess
import sys

from tests.conftest import ROOT

PRM_JAX = str(pathlib.Path(sys.executable).parent / "prm-jax")


def run(*args, timeout=600):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=4")
  return subprocess.run([PRM_JAX, *args], capture_output=True, text=True, timeout=timeout,
                        cwd=ROOT, env=env)


def test_describe_prints_rules_applied_to_a_1b_config():
  p = run("describe", "--config=configs/base.py:1b", "--config.mesh.data=1",
          "--config.mesh.fsdp=2", "--config.mesh.tensor=2")
  assert p.returncode == 0, p.stderr[-3000:]
  assert "1235.8M parameters" in p.stdout
  line = next(l for l in p.stdout.splitlines() if "layers/attn/q_proj" in l)
  assert "(16, 2048, 32, 64)" in line and "P(None, 'fsdp', 'tensor')" in line


def test_bad_command_and_bad_override_fail_clearly():
  p = run("trian")
  assert p.returncode == 2 and "unknown command 'trian'" in p.stderr and "demo" in p.stderr
  p = run("describe", "--config.model.no_such_field=3")
  assert p.returncode != 0 and "no_such_field" in p.stderr
  p = run("describe", "--config.mesh.data=3")
  assert p.returncode == 1 and "needs 3 devices, but 4 are available" in p.stderr
  assert "Traceback" not in p.stderr


def test_convert_build_tfds_and_train_tokenizer(tmp_path):
  src = ROOT / "tests" / "fixtures" / "prm800k" / "phase2_train.thirdparty_examples.jsonl"
  out = tmp_path / "sol.jsonl"
  p = run("convert", f"--input={src}", f"--output={out}", "--config.data.expand_alternatives=True")
  assert p.returncode == 0, p.stderr[-2000:]
  assert "wrote 40 records" in p.stdout and len(out.read_text().splitlines()) == 40

  bad = tmp_path / "bad.jsonl"
  bad.write_bytes(out.read_bytes() + b'{"problem_id": 1,\n' + b"\xff\xfe\n")
  p = run("convert", f"--input={bad}", f"--output={tmp_path / 'x.jsonl'}")
  assert p.returncode == 1 and f"{bad}:41: malformed JSON" in p.stderr and "Traceback" not in p.stderr
  assert not (tmp_path / "x.jsonl").exists()  # nothing half-written
  p = run("convert", f"--input={bad}", f"--output={tmp_path / 'x.jsonl'}",
          "--config.data.skip_invalid=True")
  assert p.returncode == 0 and "skipped 2 invalid line(s)" in p.stderr
  assert "wrote 40 records" in p.stdout

  manual = tmp_path / "manual"
  manual.mkdir()
  (manual / "phase2_train.jsonl").write_bytes(src.read_bytes())
  p = run("build-tfds", "--config.data.dataset=prm800k", f"--input={manual}",
          f"--output={tmp_path / 'tfds'}")
  assert p.returncode == 0, p.stderr[-2000:]
  assert "prm800k/phase2_train: 9 examples" in p.stdout

  model = tmp_path / "tok.model"
  p = run("train-tokenizer", f"--input={out}", f"--output={model}",
          "--config.tokenizer.vocab_size=400")
  assert p.returncode == 0, p.stderr[-2000:]
  assert model.exists() and "400 pieces" in p.stdout
  p = run("convert", f"--input={src}")
  assert p.returncode == 2 and p.stderr == "prm-jax convert: error: missing --output\n"


def one_line_error(p, code=1):
  """A user error: exit `code`, exactly one line on stderr, no traceback."""
  lines = p.stderr.strip().splitlines()
  assert p.returncode == code and len(lines) == 1 and "Traceback" not in p.stderr, (
      p.returncode, p.stderr[-2000:])
  return lines[0]


def test_help_shows_the_commands_flags_and_config_fields():
  for flag in ("--help", "-h"):
    p = run("train", flag)
    assert p.returncode == 0 and p.stderr == "", p.stderr
    assert "usage: prm-jax train" in p.stdout and "train.steps = 1000" in p.stdout
    assert "mesh.fsdp = 1" in p.stdout and "--checkpoint" not in p.stdout
  p = run("sample", "-h")
  assert p.returncode == 0
  for text in ("--checkpoint", "--input", "--output", "(required)", "sample.n = 1",
               "sample.temperature = 1.0", "--coordinator", "PRM_JAX_DEBUG"):
    assert text in p.stdout, text
  assert "train.steps" not in p.stdout  # only the sections sample reads
  p = run("--help")
  assert p.returncode == 0 and all(c in p.stdout for c in ("sample", "score", "active-learn"))


def test_flag_and_config_mistakes_are_one_line_naming_the_thing(tmp_path):
  line = one_line_error(run("train", "--config.train.stepz=5"), 2)
  assert "unknown config field 'train.stepz' (did you mean train.steps" in line
  line = one_line_error(run("train", "--config.train.steps=abc"), 2)
  assert "--config.train.steps=abc" in line and "invalid literal" in line
  line = one_line_error(run("train", "--task=prm"), 2)
  assert line.endswith("unknown flag --task; it is a config field: --config.train.task=...")
  line = one_line_error(run("sample", "--n=4"), 2)
  assert "--config.sample.n=..." in line
  line = one_line_error(run("score", "--inptu=x"), 2)
  assert "unknown flag --inptu; did you mean --input?" in line
  line = one_line_error(run("sample", "--checkpoint"), 2)
  assert "--checkpoint needs a value" in line
  line = one_line_error(run("bon-eval", "--input=x.jsonl"), 2)
  assert line == "prm-jax bon-eval: error: missing --output"
  line = one_line_error(run("describe", "--config=configs/nope.py"), 2)
  assert "configs/nope.py" in line


def test_values_are_validated_where_they_are_parsed(tmp_path):
  scored = tmp_path / "s.jsonl"
  scored.write_text(json.dumps({"problem_id": "a", "problem": "p", "steps": ["x"], "answer": "1",
                                "ground_truth_answer": "1", "is_correct": True,
                                "scores": {"prm": 0.5}}) + "\n")
  for n in ("-1", "abc", "1,,0"):
    line = one_line_error(run("bon-eval", f"--input={scored}", f"--output={tmp_path / 'o'}",
                              f"--config.eval.n={n}"))
    assert "config.eval.n=" in line and "integers >= 1" in line
  line = one_line_error(run("sample", "--checkpoint=x", "--input=y", "--output=z",
                            "--config.sample.n=-2"))
  assert "config.sample.n=-2 must be an integer >= 1" in line
  line = one_line_error(run("process-eval", f"--input={scored}", f"--output={tmp_path / 'o'}",
                            "--config.eval.dev_fraction=1.5"))
  assert "config.eval.dev_fraction=1.5 must be in (0, 1)" in line


def test_path_and_data_errors_are_one_line(tmp_path, runs):
  line = one_line_error(run("score", "--checkpoint=/no/such/run", f"--input={runs['solutions']}",
                            f"--output={tmp_path / 'o.jsonl'}"))
  assert "/no/such/run is not a prm_jax run" in line
  blocker = tmp_path / "a_file"
  blocker.write_text("")
  line = one_line_error(run("score", f"--checkpoint={runs['prm']}", f"--input={runs['solutions']}",
                            f"--output={blocker / 'o.jsonl'}"))
  assert str(blocker) in line  # its parent is a file: the output cannot be written
  empty = tmp_path / "empty.jsonl"
  empty.write_text("")
  line = one_line_error(run("train", f"--config.workdir={tmp_path / 'w'}",
                            f"--config.train.data={empty}"))
  assert f"training data {empty} holds no records" in line
  line = one_line_error(run("sample", f"--checkpoint={runs['prm']}",
                            f"--input={runs['problems']}", f"--output={tmp_path / 'x.jsonl'}"))
  assert "holds a 'prm' model; sampling needs 'sft'" in line


def test_ctrl_c_is_one_line_and_exit_130(tmp_path, runs):
  import signal
  import time
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1")
  p = subprocess.Popen([PRM_JAX, "train", f"--config.workdir={tmp_path / 'w'}",
                        f"--config.train.data={runs['train_data']}",
                        f"--config.tokenizer.path={runs['tokenizer']}",
                        "--config.model.vocab_size=320", "--config.train.steps=100000",
                        "--config.train.batch_size=8", "--config.train.seq_len=64",
                        "--config.train.log_every=1", "--config.train.save_every=100000"],
                       stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, cwd=ROOT, env=env,
                       # a test runner started in the background inherits SIGINT ignored; the
                       # user's terminal never does
                       preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
  metrics = tmp_path / "w" / "metrics.jsonl"
  t = time.time()
  try:
    while not (metrics.exists() and metrics.read_text().count("\n") >= 2):
      assert p.poll() is None, p.communicate()[1][-3000:]
      assert time.time() - t < 240
      time.sleep(0.05)
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=120)
  finally:
    p.kill()  # never left training after a failed assertion
  assert p.returncode == 130, err[-2000:]
  assert "Traceback" not in err and err.strip().splitlines()[-1] == "prm-jax train: interrupted"


def test_configs_install_as_prm_jax_configs_and_every_import_is_declared(tmp_path):
  """The shipped configs import as `prm_jax.configs` from anywhere, no top-level `configs` package
  is installed, and every third-party module the package imports belongs to a declared dependency."""
  code = ("import importlib.util, prm_jax.configs.base as b; "
          "assert importlib.util.find_spec('configs') is None; print(b.get_config().sample.n)")
  p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path)
  assert p.returncode == 0 and p.stdout.strip() == "1", p.stderr[-2000:]

  import ast
  import importlib.metadata
  import re
  import tomllib
  deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
  declared = {re.split(r"[<>=!~ \[]", d)[0].lower().replace("_", "-") for d in deps}
  owners = importlib.metadata.packages_distributions()
  stdlib = set(sys.stdlib_module_names)
  missing = set()
  for path in list((ROOT / "prm_jax").rglob("*.py")) + list((ROOT / "configs").glob("*.py")):
    for node in ast.walk(ast.parse(path.read_text())):
      names = [a.name for a in node.names] if isinstance(node, ast.Import) else (
          [node.module] if isinstance(node, ast.ImportFrom) and node.module and not node.level
          else [])
      for name in names:
        top = name.split(".")[0]
        if top in stdlib or top in ("prm_jax", "__future__"):
          continue
        dists = {d.lower().replace("_", "-") for d in owners.get(top, [top])}
        if not dists & declared:
          missing.add(f"{top} ({path.relative_to(ROOT)})")
  assert not missing, f"imported but not declared in pyproject.toml: {sorted(missing)}"


def test_search_takes_its_problems_as_input_or_problems():
  """The search issue's spelling (`--problems P.jsonl`, space-separated) and the project's
  (`--input=P.jsonl`) set the same flag; --help names both; a missing one is still refused."""
  from prm_jax import cli
  for name in ("search", "search-eval"):
    cmd = cli.COMMANDS[name]
    _, a = cli.parse(cmd, ["--checkpoint", "g", "--prm", "p", "--problems", "P.jsonl",
                           "--output", "o"])
    _, b = cli.parse(cmd, ["--checkpoint=g", "--prm=p", "--input=P.jsonl", "--output=o"])
    assert a.input == b.input == "P.jsonl"
    assert "(or --problems)" in cli.command_help(cmd)
    try:
      cli.parse(cmd, ["--checkpoint=g", "--prm=p", "--output=o"])
    except cli.UsageError as e:
      assert str(e) == "missing --input"
    else:
      raise AssertionError("no --input/--problems accepted")
    try:
      cli.parse(cmd, ["--checkpoint=g", "--prm=p", "--output=o", "--problems"])
    except cli.UsageError as e:
      assert str(e) == "--problems needs a value: --problems=VALUE"
    else:
      raise AssertionError("a bare --problems accepted")
