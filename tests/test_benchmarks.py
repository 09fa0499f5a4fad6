"""ProcessBench and PRMBench read in their own layouts (auto-detected), and `process-eval` reporting
them the way their papers do, checked against closed forms."""

import dataclasses
import json
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from prm_jax.data.benchmarks import read_prmbench, read_processbench, sniff
from prm_jax.data.commands import open_records
from prm_jax.evaluation import process_eval, processbench_subsets, prmbench_scores
from prm_jax.records import DataError, write_jsonl
from tests.conftest import FIXTURES

PRM_JAX = str(pathlib.Path(sys.executable).parent / "prm-jax")
PB = FIXTURES / "processbench"
PRMB = FIXTURES / "prmbench" / "prm800k_test_p1_4o_confidence.sample.jsonl"


def test_processbench_items_become_labelled_solutions(tmp_path):
  items = json.loads((PB / "gsm8k.sample.json").read_text())
  sols = list(open_records(str(PB / "gsm8k.sample.json")))  # auto-detected
  assert sniff(str(PB / "gsm8k.sample.json")) == "processbench" and len(sols) == len(items) == 10
  for s, item in zip(sols, items):
    k, n = item["label"], len(item["steps"])
    assert s.problem_id == item["id"] and s.steps == item["steps"]
    assert s.step_labels == ([1] * n if k < 0 else [1] * k + [-1] + [None] * (n - k - 1))
    assert s.meta["subset"] == "gsm8k" and s.is_correct == item["final_answer_correct"]
  bad = tmp_path / "bad.json"
  bad.write_text(json.dumps(items[:2] + [dict(items[2], label=99)]))
  with pytest.raises(DataError, match=r"bad.json: item 2: 'label' must be -1 or a step index"):
    list(read_processbench(str(bad)))
  assert len(list(read_processbench(str(bad), skip_invalid=True))) == 2


def test_prmbench_lines_label_every_step(tmp_path):
  rows = [json.loads(l) for l in PRMB.read_text().splitlines()]
  sols = list(open_records(str(PRMB)))
  assert sniff(str(PRMB)) == "prmbench" and len(sols) == len(rows)
  for s, row in zip(sols, rows):
    assert s.problem_id == f"confidence_{row['idx']}" and s.steps == row["modified_process"]
    assert s.step_labels == [-1 if i + 1 in row["error_steps"] else 1 for i in range(len(s.steps))]
    assert s.meta["subset"] == s.meta["classification"] == "confidence"
  red = dict(rows[0], classification="redundency")  # the loader adds its original solution, once
  path = tmp_path / "red.jsonl"
  path.write_text(json.dumps(red) + "\n" + json.dumps(red) + "\n")
  sols = list(read_prmbench(str(path)))
  assert [s.problem_id for s in sols] == [f"correct_{red['idx']}", f"redundency_{red['idx']}"]
  assert sols[0].step_labels == [1] * len(red["original_process"])
  assert [s.meta["subset"] for s in sols] == ["correct", "redundency"]


def scored_processbench(probs_for):
  """Every ProcessBench sample item, scored by `probs_for(solution) -> [P(ok) per step]`."""
  out = []
  for subset in ("gsm8k", "math", "olympiadbench", "omnimath"):
    for s in read_processbench(str(PB / f"{subset}.sample.json")):
      out.append(dataclasses.replace(s, scores={"prm_steps": probs_for(s)}))
  return out


