"""The toy domain's oracle and the labellers (on the synthetic domain)."""

import json
import re

import numpy as np
import pytest

from prm_jax.configs import base
from prm_jax.data import synthetic
from prm_jax.labellers import (FileLabeller, LabelsPending, ModelLabeller, OracleLabeller,
                               RolloutLabeller)
from prm_jax.records import Solution
from prm_jax.sampling import Sampler
from prm_jax.scoring import Scorer
from prm_jax.train.loop import train
from tests.conftest import cached_build, tiny_train_config

P = "Start with 7, add 5, multiply by 3, subtract 4. What is the result?"


@pytest.mark.parametrize("steps,want", [
    (["7+5=12", "12*3=36", "36-4=32", "# Answer", "32"], [1, 1, 1, 1, 1]),
    (["7+5=12", "12=12", "12*3=36", "7+5=12", "36-4=32", "# Answer", "32"], [1, 0, 1, 0, 1, 1, 1]),
    (["Let me add first.", "7+5=12", "12*3=36", "36-4=32", "# Answer", "32"], [0, 1, 1, 1, 1, 1]),
    (["7+5=13", "13*3=39"], [-1, None]),                      # wrong arithmetic
    (["7+5=12", "11*3=33", "33-4=29"], [1, -1, None]),        # wrong carried value (right sum)
    (["7+5=12", "12-4=8", "8*3=24"], [1, -1, None]),          # operation out of order: a jump
    (["7+5=12", "12*3=36", "# Answer", "36"], [1, 1, -1, None]),  # premature answer
    (["7+5=12", "12*3=36", "36-4=32", "# Answer", "33"], [1, 1, 1, 1, -1]),  # wrong final answer
    (["7+5=12", "12*4=48"], [1, -1]),                         # an operation not in the problem
    (["7+5=12", "so the answer is 99"], [1, -1]),             # an unreadable claim
    # the sampler's steps (StepFormat.split): the answer line joins its header, PRM800K's way
    (["7+5=12", "12*3=36", "36-4=32", "# Answer\n\n32"], [1, 1, 1, 1]),
    (["7+5=12", "12*3=36", "36-4=32", "# Answer\n\n33"], [1, 1, 1, -1]),
    (["7+5=12", "12*3=36", "# Answer\n\n36"], [1, 1, -1]),  # premature, with its answer
])
def test_oracle_on_hand_made_steps(steps, want):
  assert synthetic.oracle_labels(P, steps) == want


def test_the_oracle_rates_a_right_sampled_solution_all_positive():
  """What the demo labels is the sampler's split of generated text, not the reference's lines."""
  from prm_jax.step_format import StepFormat
  fmt = StepFormat.from_config(base.get_config().format)
  for p in synthetic.make_problems(50, 8, levels=(0, 1)):
    ref = synthetic.reference_solution(p)
    steps = fmt.split(ref.text)
    assert steps[-1] == f"# Answer\n\n{p.answer}"
    assert synthetic.oracle_labels(p.problem, steps) == [1] * len(steps), steps


def test_problems_are_seeded_disjoint_and_reference_solutions_are_right():
  train_p, test_p = synthetic.train_test_problems(300, 80, seed=1)
  assert not {p.problem for p in train_p} & {p.problem for p in test_p}
  assert [p.problem for p in synthetic.make_problems(5, 1)] == [p.problem for p in train_p[:5]]
  assert {p.level for p in train_p} == {1, 2, 3}
  for p in train_p[:50]:
    n_ops = len(synthetic.parse_problem(p.problem)[1])
    assert 3 <= n_ops <= 8
    ref = synthetic.reference_solution(p)
    assert synthetic.oracle_labels(p.problem, ref.steps) == [1] * len(ref.steps)
    assert ref.answer == p.answer
  with pytest.raises(ValueError, match="not a synthetic problem"):
    synthetic.parse_problem("What is 2+2?")
  # level 0 keeps every intermediate value in 0..20 (a fact table a tiny verifier can learn)
  for p in synthetic.make_problems(200, 3, levels=(0,)):
    ref = synthetic.reference_solution(p)
    values = [int(step.split("=")[1]) for step in ref.steps[:-2]]
    assert len(values) == 3 and all(0 <= v <= 20 for v in values), ref.steps


