"""`prm-jax demo`: the paper's loop, end to end, on the synthetic arithmetic domain.

tokenizer -> SFT generator (and the reward models' deeper base LM) -> sample N per test problem
(and pools for reward-model data) -> grade and label with the oracle -> train ORM (outcomes) and
PRM (step labels) from the base -> score -> best-of-N (PRM / ORM / majority / weighted vote) ->
active learning vs uniform selection -> report.

    runs/demo/report.md  metrics.json  bon.png  calibration.png  active_learning.png
    runs/demo/{generator,base,orm,prm}/ training runs (orbax checkpoints, params, tokenizer)
    runs/demo/data/                     problems, samples, scored samples (JSONL `Solution`s)
    runs/demo/active_learning/          every generation's data and PRM

`--config.demo.seeds=K` runs the whole loop K times (seeds seed, seed+1, ...; runs/demo/seed_k/) and
writes the comparison's mean ± std over seeds (report.md, metrics.json, bon.png) at the top.
The demo owns only what its manifest (demo_manifest.json) lists: a rerun removes those, never other
files, and refuses a non-empty workdir it did not write.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import time
from typing import Sequence

import jax
import ml_collections
import numpy as np

from prm_jax import distributed, evaluation, sharding
from prm_jax.configs import derive
from prm_jax.data import synthetic
from prm_jax.paths import expand_path
from prm_jax.records import write_json, write_jsonl, write_text
from prm_jax.train.loop import train_run

STAGES = ("problems", "tokenizer", "sft", "base", "sample", "label", "orm", "prm", "score",
          "best-of-n", "active learning", "report")
MANIFEST = "demo_manifest.json"


class Progress:
  """One display across stages: a numbered header per stage, its wall time when it ends."""

  def __init__(self, stages=STAGES):
    self.stages, self.times, self.t0 = list(stages), {}, time.perf_counter()

  def run(self, name: str, fn, *args, **kwargs):
    k = self.stages.index(name) + 1
    print(f"[{k}/{len(self.stages)}] {name} ...", flush=True)
    t = time.perf_counter()
    out = fn(*args, **kwargs)
    self.times[name] = time.perf_counter() - t
    print(f"[{k}/{len(self.stages)}] {name} done in {self.times[name]:.1f}s "
          f"(total {time.perf_counter() - self.t0:.0f}s)", flush=True)
    return out


def scaled(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """A copy with problem counts, samples and steps multiplied by `config.scale`."""
  c = derive(config)
  s = float(c.get("scale", 1.0))
  if s <= 0:
    raise ValueError(f"scale={s} must be > 0")
  grow = lambda x, lo=1: max(lo, int(round(x * s)))
  d, a = c.demo, c.active
  d.train_problems, d.test_problems = grow(d.train_problems, 50), grow(d.test_problems, 8)
  d.rm_problems, d.rm_steps = grow(d.rm_problems, 16), grow(d.rm_steps, 20)
  d.al_rm_steps = grow(d.al_rm_steps, 20)
  if d.rm_base_steps > 0:
    d.rm_base_steps = grow(d.rm_base_steps, 20)
  c.train.steps = grow(c.train.steps, 20)
  a.problems_per_generation, a.budget = grow(a.problems_per_generation, 8), grow(a.budget, 16)
  c.train.save_every = max(c.train.steps, d.rm_steps, d.rm_base_steps)
  c.train.log_every = max(1, min(c.train.log_every, c.train.steps, d.rm_steps))
  if d.rm_problems + a.generations * a.problems_per_generation > d.train_problems:
    raise ValueError(f"demo.rm_problems + active.generations * active.problems_per_generation "
                     f"exceeds demo.train_problems={d.train_problems}")
  return c


def resolve_workdir(workdir: str) -> str:
  """`~` and `$VARS` expanded (`paths.expand_path`: an unset variable is refused, never made a
  folder named `$X`), and symlinks resolved, so the manifest names the real files."""
  path = expand_path(str(workdir), "workdir")
  if os.path.exists(path) and not os.path.isdir(path):
    raise ValueError(f"workdir={workdir!r} is a file, not a folder")
  return os.path.realpath(path)


def prepare_workdir(workdir: str) -> None:
  """Removes what an earlier demo run listed in its manifest, and nothing else. A non-empty folder
  without a manifest is refused whole: the demo never deletes files it did not write."""
  os.makedirs(workdir, exist_ok=True)
  manifest = os.path.join(workdir, MANIFEST)
  entries = sorted(os.listdir(workdir))
  if entries and not os.path.exists(manifest):
    shown = ", ".join(entries[:3]) + (", ..." if len(entries) > 3 else "")
    raise ValueError(f"{workdir} is not empty ({shown}) and holds no {MANIFEST}: it was not written "
                     "by the demo; choose another --config.workdir")
  if not entries:
    return
  with open(manifest) as f:
    owned = json.load(f).get("written", [])
  for name in owned:
    path = os.path.join(workdir, name)
    if os.path.normpath(name) != name or name.startswith(("..", os.sep)) or os.sep in name:
      raise ValueError(f"{manifest}: entry {name!r} is not a name inside {workdir}")
    if os.path.islink(path) or os.path.isfile(path):
      os.remove(path)
    elif os.path.isdir(path):
      shutil.rmtree(path)
  os.remove(manifest)


class Manifest:
  """The top-level names the demo wrote in its workdir, rewritten as each appears (a killed run
  still leaves a manifest that covers what it wrote)."""

  def __init__(self, workdir: str, names: Sequence[str]):
    self.workdir, self.names = workdir, []
    self.add(*names)

  def add(self, *names: str) -> None:
    self.names += [n for n in names if n not in self.names]
    write_json(os.path.join(self.workdir, MANIFEST), {"written": self.names})


def _rm_start(c) -> str:
  """Reward models start from the base LM when the config trains one, else from the generator."""
  return os.path.join(c.workdir, "base" if c.demo.rm_base_steps > 0 else "generator")


def _rm_overrides(c, task: str) -> dict:
  d = c.demo
  over = dict(steps=d.rm_steps, batch_size=d.rm_batch_size, save_every=d.rm_steps,
              learning_rate=d.rm_learning_rate, init_from=_rm_start(c))
  if task == "prm":
    over["class_weights"] = tuple(d.prm_class_weights)
  return over


OWNED = ("demo_config.json", "data", "tokenizer.model", "generator", "base", "orm", "prm",
         "active_learning", "bon.png", "calibration.png", "active_learning.png", "metrics.json",
         "report.md")


def run(config: ml_collections.ConfigDict) -> dict:
  """The demo, once per seed in `demo.seeds`."""
  if int(config.demo.get("seeds", 1)) > 1:
    return run_seeds(config)
  c = derive(config, {"workdir": resolve_workdir(config.workdir)})
  prepare_workdir(c.workdir)
  Manifest(c.workdir, OWNED)
  return run_once(c)


def run_once(config: ml_collections.ConfigDict) -> dict:
  c = scaled(config)
  d, w = c.demo, c.workdir
  write_text(os.path.join(w, "demo_config.json"), c.to_json_best_effort(indent=1))
  data = os.path.join(w, "data")
  prog = Progress([s for s in STAGES if s != "base" or d.rm_base_steps > 0])
  mesh = sharding.make_mesh(c.mesh)
  print(f"prm-jax demo: {d.train_problems} training / {d.test_problems} test problems "
        f"(levels {tuple(d.levels)}) on {distributed.describe_mesh(mesh)}, writing {w}", flush=True)

  def problems():
    train_p, test_p = synthetic.train_test_problems(d.train_problems, d.test_problems, c.seed,
                                                    tuple(d.levels))
    write_jsonl(os.path.join(data, "train_problems.jsonl"), train_p)
    write_jsonl(os.path.join(data, "test_problems.jsonl"), test_p)
    return train_p, test_p
  train_p, test_p = prog.run("problems", problems)
  # the training corpus: correct references, except where a share carries a misconception
  refs_rng = np.random.default_rng(c.seed + 2)
  refs = [synthetic.training_solution(p, refs_rng, d.misconceptions.to_dict()) for p in train_p]

  def tokenizer():
    from prm_jax.tokenizer import train_sentencepiece
    return train_sentencepiece((s.problem + "\n" + s.text for s in refs),
                               vocab_size=c.tokenizer.vocab_size,
                               path=os.path.join(w, "tokenizer.model"))
  tok = prog.run("tokenizer", tokenizer)
  if tok.vocab_size > c.model.vocab_size:
    raise ValueError(f"model.vocab_size={c.model.vocab_size} < tokenizer {tok.vocab_size}")
  sft = prog.run("sft", train_run, c, os.path.join(w, "generator"), "sft", refs, tok)
  base = None
  if d.rm_base_steps > 0:  # the paper's pretrained base: a deeper LM on its own corpus
    b = derive(c, {f"model.{k}": v for k, v in d.rm_base_model.to_dict().items()})
    corpus = {"same": refs, "correct": [synthetic.reference_solution(p) for p in train_p]}
    if d.rm_base_corpus not in corpus:
      raise ValueError(f"demo.rm_base_corpus={d.rm_base_corpus!r}: expected 'correct' or 'same'")
    base = prog.run("base", train_run, b, os.path.join(w, "base"), "sft", corpus[d.rm_base_corpus],
                    tok,
                    desc="base", steps=d.rm_base_steps, save_every=d.rm_base_steps)

  rm_p = train_p[:d.rm_problems]
  al_p = train_p[d.rm_problems:]

  def sample():
    from prm_jax.sampling import Sampler
    sampler = Sampler.from_run(os.path.join(w, "generator"), c)
    test = sampler.sample(test_p, d.n, seed=c.seed, progress=True)
    rm = sampler.sample(rm_p, d.rm_samples, seed=c.seed + 1, progress=True)
    return test, rm
  test_s, rm_s = prog.run("sample", sample)

  def label():
    from prm_jax.labellers import OracleLabeller
    oracle = OracleLabeller()
    test, rm = oracle.label(test_s), oracle.label(rm_s)
    write_jsonl(os.path.join(data, "test_samples.jsonl"), test)
    write_jsonl(os.path.join(data, "rm_train.jsonl"), rm)
    return test, rm
  test_s, rm_s = prog.run("label", label)

  prog.run("orm", train_run, c, os.path.join(w, "orm"), "orm", rm_s, tok, **_rm_overrides(c, "orm"))
  prog.run("prm", train_run, c, os.path.join(w, "prm"), "prm", rm_s, tok, **_rm_overrides(c, "prm"))

  def score():
    from prm_jax.scoring import Scorer
    strip = [dataclasses.replace(s, scores=None) for s in test_s]
    scored = list(Scorer.from_run(os.path.join(w, "prm"), c).score(strip))
    scored = list(Scorer.from_run(os.path.join(w, "orm"), c).score(scored))  # adds scores.orm
    write_jsonl(os.path.join(data, "test_scored.jsonl"), scored)
    return scored
  scored = prog.run("score", score)

  ns = [n for n in (1, 2, 4, 8, 16, 32, 64, 128) if n <= d.n]
  if ns[-1] != d.n:
    ns.append(d.n)

  def bon():
    result = evaluation.best_of_n(evaluation.build_pools(scored), ns, d.bon_trials, c.seed)
    evaluation.plot_best_of_n(result, os.path.join(w, "bon.png"),
                              title=f"Best-of-N, {result['num_problems']} synthetic test problems")
    process = evaluation.process_eval(scored)
    evaluation.plot_calibration(process, os.path.join(w, "calibration.png"))
    return result, process
  bon_result, process = prog.run("best-of-n", bon)

  def active():
    from prm_jax.active_learning import ActiveLearning
    a = derive(c, {**{f"train.{k}": v for k, v in _rm_overrides(c, "prm").items()},
                   "train.steps": d.al_rm_steps, "train.save_every": d.al_rm_steps,
                   "active.eval_n": ",".join(map(str, ns)), "active.eval_samples": d.n,
                   "active.eval_labeller": "oracle"})
    out = os.path.join(w, "active_learning")
    write_jsonl(os.path.join(out, "eval_samples.jsonl"), test_s)  # the same test pool as above
    summary = ActiveLearning(a, os.path.join(w, "generator"), al_p, test_p, out,
                             log=lambda m: print("  " + m, flush=True)).run()
    shutil.copy(os.path.join(out, "active_learning.png"), os.path.join(w, "active_learning.png"))
    return summary
  al = prog.run("active learning", active)

  def report():
    metrics = {"bon": bon_result, "stages": dict(prog.times), "active_learning": al,
               "process": {"earliest_error_f1": process["test"]["f1"],
                           "step_auroc": process["step_auroc"], "ece": process["calibration"]["ece"],
                           "threshold": process["threshold"]},
               "generator": generator_stats(test_s, sft),
               "misconceptions": {"configured": d.misconceptions.to_dict(),
                                  "references": synthetic.misconception_rates(refs),
                                  "generator": synthetic.misconception_rates(test_s)},
               "labels": label_stats(rm_s),
               "devices": jax.device_count(), "backend": jax.default_backend(),
               **distributed.mesh_summary(mesh),
               "config": {"scale": c.scale, "levels": list(d.levels), "seed": c.seed,
                          "train_problems": d.train_problems, "test_problems": d.test_problems,
                          "n": d.n, "rm_problems": d.rm_problems, "rm_samples": d.rm_samples,
                          "sft_steps": c.train.steps, "rm_steps": d.rm_steps,
                          "al_rm_steps": d.al_rm_steps,
                          "num_params": sft.get("num_params"),
                          "num_layers": c.model.num_layers,
                          "rm_base_steps": d.rm_base_steps,
                          "rm_base_params": base.get("num_params") if base else None,
                          "rm_base_layers": (d.rm_base_model.get("num_layers", c.model.num_layers)
                                             if base else None)}}
    metrics["stages"]["report"] = 0.0
    metrics["total_seconds"] = time.perf_counter() - prog.t0
    write_json(os.path.join(w, "metrics.json"), metrics)
    write_text(os.path.join(w, "report.md"), render_report(metrics))
    return metrics
  metrics = prog.run("report", report)
  print("\n" + verdict(metrics["bon"]))
  print(f"\nwrote {w}/report.md, metrics.json, bon.png ({metrics['total_seconds']:.0f}s in all)")
  return metrics


def run_seeds(config: ml_collections.ConfigDict) -> dict:
  """The whole demo once per seed (workdir/seed_k), then every comparison as mean ± std over seeds:
  what tells two methods apart when one run's trial-to-trial spread cannot."""
  k = int(config.demo.seeds)
  root = resolve_workdir(config.workdir)
  prepare_workdir(root)
  names = [f"seed_{i}" for i in range(k)]
  Manifest(root, ["demo_config.json", *names, "bon.png", "metrics.json", "report.md"])
  write_text(os.path.join(root, "demo_config.json"), config.to_json_best_effort(indent=1))
  t0, runs = time.perf_counter(), []
  for i, name in enumerate(names):
    ci = derive(config, {"seed": config.seed + i, "workdir": os.path.join(root, name),
                         "demo.seeds": 1})
    os.makedirs(ci.workdir)
    Manifest(ci.workdir, OWNED)
    print(f"\n=== seed {i + 1}/{k} (seed={ci.seed}) -> {ci.workdir}", flush=True)
    runs.append(run_once(ci))
  metrics = over_seeds(runs)
  metrics["total_seconds"] = time.perf_counter() - t0
  evaluation.plot_best_of_n(metrics["bon"], os.path.join(root, "bon.png"),
                            title=f"Best-of-N, mean ± std over {k} seeds")
  write_json(os.path.join(root, "metrics.json"), metrics)
  write_text(os.path.join(root, "report.md"), render_seeds_report(metrics))
  print("\n" + verdict(metrics["bon"]))
  print(f"\nwrote {root}/report.md, metrics.json, bon.png ({metrics['total_seconds']:.0f}s in all)")
  return metrics