def test_processbench_table_is_the_papers_with_a_fixed_threshold(tmp_path):
  """A PRM that flags exactly the labelled step (0.1) and trusts the rest (0.9) is right on every
  item; one that trusts everything is right only on the all-correct items: F1 = 2ab/(a+b)."""
  def perfect(s):
    k = s.meta["label"]
    return [0.1 if i == k else 0.9 for i in range(len(s.steps))]
  r = process_eval(scored_processbench(perfect), threshold=0.5)
  assert r["threshold_chosen_on"] == "fixed" and r["num_test"] == 40
  assert set(r["processbench"]) == {"gsm8k", "math", "olympiadbench", "omnimath", "average_f1"}
  for subset, m in processbench_subsets(r["processbench"]).items():
    assert set(m) == {"f1", "acc_erroneous", "acc_correct", "n_erroneous", "n_correct"}
    assert (m["acc_erroneous"], m["acc_correct"], m["f1"]) == (1.0, 1.0, 1.0), subset
    assert (m["n_erroneous"], m["n_correct"]) == (6, 4)
  assert r["processbench"]["average_f1"] == 1.0
  trusting = process_eval(scored_processbench(lambda s: [0.9] * len(s.steps)), threshold=0.5)
  for m in processbench_subsets(trusting["processbench"]).values():
    assert m["acc_erroneous"] == 0.0 and m["acc_correct"] == 1.0 and m["f1"] == 0.0
  # a PRM that flags the step before the error is wrong on erroneous items whose label > 0
  early = process_eval(scored_processbench(
      lambda s: [0.1 if i == max(s.meta["label"] - 1, 0) and s.meta["label"] >= 0 else 0.9
                 for i in range(len(s.steps))]), threshold=0.5)
  for subset, m in processbench_subsets(early["processbench"]).items():
    items = json.loads((PB / f"{subset}.sample.json").read_text())
    zero = sum(x["label"] == 0 for x in items)
    a = zero / 6
    assert m["acc_erroneous"] == pytest.approx(a) and m["acc_correct"] == 1.0
    assert m["f1"] == pytest.approx(2 * a / (a + 1)) if a else m["f1"] == 0.0


def test_prmbench_score_closed_form():
  sols = list(open_records(str(PRMB)))
  rng = np.random.default_rng(0)
  scored = [dataclasses.replace(s, scores={"prm_steps": rng.random(len(s.steps)).tolist()})
            for s in sols]
  got = prmbench_scores(scored, 0.5)["confidence"]
  tp = fp = tn = fn = 0
  for s in scored:
    for p, l in zip(s.scores["prm_steps"], s.step_labels):
      tp += p >= 0.5 and l == 1
      fp += p >= 0.5 and l == -1
      tn += p < 0.5 and l == -1
      fn += p < 0.5 and l == 1
  f1, neg = 2 * tp / (2 * tp + fp + fn), 2 * tn / (2 * tn + fn + fp)
  assert got["f1"] == pytest.approx(f1) and got["negative_f1"] == pytest.approx(neg)
  assert got["prmscore"] == pytest.approx((f1 + neg) / 2) and got["steps"] == tp + fp + tn + fn


def test_process_eval_command_prints_and_writes_the_tables(tmp_path):
  scored = tmp_path / "scored.jsonl"
  write_jsonl(str(scored), scored_processbench(lambda s: [0.9] * len(s.steps)) + [
      dataclasses.replace(s, scores={"prm_steps": [0.2] * len(s.steps)})
      for s in open_records(str(PRMB))])
  out = tmp_path / "eval"
  p = subprocess.run([PRM_JAX, "process-eval", f"--input={scored}", f"--output={out}",
                      "--config.eval.threshold=0.5"], capture_output=True, text=True, timeout=300)
  assert p.returncode == 0, p.stderr[-2000:]
  assert "| F1 | 0.0 | 0.0 | 0.0 | 0.0 | 0.0 |" in p.stdout  # all trusted: no error found
  result = json.loads((out / "process.json").read_text())
  assert set(result["processbench"]) == {"gsm8k", "math", "olympiadbench", "omnimath", "average_f1"}
  assert result["processbench"]["average_f1"] == 0.0  # PRMBench rows are not a ProcessBench subset
  assert result["prmbench"]["confidence"]["f1"] == 0.0  # every PRMBench step called invalid
  md = (out / "process.md").read_text()
  assert "ProcessBench (earliest-error identification, threshold 0.50)" in md
  assert "| confidence |" in md and "threshold (fixed) | 0.50" in md
