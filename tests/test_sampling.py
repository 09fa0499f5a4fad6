"""The KV-cache sampler and the sample/score commands (real subprocesses, real SIGKILL)."""

import os
import re
import signal
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from prm_jax.configs import base
from prm_jax.model import CausalLM, KVCache
from prm_jax.records import Problem, read_solutions
from prm_jax.sampling import (SamplingConfig, Sampler, apply_top_k, apply_top_p, generate, left_pad,
                              row_keys)
from prm_jax.scoring import Scorer
from prm_jax.stopping import StopTables, answer_line, stop_string

PRM_JAX = os.path.join(os.path.dirname(sys.executable), "prm-jax")


def test_top_k_and_top_p_masks():
  logits = jnp.log(jnp.array([[0.5, 0.2, 0.15, 0.1, 0.05]]))
  kept = lambda x: (np.asarray(x) > -1e29).astype(int).tolist()
  assert kept(apply_top_k(logits, 2)) == [[1, 1, 0, 0, 0]]
  assert kept(apply_top_k(logits, 0)) == [[1, 1, 1, 1, 1]]
  assert kept(apply_top_p(logits, 0.5)) == [[1, 0, 0, 0, 0]]   # 0.5 alone reaches p
  assert kept(apply_top_p(logits, 0.6)) == [[1, 1, 0, 0, 0]]
  assert kept(apply_top_p(logits, 0.86)) == [[1, 1, 1, 1, 0]]  # 0.85 < 0.86 needs the 4th
  assert kept(apply_top_p(logits, 0.01)) == [[1, 0, 0, 0, 0]]  # the top token always stays
  shuffled = logits[:, ::-1]
  assert kept(apply_top_p(shuffled, 0.6)) == [[0, 0, 0, 1, 1]]


NO_STOPS = StopTables.build([], ["x"] * 128)


class Fixed:
  """A stand-in model with the same next-token logits at every position of every row."""

  def __init__(self, logits):
    self.logits = jnp.asarray(logits, jnp.float32)

  def decode(self, tokens, cache, positions, fresh=False, only_at=None):
    cols = tokens.shape if only_at is None else only_at.shape
    return jnp.broadcast_to(self.logits, cols + self.logits.shape), cache


def test_temperature_top_k_top_p_and_vocab_limit_compose():
  """Drawn frequencies match the closed form: banned ids and ids >= vocab_limit removed, logits
  divided by the temperature, the top k kept, then the nucleus of mass p of what is left."""
  logits = np.zeros(16)
  logits[[0, 2]] = 6.0            # banned (padding, BOS), the most likely otherwise
  logits[12:] = 5.0               # past vocab_limit (the model's padded vocabulary rows)
  logits[[1, 3, 4, 5, 6, 7]] = [3.0, 2.5, 2.0, 1.5, 1.0, 0.5]
  sc = SamplingConfig(max_new_tokens=8, temperature=2.0, top_k=5, top_p=0.8, eos_id=15, pad_id=0,
                      banned_ids=(0, 2), vocab_limit=12)
  allowed = [i for i in range(12) if i not in (0, 2)]
  scaled = logits[allowed] / 2.0
  top = np.argsort(-scaled)[:5]                         # top-k of the allowed, after temperature
  p = np.exp(scaled[top]) / np.exp(scaled[top]).sum()
  nucleus = top[:int(np.sum(np.cumsum(p) - p < 0.8))]   # the smallest prefix reaching 0.8
  want = np.zeros(16)
  want[np.asarray(allowed)[nucleus]] = np.exp(scaled[nucleus]) / np.exp(scaled[nucleus]).sum()
  assert np.count_nonzero(want) == 4  # every filter removed something: 16 -> 10 -> 5 -> 4
  rows = 2048
  cache = KVCache(jnp.zeros((1, 1, 1, 1, 2)), jnp.zeros((1, 1, 1, 1, 2)),
                  jnp.zeros((1, 1), jnp.int32), jnp.zeros((), jnp.int32))
  tok, pos = left_pad([[1, 1]] * rows, 2, 0)
  out, lens, _ = jax.jit(lambda c, t, p, k: generate(Fixed(logits), c, t, p, k, jnp.asarray(NO_STOPS.next),
                                                     jnp.asarray(NO_STOPS.accept), sc))(
      cache, tok, pos, row_keys(0, [f"r{i}" for i in range(rows)], range(rows)))
  assert (np.asarray(lens) == 8).all()
  freq = np.bincount(np.asarray(out).reshape(-1), minlength=16) / out.size
  # 16384 draws: each frequency's standard error is below 0.004
  np.testing.assert_allclose(freq, want, atol=0.015)


