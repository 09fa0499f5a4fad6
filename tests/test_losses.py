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


def random_packed_batch(rng, rows=3, length=12):
  """Rows packed with 1-3 segments (prompt then solution tokens, step ends labelled -1/0/+1, the
  outcome at each segment's last token) and trailing padding, as data/pipeline.py packs them."""
  cols = {k: np.zeros((rows, length), np.int32) for k in ("segment_ids", "positions", "loss_mask")}
  cols["tokens"] = rng.integers(1, 7, (rows, length)).astype(np.int32)
  cols["step_label"] = np.full((rows, length), I, np.int32)
  cols["outcome"] = np.full((rows, length), I, np.int32)
  for r in range(rows):
    t, seg = 0, 1
    while seg <= 3 and t + 2 <= length - 1:
      n = int(rng.integers(2, min(6, length - 1 - t) + 1))
      prompt = int(rng.integers(1, n))
      sl = slice(t, t + n)
      cols["segment_ids"][r, sl], cols["positions"][r, sl] = seg, np.arange(n)
      cols["loss_mask"][r, t + prompt:t + n] = 1
      for j in range(t + prompt, t + n):
        if rng.random() < 0.7:
          cols["step_label"][r, j] = rng.integers(-1, 2)
      if rng.random() < 0.85:
        cols["outcome"][r, t + n - 1] = rng.integers(0, 2)
      t, seg = t + n, seg + 1
    cols["tokens"][r, t:] = 0
  return {k: jnp.asarray(v) for k, v in cols.items()}


def log_softmax(x):
  x = np.asarray(x, np.float64)
  return x - x.max(-1, keepdims=True) - np.log(np.exp(x - x.max(-1, keepdims=True)).sum(-1,
                                                                                      keepdims=True))


def softplus(x):
  return np.log1p(np.exp(-abs(x))) + max(x, 0.0)


def reference_losses(b, sft_logits, orm_logits, prm_logits, pos_weight, class_weights):
  """Every loss and metric, one token at a time."""
  b = {k: np.asarray(v) for k, v in b.items()}
  sft_logits, orm_logits, prm_logits = (np.asarray(x, np.float64)
                                        for x in (sft_logits, orm_logits, prm_logits))
  seg, lab, out, mask = b["segment_ids"], b["step_label"], b["outcome"], b["loss_mask"]
  rows, length = seg.shape
  ref = {}
  # sft: predict token t+1 at t, a solution token of t's segment
  w = [(r, t) for r in range(rows) for t in range(length - 1)
       if seg[r, t + 1] == seg[r, t] > 0 and mask[r, t + 1] > 0]
  lp = log_softmax(sft_logits)
  nll = [-lp[r, t, b["tokens"][r, t + 1]] for r, t in w]
  hit = [np.argmax(sft_logits[r, t]) == b["tokens"][r, t + 1] for r, t in w]
  ref["sft"] = (sum(nll) / max(len(w), 1), sum(hit) / max(len(w), 1), len(w))
  # orm at the final token, then at every solution token with its segment's outcome
  z = np.asarray(orm_logits)[..., 0].astype(np.float64)
  finals = [(r, t) for r in range(rows) for t in range(length) if out[r, t] != I]
  bce = lambda x, y: (softplus(-x) * pos_weight) if y == 1 else softplus(x)
  acc = sum((z[r, t] > 0) == (out[r, t] == 1) for r, t in finals) / max(len(finals), 1)
  ref["orm"] = (sum(bce(z[r, t], out[r, t]) for r, t in finals) / max(len(finals), 1), acc,
                len(finals))
  seg_outcome = {(r, seg[r, t]): out[r, t] for r, t in finals}
  every = [(r, t, seg_outcome[r, seg[r, t]]) for r in range(rows) for t in range(length)
           if seg[r, t] > 0 and mask[r, t] > 0 and (r, seg[r, t]) in seg_outcome]
  ref["orm_all"] = (sum(bce(z[r, t], y) for r, t, y in every) / max(len(every), 1), acc,
                    len(finals))
  # prm: labelled step ends before the first -1 of their segment
  steps = [(r, t) for r in range(rows) for t in range(length)
           if seg[r, t] > 0 and lab[r, t] != I and
           not any(lab[r, u] == -1 and seg[r, u] == seg[r, t] for u in range(t))]
  lp = log_softmax(prm_logits)
  cls = {(r, t): int(lab[r, t]) + 1 for r, t in steps}
  cw = [class_weights[cls[s]] for s in steps]
  ref["prm"] = (sum(-lp[r, t, cls[r, t]] * c for (r, t), c in zip(steps, cw)) / max(sum(cw), 1e-6),
                sum(np.argmax(prm_logits[r, t]) == cls[r, t] for r, t in steps) / max(len(steps), 1),
                len(steps))
  for name, nip in (("binary", True), ("binary_strict", False)):
    p = np.exp(lp)
    terms, right = [], []
    for (r, t), c in zip(steps, cw):
      p_ok = np.clip(1 - p[r, t, 0] if nip else p[r, t, 2], 1e-7, 1 - 1e-7)
      ok = lab[r, t] == 1 or (lab[r, t] == 0 and nip)
      terms.append(-(np.log(p_ok) if ok else np.log1p(-p_ok)) * c)
      right.append((p_ok > 0.5) == ok)
    ref[name] = (sum(terms) / max(sum(cw), 1e-6), sum(right) / max(len(steps), 1), len(steps))
  return ref


