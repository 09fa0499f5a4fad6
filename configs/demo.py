"""The embedded default: the whole paper loop on the synthetic arithmetic domain, on a 2-core CPU.

`--config.scale=N` multiplies the problems, samples and training steps.
"""

import ml_collections

from prm_jax.configs import base


def get_config():
  c = base.get_config("tiny")
  c.workdir = "runs/demo"
  c.scale = 1.0
  c.tokenizer.vocab_size = 400
  c.model.max_seq_len = 128
  c.train.update(dict(steps=500, batch_size=16, seq_len=128, learning_rate=3e-3, warmup_steps=20,
                      weight_decay=0.0, log_every=100, save_every=250))
  c.sample.update(dict(batch_size=128, max_new_tokens=64, temperature=0.8))
  c.score.update(dict(seq_len=128, rows=16, chunk=1024))
  c.demo = ml_collections.ConfigDict(dict(
      levels=(0,),  # synthetic levels (0: 3 operations, values in 0..20; 1: 3; 2: 4-5; 3: 6-8)
      # Share of the references' triggering steps written with each systematic misconception
      # (prm_jax/data/synthetic.py MISCONCEPTIONS): the generator learns them, so on the problems
      # that trigger one it is wrong the same way most of the time, as real generators are.
      misconceptions=dict(smaller_from_larger=0.7, forgotten_carry=0.0),
      seeds=1,                   # > 1: the whole demo per seed, reported as mean ± std over seeds
      train_problems=8000,       # SFT on their reference solutions; reward-model pools below
      test_problems=200,
      n=16,                      # samples per test problem: the best-of-N pool
      # The reward models start from a deeper LM trained on the same references (the paper's
      # pretrained base); 0 steps starts them from the generator. A 2-layer reward model cannot
      # read the arithmetic its own top layer computes (README, "Why a separate base").
      rm_base_steps=1000,
      rm_base_model=dict(num_layers=4, mlp_dim=256),
      # The base's corpus: "correct" references (a pretrained model that knows the arithmetic the
      # generator's fine-tuning data gets wrong), or "same" as the generator's (misconceptions too).
      rm_base_corpus="correct",
      rm_problems=3000,          # training problems sampled for the ORM / PRM training data
      rm_samples=2,              # samples per such problem
      rm_steps=800, rm_batch_size=16, rm_learning_rate=1e-3,
      al_rm_steps=300,           # each active-learning generation's PRM (smaller label budgets)
      prm_class_weights=(4.0, 1.0, 1.0),  # (neg, neutral, pos): negatives are rarer
      bon_trials=400))
  c.active.update(dict(generations=2, problems_per_generation=300, samples_per_problem=4,
                       budget=600, eval_trials=200))
  return c