def _mean_std(values) -> dict:
  v = np.asarray([np.nan if x is None else x for x in values], float)
  ok = v[~np.isnan(v)]
  return {"mean": float(ok.mean()) if ok.size else None,
          "std": float(ok.std(ddof=1)) if ok.size > 1 else 0.0, "seeds": int(ok.size)}


def over_seeds(runs: Sequence[dict]) -> dict:
  """Per-seed results -> mean and sample std over seeds of each seed's mean (bon.json's schema)."""
  ns = runs[0]["bon"]["n"]
  methods = {}
  for m in runs[0]["bon"]["methods"]:
    per = np.asarray([r["bon"]["methods"][m]["mean"] for r in runs])  # [seeds, len(ns)]
    methods[m] = {"mean": per.mean(0).tolist(),
                  "std": (per.std(0, ddof=1) if len(runs) > 1 else 0 * per[0]).tolist(),
                  "per_seed": per.tolist()}
  auroc = {k: _mean_std([r["bon"]["within_problem_auroc"][k]["mean"] for r in runs])
           for k in runs[0]["bon"].get("within_problem_auroc", {})}
  final = {s: _mean_std([r["active_learning"]["strategies"][s][-1]["prm_best_of_max_n"]
                         for r in runs]) for s in runs[0]["active_learning"]["strategies"]}
  return {"seeds": [r["config"]["seed"] for r in runs], "runs": len(runs),
          "bon": {"n": ns, "methods": methods, "trials": runs[0]["bon"]["trials"],
                  "num_problems": runs[0]["bon"]["num_problems"], "over": "seeds",
                  "within_problem_auroc": auroc},
          "active_learning_final": final, "al_n": runs[0]["active_learning"]["n"][-1],
          "process": {k: _mean_std([r["process"][k] for r in runs])
                      for k in ("earliest_error_f1", "step_auroc", "ece")},
          "pass_at_1": _mean_std([r["generator"]["pass_at_1"] for r in runs]),
          "seconds_per_seed": [r["total_seconds"] for r in runs]}


