"""`prm-jax demo` end to end on a micro config: every artefact, and report.md agrees with metrics.json."""

import json
import math
import os
import re

from tests.test_cli import run

MICRO = ["--config.scale=0.1", "--config.train.steps=60", "--config.demo.n=4",
         "--config.demo.bon_trials=50", "--config.active.eval_trials=20",
         "--config.active.samples_per_problem=2", "--config.sample.max_new_tokens=48"]


def test_demo_runs_the_whole_loop_and_reports_what_it_measured(tmp_path):
  workdir = tmp_path / "demo"
  p = run("demo", f"--config.workdir={workdir}", *MICRO)
  assert p.returncode == 0, p.stderr[-3000:]
  for name in ("report.md", "metrics.json", "bon.png", "calibration.png", "active_learning.png",
               "tokenizer.model", "data/test_scored.jsonl", "data/rm_train.jsonl",
               "active_learning/active_learning.json", "active_learning/gen0/prm/params",
               "active_learning/active/gen1/labelled.jsonl", "active_learning/uniform/gen1/eval.json"):
    assert (workdir / name).exists(), name
  for run_dir in ("generator", "base", "orm", "prm"):
    assert (workdir / run_dir / "params").is_dir()
  # the reward models start from the deeper base LM, and keep its shape
  base_cfg = json.loads((workdir / "base" / "config.json").read_text())["model"]
  gen_cfg = json.loads((workdir / "generator" / "config.json").read_text())["model"]
  assert base_cfg["num_layers"] == 4 != gen_cfg["num_layers"]
  for run_dir in ("orm", "prm", "active_learning/gen0/prm"):
    cfg = json.loads((workdir / run_dir / "config.json").read_text())
    assert cfg["train"]["init_from"] == str(workdir / "base")
    assert cfg["model"]["num_layers"] == 4
  m = json.loads((workdir / "metrics.json").read_text())
  report = (workdir / "report.md").read_text()

  # best-of-N: bon.json's schema, every number printed in the report's table
  bon = m["bon"]
  assert bon["n"] == [1, 2, 4] and set(bon["methods"]) == {"prm", "orm", "majority", "weighted"}
  for i, n in enumerate(bon["n"]):
    cells = " | ".join(f"{100 * bon['methods'][k]['mean'][i]:.1f} ± "
                       f"{100 * bon['methods'][k]['std'][i]:.1f}" for k in bon["methods"])
    assert f"| {n} | {cells} |" in report
  # N=1 picks one uniformly random sample: every method has the same solve rate in expectation,
  # so the means over `trials` subsets differ by chance only (a few standard errors at most)
  means = [v["mean"][0] for v in bon["methods"].values()]
  se = max(v["std"][0] for v in bon["methods"].values()) / math.sqrt(bon["trials"])
  assert max(means) - min(means) <= 4 * math.sqrt(2) * se + 1e-9, (means, se)

  # within-problem ranking quality, the number that predicts best-of-N, is reported for both RMs
  assert set(bon["within_problem_auroc"]) == {"prm", "orm"}
  for k, v in bon["within_problem_auroc"].items():
    shown = "n/a" if v["mean"] is None else f"{v['mean']:.3f}"
    assert f"| {k.upper()}: right vs wrong answers to the same problem, AUROC (over " \
           f"{v['problems']} problems) | {shown} |" in report

  # stage times: one per stage, each printed
  assert list(m["stages"]) == ["problems", "tokenizer", "sft", "base", "sample", "label", "orm",
                               "prm", "score", "best-of-n", "active learning", "report"]
  for stage, seconds in m["stages"].items():
    assert f"| {stage} | {seconds:.1f} |" in report
  assert f"| **total** | {m['total_seconds']:.1f} |" in report
  assert "[12/12] report done in" in p.stdout  # the one progress display

  # active learning: both strategies, two generations, in the report's table
  al = m["active_learning"]
  assert set(al["strategies"]) == {"active", "uniform"}
  for s, gens in al["strategies"].items():
    assert [g["generation"] for g in gens] == [0, 1]
    for g in gens:
      assert f"| {s} | {g['generation']} | {g['labelled_total']} |" in report
      assert f"| {100 * g['prm_best_of_max_n']:.1f} |" in report

  # the verdict names what was measured at the largest N, whichever method wins
  at = {k: v["mean"][-1] for k, v in bon["methods"].items()}
  assert f"prm {100 * at['prm']:.1f}%" in report
  beats = at["prm"] > at["orm"] and at["prm"] > at["majority"]
  assert ("does NOT beat" in report) == (not beats)

  # the step metrics and the generator's accuracy come from the same run
  assert f"| step AUROC | {m['process']['step_auroc']:.3f} |" in report
  assert re.search(rf"pass@1 {100 * m['generator']['pass_at_1']:.1f}%", report)


def test_demo_refuses_a_foreign_non_empty_workdir(tmp_path):
  (tmp_path / "precious.txt").write_text("not the demo's")
  p = run("demo", f"--config.workdir={tmp_path}", *MICRO)
  assert p.returncode == 1 and "was not written by the demo" in p.stderr
  assert os.path.exists(tmp_path / "precious.txt")
