"""`prm-jax demo` end to end on a micro config: every artefact, and report.md agrees with metrics.json."""

import json
import math
import os
import re

import pytest

from tests.test_cli import run

# The generator gets 300 SFT steps (train.steps x scale): enough to answer, apply the
# misconception and solve some problems, so the comparisons below compare something.
MICRO = ["--config.scale=0.1", "--config.train.steps=3000", "--config.demo.n=4",
         "--config.demo.bon_trials=50", "--config.active.eval_trials=20",
         "--config.active.samples_per_problem=2", "--config.sample.max_new_tokens=48"]


# The two-seed run checks how seeds are run and reported, not what the models learn: a run a few
# times smaller than MICRO (20 SFT steps, no separate base, a pool of 2).
NANO = ["--config.scale=0.05", "--config.train.steps=400", "--config.demo.n=2",
        "--config.demo.rm_base_steps=0", "--config.demo.rm_samples=1",
        "--config.demo.bon_trials=20", "--config.active.eval_trials=10", "--config.active.samples_per_problem=1",
        "--config.sample.max_new_tokens=48"]


@pytest.fixture(scope="module")
def one_seed(tmp_path_factory):
  """One micro demo: the whole loop, every stage, in one workdir."""
  root = tmp_path_factory.mktemp("demo")
  p = run("demo", f"--config.workdir={root}", *MICRO, timeout=1500)
  assert p.returncode == 0, p.stderr[-3000:]
  return root, p


@pytest.fixture(scope="module")
def two_seeds(tmp_path_factory):
  """A nano demo over two seeds: each seed is a whole demo run in seed_k/."""
  root = tmp_path_factory.mktemp("demo_seeds")
  p = run("demo", f"--config.workdir={root}", "--config.demo.seeds=2", *NANO, timeout=1500)
  assert p.returncode == 0, p.stderr[-3000:]
  return root, p


@pytest.mark.slow
def test_demo_runs_the_whole_loop_and_reports_what_it_measured(one_seed):
  workdir, p = one_seed
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
  assert max(bon["methods"]["prm"]["mean"]) > 0  # something is solved
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

  # the domain's misconception: configured, carried by that share of the references (a binomial
  # draw per triggering step), and measured in the generator's own samples
  mis = m["misconceptions"]
  assert mis["configured"] == {"smaller_from_larger": 0.7, "forgotten_carry": 0.0}
  ref = mis["references"]["smaller_from_larger"]
  assert ref["steps"] > 50 and abs(ref["rate"] - 0.7) < 4 * (0.21 / ref["steps"]) ** 0.5
  assert mis["references"]["forgotten_carry"]["rate"] == 0.0
  gen = mis["generator"]["smaller_from_larger"]
  assert gen["steps"] > 0 and gen["rate"] > 0  # the generator learned it from its references
  assert f"by the generator in {100 * gen['rate']:.0f}% (of {gen['steps']})" in report

  # the step metrics and the generator's accuracy come from the same run
  assert f"| step AUROC | {m['process']['step_auroc']:.3f} |" in report
  assert re.search(rf"pass@1 {100 * m['generator']['pass_at_1']:.1f}%", report)


@pytest.mark.slow
def test_over_two_seeds_the_report_is_the_mean_and_std_of_each_seeds_result(two_seeds):
  root, p = two_seeds
  m = json.loads((root / "metrics.json").read_text())
  seeds = [json.loads((root / f"seed_{k}" / "metrics.json").read_text()) for k in (0, 1)]
  assert m["seeds"] == [s["config"]["seed"] for s in seeds] == [0, 1]
  # the seeds drew different problems and trained different models
  problems = [(root / f"seed_{k}" / "data" / "test_problems.jsonl").read_text() for k in (0, 1)]
  assert problems[0] != problems[1]
  losses = [s["generator"]["sft_loss_last"] for s in seeds]
  assert None not in losses and losses[0] != losses[1]
  for k in ("step_auroc", "earliest_error_f1", "ece"):  # each process metric, mean and sample std
    ok = [x for x in (s["process"][k] for s in seeds) if x is not None and not math.isnan(x)]
    assert m["process"][k]["seeds"] == len(ok)  # a seed without the metric (NaN) is left out
    if len(ok) == 2:
      assert m["process"][k]["mean"] == pytest.approx((ok[0] + ok[1]) / 2)
      assert m["process"][k]["std"] == pytest.approx(abs(ok[0] - ok[1]) / math.sqrt(2))
    else:
      assert m["process"][k] == {"mean": ok[0] if ok else None, "std": 0.0, "seeds": len(ok)}
  report = (root / "report.md").read_text()
  for k, v in m["bon"]["methods"].items():
    per = [s["bon"]["methods"][k]["mean"] for s in seeds]
    for i in range(len(m["bon"]["n"])):
      a, b = per[0][i], per[1][i]
      assert v["mean"][i] == pytest.approx((a + b) / 2)
      assert v["std"][i] == pytest.approx(abs(a - b) / math.sqrt(2))  # sample std of two values
  assert evaluation_table(m["bon"]) in report
  for s, v in m["active_learning_final"].items():
    finals = [x["active_learning"]["strategies"][s][-1]["prm_best_of_max_n"] for x in seeds]
    assert v["mean"] == pytest.approx(sum(finals) / 2)
  assert (root / "bon.png").stat().st_size > 0
  manifest = json.loads((root / "demo_manifest.json").read_text())["written"]
  assert {"seed_0", "seed_1", "report.md", "metrics.json", "bon.png"} <= set(manifest)
  assert "=== seed 2/2 (seed=1)" in p.stdout


