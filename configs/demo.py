"""The embedded default: everything small enough for a 2-core laptop CPU in minutes.

`--config.scale=N` multiplies the amount of data and steps.
"""

from configs import base


def get_config():
  c = base.get_config("tiny")
  c.workdir = "runs/demo"
  c.scale = 1.0
  c.tokenizer.vocab_size = 512
  c.model.vocab_size = 512
  c.model.max_seq_len = 128
  c.train.steps = 300
  c.train.batch_size = 16
  c.train.seq_len = 128
  c.train.learning_rate = 3e-3
  c.train.warmup_steps = 30
  c.train.weight_decay = 0.0
  c.train.log_every = 50
  c.train.save_every = 100
  return c
