"""Released reward models scored in one forward pass per packed row, against the reference torch
computation of each model card's recipe (fixtures made by scripts/make_hf_fixtures.py): a TRL-style
token classifier, the Qwen2.5-Math-PRM layout, an LM read as a PRM (Math-Shepherd), a sequence
classifier as an ORM; packing on and off."""

import json

import numpy as np
import pytest

from prm_jax import sharding
from prm_jax.configs import base
from prm_jax.data.benchmarks import read_processbench
from prm_jax.model import HeadSpec, RewardModel
from prm_jax.model.hf_import import load_hf_reward_model
from prm_jax.scoring import Scorer
from tests.conftest import FIXTURES, HF_FIXTURES, forward

CASES = {  # fixture -> score.convention
    "qwen2_token_cls": "", "qwen2_process_rm": "", "qwen2_lm_prm": "lm", "llama_seq_cls_orm": ""}


def items():
  out = {}
  for subset in ("gsm8k", "math"):
    out.update({s.problem_id: s for s in read_processbench(
        str(FIXTURES / "processbench" / f"{subset}.sample.json"))})
  return out


@pytest.mark.parametrize("pack", [True, False], ids=["packed", "one_per_row"])
@pytest.mark.parametrize("name", list(CASES))
def test_step_probabilities_equal_the_reference_recipe(name, pack):
  expected = json.loads((HF_FIXTURES / name / "expected_steps.json").read_text())
  c = base.get_config()
  c.score.update(dict(seq_len=2048, rows=8, pack=pack, convention=CASES[name]))
  scorer = Scorer.from_run(f"hf:{HF_FIXTURES / name}", c)
  by_id = items()
  sols = [by_id[e["id"]] for e in expected["items"]]
  for s, e in zip(sols, expected["items"]):  # the layout is the recipe's, token for token
    ours = scorer.format.encode(scorer.tok, s.problem, s.steps).tokens.tolist()
    # (a complete solution ends with the format's closing; where the recipe stops at the last
    # tag, the EOS after it cannot change a causal model's scores at the tags)
    assert ours == e["ids"] or ours == e["ids"] + [scorer.tok.eos_id], e["id"]
  got = list(scorer.score(sols))
  worst = 0.0
  for s, e in zip(got, expected["items"]):
    ours = [s.scores["orm"]] if scorer.kind == "orm" else s.scores["prm_steps"]
    assert len(ours) == len(e["probs"])
    worst = max(worst, float(np.max(np.abs(np.asarray(ours) - np.asarray(e["probs"])))))
  assert worst <= 1e-4, worst


def test_load_hf_reward_model_gives_per_token_logits_and_refuses_the_unknown(tmp_path):
  mesh = sharding.make_mesh((8, 1, 1))
  rm = load_hf_reward_model(str(HF_FIXTURES / "qwen2_process_rm"), mesh=mesh, rules=base.RULES)
  assert isinstance(rm, RewardModel) and rm.spec == HeadSpec(2, hidden=True)
  logits = forward(rm, np.arange(12, dtype=np.int32).reshape(2, 6))
  assert logits.shape == (2, 6, 2)
  orm = load_hf_reward_model(str(HF_FIXTURES / "llama_seq_cls_orm"), mesh=mesh, rules=base.RULES)
  assert orm.kind == "orm" and forward(orm, np.zeros((1, 4), np.int32)).shape == (1, 4, 1)
  bad = tmp_path / "bad"
  bad.mkdir()
  cfg = json.loads((HF_FIXTURES / "qwen2_token_cls" / "config.json").read_text())
  cfg["architectures"] = ["GPT2ForTokenClassification"]
  (bad / "config.json").write_text(json.dumps(cfg))
  with pytest.raises(ValueError, match="unsupported architecture 'GPT2ForTokenClassification'; "
                                       "supported: LlamaForCausalLM.*Qwen2ForProcessRewardModel"):
    load_hf_reward_model(str(bad), mesh=mesh, rules=base.RULES)
  with pytest.raises(ValueError, match="is a causal LM: score with it as a PRM by setting "
                                       "score.convention=lm"):
    load_hf_reward_model(str(HF_FIXTURES / "qwen2_lm_prm"), mesh=mesh, rules=base.RULES)