@pytest.mark.parametrize("scan", [False, True])
def test_greedy_kv_cache_equals_full_forward_argmax(tiny_cfg, scan):
  model = CausalLM(tiny_cfg.replace(scan_layers=scan), rngs=nnx.Rngs(0))
  prompts = [[2, 10, 11, 12, 4], [2, 20, 4], [2, 30, 31, 4]]
  tok, pos = left_pad(prompts, 8, 0)
  sc = SamplingConfig(max_new_tokens=12, temperature=0.0, eos_id=127, pad_id=0, banned_ids=(0, 2))
  cache = KVCache.init(model.cfg, 3, 20)
  out, lens, _ = jax.jit(generate, static_argnums=7)(
      model, cache, tok, pos, row_keys(0, "abc", [0] * 3), NO_STOPS.next, NO_STOPS.accept, sc)
  full = jax.jit(lambda m, x: m(x))
  lens = np.asarray(lens)
  # every row ran: the full 12 tokens, or fewer ending at EOS (the loop below checks each one)
  assert all(n == 12 or (0 < n and int(out[r, n - 1]) == 127) for r, n in enumerate(lens)), lens
  for r, p in enumerate(prompts):
    seq = list(p)
    for i in range(int(lens[r])):
      x = np.zeros((1, 24), np.int32)
      x[0, :len(seq)] = seq
      ref = full(model, x)[0, len(seq) - 1].at[0].set(-jnp.inf).at[2].set(-jnp.inf)
      assert int(jnp.argmax(ref)) == int(out[r, i])  # (the banned pad and BOS are never sampled)
      seq.append(int(out[r, i]))


def test_the_decode_loop_reads_a_per_layer_cache_in_place(tiny_cfg):
  """An unscanned model's per-layer cache (keys [B,K,H,S], values [B,K,S,H]) is updated in place
  and read by the attention dots as laid out: the compiled decode loop neither copies nor
  transposes any array of keys or values (24 slots and 16 head dims, in either order). The scanned
  model's stacked [L,B,S,K,H] cache is the control: XLA transposes each layer's slice every step
  (the detector finds them)."""
  def cache_moves(scan):
    cfg = tiny_cfg.replace(scan_layers=scan)
    model = CausalLM(cfg, rngs=nnx.Rngs(0))
    sc = SamplingConfig(max_new_tokens=8, temperature=1.0, eos_id=3, pad_id=0)
    tok, pos = left_pad([[2, 5, 6]] * 4, 4, 0)
    hlo = jax.jit(generate, static_argnums=7, donate_argnums=1).lower(
        model, KVCache.init(cfg, 4, 24), tok, pos, row_keys(0, "abcd", [0] * 4), NO_STOPS.next,
        NO_STOPS.accept, sc).compile().as_text()
    assert 24 not in (cfg.dim, cfg.mlp_dim, cfg.head_dim, cfg.vocab_size, cfg.num_layers)
    assert cfg.head_dim == 16  # keys/values: 24 slots and 16 head dims (scores: 24, no 16)
    moved = re.findall(r"= f32\[([\d,]*)\]\S* (?:copy|transpose)\(", hlo)
    return [d for d in moved if {"24", "16"} <= set(d.split(","))]
  assert cache_moves(False) == []
  assert len(cache_moves(True)) >= 2 * tiny_cfg.num_layers


class Scripted:
  """A stand-in model whose next token is a fixed script indexed by position (tests the loop logic)."""

  def __init__(self, script, vocab=16):
    self.script, self.vocab = jnp.asarray(script), vocab

  def decode(self, tokens, cache, positions, fresh=False, only_at=None):
    if only_at is not None:
      positions = jnp.take_along_axis(positions, only_at, axis=1)
    nxt = self.script[jnp.clip(positions + 1, 0, len(self.script) - 1)]
    return jax.nn.one_hot(nxt, self.vocab) * 50.0, cache


