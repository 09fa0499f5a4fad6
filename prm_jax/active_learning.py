"""Active learning: which solutions to label next, and the generational loop around it.

The paper's small-scale recipe: per problem, score a fresh pool with the current PRM and label mostly
*convincing wrong-answer* solutions (high PRM score, wrong final answer), 80% of the budget, plus the
most convincing of the rest; retrain the PRM from the base model on everything labelled so far.
A uniform-selection control with the same label budget shows what the selection buys.

    out/
      eval_samples.jsonl          the fixed evaluation pool (sampled once, gold-labelled if possible)
      pools/gen{g}.jsonl          generation g's candidate pool (shared by both strategies)
      gen0/                       generation 0 (no PRM yet: uniform; shared)
      active/gen{g}/, uniform/gen{g}/
        selected.jsonl labelled.jsonl prm/ eval_scored.jsonl eval.json (written last: "done")
      active_learning.json .md .png
"""

from __future__ import annotations

import dataclasses
import heapq
import json
import os
import time
from typing import Callable, Iterable, Sequence

import numpy as np

from prm_jax.records import Problem, Solution, write_json, write_text


def select_convincing_wrong_answers(scored: Iterable[Solution], k: int, frac_wrong: float = 0.8,
                                    score_key: str = "prm") -> list[Solution]:
  """Up to `k` solutions per problem: mostly the top-scored wrong-answer ones, filled with the
  top-scored others. Identical solutions count once.

  The wrong-answer quota, `round(frac_wrong * selected)`, is a share of the whole selection, not
  of each problem: rounding per problem gives round(2 * 0.8) = 2 of 2 (100%) at k = 2. It is
  dealt one at a time to the problem with the fewest so far (ties: the most convincing next wrong
  answer), so it spreads evenly and moves to problems that have wrong answers to give.
  """
  if not 0.0 <= frac_wrong <= 1.0:
    raise ValueError(f"frac_wrong={frac_wrong} must be in [0, 1]")
  by_problem: dict[str, list[tuple[int, Solution]]] = {}
  for i, s in enumerate(scored):
    if not s.scores or s.scores.get(score_key) is None:
      raise ValueError(f"solution {i} of problem {s.problem_id} has no scores.{score_key}")
    by_problem.setdefault(s.problem_id, []).append((i, s))
  ranked, wrong = [], []
  for items in by_problem.values():
    unique = _unique(sorted(items, key=lambda x: (-x[1].scores[score_key], x[0])))
    ranked.append(unique)
    wrong.append([x for x in unique if x[1].is_correct is False and x[1].answer is not None])
  slots = [min(k, len(u)) for u in ranked]
  quota = _wrong_quota(slots, wrong, round(frac_wrong * sum(slots)), score_key)
  chosen: list[tuple[int, Solution]] = []
  for unique, w, n_wrong, n in zip(ranked, wrong, quota, slots):
    take = w[:n_wrong]
    picked = {i for i, _ in take}
    take += [x for x in unique if x[0] not in picked][:n - len(take)]
    chosen.extend(take)
  return [s for _, s in sorted(chosen, key=lambda x: x[0])]


def _wrong_quota(slots: list[int], wrong: list[list], total: int, score_key: str) -> list[int]:
  """Wrong answers to take per problem: `total` dealt one at a time, fewest-so-far first."""
  quota = [0] * len(slots)
  can = [min(n, len(w)) for n, w in zip(slots, wrong)]
  heap = [(0, -w[0][1].scores[score_key], p) for p, w in enumerate(wrong) if can[p] > 0]
  heapq.heapify(heap)
  while total > 0 and heap:
    _, _, p = heapq.heappop(heap)
    quota[p] += 1
    total -= 1
    if quota[p] < can[p]:
      heapq.heappush(heap, (quota[p], -wrong[p][quota[p]][1].scores[score_key], p))
  return quota


def select_uniform(pool: Iterable[Solution], k: int, seed: int) -> list[Solution]:
  """Up to `k` distinct solutions per problem, uniformly at random: the control."""
  rng = np.random.default_rng(seed)
  by_problem: dict[str, list[tuple[int, Solution]]] = {}
  for i, s in enumerate(pool):
    by_problem.setdefault(s.problem_id, []).append((i, s))
  chosen = []
  for items in by_problem.values():
    unique = _unique(items)
    chosen += [unique[j] for j in rng.permutation(len(unique))[:k]]
  return [s for _, s in sorted(chosen, key=lambda x: x[0])]


def _unique(items):
  seen, out = set(), []
  for i, s in items:
    if tuple(s.steps) not in seen:
      seen.add(tuple(s.steps))
      out.append((i, s))
  return out


# ----------------------------------------------------------------------------- the loop

def _read(path):
  from prm_jax.records import read_solutions
  return list(read_solutions(path))


