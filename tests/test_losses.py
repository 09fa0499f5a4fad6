"""Loss masks and modes on hand-made packed batches."""

import jax.numpy as jnp
import numpy as np
import pytest

from prm_jax.tokenizer import IGNORE
from prm_jax.train import losses

I = IGNORE


def batch(**kw):
  b = {"segment_ids": [[1, 1, 1, 1, 2, 2, 2, 0]], "positions": [[0, 1, 2, 3, 0, 1, 2, 0]],
       "loss_mask": [[0, 1, 1, 1, 0, 1, 1, 0]], "tokens": [[5, 6, 7, 8, 5, 6, 7, 0]],
       "step_label": [[I, 1, -1, 1, I, -1, 0, I]], "outcome": [[I, I, I, 1, I, I, 0, I]]}
  b.update(kw)
  return {k: jnp.asarray(v, jnp.int32) for k, v in b.items()}


def test_next_token_weights_stay_inside_segments():
  w = np.asarray(losses.next_token_weights(batch()))
  # predict token t+1 at t: solution tokens of the same segment only (not 8 -> 5, not padding)
  assert w.tolist() == [[1, 1, 1, 0, 1, 1, 0]]


def test_prm_ignores_steps_after_the_first_negative_per_segment():
  w = np.asarray(losses.prm_step_weights(batch()))
  assert w.tolist() == [[0, 1, 1, 0, 0, 1, 0, 0]]  # seg 1: +1, -1 (then ignored); seg 2: -1 only


def test_prm_modes_and_class_weights():
  b = batch(step_label=[[I, 1, -1, 1, I, 0, -1, I]])  # steps at 1, 2 | 5, 6 (3 follows a -1)
  logits = (jnp.zeros((1, 8, 3)).at[0, 1, 2].set(5.0).at[0, 2, 0].set(5.0)
            .at[0, 5, 2].set(5.0).at[0, 6, 0].set(5.0))
  # each supervised step puts logit 5 on one class and 0 on the other two:
  z = np.exp(5.0) + 2
  hit, miss = np.log(z) - 5.0, np.log(z)  # -log p of the 5-logit class, of a 0-logit class
  loss3, m3 = losses.prm_task_loss(logits, b)
  assert float(m3["steps"]) == 4
  assert float(m3["step_accuracy"]) == pytest.approx(3 / 4)  # neutral predicted positive: wrong
  assert float(loss3) == pytest.approx((3 * hit + miss) / 4, rel=1e-5)
  lb, mb = losses.prm_task_loss(logits, b, mode="binary")
  assert float(mb["step_accuracy"]) == pytest.approx(1.0)    # ...but "ok" when neutral counts as ok
  ok_big = np.log(z / (z - 1))  # -log P(ok) = -log(1 - p(neg)) where neg has a 0 logit
  assert float(lb) == pytest.approx((2 * ok_big + 2 * hit) / 4, rel=1e-5)
  lb2, mb2 = losses.prm_task_loss(logits, b, mode="binary", neutral_is_positive=False)
  assert float(mb2["step_accuracy"]) == pytest.approx(3 / 4)
  # P(ok) = p(+1): the +1 step costs `hit`, each -1 step log(z / (z - 1)), and the neutral step,
  # no longer ok, -log(1 - p(+1)) = log(z / 2)
  assert float(lb2) == pytest.approx((hit + 2 * ok_big + np.log(z / 2)) / 4, rel=1e-5)
  weighted, _ = losses.prm_task_loss(logits, b, class_weights=(10.0, 1.0, 1.0))
  # the -1 steps (class 0) weigh 10 each: (1 hit + 10 hit + 1 miss + 10 hit) / 22
  assert float(weighted) == pytest.approx((21 * hit + miss) / 22, rel=1e-5)
  with pytest.raises(ValueError, match="PRM loss mode 'focal'"):
    losses.prm_task_loss(logits, b, mode="focal")


def test_orm_final_token_and_all_tokens():
  b = batch()
  logits = jnp.zeros((1, 8, 1)).at[0, 3, 0].set(4.0).at[0, 6, 0].set(-4.0)
  loss, m = losses.orm_task_loss(logits, b)
  assert float(m["solutions"]) == 2 and float(m["outcome_accuracy"]) == 1.0
  assert float(loss) == pytest.approx(np.log1p(np.exp(-4.0)), rel=1e-5)
  loss_all, m_all = losses.orm_task_loss(logits, b, all_tokens=True)
  # every solution token now supervised with its segment's outcome: positions 1, 2 (logit 0, y=1),
  # 3 (logit 4, y=1) | 5 (logit 0, y=0), 6 (logit -4, y=0): the zero logits add log(2) terms
  assert float(loss_all) == pytest.approx((3 * np.log(2) + 2 * np.log1p(np.exp(-4.0))) / 5,
                                          rel=1e-5)
  assert float(m_all["outcome_accuracy"]) == 1.0  # still read at the final token only
