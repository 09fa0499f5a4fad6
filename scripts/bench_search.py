"""Beam search with cache reuse vs the same search re-scored from scratch, in one run.

Both run `prm_jax.search.Searcher` with the same config and seed; `search.reuse_cache=False`
re-prefills every prefix in the generator each round and re-scores every whole prefix with the PRM
(the usual host-side implementation of step-level search). Reports tokens run through each model,
seconds per search (after a warm-up that compiles every program), their ratios, steps per
solution, and whether the two picked the same solutions.

    python scripts/bench_search.py --generator RUN --prm RUN [--problems 8] [--level 3]
        [--n 16] [--beam-width 4] [--preamble 0] [--repeats 2]

`--level` draws synthetic problems (prm_jax/data/synthetic.py; level 3: 6-8 operations, so 7-9
steps); `--preamble K` puts K words of instructions before each problem (a few-shot prompt's
length), which the cached search prefills once per problem and the peer once per row per round.

The demo's generator writes few steps; the figures in README "Search" use a generator SFT'd on
level-3 references behind the same preamble, with the demo's tokenizer, and the demo's PRM:

    prm-jax demo --config.workdir=runs/search_demo
    python scripts/bench_search.py --make-generator runs/search_l3p \
        --tokenizer runs/search_demo/tokenizer.model --preamble 20
    python scripts/bench_search.py --generator runs/search_l3p --prm runs/search_demo/prm \
        --preamble 20
"""

import argparse
import json
import pathlib
import sys
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--generator")
  ap.add_argument("--prm")
  ap.add_argument("--make-generator", metavar="OUT", help="train the bench's generator into OUT")
  ap.add_argument("--tokenizer", help="with --make-generator: the tokenizer.model to train with")
  ap.add_argument("--problems", type=int, default=8)
  ap.add_argument("--level", type=int, default=3)
  ap.add_argument("--n", type=int, default=16)
  ap.add_argument("--beam-width", type=int, default=4)
  ap.add_argument("--preamble", type=int, default=0)
  ap.add_argument("--repeats", type=int, default=2)
  ap.add_argument("--max-steps", type=int, default=12)
  a = ap.parse_args()
  if a.make_generator:
    if not a.tokenizer:
      ap.error("--make-generator needs --tokenizer")
    make_generator(a.make_generator, a.tokenizer, a.level, a.preamble)
    return
  if not (a.generator and a.prm):
    ap.error("--generator and --prm are required (or --make-generator OUT --tokenizer TOK)")
  import dataclasses
  from prm_jax.configs import base
  from prm_jax.data import synthetic
  from prm_jax.sampling import Sampler
  from prm_jax.scoring import Scorer
  c = base.get_config()
  c.sample.update(dict(temperature=0.8, buckets=(64, 128, 256, 512, 1024, 2048)))
  c.search.update(dict(method="beam", n=a.n, beam_width=a.beam_width, batch_size=64,
                       max_step_tokens=24, max_new_tokens=256, max_steps=a.max_steps))
  problems = [dataclasses.replace(p, problem=preamble(a.preamble) + p.problem)
              for p in synthetic.make_problems(a.problems, 123, levels=(a.level,))]
  report = bench(Sampler.from_run(a.generator, c), Scorer.from_run(a.prm, c), problems, c,
                 a.repeats)
  report.update(level=a.level, preamble_words=a.preamble)
  print(json.dumps(report, indent=1))


def preamble(words: int) -> str:
  """`words` words of instructions and a newline (empty for 0): a few-shot prompt's length."""
  if not words:
    return ""
  return " ".join(" ".join(["Work one operation per line."] * (words // 5 + 1)).split()[:words]) + "\n"


def make_generator(out: str, tokenizer: str, level: int, words: int) -> None:
  """SFT the demo's generator config (seq 256, 400 steps) on level-`level` references behind
  the preamble: solutions of 7-9 steps, which the demo's own generator does not write."""
  import dataclasses
  from prm_jax.configs import demo, derive
  from prm_jax.data import synthetic
  from prm_jax.tokenizer import load_tokenizer
  from prm_jax.train.loop import train_run
  c = derive(demo.get_config(), {"model.max_seq_len": 256, "train.seq_len": 256,
                                 "train.steps": 400, "train.save_every": 400,
                                 "train.log_every": 100})
  refs = [dataclasses.replace(synthetic.reference_solution(p), problem=preamble(words) + p.problem)
          for p in synthetic.make_problems(3000, 7, levels=(level,))]
  print(train_run(c, out, "sft", refs, load_tokenizer(tokenizer))["history"][-1])


def bench(sampler, scorer, problems, config, repeats: int = 2) -> dict:
  """The same search with and without cache reuse: seconds (best of `repeats`, after a warm-up
  that compiles), tokens run through each model, and their ratios."""
  from prm_jax.configs import derive
  from prm_jax.search import Searcher
  results = {}
  for reuse in (True, False):
    searcher = Searcher(sampler, scorer, derive(config, {"search.reuse_cache": reuse}))
    searcher.search(problems, seed=0)                     # compiles every program it needs
    times = []
    for _ in range(repeats):
      t = time.perf_counter()
      out = searcher.search(problems, seed=0)
      times.append(time.perf_counter() - t)
    tokens = {k: sum(s.meta["search"]["tokens"][k] for s in out)
              for k in ("generated", "generator_prefill", "prm")}
    results[reuse] = {"seconds": min(times), "tokens": tokens, "out": out,
                      "steps": sum(len(s.steps) for s in out) / len(out)}
  hot, cold = results[True], results[False]
  same = all(x.steps == y.steps for x, y in zip(hot["out"], cold["out"]))
  run = lambda r: r["tokens"]["generated"] + r["tokens"]["generator_prefill"] + r["tokens"]["prm"]
  s = config.search
  return {
      "problems": len(problems), "n": s.n, "beam_width": s.beam_width,
      "steps_per_solution": round(hot["steps"], 2), "same_solutions": same,
      "cached": {"seconds": round(hot["seconds"], 3), **hot["tokens"]},
      "from_scratch": {"seconds": round(cold["seconds"], 3), **cold["tokens"]},
      "tokens_ratio": round(run(cold) / run(hot), 2),
      "prm_tokens_ratio": round(cold["tokens"]["prm"] / max(1, hot["tokens"]["prm"]), 2),
      "wall_ratio": round(cold["seconds"] / hot["seconds"], 2)}


if __name__ == "__main__":
  main()
