"""The vectorized scorer: aggregation against a NumPy reference, and packed scoring against scoring
each solution alone."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prm_jax import scoring
from prm_jax.model import RewardModel
from prm_jax.scoring import (LOG_PROD, METHODS, aggregate_ragged, aggregate_step_scores,
                             pack_for_scoring, score_packed)

agg = jax.jit(aggregate_step_scores, static_argnums=(2, 3))


def reference(probs, ids, n, method):
  out = np.zeros(n)
  for s in range(n):
    p = [float(x) for x, i in zip(probs, ids) if i == s]
    if p:
      out[s] = {"prod": np.prod, "min": min, "last": lambda v: v[-1]}[method](p)
  return out


def random_case(rng):
  n = int(rng.integers(1, 12))
  s = int(rng.integers(0, 60))
  ids = rng.integers(-2, n, size=s)  # negative ids are padding, some solutions get no steps
  kind = rng.integers(0, 4, size=s)
  probs = np.where(kind == 0, 0.0, np.where(kind == 1, 1.0, rng.random(s)))
  return probs.astype(np.float32), ids.astype(np.int32), n


@pytest.mark.parametrize("method", METHODS)
def test_aggregation_matches_numpy_on_random_ragged_inputs(method):
  rng = np.random.default_rng(0)
  for _ in range(200):
    probs, ids, n = random_case(rng)
    # one compiled shape: pad to 64 steps (ids -1) and 12 solutions (the extra ones score 0)
    p64 = np.pad(probs, (0, 64 - len(probs)), constant_values=0.7)
    i64 = np.pad(ids, (0, 64 - len(ids)), constant_values=-1)
    got = np.asarray(agg(jnp.asarray(p64), jnp.asarray(i64), 12, method))
    assert not np.isnan(got).any()
    np.testing.assert_allclose(got, reference(probs, ids, 12, method), rtol=2e-5, atol=1e-7)
    assert (got[n:] == 0).all()
  assert agg(jnp.zeros(0), jnp.zeros(0, jnp.int32), 3, method).tolist() == [0.0, 0.0, 0.0]


def test_aggregation_edge_cases():
  probs = jnp.array([1.0, 0.0, 0.5, 1.0, 0.25], jnp.float32)
  ids = jnp.array([0, 1, 1, -1, 3])
  assert agg(probs, ids, 4, "prod").tolist() == [1.0, 0.0, 0.0, 0.25]  # 2: no steps -> 0.0
  assert agg(probs, ids, 4, "min").tolist() == [1.0, 0.0, 0.0, 0.25]
  assert agg(probs, ids, 4, "last").tolist() == [1.0, 0.5, 0.0, 0.25]
  tiny = jnp.full((400,), 0.5, jnp.float32)  # 0.5^400 underflows float32 to 0 but never NaN
  assert float(agg(tiny, jnp.zeros(400, jnp.int32), 1, "prod")[0]) >= 0.0
  with pytest.raises(ValueError, match="aggregation method 'mean'"):
    aggregate_step_scores(probs, ids, 4, "mean")
  with pytest.raises(ValueError, match="aggregation layout 'rows'"):
    aggregate_step_scores(probs, ids, 4, "prod", layout="rows")


ALL = METHODS + (LOG_PROD,)
by_layout = jax.jit(lambda p, i, layout: {m: aggregate_step_scores(p, i, 16, m, layout=layout)
                                          for m in ALL}, static_argnums=2)
run_all = jax.jit(lambda p, i, n, layout: {m: aggregate_step_scores(p, i, n, m, layout)
                                           for m in ALL}, static_argnums=(2, 3))


def runs_case(rng, steps=96):
  """Ragged runs in one compiled shape (96 steps, 16 solutions): empty solutions, single steps,
  runs past one window of the contiguous path (16) and past two, P(ok) of exactly 0 and 1. Returns
  the sorted layout (padding after the last step) and a grouped one (runs shuffled, padding
  between them), each as (probs, ids)."""
  lengths = rng.choice([0, 0, 1, 1, 2, 3, 5, 8, 15, 16, 17, 33, 40], size=16)
  lengths[lengths.cumsum() > steps - 8] = 0
  ids = np.repeat(np.arange(16), lengths)
  kind = rng.integers(0, 6, size=len(ids))
  probs = np.where(kind == 0, 0.0, np.where(kind == 1, 1.0, rng.random(len(ids))))
  if rng.random() < 0.3:  # long products of small P(ok): far below float32's smallest normal
    probs = probs * 1e-3
  pad = steps - len(ids)
  ordered = (np.concatenate([probs, np.full(pad, 0.5)]), np.concatenate([ids, np.full(pad, -1)]))
  runs = [(probs[ids == s], np.full(int((ids == s).sum()), s)) for s in rng.permutation(16)]
  runs = [r for r in runs if len(r[0])] + [(np.full(1, 0.5), np.full(1, -1))] * pad
  order = rng.permutation(len(runs))
  grouped = tuple(np.concatenate([runs[k][j] for k in order]) for j in (0, 1))
  return [(a.astype(np.float32), b.astype(np.int32)) for a, b in (ordered, grouped)]


def test_contiguous_layouts_equal_the_segment_path_and_numpy():
  rng = np.random.default_rng(3)
  for _ in range(40):
    for (probs, ids), layout in zip(runs_case(rng), ("sorted", "grouped")):
      general = by_layout(jnp.asarray(probs), jnp.asarray(ids), "any")
      for got_layout in (layout, "grouped") if layout == "sorted" else (layout,):
        fast = by_layout(jnp.asarray(probs), jnp.asarray(ids), got_layout)
        for m in ALL:
          got, want = np.asarray(fast[m]), np.asarray(general[m])
          assert not np.isnan(got).any()
          finite = np.isfinite(want)
          np.testing.assert_array_equal(np.isfinite(got), finite, err_msg=m)
          np.testing.assert_array_equal(got[~finite], want[~finite], err_msg=m)  # -inf: log 0
          np.testing.assert_allclose(got[finite], want[finite], rtol=1e-6, atol=1e-6,
                                     err_msg=f"{m} {got_layout}")
          if m != LOG_PROD:
            np.testing.assert_allclose(got, reference(probs, ids, 16, m), rtol=2e-5, atol=1e-7)


def test_contiguous_layouts_edge_cases():
  for layout in ("sorted", "grouped"):
    def agg_l(p, i, n):
      out = run_all(jnp.asarray(p, jnp.float32), jnp.asarray(i, jnp.int32), n, layout)
      return {k: v.tolist() for k, v in out.items()}
    out = agg_l([1.0, 0.0, 0.5, 0.25, 0.9], [0, 1, 1, 3, -1], 4)  # 2: no steps; < one window
    assert out["prod"] == out["min"] == [1.0, 0.0, 0.0, 0.25]
    assert out["last"] == [1.0, 0.5, 0.0, 0.25]
    np.testing.assert_allclose(out[LOG_PROD], [0, -np.inf, -np.inf, np.log(0.25)])
    out = agg_l([0.5, 0.5], [-1, -1], 2)  # padding only
    assert out["prod"] == out["min"] == out["last"] == [0.0, 0.0]
    assert out[LOG_PROD] == [-np.inf] * 2
    assert all(v == [] for v in agg_l([0.5], [0], 0).values())  # no solutions
    tiny = np.full(400, 0.5)  # one run of 400 steps: 25 windows; underflows to 0, never NaN
    out = agg_l(tiny, np.zeros(400), 1)
    assert out["prod"] == [0.0] and out["min"] == out["last"] == [0.5]
    np.testing.assert_allclose(out[LOG_PROD], [400 * np.log(0.5)], rtol=1e-6)


def test_contiguous_layouts_at_many_solutions_and_runs_one_step_past_a_window():
  """The sorted path's prefix sum over more than one block of 32 (and more than 32 blocks), runs
  of k*16 + 1 steps whose last step is the lowest (the window count rounds up), and P(ok) a little
  outside [0, 1] (softmax rounding) clipped to it on every path."""
  rng = np.random.default_rng(5)
  for n, longest in ((100, 17), (1100, 33), (40, 49)):
    lengths = rng.integers(0, 4, size=n)
    lengths[rng.integers(0, n)] = longest
    ids = np.repeat(np.arange(n), lengths).astype(np.int32)
    probs = rng.uniform(-0.05, 1.05, size=len(ids)).astype(np.float32)
    long_run = np.isin(ids, np.flatnonzero(lengths == longest))
    probs[long_run] = rng.uniform(0.5, 1.0, size=int(long_run.sum()))  # no zero to hide a step
    probs[np.cumsum(lengths)[lengths == longest] - 1] = 0.01  # the long run's last step
    clipped = np.clip(probs, 0.0, 1.0)
    for layout in ("sorted", "grouped", "any"):
      got = run_all(jnp.asarray(probs), jnp.asarray(ids), n, layout)
      for m in METHODS:
        np.testing.assert_allclose(np.asarray(got[m]), reference(clipped, ids, n, m), rtol=2e-5,
                                   atol=1e-7, err_msg=f"{n} {layout} {m}")
      with np.errstate(divide="ignore"):
        want = np.array([np.log(clipped[ids == j]).sum() if (ids == j).any() else -np.inf
                         for j in range(n)])
      fin = np.isfinite(want)
      np.testing.assert_array_equal(np.isfinite(np.asarray(got[LOG_PROD])), fin)
      np.testing.assert_allclose(np.asarray(got[LOG_PROD])[fin], want[fin], rtol=1e-5, atol=1e-4)


def test_ragged_values_and_lengths_score_as_the_sorted_layout():
  """`aggregate_ragged` (values + per-solution lengths, padding after) gives the sorted layout's
  scores exactly: solutions with no steps, runs past one window, padding, a step of P(ok) 0, no
  steps at all, and more than one block of the prefix sum."""
  ragged = jax.jit(lambda p, n: {m: aggregate_ragged(p, n, m) for m in ALL})
  rng = np.random.default_rng(7)
  for n, longest, pad in ((5, 3, 0), (40, 17, 9), (1100, 35, 3)):
    lengths = rng.integers(0, 4, size=n)
    lengths[[1, -1]] = 0  # no steps: between two runs, and the last solution before the padding
    lengths[2] = longest
    ids = np.repeat(np.arange(n), lengths).astype(np.int32)
    probs = rng.random(len(ids) + pad).astype(np.float32)
    probs[rng.integers(0, len(ids))] = 0.0
    ids = np.concatenate([ids, np.full(pad, -1, np.int32)])
    got = ragged(jnp.asarray(probs), jnp.asarray(lengths, jnp.int32))
    want = run_all(jnp.asarray(probs), jnp.asarray(ids), n, "sorted")
    for m in ALL:
      np.testing.assert_array_equal(np.asarray(got[m]), np.asarray(want[m]), err_msg=f"{n} {m}")
    np.testing.assert_allclose(np.asarray(got["prod"]), reference(probs, ids, n, "prod"),
                               rtol=2e-5, atol=1e-7)
  for m in ALL:
    empty = aggregate_ragged(np.zeros(0, np.float32), np.zeros(2, np.int32), m)
    assert empty.tolist() == ([-np.inf] * 2 if m == LOG_PROD else [0.0] * 2), m
  with pytest.raises(ValueError, match="aggregation method 'mean'"):
    aggregate_ragged(np.ones(2, np.float32), np.ones(2, np.int32), "mean")
  for bad, what in (([2, 2], "min 2, sum 4"), ([3, -1], "min -1, sum 2")):  # 3 step scores
    with pytest.raises(ValueError, match=f"sum to at most the 3 step scores; got {what}"):
      aggregate_ragged(np.ones(3, np.float32), np.asarray(bad, np.int32), "prod")



def test_exclusive_cumsum_equals_numpy_across_block_sizes():
  from prm_jax.scoring import _exclusive_cumsum
  rng = np.random.default_rng(6)
  fn = jax.jit(_exclusive_cumsum)
  for n in (0, 1, 31, 32, 33, 64, 65, 1000, 1024, 1025, 40_000):
    x = rng.integers(0, 400, size=n).astype(np.int32)  # totals up to 1.6e7 < 2**24
    got = np.asarray(fn(jnp.asarray(x)))
    assert got.dtype == np.int32 and got.shape == (n,)
    np.testing.assert_array_equal(got, np.cumsum(x) - x, err_msg=str(n))


def test_the_sorted_layout_runs_the_scatter_free_start():
  """What `layout` promises buys: sorted owners count steps with one sorted scatter and find run
  starts by a prefix sum (no scatter-min, no XLA cumsum); grouped ones need the scatter-min;
  padding ids are dropped by the scatters themselves. Empty input keeps the documented scores."""
  def eqns(jaxpr):  # every equation, inside nested jits and loops too
    for e in jaxpr.eqns:
      yield e
      for v in e.params.values():
        for sub in (v if isinstance(v, (tuple, list)) else (v,)):
          if isinstance(sub, (jax.extend.core.Jaxpr, jax.extend.core.ClosedJaxpr)):
            yield from eqns(getattr(sub, "jaxpr", sub))

  def scatters(layout):
    jaxpr = jax.make_jaxpr(lambda p, i: aggregate_step_scores(p, i, 100, "prod", layout))(
        jnp.ones(64), jnp.zeros(64, jnp.int32)).jaxpr
    every = list(eqns(jaxpr))
    names = [e.primitive.name for e in every]
    assert ("dot_general" in names) == (layout == "sorted"), layout  # the prefix sum by matmul
    assert not any("cum" in n for n in names), (layout, names)
    assert not any(e.params.get("name") == "cumsum" for e in every), layout
    return [(e.primitive.name, e.params["indices_are_sorted"], e.params["mode"])
            for e in every if "scatter" in e.primitive.name]
  drop = jax.lax.GatherScatterMode.FILL_OR_DROP
  assert scatters("sorted") == [("scatter-add", True, drop)]
  assert scatters("grouped") == [("scatter-add", False, drop), ("scatter-min", False, drop)]
  for m in ALL:
    out = aggregate_step_scores(np.zeros(0, np.float32), np.zeros(0, np.int32), 3, m)
    assert out.dtype == jnp.float32
    assert out.tolist() == ([-np.inf] * 3 if m == LOG_PROD else [0.0] * 3), m


@pytest.fixture(scope="module")
def prm(tiny_cfg):
  return RewardModel(tiny_cfg, "prm", rngs=nnx.Rngs(0))


def random_solutions(rng, n, vocab=128):
  out = []
  for _ in range(n):
    length = int(rng.integers(4, 30))
    tokens = rng.integers(4, vocab, size=length).astype(np.int32)
    ends = np.sort(rng.choice(np.arange(2, length), size=min(int(rng.integers(0, 5)), length - 2),
                              replace=False)).astype(np.int32)
    out.append((tokens, ends))
  return out


def test_packed_scores_equal_one_per_row_and_direct(prm):
  rng = np.random.default_rng(1)
  sols = random_solutions(rng, 13)
  fn = jax.jit(lambda m, b: score_packed(m, b, max_steps=64, max_solutions=16))
  results = {}
  for pack in (True, False):
    scores = {m: np.zeros(len(sols)) for m in METHODS}
    batches = pack_for_scoring(sols, seq_len=64, rows=4, pack=pack)
    for pb in batches:
      out = fn(prm, {k: jnp.asarray(v) for k, v in pb.arrays.items()})
      for m in METHODS:
        scores[m][pb.solution_index] = np.asarray(out[m])[:len(pb.solution_index)]
    results[pack] = (scores, len(batches))
  assert results[True][1] < results[False][1]  # packing really used fewer rows
  for m in METHODS:
    np.testing.assert_allclose(results[True][0][m], results[False][0][m], atol=1e-5)
  # direct: a full forward of each solution alone (right-padded to one compiled length)
  alone = jax.jit(lambda m, x, seg: m(x, None, seg))
  for i, (tokens, ends) in enumerate(sols):
    x = np.zeros((1, 32), np.int32)
    x[0, :len(tokens)] = tokens
    logits = np.asarray(alone(prm, jnp.asarray(x), jnp.asarray((x > 0).astype(np.int32))))[0]
    p_ok = 1 - np.asarray(jax.nn.softmax(logits, -1))[ends, 0]
    want = float(np.prod(p_ok)) if len(ends) else 0.0
    np.testing.assert_allclose(results[True][0]["prod"][i], want, rtol=1e-4, atol=1e-6)
    if len(ends):
      np.testing.assert_allclose(results[True][0]["min"][i], p_ok.min(), rtol=1e-4)
      np.testing.assert_allclose(results[True][0]["last"][i], p_ok[-1], rtol=1e-4)



def test_packing_numbers_owners_so_the_sorted_layout_holds(prm):
  """The Scorer aggregates with layout="sorted" on pack_for_scoring's batches: every step's owner
  is non-decreasing in row-major order (padding after), so the fast path gives the general one's
  scores, packed or not, with solutions that have no steps among them."""
  sols = random_solutions(np.random.default_rng(4), 40)
  assert any(len(e) == 0 for _, e in sols) and any(len(e) > 2 for _, e in sols)
  fast = jax.jit(lambda m, b: score_packed(m, b, 64, 16, layout="sorted"))
  general = jax.jit(lambda m, b: score_packed(m, b, 64, 16))
  for pack in (True, False):
    batches = pack_for_scoring(sols, seq_len=64, rows=4, pack=pack, max_steps=64,
                               max_solutions=16)
    assert len(batches) > 1
    for pb in batches:
      owners = pb.arrays["solution_id"][pb.arrays["step_end"] > 0]  # row-major order
      assert np.all(np.diff(owners) >= 0), owners
      with_steps = [k for k, i in enumerate(pb.solution_index) if len(sols[i][1])]
      assert sorted(set(owners.tolist())) == with_steps
      batch = {k: jnp.asarray(v) for k, v in pb.arrays.items()}
      got, want = fast(prm, batch), general(prm, batch)
      for m in METHODS + (LOG_PROD,):
        np.testing.assert_allclose(np.asarray(got[m]), np.asarray(want[m]), rtol=1e-6, atol=1e-7)

def test_the_last_layer_at_the_reads_alone_gives_the_whole_forwards_scores(prm, tiny_cfg,
                                                                           monkeypatch):
  """score_packed runs the last layer at each row's reads (a PRM's step ends, an ORM's last
  tokens) when no row holds more than `READS_PER_ROW` of its tokens as reads, else the whole
  forward (`lax.cond`). Both branches give the same scores on the same batches."""
  sols = random_solutions(np.random.default_rng(5), 24)
  batches = [{k: jnp.asarray(v) for k, v in pb.arrays.items()}
             for pb in pack_for_scoring(sols, seq_len=64, rows=4, max_steps=64, max_solutions=32)]
  most = max(int((b["step_end"] > 0).sum(axis=1).max()) for b in batches)
  assert most > 2
  orm = RewardModel(tiny_cfg, "orm", rngs=nnx.Rngs(1))
  outs = []
  # every row within it (the short last layer); one read short for the fullest row (that batch
  # must take the whole forward: the short one would lose a read); none with 2+ reads
  for share in (1.0, (most - 1) / 64, 1 / 64):
    monkeypatch.setattr(scoring, "READS_PER_ROW", share)
    fn = jax.jit(lambda m, b: score_packed(m, b, 64, 32, layout="sorted"))
    outs.append([(fn(prm, b), fn(orm, b)) for b in batches])
  for other in outs[1:]:
    for (p1, o1), (p2, o2) in zip(outs[0], other):
      np.testing.assert_allclose(o1["orm"], o2["orm"], rtol=1e-6, atol=1e-7)
      for k in METHODS + (LOG_PROD, "step_probs"):
        np.testing.assert_allclose(p1[k], p2[k], rtol=1e-6, atol=1e-7)
      assert np.array_equal(p1["step_solution"], p2["step_solution"])


def test_orm_scores_at_last_token(tiny_cfg):
  orm = RewardModel(tiny_cfg, "orm", rngs=nnx.Rngs(0))
  sols = random_solutions(np.random.default_rng(2), 5)
  (pb,) = pack_for_scoring(sols, seq_len=128, rows=2)
  out = jax.jit(lambda m, b: score_packed(m, b, 8, 8))(orm, {k: jnp.asarray(v) for k, v in
                                                             pb.arrays.items()})
  alone = jax.jit(lambda m, x, seg: m(x, None, seg))
  for k, i in enumerate(pb.solution_index):
    tokens = sols[i][0]
    x = np.zeros((1, 32), np.int32)
    x[0, :len(tokens)] = tokens
    logits = alone(orm, jnp.asarray(x), jnp.asarray((x > 0).astype(np.int32)))
    want = jax.nn.sigmoid(logits[0, len(tokens) - 1, 0])
    np.testing.assert_allclose(out["orm"][k], want, rtol=1e-4)
  assert np.all(np.asarray(out["orm"])[len(pb.solution_index):] == 0)


def test_the_step_cap_splits_batches_and_never_drops_a_step(prm):
  """Empty steps take one token each, so a row can hold more step ends than the scorer's static
  gather size: packing must close the batch first, and every step must still be scored."""
  rng = np.random.default_rng(3)
  sols = []
  for _ in range(9):
    n = int(rng.integers(6, 14))
    sols.append((rng.integers(3, 200, size=n).astype(np.int32), np.arange(1, n, dtype=np.int32)))
  total = sum(len(e) for _, e in sols)
  cap = 16
  assert total > 3 * cap  # uncapped, these fit in one 4 x 64 batch and overflow the gather
  assert len(pack_for_scoring(sols, seq_len=64, rows=4)) == 1
  batches = pack_for_scoring(sols, seq_len=64, rows=4, max_steps=cap, max_solutions=cap)
  assert all(pb.num_steps <= cap for pb in batches)
  assert sorted(i for pb in batches for i in pb.solution_index) == list(range(len(sols)))
  assert sum(pb.num_steps for pb in batches) == total
  capped = jax.jit(lambda m, b: score_packed(m, b, max_steps=cap, max_solutions=cap))
  wide = jax.jit(lambda m, b: score_packed(m, b, max_steps=256, max_solutions=16))
  got, want = np.zeros(len(sols)), np.zeros(len(sols))
  steps = {}
  for pb in batches:
    out = capped(prm, {k: jnp.asarray(v) for k, v in pb.arrays.items()})
    got[pb.solution_index] = np.asarray(out[LOG_PROD])[:len(pb.solution_index)]
    for k, i in enumerate(pb.solution_index):
      steps[i] = int((np.asarray(out["step_solution"]) == k).sum())
  (pb,) = pack_for_scoring(sols, seq_len=64, rows=4)
  out = wide(prm, {k: jnp.asarray(v) for k, v in pb.arrays.items()})
  want[pb.solution_index] = np.asarray(out[LOG_PROD])[:len(pb.solution_index)]
  assert steps == {i: len(e) for i, (_, e) in enumerate(sols)}  # every step of every solution
  np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
  # one solution with more step ends than the gather holds is an error, not a silent cut
  with pytest.raises(ValueError, match="step ends > the scorer's 4 per batch"):
    pack_for_scoring(sols[:1], seq_len=64, rows=4, max_steps=4)
