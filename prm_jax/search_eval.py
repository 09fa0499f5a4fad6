"""`prm-jax search-eval`: best-of-N, PRM-weighted best-of-N, beam search and DVTS at equal budgets.

Each method runs at each N (rows per problem) with `search_to_file` (so a stopped evaluation resumes
its searches), and every picking rule is applied to the same finished candidates (`meta.search.
finished`): `best` (the best aggregate), `weighted_vote` (the answer whose candidates' aggregates
sum highest) and, for best-of-N, majority voting. Compute is counted in tokens per problem: decoded
by the generator, prefilled by it (prompts, and prefixes when the cache is not reused), and run
through the PRM. Writes search_eval.json, search_eval.md and search_eval.png.
"""

from __future__ import annotations

import os
from typing import Sequence

import numpy as np

from prm_jax.records import Problem, Solution, read_solutions, write_json, write_text

TOKENS = ("generated", "generator_prefill", "prm")
LABELS = {("best_of_n", "majority"): "majority vote", ("best_of_n", "best"): "best-of-N (PRM)",
          ("best_of_n", "weighted_vote"): "weighted best-of-N (PRM)",
          ("beam", "best"): "beam search (best)", ("beam", "weighted_vote"): "beam search (weighted)",
          ("dvts", "best"): "DVTS (best)", ("dvts", "weighted_vote"): "DVTS (weighted)"}


def _tie_share(values: np.ndarray, correct: np.ndarray) -> float:
  """Share of the top-valued candidates that are correct: a tie counts as a fair coin among
  them, not as whichever came first."""
  top = values == values.max()
  return float(correct[top].mean())


def pick_accuracy(solutions: Sequence[Solution], rule: str, aggregate: str,
                  mode: str = "prm800k") -> float:
  """Accuracy of picking by `rule` (best | weighted_vote | majority) among each solution's
  finished candidates (`meta.search.finished`); a problem with none counts as wrong."""
  from prm_jax.evaluation import group_answers
  got = []
  for s in solutions:
    fin = s.meta["search"]["finished"]
    if not fin:
      got.append(0.0)
      continue
    correct = np.array([bool(f["is_correct"]) for f in fin])
    score = np.array([-np.inf if f["score"] is None else f["score"] for f in fin], np.float64)
    if rule == "best":
      got.append(_tie_share(score, correct))
      continue
    groups = group_answers([f["answer"] for f in fin], mode)
    if (groups < 0).all():
      got.append(_tie_share(score, correct) if rule != "majority" else 0.0)
      continue
    weight = np.ones_like(score) if rule == "majority" else (
        np.exp(score) if aggregate == "prod" else np.where(np.isfinite(score), score, 0.0))
    tally = np.zeros(groups.max() + 1)
    np.add.at(tally, groups[groups >= 0], weight[groups >= 0])
    ok = np.array([correct[groups == g].any() for g in range(len(tally))])
    got.append(_tie_share(tally, ok))
  return float(np.mean(got)) if got else 0.0


def summarise(solutions: Sequence[Solution], method: str, aggregate: str,
              mode: str = "prm800k") -> dict:
  """One search's accuracies (each picking rule) and mean tokens per problem."""
  rules = ("majority", "best", "weighted_vote") if method == "best_of_n" else (
      "best", "weighted_vote")
  tokens = {k: float(np.mean([s.meta["search"]["tokens"][k] for s in solutions]))
            for k in TOKENS}
  return {"accuracy": {r: pick_accuracy(solutions, r, aggregate, mode) for r in rules},
          "tokens_per_problem": tokens,
          "finished_per_problem": float(np.mean([len(s.meta["search"]["finished"])
                                                 for s in solutions])),
          "steps_per_solution": float(np.mean([len(s.steps) for s in solutions]))}