def test_imperfect_solutions_cover_every_label():
  rng = np.random.default_rng(0)
  sols = [synthetic.imperfect_solution(p, rng) for p in synthetic.make_problems(200, 2)]
  labels = [l for s in sols for l in s.step_labels if l is not None]
  assert {-1, 0, 1} <= set(labels)
  assert 0.2 < np.mean([s.is_correct for s in sols]) < 0.8
  for s in sols:  # labelling stops at the first -1
    if -1 in s.step_labels:
      assert all(l is None for l in s.step_labels[s.step_labels.index(-1) + 1:])


def test_file_labeller_roundtrip_through_prm800k_format(tmp_path):
  sols = [synthetic.imperfect_solution(p, np.random.default_rng(3)) for p in
          synthetic.make_problems(4, 3)]
  lab = FileLabeller(str(tmp_path / "export.jsonl"), str(tmp_path / "labelled.jsonl"))
  with pytest.raises(LabelsPending, match="exported to"):
    lab.label(sols)
  rows = [json.loads(l) for l in (tmp_path / "export.jsonl").read_text().splitlines()]
  for row, s in zip(rows, sols):  # a "human" rates with the oracle's answers
    for step, r in zip(row["label"]["steps"], s.step_labels):
      step["completions"][0]["rating"] = r
  (tmp_path / "labelled.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows))
  back = lab.label(sols)
  assert [b.step_labels for b in back] == [s.step_labels for s in sols]
  assert all(b.meta["labeller"] == "human" for b in back)


@pytest.fixture(scope="module")
def prm(synthetic_generator):
  """The "larger PRM": the generator fine-tuned on oracle-labelled imperfect solutions. Its own
  model (the shared `runs` PRM is far too small to label well), cached on disk like the shared
  ones, keyed also by this file."""
  generator, tok, probs = synthetic_generator

  def build(root):
    rng = np.random.default_rng(4)
    labelled = [synthetic.imperfect_solution(p, rng) for p in probs for _ in range(4)]
    # as in the paper: start from the generator; negatives are rarer, weigh them
    train(tiny_train_config(root / "prm", "prm", 600, batch_size=32, init_from=generator,
                            class_weights=(4.0, 1.0, 1.0)), records=labelled, tokenizer=tok)

  return str(cached_build("labellers_prm", build, extra=[__file__]) / "prm")


def balanced_accuracy(labelled, gold):
  """Mean of P(labelled +1 | oracle +1) and P(labelled not +1 | oracle -1), on steps both rate."""
  pairs = [(x, y) for ls, gs in zip(labelled, gold) for x, y in zip(ls, gs)
           if x is not None and y in (-1, 1)]
  pos = [x == 1 for x, y in pairs if y == 1]
  neg = [x != 1 for x, y in pairs if y == -1]
  assert len(pos) > 20 and len(neg) > 10
  return 0.5 * (np.mean(pos) + np.mean(neg))


def held_out(n):
  rng = np.random.default_rng(5)
  sols = [synthetic.imperfect_solution(p, rng) for p in synthetic.make_problems(n, 99, levels=(1,))]
  return sols, [s.step_labels for s in OracleLabeller().label(sols)]


def test_model_labeller_thresholds_a_larger_prm(prm):
  """Stated margin: the labeller's step probabilities rank oracle-good above oracle-bad steps with
  AUROC >= 0.65 (0.5 = no information). Measured ~0.75: a 2-layer PRM trained for a minute learns
  the oracle's arithmetic only in part, so its thresholded labels are noisy (balanced accuracy ~0.55
  at 0.5) — the reason the paper's labelling PRM is much larger than the one it trains."""
  from prm_jax.evaluation import auroc
  sols, gold = held_out(300)
  c = base.get_config()
  c.score.update(dict(seq_len=128, rows=8))
  scorer = Scorer.from_run(prm, c)
  labelled = ModelLabeller(scorer, low=0.5, high=0.5).label(sols)
  pairs = [(p, g == 1) for s, gs in zip(labelled, gold)
           for p, g in zip(s.meta["label_probs"], gs) if g in (-1, 1)]
  assert sum(ok for _, ok in pairs) > 300 and sum(not ok for _, ok in pairs) > 100
  assert auroc(np.array([p for p, _ in pairs]), np.array([ok for _, ok in pairs])) >= 0.65
  three = ModelLabeller(scorer, low=0.3, high=0.7).label(sols[:40])
  for s in three:  # the documented thresholds, and nothing labelled after the first -1
    want = [-1 if p < 0.3 else 0 if p < 0.7 else 1 for p in s.meta["label_probs"]]
    cut = want.index(-1) + 1 if -1 in want else len(want)
    assert s.step_labels == want[:cut] + [None] * (len(want) - cut)
  with pytest.raises(ValueError, match="thresholds"):
    ModelLabeller(None, low=0.8, high=0.2)


def test_rollout_labeller_agrees_with_the_oracle(synthetic_generator):
  """Stated margin: balanced accuracy against the oracle >= 0.65 (0.5 = no information)."""
  sols, gold = held_out(120)
  c = base.get_config()
  c.sample.update(dict(batch_size=64, max_new_tokens=48, temperature=0.7))
  roll = RolloutLabeller(Sampler.from_run(synthetic_generator[0], c), m=4).label(sols)
  assert balanced_accuracy([r.step_labels for r in roll], gold) >= 0.65
  for r in roll:
    assert len(r.meta["soft_labels"]) == len(r.steps)
    hard = [1 if f > 0 else -1 for f in r.meta["soft_labels"]]  # hard = any rollout succeeds
    cut = hard.index(-1) + 1 if -1 in hard else len(hard)
    assert r.step_labels == hard[:cut] + [None] * (len(hard) - cut)


@pytest.mark.parametrize("a,op,b,name,wrong", [
    (13, "-", 5, "smaller_from_larger", 12), (20, "-", 4, "smaller_from_larger", 24),
    (10, "-", 1, "smaller_from_larger", 11), (15, "-", 3, "smaller_from_larger", None),  # no borrow
    (7, "-", 5, "smaller_from_larger", None), (13, "+", 5, "smaller_from_larger", None),
    (7, "+", 6, "forgotten_carry", 3), (18, "+", 5, "forgotten_carry", 13),
    (12, "+", 7, "forgotten_carry", None), (7, "*", 3, "forgotten_carry", None)])
def test_misconceptions_apply_only_where_their_trigger_holds(a, op, b, name, wrong):
  assert synthetic.MISCONCEPTIONS[name](a, op, b) == wrong


def test_training_references_carry_misconceptions_at_their_rate_and_the_oracle_flags_them():
  probs = synthetic.make_problems(3000, 5, levels=(0,))
  clean = [synthetic.training_solution(p, np.random.default_rng(0)) for p in probs[:200]]
  assert all(s.is_correct and s.step_labels == [1] * len(s.steps) for s in clean)
  assert [s.steps for s in clean] == [synthetic.reference_solution(p).steps for p in probs[:200]]
  rng = np.random.default_rng(1)
  refs = [synthetic.training_solution(p, rng, {"smaller_from_larger": 0.7}) for p in probs]
  rates = synthetic.misconception_rates(refs)
  k = rates["smaller_from_larger"]["steps"]
  assert k > 500 and abs(rates["smaller_from_larger"]["rate"] - 0.7) < 4 * (0.21 / k) ** 0.5
  assert rates["forgotten_carry"]["rate"] == 0.0
  wrong = synthetic.MISCONCEPTIONS["smaller_from_larger"]
  for s in refs:
    written = [re.fullmatch(r"(\d+)([-+*])(\d+)=(-?\d+)", line).groups() for line in s.steps[:-2]]
    bad = [i for i, (a, op, b, r) in enumerate(written) if wrong(int(a), op, int(b)) == int(r)]
    if s.meta["misconceptions"]:
      # the first misconceived step is the first -1, and the answer that follows is wrong
      assert s.step_labels.index(-1) == bad[0] and not s.is_correct, (s.steps, s.step_labels)
    else:
      assert s.is_correct and -1 not in s.step_labels and not bad
  with pytest.raises(ValueError, match="unknown misconception 'borrow'"):
    synthetic.training_solution(probs[0], rng, {"borrow": 0.5})
  with pytest.raises(ValueError, match="must be in"):
    synthetic.training_solution(probs[0], rng, {"forgotten_carry": 1.5})


def test_file_labeller_refuses_a_labelled_file_that_does_not_match_the_export(tmp_path):
  sols = [synthetic.imperfect_solution(p, np.random.default_rng(6)) for p in
          synthetic.make_problems(3, 6)]
  lab = FileLabeller(str(tmp_path / "export.jsonl"), str(tmp_path / "labelled.jsonl"))
  with pytest.raises(LabelsPending):
    lab.label(sols)
  rows = (tmp_path / "export.jsonl").read_text().splitlines()
  (tmp_path / "labelled.jsonl").write_text("\n".join(rows[:2]) + "\n")  # a row lost
  with pytest.raises(ValueError, match=r"labelled\.jsonl: 2 labelled rows for 3 exported"):
    lab.label(sols)
  (tmp_path / "labelled.jsonl").write_text("\n".join([rows[0], rows[2], rows[1]]) + "\n")
  with pytest.raises(ValueError, match=r"labelled\.jsonl:2: row does not match exported solution"):
    lab.label(sols)  # reordered rows would put one problem's labels on another's steps
  (tmp_path / "labelled.jsonl").write_text("\n".join(rows) + "\n")
  assert [s.step_labels for s in lab.label(sols)] == [[None] * len(s.steps) for s in sols]


def test_make_labeller_specs(tmp_path, prm, synthetic_generator):
  from prm_jax.labellers import make_labeller
  assert isinstance(make_labeller("oracle", str(tmp_path)), OracleLabeller)
  f = make_labeller("file", str(tmp_path))
  assert isinstance(f, FileLabeller)
  assert (f.export_path, f.labelled_path) == (str(tmp_path / "to_label.jsonl"),
                                              str(tmp_path / "labelled_by_humans.jsonl"))
  with pytest.raises(ValueError, match="the rollout labeller needs the generator's sampler"):
    make_labeller("rollout", str(tmp_path))
  c = base.get_config()
  c.score.update(dict(seq_len=128, rows=8))
  sampler = Sampler.from_run(synthetic_generator[0], c)
  r = make_labeller("rollout", str(tmp_path), sampler=lambda: sampler, rollouts=3, seed=9)
  assert isinstance(r, RolloutLabeller) and (r.sampler, r.m, r.seed) == (sampler, 3, 9)
  m = make_labeller(f"model:{prm}", str(tmp_path), config=c)
  assert isinstance(m, ModelLabeller) and (m.low, m.high) == (0.3, 0.7)
  assert isinstance(m.scorer, Scorer) and (m.scorer.kind, m.scorer.seq_len) == ("prm", 128)
  with pytest.raises(ValueError, match="holds a 'sft' model; scoring needs 'orm' or 'prm'"):
    make_labeller(f"model:{synthetic_generator[0]}", str(tmp_path), config=c)
  with pytest.raises(ValueError, match="unknown labeller 'model': expected oracle"):
    make_labeller("model", str(tmp_path))