def evaluation_table(bon):
  from prm_jax import evaluation
  return evaluation.markdown_table(bon)


def test_demo_refuses_a_foreign_non_empty_workdir(tmp_path):
  (tmp_path / "precious.txt").write_text("not the demo's")
  p = run("demo", f"--config.workdir={tmp_path}", *MICRO)
  assert p.returncode == 1 and "was not written by the demo" in p.stderr
  assert os.path.exists(tmp_path / "precious.txt")


def test_a_rerun_removes_only_what_the_manifest_lists(tmp_path, monkeypatch):
  from prm_jax import demo
  w = tmp_path / "w"
  w.mkdir()
  demo.Manifest(str(w), ["report.md", "generator"])
  (w / "report.md").write_text("old report")
  (w / "generator").mkdir()
  (w / "generator" / "params").write_text("x")
  (w / "notes.txt").write_text("the user's")  # written beside the demo's files later
  demo.prepare_workdir(str(w))
  assert sorted(os.listdir(w)) == ["notes.txt"]
  # a folder whose manifest was tampered with to point outside is refused, nothing removed
  demo.Manifest(str(w), ["../outside"])
  (tmp_path / "outside").write_text("keep")

  with pytest.raises(ValueError, match="not a name inside"):
    demo.prepare_workdir(str(w))
  assert (tmp_path / "outside").read_text() == "keep"
  # `~` and `$VARS` are expanded, an unset one refused; a symlinked workdir resolves to its target
  monkeypatch.setenv("HOME", str(tmp_path))
  monkeypatch.setenv("DEMO_ROOT", str(tmp_path))
  assert demo.resolve_workdir("~/a") == str(tmp_path / "a")
  assert demo.resolve_workdir("$DEMO_ROOT/b") == str(tmp_path / "b")
  monkeypatch.delenv("PRM_JAX_UNSET_VAR", raising=False)
  with pytest.raises(ValueError, match="PRM_JAX_UNSET_VAR is not set"):
    demo.resolve_workdir("$PRM_JAX_UNSET_VAR/demo")
  (tmp_path / "target").mkdir()
  (tmp_path / "link").symlink_to(tmp_path / "target")
  assert demo.resolve_workdir(str(tmp_path / "link")) == str(tmp_path / "target")
  with pytest.raises(ValueError, match="is a file"):
    demo.resolve_workdir(str(tmp_path / "outside"))


def test_over_seeds_is_the_mean_and_sample_std_of_each_seeds_mean():
  from prm_jax import demo

  def one(seed, prm, maj, auroc, final):
    return {"config": {"seed": seed}, "total_seconds": 1.0,
            "bon": {"n": [1, 4], "trials": 10, "num_problems": 5,
                    "methods": {"prm": {"mean": prm}, "majority": {"mean": maj}},
                    "within_problem_auroc": {"prm": {"mean": auroc}}},
            "active_learning": {"n": [1, 4], "strategies": {
                "active": [{"prm_best_of_max_n": 0.0}, {"prm_best_of_max_n": final}]}},
            "process": {"earliest_error_f1": 0.5, "step_auroc": 0.9, "ece": 0.1},
            "generator": {"pass_at_1": 0.6}}
  m = demo.over_seeds([one(0, [0.5, 0.7], [0.5, 0.6], 0.8, 0.7),
                       one(1, [0.6, 0.9], [0.6, 0.6], None, 0.9)])
  assert m["seeds"] == [0, 1]
  assert m["bon"]["methods"]["prm"]["mean"] == pytest.approx([0.55, 0.8])
  assert m["bon"]["methods"]["prm"]["std"] == pytest.approx([0.1 / 2 ** 0.5, 0.2 / 2 ** 0.5])
  assert m["bon"]["methods"]["majority"]["std"] == pytest.approx([0.1 / 2 ** 0.5, 0.0])
  # a seed without a within-problem AUROC (no mixed problems) is left out, and counted
  assert m["bon"]["within_problem_auroc"]["prm"] == {"mean": 0.8, "std": 0.0, "seeds": 1}
  assert m["active_learning_final"]["active"]["mean"] == pytest.approx(0.8)
  report = demo.render_seeds_report(m)
  assert "| 4 | 80.0 ± 14.1 | 60.0 ± 0.0 |" in report
  assert "At N=4 the PRM beats" in report