def render_seeds_report(m: dict) -> str:
  bon, k = m["bon"], m["runs"]
  fmt = lambda v: "n/a" if v["mean"] is None else f"{v['mean']:.3f} ± {v['std']:.3f}"
  pct = lambda v: "n/a" if v["mean"] is None else f"{100 * v['mean']:.1f} ± {100 * v['std']:.1f}"
  lines = ["# prm_jax demo report, over seeds", "", verdict(bon), "",
           f"Best-of-N solve rate (%), mean ± std over {k} seeds (seeds {m['seeds']}; each seed "
           f"draws its own problems, trains its own models and averages {bon['trials']} trials on "
           f"{bon['num_problems']} test problems):", "", evaluation.markdown_table(bon), "",
           "![best-of-N](bon.png)", "", "| metric | mean ± std over seeds |", "|---|---|",
           f"| generator pass@1 (%) | {pct(m['pass_at_1'])} |",
           *[f"| {name.upper()} within-problem AUROC | {fmt(v)} |"
             for name, v in bon["within_problem_auroc"].items()],
           f"| step AUROC | {fmt(m['process']['step_auroc'])} |",
           f"| earliest-error F1 | {fmt(m['process']['earliest_error_f1'])} |",
           *[f"| active learning, {s} selection: final PRM best-of-{m['al_n']} (%) | {pct(v)} |"
             for s, v in m["active_learning_final"].items()],
           "", "Each seed's own report is in `seed_k/report.md`. Wall time: "
           + ", ".join(f"{t:.0f}s" for t in m["seconds_per_seed"]) + ".", ""]
  return "\n".join(lines)