def _cached(path: str, make: Callable[[], list[Solution]]) -> list[Solution]:
  """Reads `path` if an earlier run wrote it, else makes and writes it (atomically)."""
  from prm_jax.records import write_jsonl
  if os.path.exists(path):
    return _read(path)
  records = make()
  write_jsonl(path, records)
  return records


def _strip(s: Solution) -> Solution:
  return dataclasses.replace(s, scores=None, step_labels=None, meta=dict(s.meta))


class ActiveLearning:
  """`prm-jax active-learn`: generations of sample -> score -> select -> label -> retrain -> evaluate.

  `config` is a full training config (its `train` section trains each generation's PRM from
  `generator`, the base model) with an `active` section (see configs/base.py).
  """

  def __init__(self, config, generator: str, pool_problems: Sequence[Problem],
               eval_problems: Sequence[Problem], out_dir: str, labeller=None,
               log: Callable[[str], None] = print):
    self.config, self.ac, self.generator = config, config.active, generator
    self.pool_problems, self.eval_problems = list(pool_problems), list(eval_problems)
    self.out, self.log = out_dir, log
    if not self.pool_problems or not self.eval_problems:
      raise ValueError("active learning needs pool problems and evaluation problems")
    if self.ac.generations < 1:
      raise ValueError(f"active.generations={self.ac.generations} must be >= 1")
    self.ns = [int(x) for x in str(self.ac.eval_n).split(",") if x.strip()]
    if max(self.ns) > self.ac.eval_samples:
      raise ValueError(f"active.eval_n {self.ns} exceeds active.eval_samples={self.ac.eval_samples}")
    self._sampler = None
    self.labeller = labeller
    os.makedirs(out_dir, exist_ok=True)

  # -- shared pieces, built lazily so a finished run resumes without loading models
  def sampler(self):
    if self._sampler is None:
      from prm_jax.sampling import Sampler
      self._sampler = Sampler.from_run(self.generator, self.config)
    return self._sampler

  def get_labeller(self, gen_dir: str):
    if self.labeller is not None:
      return self.labeller
    from prm_jax.labellers import make_labeller
    return make_labeller(self.ac.labeller, gen_dir, sampler=self.sampler,
                         rollouts=self.ac.rollouts, seed=self.config.seed, config=self.config)

  def eval_pool(self) -> list[Solution]:
    def make():
      self.log(f"sampling the evaluation pool: {self.ac.eval_samples} per problem for "
               f"{len(self.eval_problems)} problems")
      sols = self.sampler().sample(self.eval_problems, self.ac.eval_samples,
                                   seed=self.config.seed + 1_000_003, progress=True)
      if self.ac.eval_labeller:
        from prm_jax.labellers import make_labeller
        sols = make_labeller(self.ac.eval_labeller, self.out, config=self.config).label(sols)
      return sols
    return _cached(os.path.join(self.out, "eval_samples.jsonl"), make)

  def pool(self, gen: int) -> list[Solution]:
    per = self.ac.problems_per_generation
    n = len(self.pool_problems)
    problems = [self.pool_problems[(gen * per + i) % n] for i in range(min(per, n))]

    def make():
      self.log(f"generation {gen}: sampling {self.ac.samples_per_problem} per problem for "
               f"{len(problems)} problems")
      return self.sampler().sample(problems, self.ac.samples_per_problem,
                                   seed=self.config.seed + gen, progress=True)
    return _cached(os.path.join(self.out, "pools", f"gen{gen}.jsonl"), make)

  def gen_dir(self, strategy: str, gen: int) -> str:
    return os.path.join(self.out, "gen0" if gen == 0 else os.path.join(strategy, f"gen{gen}"))

  # -- one generation
  def train_prm(self, workdir: str, labelled: list[Solution]) -> str:
    """Each generation's PRM, retrained from the start: from train.init_from, else the generator."""
    from prm_jax.runs import RunDir
    from prm_jax.train.loop import train_run
    if not RunDir(workdir).finished():
      train_run(self.config, workdir, "prm", records=labelled,
                desc=os.path.relpath(workdir, self.out),
                init_from=self.config.train.get("init_from") or self.generator)
    return workdir

  def evaluate(self, prm_dir: str, gen_dir: str) -> dict:
    from prm_jax import evaluation
    from prm_jax.records import write_jsonl
    from prm_jax.scoring import Scorer
    scorer = Scorer.from_run(prm_dir, self.config)
    scored = list(scorer.score([dataclasses.replace(x, scores=None) for x in self.eval_pool()]))
    write_jsonl(os.path.join(gen_dir, "eval_scored.jsonl"), scored)
    bon = evaluation.best_of_n(evaluation.build_pools(scored), self.ns, self.ac.eval_trials,
                               self.config.seed)
    process = None
    if any(x.step_labels is not None for x in scored):
      p = evaluation.process_eval(scored)
      process = {"f1": p["test"]["f1"], "step_auroc": p["step_auroc"], "threshold": p["threshold"],
                 "ece": p["calibration"]["ece"]}
    return {"bon": bon, "process": process}

  def generation(self, strategy: str, gen: int, labelled_before: list[Solution],
                 prev_prm: str | None) -> tuple[dict, list[Solution], str]:
    d = self.gen_dir(strategy, gen)
    done = os.path.join(d, "eval.json")
    labelled_path = os.path.join(d, "labelled.jsonl")
    if os.path.exists(done):  # finished earlier: resume after it
      with open(done) as f:
        record = json.load(f)
      return record, labelled_before + _read(labelled_path), os.path.join(d, "prm")
    t0 = time.perf_counter()
    os.makedirs(d, exist_ok=True)
    pool = self.pool(gen)
    k = max(1, self.ac.budget // max(1, len({s.problem_id for s in pool})))
    seen = {(s.problem_id, tuple(s.steps)) for s in labelled_before}
    fresh = [_strip(s) for s in pool if (s.problem_id, tuple(s.steps)) not in seen]

    def select():
      if strategy == "uniform" or prev_prm is None:
        chosen = select_uniform(fresh, k, seed=self.config.seed + 7919 * gen)
      else:
        from prm_jax.scoring import Scorer
        scorer = Scorer.from_run(prev_prm, self.config)
        chosen = select_convincing_wrong_answers(scorer.score(fresh), k, self.ac.frac_wrong)
      return chosen[:self.ac.budget]
    selected = _cached(os.path.join(d, "selected.jsonl"), select)
    self.log(f"{strategy} generation {gen}: labelling {len(selected)} solutions "
             f"({sum(s.is_correct is False for s in selected)} with a wrong answer)")
    labelled = _cached(labelled_path, lambda: self.get_labeller(d).label(selected))
    total = labelled_before + labelled
    prm = self.train_prm(os.path.join(d, "prm"), total)
    result = self.evaluate(prm, d)
    record = {"strategy": strategy, "generation": gen, "labelled_new": len(labelled),
              "labelled_total": len(total),
              "wrong_answer_fraction": float(np.mean([s.is_correct is False for s in labelled])),
              "prm_best_of_max_n": result["bon"]["methods"]["prm"]["mean"][-1],
              "seconds": time.perf_counter() - t0, **result}
    write_json(done, record)
    return record, total, prm

  def run(self) -> dict:
    self.eval_pool()
    strategies = ["active"] + (["uniform"] if self.ac.uniform_control else [])
    runs: dict[str, list[dict]] = {}
    gen0 = self.generation("active", 0, [], None)
    for strategy in strategies:
      record, labelled, prm = gen0
      runs[strategy] = [dict(record, strategy=strategy)]
      for gen in range(1, self.ac.generations):
        record, labelled, prm = self.generation(strategy, gen, labelled, prm)
        runs[strategy].append(record)
        self.log(f"{strategy} generation {gen}: PRM best-of-{self.ns[-1]} "
                 f"{100 * record['prm_best_of_max_n']:.1f}% with {record['labelled_total']} labels")
    from prm_jax import distributed, sharding
    summary = {"n": self.ns, "budget": self.ac.budget, "labeller": self.ac.labeller,
               "generations": self.ac.generations,
               **distributed.mesh_summary(sharding.make_mesh(self.config.mesh)),
               "strategies": {s: [{k: v for k, v in r.items() if k != "bon"} | {
                   "prm_mean": r["bon"]["methods"]["prm"]["mean"],
                   "majority_mean": r["bon"]["methods"]["majority"]["mean"]} for r in rs]
                   for s, rs in runs.items()}}
    write_json(os.path.join(self.out, "active_learning.json"), summary)
    write_text(os.path.join(self.out, "active_learning.md"), markdown_table(summary) + "\n")
    plot(summary, os.path.join(self.out, "active_learning.png"))
    return summary


def markdown_table(summary: dict) -> str:
  n = summary["n"][-1]
  lines = [f"| selection | generation | labelled solutions | wrong-answer share | PRM best-of-{n} (%) "
           "| step AUROC |", "|---|---|---|---|---|---|"]
  for s, rs in summary["strategies"].items():
    for r in rs:
      auc = f"{r['process']['step_auroc']:.3f}" if r.get("process") else "—"
      lines.append(f"| {s} | {r['generation']} | {r['labelled_total']} | "
                   f"{100 * r['wrong_answer_fraction']:.0f}% | {100 * r['prm_best_of_max_n']:.1f} "
                   f"| {auc} |")
  return "\n".join(lines)


def plot(summary: dict, path: str) -> None:
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(5, 3.8), dpi=120)
  for s, rs in summary["strategies"].items():
    ax.plot([r["labelled_total"] for r in rs], [100 * r["prm_best_of_max_n"] for r in rs],
            marker="o", label=f"{s} selection")
  ax.set_xlabel("labelled solutions (cumulative)")
  ax.set_ylabel(f"PRM best-of-{summary['n'][-1]} solve rate (%)")
  ax.set_title("Active learning vs uniform selection")
  ax.grid(alpha=0.3)
  ax.legend()
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
