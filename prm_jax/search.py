"""PRM-guided search: step-level beam search, DVTS and best-of-N on the jitted KV-cache sampler.

A batch holds `search.n` rows per problem. Each round the generator decodes one step in every live
row (it stops at the step format's step end: `step_tables`), the PRM scores the new step against
its own cached prefix, and the search keeps prefixes by the aggregate of their step scores:
  beam       the best n / beam_width of a problem's n candidates, each copied to beam_width rows;
  dvts       n / beam_width independent subtrees of beam_width rows: each keeps its best candidate
             and expands it again (a subtree ends when its best candidate is a finished solution);
  best_of_n  every row keeps its own candidate: n independent samples, picked at the end.
With `search.lookahead=k` a candidate is ranked after k more greedy steps (rolled, scored, undone).
Finished candidates (EOS or the answer line) are collected; the pick is the best aggregate or the
answer with the largest summed aggregate (`search.pick`). Keeping a prefix copies its cache rows
(generator and PRM) to its children's rows, so no prefix is prefilled twice; `search.reuse_cache=
False` runs the same search re-prefilling every prefix each round and re-scoring whole prefixes
(the benchmark's peer and the tests' reference). Every row's randomness is its own key (seed,
problem, row, round): a problem's search does not depend on the batch it ran in.
"""

from __future__ import annotations

import dataclasses
from typing import Iterable, Iterator, Sequence

import jax
import numpy as np

from prm_jax.records import Problem, Solution
from prm_jax.sampling import Sampler, row_keys
from prm_jax.scoring import Scorer
from prm_jax.search_rows import ANSWER, EOS, RUNNING, STEP, GeneratorRows, PRMRows, step_tables

__all__ = ["ANSWER", "EOS", "RUNNING", "STEP", "SearchConfig", "Searcher", "aggregate", "pick",
           "search_to_file", "step_tables"]
METHODS = ("beam", "dvts", "best_of_n")
AGGREGATES = ("last", "min", "prod")
PICKS = ("best", "weighted_vote")


@dataclasses.dataclass(frozen=True)
class SearchConfig:
  """`config.search` (configs/base.py documents each field)."""

  method: str = "beam"
  n: int = 16
  beam_width: int = 4
  lookahead: int = 0
  max_steps: int = 40
  max_step_tokens: int = 64
  max_new_tokens: int = 512
  aggregate: str = "last"
  pick: str = "weighted_vote"
  batch_size: int = 64
  reuse_cache: bool = True

  def __post_init__(self):
    if self.method not in METHODS:
      raise ValueError(f"config.search.method={self.method!r}; expected one of {METHODS}")
    if self.aggregate not in AGGREGATES:
      raise ValueError(f"config.search.aggregate={self.aggregate!r}; expected one of {AGGREGATES}")
    if self.pick not in PICKS:
      raise ValueError(f"config.search.pick={self.pick!r}; expected one of {PICKS}")
    for name in ("n", "beam_width", "max_steps", "max_step_tokens", "max_new_tokens",
                 "batch_size"):
      if getattr(self, name) < 1:
        raise ValueError(f"config.search.{name}={getattr(self, name)} must be >= 1")
    if self.lookahead < 0:
      raise ValueError(f"config.search.lookahead={self.lookahead} must be >= 0")
    if self.method != "best_of_n" and self.n % self.beam_width:
      raise ValueError(f"config.search.n={self.n} must be a multiple of "
                       f"config.search.beam_width={self.beam_width}")

  @classmethod
  def from_config(cls, section) -> "SearchConfig":
    d = dict(section.to_dict() if hasattr(section, "to_dict") else section or {})
    return cls(**{f.name: d[f.name] for f in dataclasses.fields(cls) if f.name in d})


def aggregate(probs: Sequence[float], method: str) -> float:
  """A prefix's rank from its step P(ok): `scoring.aggregate_step_scores` on one solution (no
  steps: 0), with prod as a sum of logs (ranks without underflow)."""
  if not len(probs):
    return 0.0 if method != "prod" else -np.inf
  p = np.clip(np.asarray(probs, np.float64), 0.0, 1.0)
  if method == "last":
    return float(p[-1])
  if method == "min":
    return float(p.min())
  return float(np.sum(np.log(np.where(p > 0, p, 1.0)))) if (p > 0).all() else -np.inf


# ----------------------------------------------------------------------------- the search