@pytest.mark.parametrize("seed", range(6))
def test_every_loss_and_metric_equals_a_token_by_token_reference(seed):
  """Random packed batches of several rows and segments: each task loss, its accuracy and its count
  equal a direct per-token computation (segment boundaries, row offsets, masks, weights)."""
  rng = np.random.default_rng(seed)
  b = random_packed_batch(rng)
  rows, length = b["tokens"].shape
  sft_logits = jnp.asarray(rng.normal(0, 2, (rows, length, 7)), jnp.float32)
  orm_logits = jnp.asarray(rng.normal(0, 2, (rows, length, 1)), jnp.float32)
  prm_logits = jnp.asarray(rng.normal(0, 2, (rows, length, 3)), jnp.float32)
  pos_weight, class_weights = 1.0 + seed % 3, (2.0, 0.5, 1.0 + seed)
  ref = reference_losses(b, sft_logits, orm_logits, prm_logits, pos_weight, class_weights)
  got = {
      "sft": losses.sft_task_loss(sft_logits, b),
      "orm": losses.orm_task_loss(orm_logits, b, pos_weight=pos_weight),
      "orm_all": losses.orm_task_loss(orm_logits, b, all_tokens=True, pos_weight=pos_weight),
      "prm": losses.prm_task_loss(prm_logits, b, class_weights=class_weights),
      "binary": losses.prm_task_loss(prm_logits, b, mode="binary", class_weights=class_weights),
      "binary_strict": losses.prm_task_loss(prm_logits, b, mode="binary", neutral_is_positive=False,
                                            class_weights=class_weights)}
  names = {"sft": ("token_accuracy", "tokens"), "orm": ("outcome_accuracy", "solutions"),
           "orm_all": ("outcome_accuracy", "solutions"), "prm": ("step_accuracy", "steps"),
           "binary": ("step_accuracy", "steps"), "binary_strict": ("step_accuracy", "steps")}
  for task, (loss, metrics) in got.items():
    want_loss, want_acc, want_n = ref[task]
    acc, n = names[task]
    assert float(loss) == pytest.approx(want_loss, rel=1e-5, abs=1e-6), task
    assert float(metrics["loss"]) == float(loss), task
    assert float(metrics[acc]) == pytest.approx(want_acc, abs=1e-6), task
    assert float(metrics[n]) == want_n, task
    assert metrics[n].dtype == jnp.float32, task
  assert ref["prm"][2] > 0 and ref["sft"][2] > 0 and ref["orm"][2] > 0


def test_a_single_supervised_position_is_its_own_mean_and_none_gives_zero():
  """The means divide by the supervised count (not a floor above it): one position's loss is that
  position's; with none supervised every loss and metric is 0, not NaN."""
  one = batch(step_label=[[I, I, 1, I, I, I, I, I]], outcome=[[I, I, I, 1, I, I, I, I]],
              loss_mask=[[0, 0, 0, 1, 0, 0, 0, 0]])
  prm_logits = jnp.zeros((1, 8, 3)).at[0, 2, 2].set(2.0)
  loss, m = losses.prm_task_loss(prm_logits, one)
  assert float(loss) == pytest.approx(np.log(np.exp(2.0) + 2) - 2.0, rel=1e-6)
  assert (float(m["steps"]), float(m["step_accuracy"])) == (1.0, 1.0)
  orm_logits = jnp.zeros((1, 8, 1)).at[0, 3, 0].set(1.5)
  loss, m = losses.orm_task_loss(orm_logits, one)
  assert float(loss) == pytest.approx(np.log1p(np.exp(-1.5)), rel=1e-6)
  loss, m = losses.sft_task_loss(jnp.zeros((1, 8, 9)).at[0, 2, 8].set(3.0), one)  # predicts 8
  assert float(m["tokens"]) == 1 and float(m["token_accuracy"]) == 1.0
  assert float(loss) == pytest.approx(np.log(np.exp(3.0) + 8) - 3.0, rel=1e-6)
  none = batch(step_label=[[I] * 8], outcome=[[I] * 8], loss_mask=[[0] * 8])
  for loss, m in (losses.prm_task_loss(prm_logits, none),
                  losses.prm_task_loss(prm_logits, none, mode="binary"),
                  losses.orm_task_loss(orm_logits, none),
                  losses.orm_task_loss(orm_logits, none, all_tokens=True),
                  losses.sft_task_loss(jnp.zeros((1, 8, 9)), none)):
    assert all(float(v) == 0.0 for v in [loss, *m.values()]), m