def generator_stats(samples, sft_summary) -> dict:
  correct = np.array([bool(s.is_correct) for s in samples])
  by_problem: dict[str, list[bool]] = {}
  for s in samples:
    by_problem.setdefault(s.problem_id, []).append(bool(s.is_correct))
  hist = sft_summary["history"]
  return {"pass_at_1": float(correct.mean()),
          "any_correct": float(np.mean([any(v) for v in by_problem.values()])),
          "answered": float(np.mean([s.answer is not None for s in samples])),
          "sft_loss_first": hist[0]["loss"] if hist else None,
          "sft_loss_last": hist[-1]["loss"] if hist else None}


def label_stats(labelled) -> dict:
  flat = [l for s in labelled for l in (s.step_labels or []) if l is not None]
  return {"solutions": len(labelled),
          "correct_answers": float(np.mean([bool(s.is_correct) for s in labelled])),
          "steps": len(flat), **{name: flat.count(v) for name, v in
                                  (("positive", 1), ("neutral", 0), ("negative", -1))}}


def verdict(bon: dict) -> str:
  """What was measured at the largest N, whichever method wins."""
  n, m = bon["n"][-1], bon["methods"]
  at = {k: v["mean"][-1] for k, v in m.items()}
  ranked = sorted(at.items(), key=lambda kv: -kv[1])
  line = ", ".join(f"{k} {100 * v:.1f}%" for k, v in ranked)
  prm_wins = all(at["prm"] > at[k] for k in ("orm", "majority") if k in at)
  if prm_wins:
    head = f"At N={n} the PRM beats the ORM and majority voting: {line}."
  else:
    beaten_by = [k for k in ("orm", "majority") if k in at and at[k] >= at["prm"]]
    head = (f"At N={n} the PRM does NOT beat {' and '.join(beaten_by)}: {line}. "
            "This is what was measured; see the notes below.")
  return head