# A byte-level-BPE-like vocabulary: merged tokens hold newlines next to other characters.
TEXTS = ["<pad>", "<unk>", "", "</s>", "\n", "# Answer", "\n\n", "42", ".\n", "x", "# Ans", "wer\n",
         "\n\n# Answer", "\n\n7", "7\n\nmore", " y"]


def run_script(script, sc, stops=NO_STOPS, prompt_len=2):
  cache = KVCache(jnp.zeros((1, 1, 1, 1, 2)), jnp.zeros((1, 1, 1, 1, 2)), jnp.zeros((1, 1), jnp.int32),
                  jnp.zeros((), jnp.int32))
  tok, pos = left_pad([script[:prompt_len]], prompt_len, 0)
  out, lens, _ = jax.jit(lambda c, t, p, k, nx, ac: generate(Scripted(script), c, t, p, k, nx, ac, sc))(
      cache, tok, pos, row_keys(0, ["x"], [0]), stops.next, stops.accept)
  return np.asarray(out)[0].tolist(), int(lens[0])


def test_eos_stops_and_pads():
  sc = SamplingConfig(max_new_tokens=8, temperature=0.0, eos_id=3, pad_id=0)
  out, n = run_script([2, 4, 7, 9, 3, 9, 9, 9, 9, 9, 9], sc)
  assert out == [7, 9, 3, 0, 0, 0, 0, 0] and n == 3


@pytest.mark.parametrize("script, want", [
    # "# Answer" "\n\n" "42" ".\n": stops at the newline that ends the answer line
    ([2, 4, 9, 4, 5, 6, 7, 8, 9, 9, 9, 9, 9], [9, 4, 5, 6, 7, 8]),
    # the header and the newlines merged into other tokens ("# Ans" "wer\n", "\n\n7")
    ([2, 4, 9, 4, 10, 11, 13, 4, 9, 9, 9, 9], [9, 4, 10, 11, 13, 4]),
    # the answer line ends inside one token ("7\n\nmore"): that token stops the row
    ([2, 4, 12, 6, 14, 9, 9, 9, 9, 9, 9], [12, 6, 14]),
])
def test_stops_after_the_answer_line_whatever_the_merges(script, want):
  sc = SamplingConfig(max_new_tokens=10, temperature=0.0, eos_id=3, pad_id=0)
  stops = StopTables.build([answer_line()], TEXTS)
  out, n = run_script(script, sc, stops)
  assert out[:n] == want and all(t == 0 for t in out[n:])
  text, name = stops.cut_text("".join(TEXTS[t] for t in want))
  assert name == "answer" and text.endswith(("42.", "7"))  # the closing newline is cut


def test_not_the_header_and_stop_strings():
  sc = SamplingConfig(max_new_tokens=10, temperature=0.0, eos_id=3, pad_id=0)
  # "x# Answer" is not a line reading "# Answer": no stop before max_new_tokens
  out, n = run_script([2, 4, 9, 5, 6, 7, 8, 9, 9, 9, 9, 9, 9], sc, StopTables.build([answer_line()],
                                                                                       TEXTS))
  assert n == 10
  stops = StopTables.build([stop_string("x y")], TEXTS)
  out, n = run_script([2, 4, 7, 9, 15, 9, 9, 9, 9, 9, 9], sc, stops)
  assert out[:n] == [7, 9, 15]
  assert stops.cut_text("42x y x") == ("42", "stop 'x y'")


# ----------------------------------------------------------------------------- trained checkpoints
# (`runs`: conftest.py's session-wide tiny generator and PRM)

def sample_config(**sample):
  c = base.get_config()
  c.sample.update(dict(max_new_tokens=24, temperature=1.0, **sample))
  return c