def run_search_eval(generator, prm, problems: Sequence[Problem], out_dir: str, config,
                    ns: Sequence[int], methods: Sequence[str]) -> dict:
  """Every method at every N on `problems` (the first `search.eval_problems` when > 0); each
  search's JSONL in `out_dir` (resumed when there), then the table and the plot. `generator` /
  `prm`: run directories or hf:PATHs, or an open Sampler / Scorer."""
  import time
  from prm_jax.configs import derive
  from prm_jax.sampling import Sampler
  from prm_jax.scoring import Scorer
  from prm_jax.search import METHODS, Searcher, search_to_file
  bad = [m for m in methods if m not in METHODS]
  if bad or not methods:
    raise ValueError(f"config.search.eval_methods={','.join(methods)!r}: expected a comma-"
                     f"separated subset of {METHODS}")
  k = int(config.search.eval_problems)
  problems = list(problems)[:k] if k > 0 else list(problems)
  if not problems:
    raise ValueError("search-eval: no problems to search")
  if any(p.answer is None for p in problems):
    raise ValueError("search-eval needs problems with answers (a Problem's `answer`)")
  os.makedirs(out_dir, exist_ok=True)
  sampler = generator if isinstance(generator, Sampler) else Sampler.from_run(generator, config)
  scorer = prm if isinstance(prm, Scorer) else Scorer.from_run(prm, config)
  result = {"problems": len(problems), "n": list(ns), "methods": list(methods),
            "beam_width": int(config.search.beam_width), "aggregate": config.search.aggregate,
            "lookahead": int(config.search.lookahead), "seed": int(config.seed),
            "generator": str(generator) if isinstance(generator, str) else None,
            "prm": str(prm) if isinstance(prm, str) else None,
            "models": {k: {"layers": m.cfg.num_layers, "dim": m.cfg.dim, "params": _params(m)}
                       for k, m in (("generator", sampler), ("prm", scorer))}, "runs": {}}
  t0 = time.perf_counter()
  for n in ns:
    for m in methods:
      c = derive(config, {"search.n": n, "search.method": m,
                          "search.beam_width": min(n, int(config.search.beam_width))})
      path = os.path.join(out_dir, f"{m}_n{n}.jsonl")
      t = time.perf_counter()
      search_to_file(Searcher(sampler, scorer, c), problems, path, int(config.seed))
      sols = list(read_solutions(path))
      r = summarise(sols, m, c.search.aggregate, sampler.grading_mode)
      r["seconds"] = round(time.perf_counter() - t, 1)
      result["runs"][f"{m}_n{n}"] = dict(r, method=m, n=n, output=path)
      print(f"search-eval: {m} n={n}: {r['accuracy']} in {r['seconds']}s", flush=True)
  result["seconds"] = round(time.perf_counter() - t0, 1)
  write_json(os.path.join(out_dir, "search_eval.json"), result)
  write_text(os.path.join(out_dir, "search_eval.md"), markdown_table(result) + "\n")
  plot(result, os.path.join(out_dir, "search_eval.png"))
  return result


def _params(model) -> int:
  import jax
  return int(sum(x.size for x in jax.tree.leaves(model.params)))


def curves(result: dict) -> dict[tuple[str, str], list[dict]]:
  """(method, rule) -> its runs in N order."""
  out: dict[tuple[str, str], list[dict]] = {}
  for n in result["n"]:
    for m in result["methods"]:
      r = result["runs"].get(f"{m}_n{n}")
      for rule in (r or {}).get("accuracy", {}):
        out.setdefault((m, rule), []).append(dict(r, rule=rule))
  return out


def markdown_table(result: dict) -> str:
  """Accuracy % per method and N, with generated / PRM tokens per problem."""
  ns = result["n"]
  head = "| method | " + " | ".join(f"N={n}: acc % (gen / PRM tokens)" for n in ns) + " |"
  lines = [f"Search at equal budgets: {result['problems']} problems, beam width "
           f"{result['beam_width']}, aggregate {result['aggregate']}, lookahead "
           f"{result['lookahead']}; tokens are per problem (generator decoded / PRM run)", "",
           head, "|---" * (len(ns) + 1) + "|"]
  for key, runs in curves(result).items():
    by_n = {r["n"]: r for r in runs}
    cells = []
    for n in ns:
      r = by_n.get(n)
      t = r and r["tokens_per_problem"]
      cells.append(f"{100 * r['accuracy'][r['rule']]:.1f} ({t['generated']:.0f} / "
                   f"{t['prm']:.0f})" if r else "")
    lines.append(f"| {LABELS.get(key, ' '.join(key))} | " + " | ".join(cells) + " |")
  return "\n".join(lines)


def plot(result: dict, path: str) -> None:
  """Accuracy vs generated tokens per problem (log x), one line per method and picking rule."""
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  fig, ax = plt.subplots(figsize=(6.4, 4.4), dpi=120)
  for key, runs in curves(result).items():
    x = [r["tokens_per_problem"]["generated"] for r in runs]
    y = [100 * r["accuracy"][r["rule"]] for r in runs]
    style = "--" if key[1] == "best" else ":" if key[1] == "majority" else "-"
    line, = ax.plot(x, y, style, marker="o", ms=3, label=LABELS.get(key, " ".join(key)))
    for r, xi, yi in zip(runs, x, y):
      ax.annotate(f"{r['n']}", (xi, yi), fontsize=6, color=line.get_color(),
                  textcoords="offset points", xytext=(2, 3))
  ax.set_xscale("log")
  ax.set_xlabel("generated tokens per problem (labels: N)")
  ax.set_ylabel("% problems solved")
  ax.set_title(f"PRM-guided search at equal budgets ({result['problems']} problems)")
  ax.grid(alpha=0.3)
  ax.legend(fontsize=7)
  fig.tight_layout()
  fig.savefig(path)
  plt.close(fig)
