"""The trainer: learning, checkpoints (SIGKILL resume, SIGTERM, divergence), meshes, metrics."""

import json
import os
import signal
import struct
import subprocess
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from prm_jax.configs import base
from prm_jax import sharding
from prm_jax.data.pipeline import make_dataset
from prm_jax.tokenizer import IGNORE, train_sentencepiece
from prm_jax.train import trainer
from prm_jax.model import ModelConfig, build_model
from prm_jax.runs import RunDir
from prm_jax.train.loop import TrainingDiverged, train
from prm_jax.train.metrics import MetricWriter
from prm_jax.records import write_jsonl
from tests.conftest import ROOT, compiled_programs, one_digit_sums

PRM_JAX = os.path.join(os.path.dirname(sys.executable), "prm-jax")


@pytest.fixture(scope="module")
def tok():
  return train_sentencepiece(["Add.\n" + s.text for s in one_digit_sums(200, 9)],
                             vocab_size=300)


def tiny_config(workdir, task, steps, **train):
  c = base.get_config("tiny")
  c.workdir = str(workdir)
  c.model.update(dict(vocab_size=320, dim=64, num_layers=2, num_heads=4, num_kv_heads=2,
                      mlp_dim=128, max_seq_len=64))
  c.tokenizer.vocab_size = 300
  c.train.update(dict(task=task, steps=steps, batch_size=16, seq_len=64, learning_rate=3e-3,
                      warmup_steps=10, weight_decay=0.0, log_every=steps, save_every=steps))
  c.train.update(train)
  return c


@pytest.mark.slow
def test_prm_learns_step_labels_above_majority(tmp_path, tok):
  train_sols, test_sols = one_digit_sums(600, 0), one_digit_sums(200, 1)
  summary = train(tiny_config(tmp_path, "prm", 300), records=train_sols, tokenizer=tok)
  graphdef, abstract = nnx.split(nnx.eval_shape(lambda: build_model(
      "prm", ModelConfig.from_dict(tiny_config(tmp_path, "prm", 1).model), nnx.Rngs(0))),
      nnx.Param)
  params = RunDir(str(tmp_path)).load_params(abstract)
  model = nnx.merge(graphdef, params)
  ds = make_dataset(test_sols, tok, seq_len=64, global_batch=200, seed=0, pack=False, num_epochs=1,
                    shuffle=False)
  batch = {k: jnp.asarray(v) for k, v in next(iter(ds)).items()}
  pred = np.asarray(model(batch["tokens"], batch["positions"], batch["segment_ids"]).argmax(-1)) - 1
  labels = np.asarray(batch["step_label"])
  at = labels != IGNORE
  acc = (pred[at] == labels[at]).mean()
  majority = max(np.mean(labels[at] == c) for c in (-1, 0, 1))
  assert summary["step"] == 300
  assert acc > majority + 0.15, (acc, majority)


def read_losses(workdir):
  """step -> loss from metrics.jsonl, which must log each step once (a resume drops and re-logs
  the steps past its checkpoint, it does not append them twice)."""
  out = {}
  for line in open(os.path.join(workdir, "metrics.jsonl")):
    m = json.loads(line)
    assert m["step"] not in out, f"step {m['step']} logged twice"
    out[m["step"]] = m["loss"]
  return out