def test_sampler_is_deterministic_per_seed_and_batch_independent(runs):
  problems = [Problem(f"q{i}", "Add.", "4") for i in range(5)]
  small = Sampler.from_run(runs["sft"], sample_config(batch_size=4))
  a = small.sample(problems, 3, seed=7)
  b = Sampler.from_run(runs["sft"], sample_config(batch_size=16)).sample(problems, 3, seed=7)
  c = small.sample(problems, 3, seed=8)
  key = lambda s: (s.problem_id, s.meta["sample_idx"])
  assert small.batch_size == 8   # rounded to the 8-device data axis
  assert [key(s) for s in a] == [(f"q{i}", k) for i in range(5) for k in range(3)]  # input order
  assert len(a) == 15 and sorted(map(key, a)) == sorted(map(key, b))
  by = {key(s): s.steps for s in b}
  assert all(s.steps == by[key(s)] for s in a)          # same seed: same samples, any batching
  assert [s.steps for s in a] != [s.steps for s in c]   # another seed: other samples
  assert all(s.finish_reason in ("eos", "answer", "length") for s in a)
  assert all(isinstance(s.is_correct, bool) for s in a)


def test_wrong_kind_checkpoints_and_too_long_prompts_fail_clearly(runs):
  with pytest.raises(ValueError, match="holds a 'prm' model; sampling needs 'sft'"):
    Sampler.from_run(runs["prm"], sample_config())
  with pytest.raises(ValueError, match="holds a 'sft' model; scoring needs 'orm' or 'prm'"):
    Scorer.from_run(runs["sft"], sample_config())
  s = Sampler.from_run(runs["sft"], sample_config(batch_size=8, buckets=[16, 32]))
  long = Problem("long", "Add. " * 40, "4")
  with pytest.raises(ValueError, match=r"prompt of \d+ tokens is longer than the largest bucket 32"):
    s.sample([Problem("q", "Add.", "4"), long], 1)


def test_scorer_scores_the_whole_steps_that_fit_in_seq_len(runs):
  """A solution longer than `score.seq_len` is scored on the whole steps that fit: its
  `meta.scored_steps`, its per-step scores and its product are those of that prefix alone."""
  from prm_jax.records import Solution
  c = base.get_config()
  c.score.update(dict(seq_len=64, rows=8))
  scorer = Scorer.from_run(runs["prm"], c)
  steps = [f"{a}+{a}={2 * a}" for a in range(1, 40)]
  long = Solution("long", "Add.", steps)
  short = Solution("short", "Add.", steps[:2])
  got_long, got_short = scorer.score([long, short])
  k = got_long.meta["scored_steps"]
  assert 2 < k < len(steps)
  assert "scored_steps" not in got_short.meta and len(got_short.scores["prm_steps"]) == 2
  assert got_long.steps == steps  # the record keeps every step; only the scores stop at k
  (prefix,) = scorer.score([Solution("long", "Add.", steps[:k])])
  assert "scored_steps" not in prefix.meta
  np.testing.assert_allclose(got_long.scores["prm_steps"], prefix.scores["prm_steps"], atol=1e-5)
  assert len(got_long.scores["prm_steps"]) == k
  assert got_long.scores["prm"] == pytest.approx(prefix.scores["prm"], abs=1e-5)
  (one_more,) = scorer.score([Solution("long", "Add.", steps[:k + 1])])
  assert one_more.meta["scored_steps"] == k  # step k + 1 is the first that does not fit


def launch(*args):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  return subprocess.Popen([PRM_JAX, *args], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                          text=True)


def kill_after(proc, path, lines, timeout=240):
  t = time.time()
  while not (os.path.exists(path) and open(path).read().count("\n") >= lines):
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() - t < timeout
    time.sleep(0.02)
  proc.send_signal(signal.SIGKILL)
  proc.wait()


@pytest.mark.slow
def test_sample_resumes_after_sigkill_without_duplicates(runs, tmp_path):
  args = ["sample", f"--checkpoint={runs['sft']}", f"--input={runs['problems']}",
          "--config.sample.n=4", "--config.seed=3", "--config.sample.batch_size=8",
          "--config.sample.max_new_tokens=32"]
  ref = launch(*args, f"--output={tmp_path / 'ref.jsonl'}")
  assert ref.wait(timeout=300) == 0, ref.communicate()[1][-3000:]
  out = tmp_path / "out.jsonl"
  p = launch(*args, f"--output={out}")
  kill_after(p, out, 16)
  assert p.returncode == -signal.SIGKILL
  partial = out.read_text().count("\n")
  assert 16 <= partial < 160
  p = launch(*args, f"--output={out}")
  stdout, stderr = p.communicate(timeout=300)
  assert p.returncode == 0, stderr[-3000:]
  got = {(s.problem_id, s.meta["sample_idx"]): s for s in read_solutions(str(out))}
  want = {(s.problem_id, s.meta["sample_idx"]): s for s in read_solutions(str(tmp_path / "ref.jsonl"))}
  assert len(got) == sum(1 for _ in read_solutions(str(out))) == 160  # no duplicate, none missing
  assert got.keys() == want.keys()
  assert all(got[k].steps == want[k].steps for k in want)  # the resumed rows are the same samples


