"""Data-layer throughput on one core: PRM800K rows read + step-aware tokenized per second, and
answer-grading calls per second (the hand-reasoned table of tests/test_grading.py, cycled).

    python scripts/bench_data.py [--rows 5000]
Reported against a peer measured in the same run: plain `json.loads` of the same lines (the floor
any reader pays) and string equality of the normalised answers (the floor any grader pays).
"""

import argparse
import json
import os
import pathlib
import sys
import tempfile
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
os.environ.setdefault("JAX_PLATFORMS", "cpu")

from prm_jax.data.pipeline import tokenize  # noqa: E402
from prm_jax.data.prm800k import expand_alternatives, read_prm800k  # noqa: E402
from prm_jax.grading import grade_answer, normalize  # noqa: E402
from prm_jax.tokenizer import train_sentencepiece  # noqa: E402
from tests.test_grading import CASES  # noqa: E402


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--rows", type=int, default=5000)
  ap.add_argument("--grades", type=int, default=20000)
  args = ap.parse_args()
  fixtures = ROOT / "tests" / "fixtures" / "prm800k"
  lines = [l for f in ("phase1_train.thirdparty_examples.jsonl", "phase2_train.thirdparty_examples.jsonl")
           for l in (fixtures / f).read_text().splitlines()]
  with tempfile.TemporaryDirectory() as d:
    path = os.path.join(d, "rows.jsonl")
    with open(path, "w") as f:
      for i in range(args.rows):
        f.write(lines[i % len(lines)] + "\n")
    sols = list(read_prm800k(path, grade=False))
    tok = train_sentencepiece([s.problem + "\n" + s.text for s in sols[:len(lines)]], vocab_size=2000)

    t = time.perf_counter()
    n_json = sum(1 for line in open(path) if json.loads(line))
    t_json = time.perf_counter() - t

    t = time.perf_counter()
    n_ex = 0
    for s in expand_alternatives(read_prm800k(path, grade=True)):
      n_ex += tokenize(tok, s, 2048) is not None
    t_read = time.perf_counter() - t

  cases = [(g, tr) for g, tr, _ in CASES if g is not None and tr is not None]
  calls = [cases[i % len(cases)] for i in range(args.grades)]
  t = time.perf_counter()
  for g, tr in calls:
    grade_answer(g, tr)
  t_grade = time.perf_counter() - t
  t = time.perf_counter()
  for g, tr in calls:
    normalize(g) == normalize(tr)
  t_norm = time.perf_counter() - t

  print(f"read+grade+tokenize: {args.rows / t_read:,.0f} PRM800K rows/s ({n_ex / t_read:,.0f} "
        f"training examples/s incl. alternatives); json.loads alone: {n_json / t_json:,.0f} rows/s "
        f"(ratio {t_read / t_json:.1f}x)")
  print(f"grade_answer: {args.grades / t_grade:,.0f} calls/s; normalise+compare alone: "
        f"{args.grades / t_norm:,.0f} calls/s (ratio {t_grade / t_norm:.1f}x)")


if __name__ == "__main__":
  main()
