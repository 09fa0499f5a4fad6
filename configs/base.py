"""Base config: model size, mesh, logical-axis rules, training defaults.

Usage: `--config=configs/base.py:small --config.mesh.fsdp=4 --config.train.steps=1000`.
"""

import ml_collections

from configs import model_sizes

# Logical axis -> mesh axes. FSDP shards `embed` over `fsdp`; tensor parallelism splits `mlp`, attention
# heads and the vocabulary over `tensor`; the batch is split over `data` and `fsdp`.
RULES = (
    ("batch", ("data", "fsdp")),
    ("length", None),
    ("embed", "fsdp"),
    ("mlp", "tensor"),
    ("heads", "tensor"),
    ("kv_heads", "tensor"),
    ("head_dim", None),
    ("vocab", "tensor"),
    ("norm", None),
    ("layers", None),
    ("classes", None),
)


def get_config(size: str = "tiny") -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0
  c.workdir = "runs/default"
  c.model = model_sizes.get(size or "tiny")
  # -1 takes the remaining devices. `data` x `fsdp` x `tensor` must equal the global device count.
  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1))
  c.rules = RULES

  c.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=8000, model_type="bpe"))

  c.train = ml_collections.ConfigDict(dict(
      steps=1000, batch_size=32, seq_len=256, learning_rate=3e-4, warmup_steps=100,
      weight_decay=0.1, b1=0.9, b2=0.95, grad_clip=1.0, log_every=50))
  return c
