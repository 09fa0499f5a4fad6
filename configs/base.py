"""Base config: model size, mesh, the logical-axis rules, and every command's settings.

Usage: `--config=configs/base.py:small --config.mesh.fsdp=4 --config.train.steps=1000`.
Sections: model, mesh, rules, tokenizer, format, train, sample, score, search, eval, data, active (each command's
`--help` lists the ones it reads).
"""

import ml_collections

from prm_jax.configs import model_sizes

# Logical axis -> mesh axes: the project's one rules table (training, sampling, scoring, import). FSDP shards `embed` over `fsdp`; tensor parallelism splits `mlp`, attention
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

  # path: a sentencepiece .model, a Hugging Face folder / tokenizer.json, or a run ("" trains a
  # sentencepiece model on the data; train.init_from brings its own)
  c.tokenizer = ml_collections.ConfigDict(dict(path="", vocab_size=8000, model_type="bpe"))
  # The step format (prm_jax/step_format.py): how (problem, steps) become tokens and where each
  # step is scored. A run records it; sampling and scoring a run read it back.
  c.format = ml_collections.ConfigDict(dict(
      preset="newline",            # newline | double_newline | tag
      tag="",                      # tag: <extra_0> (Qwen2.5-Math-PRM), ки (Math-Shepherd)
      before_tag="", after_tag="\n",
      chat_template=False,         # wrap in the tokenizer's chat template (problem = user turn)
      system_prompt="",
      bos="auto"))                 # auto (the tokenizer's convention) | always | never

  c.data_dir = ml_collections.config_dict.placeholder(str)  # TFDS data dir for tfds: sources
  c.train = ml_collections.ConfigDict(dict(
      task="sft",                  # sft | orm | prm
      data="",                     # PATH.jsonl (Solution, PRM800K or scored-samples) or tfds:NAME/SPLIT
      expand_alternatives=True,    # PRM800K: every rated alternative step is an extra example
      init_from="",                # reward models: an SFT workdir, or hf:PATH
      steps=1000, batch_size=32, seq_len=256, pack=True, grad_accum=1,
      learning_rate=3e-4, warmup_steps=100, weight_decay=0.1, b1=0.9, b2=0.95, grad_clip=1.0,
      log_every=50, save_every=500, keep=3, async_checkpoint=True,
      prm_mode="three_class",      # three_class | binary
      neutral_is_positive=True,    # the paper: a neutral step counts as ok
      class_weights=(1.0, 1.0, 1.0),  # (neg, neutral, pos)
      orm_all_tokens=False))       # ORM: supervise every solution token, not only the last
  c.sample = ml_collections.ConfigDict(dict(
      n=1,                         # samples per problem
      batch_size=64,               # rows per generated batch (rounded to the mesh's batch split)
      max_new_tokens=256, temperature=1.0, top_k=0, top_p=1.0,
      buckets=(64, 128, 256, 512, 1024),  # padded prompt lengths (one compiled program each)
      grading_mode="prm800k",      # prm800k | math_verify
      stop_at_answer=True,         # stop after the line that follows "# Answer" (PRM800K)
      stop=(),                     # extra stop strings, e.g. ("\n\n\n",); EOS always stops
      share_prompts=True))         # a batch's repeated prompts are prefilled once, rows copied
  c.score = ml_collections.ConfigDict(dict(
      seq_len=1024, rows=16,       # packed rows per batch, each seq_len tokens
      chunk=512,                   # solutions packed together (and flushed) at a time
      pack=True,                   # several solutions per row (False: one per row)
      # P(ok) counts a neutral step as ok; None: what the scored run was trained with
      neutral_is_positive=ml_collections.config_dict.placeholder(bool),
      # hf:PATH reward models: "" reads the convention from config.json's architectures
      # (token_classification | qwen_prm | sequence_classification); "lm" scores a causal LM as a
      # PRM by its good_token vs bad_token logits at each step tag (Math-Shepherd, RLHFlow)
      convention="", good_token="+", bad_token="-"))
  c.eval = ml_collections.ConfigDict(dict(
      n="1,2,4,8,16",              # bon-eval: the N values (comma-separated)
      trials=400,                  # bon-eval: random subsets per N
      pool_size=0,                 # bon-eval: pad pools to this size (eval.py: 1860); 0: largest
      dev_fraction=0.5,            # process-eval: share of problems that picks the threshold
      # process-eval: a fixed P(ok) threshold for the earliest error (ProcessBench's PRM
      # evaluation uses 0.5) instead of one chosen on the dev split
      threshold=ml_collections.config_dict.placeholder(float)))
  # PRM-guided search (prm_jax/search.py): prm-jax search / search-eval. Sampling settings
  # (temperature, top_k, top_p, buckets, grading_mode, stop_at_answer) come from `sample`.
  c.search = ml_collections.ConfigDict(dict(
      method="beam",               # beam | dvts | best_of_n
      n=16,                        # rows per problem: candidates per round (best_of_n: samples)
      beam_width=4,                # beam: keep n / beam_width, each expanded beam_width times;
                                   # dvts: n / beam_width subtrees of beam_width candidates
      lookahead=0,                 # greedy steps rolled ahead (and undone) before ranking
      max_steps=40,                # rounds (steps per solution)
      max_step_tokens=64,          # a longer step ends its candidate (finish_reason length)
      max_new_tokens=512,          # generator cache slots per row for the steps
      aggregate="last",            # last | min | prod: a prefix's rank from its step scores
      pick="weighted_vote",        # best | weighted_vote: the final pick among finished ones
      batch_size=64,               # rows per batch (problems x n, rounded to the mesh)
      reuse_cache=True,            # False: re-prefill every prefix each round (the benchmark)
      eval_n="4,16,64",            # search-eval: the budgets N
      eval_methods="best_of_n,beam,dvts",  # search-eval: the searches run at each N
      eval_problems=0))            # search-eval: the first this many problems (0: all)
  c.data = ml_collections.ConfigDict(dict(
      format="auto",  # auto | prm800k | scored-samples | solution | math | processbench | prmbench
      skip_invalid=False,          # skip malformed input lines (counted) instead of stopping
      expand_alternatives=False,   # convert: each rated PRM800K alternative as its own record
      dataset="prm800k"))          # build-tfds: prm800k | math
  c.export = ml_collections.ConfigDict(dict(
      max_shard_mb=4768.0))        # safetensors shards past this size (about 5 GB, as HF saves)
  c.active = ml_collections.ConfigDict(dict(
      generations=2,               # generation 0 selects uniformly (there is no PRM yet)
      problems_per_generation=200,  # a fresh slice of the pool problems each generation
      samples_per_problem=8,       # candidates per problem
      budget=400,                  # solutions labelled per generation (same for the control)
      frac_wrong=0.8,              # share of the budget for convincing wrong answers
      labeller="oracle",           # oracle | rollout | model:PRM_WORKDIR | file (human, PRM800K rows)
      rollouts=8,                  # rollout labeller: completions per step prefix
      uniform_control=True,        # also run uniform selection at the same budget
      eval_n="1,2,4,8", eval_samples=8, eval_trials=200,
      eval_labeller="oracle"))     # gold step labels of the evaluation pool ("" for none)
  return c