def render_report(m: dict) -> str:
  bon, cfg, g, lab = m["bon"], m["config"], m["generator"], m["labels"]
  al = m["active_learning"]
  lines = ["# prm_jax demo report", "",
           "Process supervision (Lightman et al., *Let's Verify Step by Step*) reproduced end to end on "
           "a synthetic chained-arithmetic domain whose every step a program can check.", "",
           "## Result", "", verdict(bon), "",
           f"Best-of-N solve rate (%), mean ± std over {bon['trials']} trials, "
           f"{bon['num_problems']} test problems, {bon['pool_size']} samples per problem:", "",
           evaluation.markdown_table(bon), "", "![best-of-N](bon.png)", "",
           "## Reward-model metrics (test samples, oracle labels)", "",
           "| metric | value |", "|---|---|",
           f"| earliest-error F1 (ProcessBench; threshold {m['process']['threshold']:.2f} chosen on "
           f"dev problems) | {100 * m['process']['earliest_error_f1']:.1f} |",
           f"| step AUROC | {m['process']['step_auroc']:.3f} |",
           f"| step ECE | {m['process']['ece']:.3f} |",
           *[f"| {k.upper()}: right vs wrong answers to the same problem, AUROC (over "
             f"{v['problems']} problems) | {evaluation.format_auroc(v['mean'])} |"
             for k, v in bon.get("within_problem_auroc", {}).items()],
           "", "Best-of-N only compares samples of one problem, so the last rows, not the step "
           "AUROC (which also rewards telling easy problems from hard ones), predict its gain; "
           "0.5 is chance.", "", "![calibration](calibration.png)", "",
           "## Active learning vs uniform selection (equal label budget)", "",
           f"Budget {al['budget']} solutions per generation, {al['generations']} generations, "
           f"labeller: {al['labeller']}. Generation 0 is shared (no PRM to select with yet).", "",
           _al_table(al), "", "![active learning](active_learning.png)", "",
           "## Data and models", "",
           "| | |", "|---|---|",
           f"| problems (train / test) | {cfg['train_problems']} / {cfg['test_problems']}, "
           f"levels {cfg['levels']} |",
           f"| generator | {cfg['num_params']:,} parameters, {cfg['num_layers']} layers; SFT "
           f"{cfg['sft_steps']} steps, loss {g['sft_loss_first']:.3f} -> {g['sft_loss_last']:.3f} |",
           *([f"| reward models' base LM | {cfg['rm_base_params']:,} parameters, "
              f"{cfg['rm_base_layers']} layers; {cfg['rm_base_steps']} steps on the same references |"]
             if cfg.get("rm_base_steps") else []),
           f"| generator on test | pass@1 {100 * g['pass_at_1']:.1f}%, any of {cfg['n']} correct "
           f"{100 * g['any_correct']:.1f}%, answered {100 * g['answered']:.1f}% |",
           *[f"| misconception `{name}` | configured in {100 * rate:.0f}% of the references' "
             f"triggering steps; written in {_share(m['misconceptions']['references'][name])} of "
             f"them, and by the generator in {_share(m['misconceptions']['generator'][name])} of "
             f"its test steps that trigger it |"
             for name, rate in m["misconceptions"]["configured"].items() if rate > 0],
           f"| reward-model data | {lab['solutions']} samples ({cfg['rm_problems']} problems x "
           f"{cfg['rm_samples']}), {100 * lab['correct_answers']:.1f}% correct answers; oracle step labels: "
           f"{lab['positive']} positive, {lab['neutral']} neutral, {lab['negative']} negative |",
           f"| ORM / PRM training | {cfg['rm_steps']} steps each, from the "
           f"{'base LM' if cfg.get('rm_base_steps') else 'generator'} "
           f"(active-learning PRMs: {cfg['al_rm_steps']}) |",
           f"| devices | {m['devices']} x {m['backend']} |", "",
           "## Wall time", "", "| stage | seconds |", "|---|---|"]
  lines += [f"| {k} | {v:.1f} |" for k, v in m["stages"].items()]
  lines += [f"| **total** | {m['total_seconds']:.1f} |", "",
            "## Notes", "",
            "- Every number above is computed by this run; nothing is tuned on the test problems.",
            "- Solve rates come from the paper's protocol: per trial, N samples drawn from each "
            "problem's pool; the chosen sample's final answer is graded.",
            "- The models are tiny (64 wide, a few layers) and trained for minutes on a CPU, so "
            "the reward models learn the oracle's arithmetic only in part; `--config.scale=4` "
            "grows the data and training.", ""]
  return "\n".join(lines)


def _share(r: dict) -> str:
  return "no" if not r["steps"] else f"{100 * r['rate']:.0f}% (of {r['steps']})"


def _al_table(al: dict) -> str:
  from prm_jax.active_learning import markdown_table
  return markdown_table(al)