def test_sigmoid_bce_is_stable_and_exact():
  x = jnp.asarray([-100.0, -3.0, 0.0, 2.0, 100.0])
  for y in (0.0, 1.0):
    want = [softplus(float(v)) - float(v) * y for v in x]
    np.testing.assert_allclose(losses.optax_sigmoid_bce(x, y), want, rtol=1e-6, atol=1e-7)


def test_next_token_weights_never_cross_into_a_new_segment_or_padding():
  """With every token supervised, the step into a new segment's first token and the steps between
  padding tokens still get weight 0."""
  b = batch(segment_ids=[[1, 1, 2, 2, 0, 0]], loss_mask=[[1, 1, 1, 1, 1, 1]],
            positions=[[0, 1, 0, 1, 0, 0]], tokens=[[1, 2, 3, 4, 0, 0]],
            step_label=[[I] * 6], outcome=[[I] * 6])
  assert np.asarray(losses.next_token_weights(b)).tolist() == [[1, 0, 1, 0, 0]]


def test_prm_step_weights_count_negatives_from_each_segments_own_start():
  """Segment 2 starts at token 1, right after segment 1's -1: that -1 is not segment 2's. Inside
  segment 2 the first -1 is kept and the later steps dropped; a padding token (segment 0) is never
  a step even when labelled."""
  b = batch(segment_ids=[[1, 2, 2, 2, 0]], positions=[[0, 0, 1, 2, 0]],
            step_label=[[-1, -1, 1, 0, 1]], loss_mask=[[1] * 5], tokens=[[1] * 5],
            outcome=[[I] * 5])
  assert np.asarray(losses.prm_step_weights(b)).tolist() == [[1, 1, 0, 0, 0]]


def test_binary_prm_loss_stays_finite_on_saturated_logits():
  """P(ok) is clipped to [1e-7, 1 - 1e-7]: a confident wrong prediction costs -log(1e-7), not inf."""
  b = batch(segment_ids=[[1, 1, 1]], positions=[[0, 1, 2]], loss_mask=[[1, 1, 1]],
            tokens=[[1, 2, 3]], step_label=[[I, 1, I]], outcome=[[I] * 3])
  sure_wrong = jnp.zeros((1, 3, 3)).at[0, 1].set(jnp.asarray([200.0, 0.0, -200.0]))
  loss, _ = losses.prm_task_loss(sure_wrong, b, mode="binary")
  assert float(loss) == pytest.approx(-np.log(np.float32(1e-7)), rel=1e-5)
  neg = batch(segment_ids=[[1, 1, 1]], positions=[[0, 1, 2]], loss_mask=[[1, 1, 1]],
              tokens=[[1, 2, 3]], step_label=[[I, -1, I]], outcome=[[I] * 3])
  sure_ok = jnp.zeros((1, 3, 3)).at[0, 1].set(jnp.asarray([-200.0, 0.0, 200.0]))
  loss, _ = losses.prm_task_loss(sure_ok, neg, mode="binary")
  assert float(loss) == pytest.approx(-np.log1p(-np.float32(1 - 1e-7)), rel=1e-3)
  assert np.isfinite(float(loss)) and float(loss) > 15


def test_orm_accuracy_counts_a_zero_logit_as_predicting_wrong():
  """P(correct) = sigmoid(0) = 0.5 is not a prediction of "correct": it matches outcome 0 only."""
  logits = jnp.zeros((1, 8, 1))
  accuracy = lambda o: float(losses.orm_task_loss(logits, batch(outcome=[[I, I, I, o, I, I, o, I]])
                                                  )[1]["outcome_accuracy"])
  assert (accuracy(0), accuracy(1)) == (1.0, 0.0)  # each class alone: a mixed pair hides `>= 0`


def test_orm_all_tokens_on_many_rows_keeps_every_rows_segments_apart():
  """Four rows of four tokens, one or two solutions each: each token is supervised with its own
  solution's outcome (a reference loop over rows and segments)."""
  seg = [[1, 1, 2, 2], [1, 1, 1, 0], [1, 2, 2, 2], [1, 1, 2, 2]]
  outcome = [[I, 1, I, 0], [I, I, 0, I], [1, I, I, 1], [I, 0, I, 1]]
  mask = [[1, 1, 1, 1], [1, 1, 1, 0], [1, 1, 1, 1], [0, 1, 1, 1]]
  b = batch(segment_ids=seg, outcome=outcome, loss_mask=mask, positions=[[0] * 4] * 4,
            tokens=[[1] * 4] * 4, step_label=[[I] * 4] * 4)
  rng = np.random.default_rng(0)
  logits = rng.normal(0, 2, (4, 4, 1)).astype(np.float32)
  loss, _ = losses.orm_task_loss(jnp.asarray(logits), b, all_tokens=True)
  total = count = 0.0
  for r in range(4):
    for t in range(4):
      s = seg[r][t]
      if s == 0 or not mask[r][t]:
        continue
      y = max(outcome[r][u] for u in range(4) if seg[r][u] == s)
      x = float(logits[r, t, 0])
      total += max(x, 0) - x * (y == 1) + np.log1p(np.exp(-abs(x)))
      count += 1
  assert float(loss) == pytest.approx(total / count, rel=1e-5)