def launch(workdir, data, tok_path, steps=200, extra=()):
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=1", JAX_PLATFORMS="cpu")
  args = [PRM_JAX, "train", "--config.train.task=sft", f"--config.workdir={workdir}", f"--config.train.data={data}",
          f"--config.tokenizer.path={tok_path}", "--config.model.vocab_size=320",
          "--config.model.dim=32", "--config.model.num_layers=1", "--config.model.mlp_dim=64",
          "--config.model.num_heads=2", "--config.model.num_kv_heads=1",
          f"--config.train.steps={steps}", "--config.train.batch_size=8", "--config.train.seq_len=64",
          "--config.train.log_every=1", "--config.train.save_every=20",
          "--config.train.warmup_steps=10", "--config.train.learning_rate=1e-2", *extra]
  return subprocess.Popen(args, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def wait_for_checkpoint(workdir, step, proc, timeout=240):
  path = os.path.join(workdir, "checkpoints", str(step))
  t = time.time()
  while not os.path.isdir(path):  # orbax renames the finished temp dir to N: N exists = complete
    assert proc.poll() is None, proc.communicate()[1][-3000:]
    assert time.time() - t < timeout
    time.sleep(0.05)


@pytest.fixture(scope="module")
def sft_data(tmp_path_factory, tok):
  d = tmp_path_factory.mktemp("sftdata")
  tok.save(str(d / "tok.model"))
  write_jsonl(str(d / "train.jsonl"), one_digit_sums(400, 3))
  return str(d / "train.jsonl"), str(d / "tok.model")


@pytest.mark.slow
def test_sigkill_resume_reproduces_the_uninterrupted_losses(tmp_path, sft_data):
  data, tok_path = sft_data
  ref = launch(tmp_path / "ref", data, tok_path)
  out, err = ref.communicate(timeout=600)
  assert ref.returncode == 0, err[-3000:]
  want = read_losses(tmp_path / "ref")
  assert sorted(want) == list(range(1, 201))

  run = tmp_path / "killed"
  p = launch(run, data, tok_path)
  wait_for_checkpoint(run, 80, p)
  p.send_signal(signal.SIGKILL)  # a real kill: no handler, no cleanup
  p.wait()
  assert p.returncode == -signal.SIGKILL
  done = sorted(int(n) for n in os.listdir(run / "checkpoints") if n.isdigit())
  assert done and done[-1] >= 80 and done[-1] < 200
  p = launch(run, data, tok_path)
  out, err = p.communicate(timeout=600)
  assert p.returncode == 0, err[-3000:]
  got = read_losses(run)
  assert sorted(got) == list(range(1, 201))
  resumed = [s for s in got if s > done[-1]]
  assert len(resumed) >= 1
  np.testing.assert_allclose([got[s] for s in resumed], [want[s] for s in resumed], atol=1e-6)


@pytest.mark.slow
def test_sigterm_checkpoints_and_exits_zero(tmp_path, sft_data):
  data, tok_path = sft_data
  p = launch(tmp_path, data, tok_path, steps=100000)
  wait_for_checkpoint(tmp_path, 20, p)
  p.send_signal(signal.SIGTERM)
  out, err = p.communicate(timeout=120)
  assert p.returncode == 0, err[-3000:]
  assert "preempted; checkpoint written" in out
  steps = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  logged = max(read_losses(tmp_path))
  assert steps[-1] == logged and steps[-1] > 20  # a checkpoint at the exact step it stopped


def test_divergence_stops_and_keeps_finite_checkpoints(tmp_path, tok):
  cfg = tiny_config(tmp_path, "sft", 50, learning_rate=1e30, warmup_steps=1, log_every=1,
                    save_every=1, async_checkpoint=False, grad_clip=1e30)
  with pytest.raises(TrainingDiverged, match="non-finite loss or gradient at step"):
    train(cfg, records=one_digit_sums(100, 4), tokenizer=tok)
  steps = sorted(int(n) for n in os.listdir(tmp_path / "checkpoints") if n.isdigit())
  assert steps  # the good steps before it were checkpointed
  import orbax.checkpoint as ocp
  from prm_jax.train.checkpoints import Checkpointer
  raw = Checkpointer(str(tmp_path / "checkpoints"), 1).manager.restore(
      steps[-1], args=ocp.args.Composite(state=ocp.args.StandardRestore()))
  leaves = jax.tree.leaves(raw["state"])
  assert leaves and all(np.isfinite(np.asarray(x)).all() for x in leaves)


def test_prm_step_loss_same_on_meshes(tok):
  sols = one_digit_sums(64, 5)
  batch = next(iter(make_dataset(sols, tok, seq_len=64, global_batch=8, seed=0)))
  cfg = ModelConfig.from_dict(tiny_config("/tmp", "prm", 1).model)
  tc = tiny_config("/tmp", "prm", 10).train
  tx = trainer.make_optimizer(tc)
  losses = {}
  for shape in [(1, 1, 1), (8, 1, 1), (2, 2, 2)]:
    mesh = sharding.make_mesh(shape, devices=jax.devices()[:1] if shape == (1, 1, 1) else None)
    model = sharding.init_sharded(lambda: build_model("prm", cfg, nnx.Rngs(0)), mesh,
                                  base.RULES)
    graphdef, state, sh = trainer.create_train_state(model, tx, mesh, base.RULES)
    bsh = sharding.logical_sharding(("batch",), (8, 64), mesh, base.RULES)
    step = trainer.make_train_step(graphdef, tx, trainer.task_loss("prm", tc), sh,
                                   {k: bsh for k in batch}, mesh, base.RULES)
    _, m = step(state, sharding.shard_batch(batch, mesh, base.RULES))
    losses[shape] = (float(m["loss"]), float(m["grad_norm"]))
  for shape, got in losses.items():
    np.testing.assert_allclose(got, losses[(1, 1, 1)], atol=1e-5, err_msg=str(shape))


def read_tb_scalars(tb_dir):
  from tensorboardX.proto import event_pb2
  tags = set()
  for name in os.listdir(tb_dir):
    data = open(os.path.join(tb_dir, name), "rb").read()
    i = 0
    while i < len(data):  # TFRecord framing: length, crc, payload, crc
      (n,) = struct.unpack("<Q", data[i:i + 8])
      ev = event_pb2.Event.FromString(data[i + 12:i + 12 + n])
      tags.update(v.tag for v in ev.summary.value)
      i += 12 + n + 4
  return tags


def test_metrics_jsonl_and_tensorboard(tmp_path, tok):
  train(tiny_config(tmp_path, "orm", 6, log_every=2), records=one_digit_sums(64, 6),
        tokenizer=tok)
  rows = [json.loads(l) for l in open(tmp_path / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2, 4, 6]
  assert {"loss", "outcome_accuracy", "grad_norm", "tokens_per_s"} <= set(rows[0])
  assert rows[0]["tokens_per_s"] > 0
  assert {"loss", "grad_norm", "tokens_per_s"} <= read_tb_scalars(tmp_path / "tb")


@pytest.mark.slow
def test_gradient_accumulation_applies_the_mean_gradient_every_k_steps(tok):
  """grad_accum=2 on micro-batches b1, b2, b1, b2 equals the plain optimizer stepped twice on the
  mean of b1's and b2's gradients, and holds the parameters still between its updates. The
  schedule's first update has learning rate 0 (warmup from 0), so the parameters first move at
  micro-step 4 (plain training: at step 2)."""
  cfg = ModelConfig.from_dict(tiny_config("/tmp", "sft", 1).model)
  mesh = sharding.make_mesh((1, 1, 1), devices=jax.devices()[:1])
  model = sharding.init_sharded(lambda: build_model("sft", cfg, nnx.Rngs(0)), mesh, base.RULES)
  it = iter(make_dataset(one_digit_sums(64, 7), tok, seq_len=64, global_batch=8))
  b1, b2 = next(it), next(it)
  assert not np.array_equal(b1["tokens"], b2["tokens"])
  bsh = sharding.logical_sharding(("batch",), (8, 64), mesh, base.RULES)
  host = lambda tree: jax.tree.map(lambda x: np.array(x), tree)

  tc = tiny_config("/tmp", "sft", 10, grad_accum=2, warmup_steps=1).train
  tx = trainer.make_optimizer(tc)
  graphdef, state, sh = trainer.create_train_state(model, tx, mesh, base.RULES)
  p0 = host(state.params)
  loss_fn = trainer.task_loss("sft", tc)
  # the reference gradients and updates are jitted: run eagerly, each op would compile once per
  # parameter shape (hundreds of programs)
  grad = jax.jit(jax.grad(lambda p, b: loss_fn(nnx.merge(graphdef, p), b)[0]))
  p0_dev = jax.tree.map(jnp.asarray, p0)
  mean_grad = jax.jit(lambda g1, g2: jax.tree.map(lambda a, c: (a + c) / 2, g1, g2))(
      grad(p0_dev, b1), grad(p0_dev, b2))
  step = trainer.make_train_step(graphdef, tx, loss_fn, sh, {k: bsh for k in b1}, mesh, base.RULES)
  for k, b in enumerate([b1, b2, b1, b2, b1], 1):
    state, _ = step(state, sharding.shard_batch(b, mesh, base.RULES))
    if k <= 3:  # accumulating (1, 3), or the first update at learning rate 0 (2)
      jax.tree.map(np.testing.assert_array_equal, host(state.params), p0)
    if k == 4:
      got = host(state.params)
  jax.tree.map(np.testing.assert_array_equal, host(state.params), got)  # 5: accumulating again

  plain_tc = tiny_config("/tmp", "sft", 10, warmup_steps=1).train
  plain = trainer.make_optimizer(plain_tc)

  @jax.jit
  def plain_step(params, opt, g):
    updates, opt = plain.update(g, opt, params)
    return optax.apply_updates(params, updates), opt

  params, opt = p0_dev, jax.jit(plain.init)(p0_dev)
  for _ in range(2):
    params, opt = plain_step(params, opt, mean_grad)
  moved = jax.tree.leaves(jax.tree.map(lambda a, c: np.abs(a - c).max(), host(params), p0))
  assert max(moved) > 1e-3  # far above the tolerance below: Adam moved every step by ~lr
  jax.tree.map(lambda a, c: np.testing.assert_allclose(a, c, rtol=2e-5, atol=1e-4), got,
               host(params))


def test_metric_writer_drops_the_steps_a_resume_logs_again(tmp_path):
  path = tmp_path / "metrics.jsonl"
  lines = [json.dumps({"step": k, "loss": 1.0 / k}) + "\n" for k in range(1, 7)]
  path.write_text(lines[0] + '{"note": "not a step"}\n' + "".join(lines[1:]) + '{"step": 7, "lo')
  w = MetricWriter(str(tmp_path), resume_step=4)
  w.write(5, {"loss": 0.5})
  w.close()
  got = path.read_text().splitlines()
  # steps 1-4 and the non-step line kept, 5 and 6 dropped (logged again), the torn line gone
  assert got == [l.rstrip("\n") for l in lines[:1]] + ['{"note": "not a step"}'] + [
      l.rstrip("\n") for l in lines[1:4]] + ['{"step": 5, "loss": 0.5}']
  unchanged = path.read_bytes()
  MetricWriter(str(tmp_path), resume_step=5).close()
  assert path.read_bytes() == unchanged  # nothing past step 5: the file is not rewritten


@pytest.mark.slow
def test_reward_model_init_from_generator_and_hf(tmp_path, tok):
  from prm_jax.runs import Run
  from prm_jax.train.loop import _load_starting_weights
  sft_dir, rm_dir = tmp_path / "sft", tmp_path / "prm"
  train(tiny_config(sft_dir, "sft", 3), records=one_digit_sums(64, 8), tokenizer=tok)
  # one step at warmup's learning rate 0 (no weight decay): the saved PRM is exactly its start
  train(tiny_config(rm_dir, "prm", 1, init_from=str(sft_dir)), records=one_digit_sums(64, 9))
  mesh = sharding.make_mesh((2, 2, 2))
  lm, rm = Run.open(str(sft_dir), mesh, base.RULES), Run.open(str(rm_dir), mesh, base.RULES)
  assert rm.task == "prm" and rm.tokenizer.proto == tok.proto  # the generator's tokenizer, not a new one
  np.testing.assert_array_equal(np.asarray(rm.model.transformer.embed[...]),
                                np.asarray(lm.model.transformer.embed[...]))
  fresh = build_model("prm", rm.model_config, nnx.Rngs(tiny_config(rm_dir, "prm", 1).seed))
  np.testing.assert_allclose(np.asarray(rm.model.head_w[...]), np.asarray(fresh.head_w[...]),
                             rtol=1e-5)  # the head starts fresh (jit vs eager init: ulps apart)
  assert rm.model.transformer.layers[0].mlp.up[...].sharding.spec == jax.sharding.PartitionSpec(
      "fsdp", "tensor")
  hf = ROOT / "tests" / "fixtures" / "hf" / "llama_gqa_untied"
  from prm_jax.model.hf_import import config_from_hf, load_hf_causal_lm
  rm_cfg = config_from_hf(json.loads((hf / "config.json").read_text()))
  rm2 = build_model("orm", rm_cfg, nnx.Rngs(0))
  _load_starting_weights(rm2, f"hf:{hf}", sharding.make_mesh((8, 1, 1)), base.RULES)
  x = jnp.asarray(np.load(hf / "expected.npz")["tokens"])
  np.testing.assert_allclose(rm2.hidden(x), load_hf_causal_lm(str(hf)).transformer(x)[0], atol=1e-5)
  # from hf: the checkpoint's shape is adopted; a tokenizer it cannot hold, or none, is refused
  with pytest.raises(ValueError, match="model.vocab_size=97 is smaller than the tokenizer's 300"):
    train(tiny_config(tmp_path / "hf_orm", "orm", 1, init_from=f"hf:{hf}"),
          records=one_digit_sums(8, 1), tokenizer=tok)
  with pytest.raises(ValueError, match="ships no tokenizer, and a new one would not match"):
    train(tiny_config(tmp_path / "hf_orm2", "orm", 1, init_from=f"hf:{hf}"),
          records=one_digit_sums(8, 1))


@pytest.mark.slow
def test_reward_model_takes_its_starting_runs_architecture(tmp_path, tok):
  base = tmp_path / "base"
  c = tiny_config(base, "sft", 2)
  c.model.num_layers = 3  # deeper than the reward model's own config says
  train(c, records=one_digit_sums(32, 3), tokenizer=tok)
  rm = tmp_path / "prm"
  train(tiny_config(rm, "prm", 1, init_from=str(base)), records=one_digit_sums(32, 4), tokenizer=tok)
  assert json.loads((rm / "config.json").read_text())["model"]["num_layers"] == 3
  with pytest.raises(FileNotFoundError, match="not a prm_jax run.*config.json"):
    train(tiny_config(tmp_path / "x", "prm", 1, init_from=str(tmp_path / "empty")),
          records=one_digit_sums(32, 4), tokenizer=tok)


def test_checkpoint_restores_onto_another_mesh_and_keeps_last_n(tmp_path, tok):
  from prm_jax.runs import abstract_with_shardings
  from prm_jax.train.checkpoints import Checkpointer
  cfg = ModelConfig.from_dict(tiny_config("/tmp", "prm", 1).model)
  tx = trainer.make_optimizer(tiny_config("/tmp", "prm", 10).train)
  states = {}
  for shape in [(8, 1, 1), (2, 2, 2)]:
    mesh = sharding.make_mesh(shape)
    model = sharding.init_sharded(lambda: build_model("prm", cfg, nnx.Rngs(int(shape[0]))),
                                  mesh, base.RULES)
    states[shape] = trainer.create_train_state(model, tx, mesh, base.RULES)
  ck = Checkpointer(str(tmp_path / "ck"), save_every=1, keep=2)
  with compiled_programs() as compiled:
    for s in range(1, 5):  # params replicated over 8 CPU devices
      ck.save(s, states[(8, 1, 1)][1], {"iterator": {"s": s}})
    ck.wait()
  # one replica written, not split across the 8 (one slice program per shape): nothing compiles
  assert compiled == []
  assert sorted(int(n) for n in os.listdir(tmp_path / "ck") if n.isdigit()) == [3, 4]
  _, target, target_sh = states[(2, 2, 2)]
  restored, data, step = ck.restore(abstract_with_shardings(target, target_sh))
  assert step == 4 and data == {"iterator": {"s": 4}}
  src = states[(8, 1, 1)][1].params["transformer"]["layers"][0]["attn"]["q_proj"][...]
  got = restored.params["transformer"]["layers"][0]["attn"]["q_proj"][...]
  np.testing.assert_array_equal(np.asarray(got), np.asarray(src))
  assert got.sharding.spec == jax.sharding.PartitionSpec("fsdp", "tensor")
  assert src.sharding.spec == jax.sharding.PartitionSpec()
  ck.close()


@pytest.fixture(scope="module")
def tfds_dir(tmp_path_factory):
  """PRM800K's phase 2 sample and MATH's test sample built as TFDS datasets (array_record)."""
  import shutil
  import tensorflow_datasets as tfds
  from prm_jax.data.tfds_builders import MathProblems, Prm800k
  from tests.conftest import FIXTURES
  manual = tmp_path_factory.mktemp("manual")
  shutil.copy(FIXTURES / "prm800k" / "phase2_train.thirdparty_examples.jsonl",
              manual / "phase2_train.jsonl")
  shutil.copy(FIXTURES / "math_test.sample.jsonl", manual / "test.jsonl")
  data_dir = tmp_path_factory.mktemp("tfds")
  cfg = tfds.download.DownloadConfig(manual_dir=str(manual))
  for builder in (Prm800k, MathProblems):
    builder(data_dir=str(data_dir)).download_and_prepare(download_config=cfg)
  return str(data_dir)


def test_trains_from_a_tfds_source(tmp_path, tok, tfds_dir):
  """`train.data=tfds:prm800k/SPLIT` trains on the same examples as the JSONL it was built from
  (every rated alternative too), and a MATH split, which holds problems, not solutions, is
  refused before anything is trained."""
  cfg = tiny_config(tmp_path / "prm", "prm", 2, data="tfds:prm800k/phase2_train", seq_len=256)
  cfg.model.update(dict(max_seq_len=256, vocab_size=640))
  cfg.tokenizer.vocab_size = 600  # MATH's text: 256 byte pieces plus every distinct character
  cfg.data_dir = tfds_dir
  summary = train(cfg)  # the tokenizer too is trained on the decoded records
  assert summary["step"] == 2 and summary["truncated_steps"] > 0  # PRM800K rows exceed 256 tokens
  rows = [json.loads(l) for l in open(tmp_path / "prm" / "metrics.jsonl")]
  assert [r["step"] for r in rows] == [2] and np.isfinite(rows[0]["loss"])
  assert rows[0]["steps"] > 0  # step labels reached the loss
  # the same examples as the JSONL the dataset was built from (TFDS stores them in another order)
  from prm_jax.data.commands import open_records
  from prm_jax.train.loop import load_records
  from tests.conftest import FIXTURES
  key = lambda s: repr((s.problem_id, s.steps, s.step_labels, s.is_correct))
  jsonl = str(FIXTURES / "prm800k" / "phase2_train.thirdparty_examples.jsonl")
  for expand in (False, True):
    source, decode = load_records("tfds:prm800k/phase2_train", expand, tfds_dir)
    got = sorted(key((decode or (lambda r: r))(source[i])) for i in range(len(source)))
    assert got == sorted(key(s) for s in open_records(jsonl, "auto", expand=expand)), expand
  assert len(got) > len(list(open_records(jsonl, "auto")))  # the alternatives are there
  bad = tiny_config(tmp_path / "math", "sft", 2, data="tfds:math/test")
  bad.data_dir = tfds_dir
  with pytest.raises(ValueError, match=r"tfds:math/test.*problems"):
    train(bad, tokenizer=tok)
  assert not os.path.exists(tmp_path / "math" / "checkpoints")