def pick(answers: Sequence[str | None], scores: Sequence[float], rule: str, aggregate_of: str,
         mode: str = "prm800k") -> int:
  """The chosen candidate: the best aggregate (`best`), or the best of the answer whose
  candidates' aggregates (as probabilities) sum highest (`weighted_vote`; a candidate without an
  answer has no vote). Ties: the first."""
  from prm_jax.evaluation import group_answers
  scores = np.asarray(scores, np.float64)
  best = int(np.argmax(scores))
  if rule == "best":
    return best
  groups = group_answers(answers, mode)
  if (groups < 0).all():
    return best
  weight = np.exp(scores) if aggregate_of == "prod" else scores
  tally = np.zeros(groups.max() + 1)
  np.add.at(tally, groups[groups >= 0], weight[groups >= 0])
  members = np.flatnonzero(groups == int(np.argmax(tally)))
  return int(members[np.argmax(scores[members])])


def _num(x: float) -> float | None:
  return round(float(x), 5) if np.isfinite(x) else None


class Searcher:
  """PRM-guided search (module docstring): one picked `Solution` per problem.

      searcher = Searcher.from_run("runs/gen", "runs/prm", config)   # run directories or hf:PATH
      searcher = Searcher(Sampler(lm, tok, config), Scorer(prm, tok, config), config)
      solutions = searcher.search(problems, seed=0)   # meta.search: trace, finished, tokens

  Settings: `config.search` (method, n, beam_width, lookahead, ...); sampling temperature, top-k /
  top-p, prompt buckets and grading from `config.sample`. The generator and the PRM each read
  steps in their own run's step format and tokenizer. `prm` may also be a factory
  `(rows, SearchConfig) -> rows` of an object with `PRMRows`'s methods (a hand-made PRM).
  """

  def __init__(self, sampler: Sampler, prm, config=None):
    import math
    from prm_jax.configs import base
    config = config if config is not None else base.get_config()
    self.sc = sc = SearchConfig.from_config(config.get("search"))
    self.sampler = sampler
    unit = math.lcm(sc.n, sampler.div)
    self.rows = max(unit, sc.batch_size // unit * unit)
    self.per_batch = self.rows // sc.n
    self.gen = GeneratorRows(sampler, self.rows, sc, bool(config.sample.stop_at_answer))
    self.prm = (PRMRows(prm, self.rows, sc, sampler.buckets) if isinstance(prm, Scorer)
                else prm(self.rows, sc))

  @classmethod
  def from_run(cls, generator: str, prm: str, config=None) -> "Searcher":
    """Opens a generator run and a PRM run (or hf:PATHs) on the mesh of `config.mesh`."""
    return cls(Sampler.from_run(generator, config), Scorer.from_run(prm, config), config)

  def search(self, problems: Iterable[Problem], seed: int = 0, progress: bool = False
             ) -> list[Solution]:
    return [s for b in self.iter_batches(problems, seed, progress=progress) for s in b]

  def iter_batches(self, problems: Iterable[Problem], seed: int = 0, start: int = 0,
                   progress: bool = False) -> Iterator[list[Solution]]:
    """Lists of picked solutions in input order, one list per batch of problems, from problem
    `start` on (batches stay aligned to absolute positions: a resume writes the same rows)."""
    from tqdm.auto import tqdm
    from prm_jax import distributed
    problems, k = list(problems), self.per_batch
    bar = tqdm(total=len(problems), initial=start, desc=f"search ({self.sc.method})",
               unit=" problems", disable=not progress or not distributed.is_main())
    for lo in range(start // k * k, len(problems), k):
      out = self._search(problems[lo:lo + k], seed)
      batch = [s for i, s in enumerate(out, lo) if i >= start]
      bar.update(len(batch))
      yield batch
    bar.close()

  def _new_steps(self, r: int, done: int) -> list[str]:
    """Row r's steps after its first `done`: its text cut and split as the sampler does."""
    s, gen = self.sampler, self.gen.paths[r]
    gen = gen[:-1] if gen and gen[-1] == s.tok.eos_id else gen
    return s.format.split(s.stops.cut_text(s.tok.decode(gen))[0])[done:]

  def _search(self, chunk: list[Problem], seed: int) -> list[Solution]:
    sc, n, b, gen, prm = self.sc, self.sc.n, self.rows, self.gen, self.prm
    real = len(chunk)
    owner = np.minimum(np.arange(b) // n, real - 1)     # padding rows repeat the last problem
    live = np.arange(b) // n < real
    keys = row_keys(seed, [chunk[q].problem_id for q in owner], [r % n for r in range(b)])
    gen.processed[:], prm.processed[:] = 0, 0
    s = self.sampler
    gen.start([s.format.prompt(s.tok, chunk[q].problem) for q in owner],
              np.asarray(jax.random.key_data(keys)))
    prm.start([chunk[q].problem for q in owner])
    probs, steps = [[] for _ in range(b)], [0] * b      # each row's prefix: step P(ok), steps
    lineage, generated = owner * n, np.zeros(b, np.int64)
    pools, traces = [[] for _ in chunk], [[] for _ in chunk]
    la = sc.lookahead if sc.method != "best_of_n" else 0
    for t in range(sc.max_steps):
      if not live.any() or not (gen.room(1 + la) and prm.room(1 + la)):
        break
      _, lengths, kinds = gen.step(t, live)
      generated += np.where(live, lengths, 0)
      new = {int(r): self._new_steps(r, steps[r]) for r in np.flatnonzero(live)}
      got = prm.score(new)
      cand = {r: probs[r] + got[r] for r in new}
      cand_steps = {r: steps[r] + len(new[r]) for r in new}
      ended = {r: int(kinds[r]) for r in new}
      rank = {r: list(p) for r, p in cand.items()}
      if la:
        gen.mark()
        prm.mark()
        ahead = np.isin(np.arange(b), [r for r in new if ended[r] == STEP])
        seen = dict(cand_steps)
        for _ in range(la):
          if not ahead.any():
            break
          _, lengths, kinds = gen.step(t, ahead, greedy=True)
          generated += np.where(ahead, lengths, 0)
          more = {int(r): self._new_steps(r, seen[r]) for r in np.flatnonzero(ahead)}
          for r, p in prm.score(more).items():
            rank[r] += p
            seen[r] += len(more[r])
          ahead &= kinds == STEP
        gen.restore()
        prm.restore()
      parents, live = self._select(t, cand, rank, ended, new, pools, traces)
      probs = [list(cand.get(q, probs[q])) for q in parents]
      steps = [cand_steps.get(q, steps[q]) for q in parents]
      lineage = parents
      gen.select(parents)
      prm.select(parents)
    for q in range(real):   # prefixes still open when rounds or cache slots ran out
      open_rows = {int(lineage[r]): r for r in range(q * n, (q + 1) * n) if live[r]}
      pools[q] += [self._entry(r, probs[r], RUNNING) for r in open_rows.values()]
    return [self._finish(chunk[q], pools[q], traces[q], seed, {
        "generated": int(generated[q * n:(q + 1) * n].sum()),
        "generator_prefill": int(gen.processed[q * n:(q + 1) * n].sum()),
        "prm": int(prm.processed[q * n:(q + 1) * n].sum())}) for q in range(real)]

  def _entry(self, r: int, probs: list[float], ended: int) -> dict:
    return {"tokens": list(self.gen.paths[r]), "probs": list(probs), "ended": ended}

  def _select(self, t, cand, rank, ended, new, pools, traces):
    """Parents of the next round's rows and which rows are live; finished candidates go to their
    problem's pool; the round goes to its trace (each row's rank score, the rows kept and their
    new step, the rows finished)."""
    sc, n, m = self.sc, self.sc.n, self.sc.beam_width
    parents, live = np.arange(self.rows), np.zeros(self.rows, bool)
    score = {r: aggregate(p, sc.aggregate) for r, p in rank.items()}
    for q, pool in enumerate(pools):
      rows = range(q * n, (q + 1) * n)
      cands = [r for r in rows if r in score]
      if not cands:
        continue
      done = [r for r in cands if ended[r] != STEP]
      if sc.method == "dvts":        # each subtree of m rows keeps its best candidate
        finished, kept = [], []
        for g in range(q * n, (q + 1) * n, m):
          group = [r for r in cands if g <= r < g + m]
          if not group:
            continue
          best = max(group, key=lambda r: score[r])
          if ended[best] != STEP:
            finished.append(best)    # the subtree's solution: it ends here
            continue
          kept.append(best)
          parents[g:g + m], live[g:g + m] = best, True
      elif sc.method == "beam":      # the best n / m open prefixes, each copied to m rows
        finished = done
        kept, seen = [], set()      # distinct prefixes: n copies of one sample are one beam
        for r in sorted((r for r in cands if ended[r] == STEP), key=lambda r: -score[r]):
          if len(kept) < n // m and tuple(self.gen.paths[r]) not in seen:
            seen.add(tuple(self.gen.paths[r]))
            kept.append(r)
        if len(pool) + len(finished) >= n:
          kept = []
        for j, r in enumerate(rows):
          if kept:
            parents[r], live[r] = kept[j % len(kept)], True
      else:                          # best-of-N: every open row continues itself
        finished, kept = done, [r for r in cands if ended[r] == STEP]
        live[kept] = True
      pool += [self._entry(r, cand[r], ended[r]) for r in finished]
      traces[q].append({"step": t, "scores": [_num(score[r]) if r in score else None
                                              for r in rows],
                        "kept": [r - q * n for r in kept],
                        "kept_steps": ["\n".join(new[r]) for r in kept],
                        "finished": [r - q * n for r in finished]})
    return parents, live

  def _finish(self, p: Problem, pool: list[dict], trace: list, seed: int, tokens: dict) -> Solution:
    """The problem's picked solution, graded, with its search in `meta.search`."""
    sc, sols = self.sc, []
    for k, e in enumerate(pool):
      s = self.sampler._solution(p, k, (), e["tokens"], seed)
      pr = e["probs"]
      sols.append(dataclasses.replace(s, scores={
          "prm": float(np.prod(pr)) if pr else 0.0, "prm_log": aggregate(pr, "prod"),
          "prm_min": aggregate(pr, "min"), "prm_last": aggregate(pr, "last"), "prm_steps": pr}))
    agg = [aggregate(s.scores["prm_steps"], sc.aggregate) for s in sols]
    i = pick([s.answer for s in sols], agg, sc.pick, sc.aggregate, self.sampler.grading_mode)
    chosen = sols[i]
    meta = {"seed": seed, "num_tokens": chosen.meta["num_tokens"], "search": {
        "method": sc.method, "n": sc.n, "beam_width": sc.beam_width, "lookahead": sc.lookahead,
        "aggregate": sc.aggregate, "pick": sc.pick, "tokens": tokens, "picked": i,
        "finished": [{"answer": s.answer, "is_correct": s.is_correct, "score": _num(a),
                      "finish_reason": s.finish_reason, "steps": len(s.steps),
                      "num_tokens": s.meta["num_tokens"]} for s, a in zip(sols, agg)],
        "trace": trace}}
    return dataclasses.replace(chosen, meta=meta)


def search_to_file(searcher: Searcher, problems: Iterable[Problem], output: str, seed: int,
                   claim=None) -> dict:
  """`prm-jax search`: one picked solution per problem, streamed to `output` in input order, and
  resumed where an earlier run stopped (`distributed.ResumableOutput`: the rows already there must
  be this run's first rows: problem id, seed, method and n)."""
  from prm_jax import distributed
  problems, sc = list(problems), searcher.sc
  want = [p.problem_id for p in problems]

  def check_existing(i, s):
    if i >= len(want) or s.problem_id != want[i]:
      raise ValueError(f"{output}:{i + 1}: holds problem {s.problem_id!r}, but this run's row "
                       f"{i + 1} is {want[i] if i < len(want) else 'past the end'!r}: it was "
                       "written from other problems; choose another --output")
    got = s.meta.get("search") or {}
    ours = (seed, sc.method, sc.n, sc.beam_width, sc.lookahead, sc.aggregate)
    theirs = (s.meta.get("seed"), got.get("method"), got.get("n"), got.get("beam_width"),
              got.get("lookahead"), got.get("aggregate"))
    if theirs != ours:
      raise ValueError(f"{output}:{i + 1}: was searched with (seed, method, n, beam_width, "
                       f"lookahead, aggregate) = {theirs}, this run has {ours}: choose another "
                       "--output or the same settings")
  with distributed.ResumableOutput(output, check_existing, claim) as out:
    written = 0
    for batch in searcher.iter_batches(problems, seed, start=out.done, progress=True):
      out.write_all(batch)
      written += len(batch)
  return {"problems": len(problems), "resumed_from": out.done, "written": written,
          "repaired_tail_lines": out.dropped, **distributed.mesh_summary(searcher.sampler.mesh)}