@pytest.mark.slow
def test_score_resumes_after_sigkill_and_matches_the_scorer(runs, tmp_path):
  args = ["score", f"--checkpoint={runs['prm']}", f"--input={runs['solutions']}",
          "--config.score.seq_len=64", "--config.score.rows=4", "--config.score.chunk=8"]
  out = tmp_path / "scored.jsonl"
  p = launch(*args, f"--output={out}")
  kill_after(p, out, 32)
  partial = out.read_text().count("\n")
  assert 32 <= partial < 2000
  p = launch(*args, f"--output={out}")
  stdout, stderr = p.communicate(timeout=300)
  assert p.returncode == 0, stderr[-3000:]
  assert f"({partial} already there" in stdout or partial == 0
  got = list(read_solutions(str(out)))
  src = list(read_solutions(runs["solutions"]))
  assert [s.problem_id for s in got] == [s.problem_id for s in src]  # input order, nothing lost
  c = base.get_config()
  c.score.update(dict(seq_len=64, rows=4))
  direct = list(Scorer.from_run(runs["prm"], c).score(src))
  for g, d in zip(got, direct):
    for k in ("prm", "prm_min", "prm_last"):
      assert g.scores[k] == pytest.approx(d.scores[k], abs=1e-5)
    np.testing.assert_allclose(g.scores["prm_steps"], d.scores["prm_steps"], atol=1e-5)
    assert len(g.scores["prm_steps"]) == len(g.steps)
    assert g.scores["prm"] == pytest.approx(float(np.prod(g.scores["prm_steps"])), rel=1e-4)


def test_score_rejects_bad_lines_or_skips_them(runs, tmp_path):
  bad = tmp_path / "bad.jsonl"
  lines = open(runs["solutions"]).read().splitlines()[:5]
  bad.write_text("\n".join(lines[:2] + ['{"problem_id": "x"'] + lines[2:]) + "\n")
  p = launch("score", f"--checkpoint={runs['prm']}", f"--input={bad}", f"--output={tmp_path / 'o.jsonl'}")
  _, err = p.communicate(timeout=300)
  assert p.returncode == 1 and f"{bad}:3: malformed JSON" in err
  p = launch("score", f"--checkpoint={runs['prm']}", f"--input={bad}",
             f"--output={tmp_path / 'o2.jsonl'}", "--config.data.skip_invalid=True")
  out, err = p.communicate(timeout=300)
  assert p.returncode == 0 and "1 invalid skipped" in out
  assert len(list(read_solutions(str(tmp_path / "o2.jsonl")))) == 5


# ----------------------------------------------------------------------------- shared-prompt prefill

class Recording:
  """The tiny model, recording the rows of every prompt it prefills (at trace time)."""

  def __init__(self, model):
    self.model, self.prefills = model, []

  def decode(self, tokens, cache, positions, fresh=False, only_at=None):
    if tokens.shape[1] > 1:
      self.prefills.append((tokens.shape, [a.shape for a in cache.k], fresh))  # [B,K,H,S] a layer
    return self.model.decode(tokens, cache, positions, fresh, only_at)


