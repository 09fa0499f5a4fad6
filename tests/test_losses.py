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
  loss3, m3 = losses.prm_task_loss(logits, b)
  assert float(m3["steps"]) == 4
  assert float(m3["step_accuracy"]) == pytest.approx(3 / 4)  # neutral predicted positive: wrong
  _, mb = losses.prm_task_loss(logits, b, mode="binary")
  assert float(mb["step_accuracy"]) == pytest.approx(1.0)    # ...but "ok" when neutral counts as ok
  _, mb2 = losses.prm_task_loss(logits, b, mode="binary", neutral_is_positive=False)
  assert float(mb2["step_accuracy"]) == pytest.approx(3 / 4)
  weighted, _ = losses.prm_task_loss(logits, b, class_weights=(10.0, 1.0, 1.0))
  assert float(weighted) != pytest.approx(float(loss3))
  with pytest.raises(ValueError, match="PRM loss mode 'focal'"):
    losses.prm_task_loss(logits, b, mode="focal")


def test_orm_final_token_and_all_tokens():
  b = batch()
  logits = jnp.zeros((1, 8, 1)).at[0, 3, 0].set(4.0).at[0, 6, 0].set(-4.0)
  loss, m = losses.orm_task_loss(logits, b)
  assert float(m["solutions"]) == 2 and float(m["outcome_accuracy"]) == 1.0
  assert float(loss) == pytest.approx(np.log1p(np.exp(-4.0)), rel=1e-5)
  loss_all, _ = losses.orm_task_loss(logits, b, all_tokens=True)
  # every solution token now supervised: the zero logits add log(2) terms
  assert float(loss_all) > float(loss)