def test_generate_prefills_each_prompt_once_and_matches_replicated(small_lm):
  model = small_lm[0]
  unique = [[2, 10, 11, 12, 4], [2, 20, 4], [2, 30, 31, 4]]
  rows = np.array([0, 0, 0, 1, 1, 2, 2, 2], np.int32)
  sc = SamplingConfig(max_new_tokens=10, temperature=1.0, eos_id=3, pad_id=0, banned_ids=(0, 2))
  keys = row_keys(0, [str(r) for r in rows], range(8))
  run = jax.jit(generate, static_argnums=(0, 7))
  rec = Recording(model)
  tok, pos = left_pad(unique, 8, 0)
  shared, shared_lens, cache = run(rec, KVCache.init(model.cfg, 8, 18), tok, pos, keys,
                                   NO_STOPS.next, NO_STOPS.accept, sc, rows)
  assert rec.prefills == [((3, 8), [(3, 2, 16, 18)] * 2, True)]  # 3 prompt rows prefilled, not 8
  assert cache.k[0].shape[0] == 8 and np.array_equal(np.asarray(cache.pos)[:, :8],
                                                  np.asarray(pos)[rows])
  tok, pos = left_pad([unique[r] for r in rows], 8, 0)
  rec = Recording(model)
  want, want_lens, _ = run(rec, KVCache.init(model.cfg, 8, 18), tok, pos, keys, NO_STOPS.next,
                           NO_STOPS.accept, sc)
  assert rec.prefills == [((8, 8), [(8, 2, 16, 18)] * 2, True)]
  np.testing.assert_array_equal(shared, want)   # token for token
  np.testing.assert_array_equal(shared_lens, want_lens)
  assert len({tuple(r) for r in np.asarray(shared).tolist()}) == 8  # each row its own key


@pytest.fixture(scope="module")
def small_lm(tmp_path_factory):
  """A random tiny LM and a sentencepiece tokenizer that fits it (one init for these tests)."""
  from prm_jax.model import ModelConfig
  from prm_jax.tokenizer import train_sentencepiece
  texts = [f"Add {a} and {b}.\n{a}+{b}={a + b}\n# Answer\n{a + b}" for a in range(10)
           for b in range(10)]
  tok = train_sentencepiece(texts, vocab_size=300,
                            path=str(tmp_path_factory.mktemp("lm") / "tok.model"))
  cfg = ModelConfig(vocab_size=320, dim=64, num_layers=2, num_heads=4, num_kv_heads=2, mlp_dim=128)
  return CausalLM(cfg, rngs=nnx.Rngs(0)), tok


def small_sampler(small_lm, mesh=None, **sample):
  c = base.get_config()
  c.mesh.update(mesh or {})
  c.sample.update(dict(max_new_tokens=12, temperature=1.0, buckets=[16], **sample))
  return Sampler(*small_lm, c)


def shared_and_replicated(sampler, draw):
  """draw() with shared prompt prefill, then with one prefill per row: (results, raw token
  batches, prompt rows prefilled) of each."""
  out = []
  for share in (True, False):
    sampler.share_prompts, sampler.prefilled_rows, raw = share, 0, []
    generate_batch = Sampler._generate.__get__(sampler)
    sampler._generate = lambda p, k: raw.append(generate_batch(p, k)) or raw[-1]
    out.append((draw(), raw, sampler.prefilled_rows))
    del sampler._generate
  return out


def test_sampler_shares_prompt_prefill_token_for_token(small_lm):
  s = small_sampler(small_lm, batch_size=16)
  assert s.div == 8 and s.batch_size == 16 and s.share_prompts   # the default: shared
  problems = [Problem(f"q{i}", f"Add {i} and {i + 1}.", str(2 * i + 1)) for i in range(3)]
  key = lambda x: (x.problem_id, x.meta["sample_idx"], x.steps, x.finish_reason, x.meta)
  for n, start, batches in ((5, 0, 1), (5, 7, 1), (8, 0, 2), (8, 17, 1)):  # 5 does not divide 16
    (a, raw_a, rows_a), (b, raw_b, rows_b) = shared_and_replicated(
        s, lambda: [x for batch in s.iter_batches(problems, n, 3, start=start) for x in batch])
    assert len(a) == 3 * n - start and list(map(key, a)) == list(map(key, b))
    for (ta, la), (tb, lb) in zip(raw_a, raw_b, strict=True):
      np.testing.assert_array_equal(ta, tb)      # token for token, every row
      np.testing.assert_array_equal(la, lb)
    # <= 3 distinct prompts per batch: 8 prompt rows (the data axis' 8 devices), not 16
    assert (rows_a, rows_b) == (8 * batches, 16 * batches)
  assert sorted(s._fns, key=str) == [(16, 8), (16, None)]
  assert len(s._caches) == 1    # the two programs share the bucket's donated cache
