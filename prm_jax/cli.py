"""`prm-jax <command> [--input ... --output ...] [--config=configs/x.py[:arg]] [--config.a.b=v ...]`.

A registry: one `Command` per entry (its help, default config, input/output flags and the config
sections it reads) and one handler. Flags are only inputs and outputs, named the same everywhere
(`--input`, `--output`, `--checkpoint` for a run or `hf:PATH`); every setting is a config field.
A user error is one line and a non-zero exit (tracebacks with PRM_JAX_DEBUG=1).
"""

from __future__ import annotations

import difflib
import os
import sys

# The grammar (Command, Flag, parse, help) is cli_parse's; `cli.parse` and the rest stay reachable.
from prm_jax.cli_parse import (COMMANDS, Command, Flag, UsageError, command, command_help,  # noqa
                               parse, usage)

EXIT_USAGE, EXIT_ERROR, EXIT_PAUSED, EXIT_INTERRUPTED = 2, 1, 3, 130

__all__ = ["COMMANDS", "Command", "Flag", "UsageError", "command", "command_help", "main", "parse",
           "usage"]


def _checkpoint(what: str) -> Flag:
  return Flag("checkpoint", f"{what}: a prm_jax run directory or hf:PATH")


# ----------------------------------------------------------------------------- the commands

@command("demo", "run the whole paper loop on the synthetic domain (CPU, minutes)",
         sections=("demo", "scale", "workdir", "model", "train", "sample", "score", "active",
                   "mesh"), config="demo.py")
def _demo(config, args) -> None:
  from prm_jax import demo
  demo.run(config)


@command("train", "train the generator (sft) or a reward model (orm, prm): config.train.task",
         sections=("workdir", "train", "model", "tokenizer", "mesh", "seed", "data_dir"))
def _train(config, args) -> None:
  from prm_jax import distributed
  from prm_jax.train.loop import train
  s = train(config)
  if s.get("already_trained"):
    distributed.log(f"{s['task']}: {config.workdir} is already trained to step {s['step']} "
                    f"(train.steps={config.train.steps}); nothing to do")
    return
  where = (" (preempted; checkpoint written, run again to resume)" if s["preempted"]
           else f"; final params in {config.workdir}/params")
  distributed.log(f"{s['task']}: stopped at step {s['step']}{where}")


def _summarise(name: str, args, result: dict) -> dict:
  """OUTPUT.summary.json beside a sample / score output (process 0): what ran, on which mesh."""
  from prm_jax import distributed
  from prm_jax.records import write_json
  summary = dict(result, command=name, checkpoint=args.checkpoint, input=args.input)
  if distributed.is_main():
    write_json(args.output + ".summary.json", summary)
  return summary


@command("sample", "N graded solutions per problem from a generator",
         flags=(_checkpoint("the generator"),
                Flag("input", "problems: Problem or MATH JSONL"),
                Flag("output", "Solution JSONL (an incomplete one is resumed)")),
         sections=("sample", "seed", "mesh", "data.skip_invalid"))
def _sample(config, args) -> None:
  from prm_jax import distributed
  from prm_jax.records import read_problems
  from prm_jax.sampling import Sampler, sample_to_file
  n = _at_least(config, "sample.n", 1)
  _at_least(config, "sample.batch_size", 1)
  _at_least(config, "sample.max_new_tokens", 1)
  problems = list(read_problems(args.input, config.data.skip_invalid))
  with distributed.OutputClaim(args.output) as claim:  # first: a second writer fails now
    sampler = Sampler.from_run(args.checkpoint, config)
    distributed.log(f"sampling {n} per problem for {len(problems)} problems on "
                    f"{distributed.describe_mesh(sampler.mesh)}")
    r = _summarise("sample", args, sample_to_file(sampler, problems, args.output, n, config.seed,
                                                  claim))
  distributed.log(f"sampled {r['written']} solutions for {r['problems']} problems "
                  f"({r['resumed_from']} already in {args.output})")


@command("score", "score Solution / PRM800K / scored-samples JSONL with an ORM or PRM",
         flags=(_checkpoint("the reward model"),
                Flag("input", "solutions: Solution, PRM800K or scored-samples JSONL"),
                Flag("output", "scored Solution JSONL (an incomplete one is resumed)")),
         sections=("score", "mesh", "data.format", "data.skip_invalid"))
def _score(config, args) -> None:
  from prm_jax import distributed
  from prm_jax.data.commands import open_records
  from prm_jax.records import ReadStats
  from prm_jax.scoring import Scorer, score_to_file
  for field in ("score.seq_len", "score.rows", "score.chunk"):
    _at_least(config, field, 1)
  if config.data.format == "math":
    raise ValueError("data.format=math reads problems; score needs solutions")
  with distributed.OutputClaim(args.output) as claim:  # first: a second writer fails now
    scorer = Scorer.from_run(args.checkpoint, config)
    distributed.log(f"scoring with a {scorer.kind} on {distributed.describe_mesh(scorer.mesh)}")
    stats = ReadStats()
    r = score_to_file(scorer, open_records(args.input, config.data.format,
                                           config.data.skip_invalid, stats), args.output, claim)
    r = _summarise("score", args, dict(r, skipped_invalid=stats.skipped))
  distributed.log(f"scored {r['written']} solutions into {args.output} ({r['resumed_from']} "
                  f"already there, {r['skipped_invalid']} invalid skipped)")


@command("bon-eval", "best-of-N solve rates (PRM, ORM, majority, weighted vote) + plot",
         flags=(Flag("input", "scored Solution JSONL (or the paper's scored samples)"),
                Flag("output", "folder for bon.json, bon.md, bon.png")),
         sections=("eval.n", "eval.trials", "eval.pool_size", "seed", "data.skip_invalid"))
def _bon_eval(config, args) -> None:
  from prm_jax import evaluation
  from prm_jax.data.prm800k import read_any_solutions
  ns = _int_list(config, "eval.n")
  trials = _at_least(config, "eval.trials", 1)
  pool_size = _at_least(config, "eval.pool_size", 0)
  sols = list(read_any_solutions(args.input, config.data.skip_invalid))
  r = evaluation.run_bon_eval(sols, ns, trials, config.seed, args.output, pool_size=pool_size)
  print(evaluation.markdown_table(r))
  if r.get("repeated_samples"):
    print(f"warning: {evaluation.describe_repeats(r['repeated_samples'])}", file=sys.stderr)
  print(f"wrote {args.output}")


@command("process-eval", "step-level metrics: earliest-error F1, AUROC, calibration",
         flags=(Flag("input", "scored records with step labels (our JSONL; a ProcessBench file "
                             "read as-is has no scores: score it first)"),
                Flag("output", "folder for process.json, process.md, calibration.png")),
         sections=("eval.dev_fraction", "eval.threshold", "data.format", "data.skip_invalid"))
def _process_eval(config, args) -> None:
  from prm_jax import process_metrics
  from prm_jax.data.commands import open_records
  from prm_jax.records import ReadStats
  frac, threshold = config.eval.dev_fraction, config.eval.threshold
  if not 0.0 < frac < 1.0:
    raise ValueError(f"config.eval.dev_fraction={frac} must be in (0, 1)")
  if threshold is not None and not 0.0 <= threshold <= 1.0:
    raise ValueError(f"config.eval.threshold={threshold} must be in [0, 1]")
  stats = ReadStats()
  sols = list(open_records(args.input, config.data.format, config.data.skip_invalid, stats))
  r = process_metrics.run_process_eval(sols, args.output, frac, threshold,
                                       invalid_lines=stats.skipped)
  bench = r["processbench"]
  if process_metrics.processbench_subsets(bench):
    print(process_metrics.processbench_table(bench))
  t, why = r["test"], process_metrics.with_reason
  print(f"earliest-error F1 {why(100 * t['f1'], t.get('reason'), '.1f')} at threshold "
        f"{r['threshold']:.2f}, step AUROC {why(r['step_auroc'], r.get('step_auroc_reason'))}, "
        f"ECE {why(r['calibration']['ece'], r['calibration'].get('reason'))}")
  if any(r["skipped"].values()):
    print(process_metrics.describe_skips(r["skipped"]))
  print(f"wrote {args.output}")


@command("active-learn", "generations of sample -> score -> select -> label -> retrain PRM, vs "
         "uniform selection",
         flags=(_checkpoint("the generator (the PRMs start from it unless train.init_from)"),
                Flag("input", "pool problems: Problem JSONL"),
                Flag("eval-input", "evaluation problems: Problem JSONL"),
                Flag("output", "folder for every generation's data, PRM and report")),
         sections=("active", "train", "sample", "score", "mesh", "seed", "data.skip_invalid"))
def _active_learn(config, args) -> None:
  from prm_jax import distributed, sharding
  from prm_jax.active_learning import ActiveLearning, markdown_table
  from prm_jax.records import read_problems
  skip = config.data.skip_invalid
  mesh = sharding.make_mesh(config.mesh)
  distributed.log(f"active learning on {distributed.describe_mesh(mesh)}")
  summary = ActiveLearning(config, args.checkpoint, list(read_problems(args.input, skip)),
                           list(read_problems(args.eval_input, skip)), args.output,
                           log=distributed.log).run()
  distributed.log(markdown_table(summary))
  distributed.log(f"wrote {args.output}/active_learning.json, .md, .png")


@command("export", "a run as a Hugging Face folder (transformers / vLLM) with its step format",
         flags=(_checkpoint("the run to export"),
                Flag("output", "the folder to write (config.json, safetensors, tokenizer, "
                               "prm_jax.json)")),
         sections=("export", "mesh", "model.dtype", "model.param_dtype"))
def _export(config, args) -> None:
  from prm_jax import distributed
  from prm_jax.model.hf_export import export_run
  if not config.export.max_shard_mb > 0:
    raise ValueError(f"config.export.max_shard_mb={config.export.max_shard_mb} must be > 0")
  r = export_run(args.checkpoint, args.output, config)
  distributed.log(f"exported {r['architecture']}: {len(r['files'])} safetensors file(s), "
                  f"{r['bytes'] / 2**20:.1f} MiB, into {r['output']}")


@command("describe", "print the mesh, parameter count and every parameter's sharding",
         sections=("model", "mesh", "rules"))
def _describe(config, args) -> None:
  from flax import nnx
  from prm_jax import distributed, sharding
  from prm_jax.model import CausalLM, ModelConfig
  cfg = ModelConfig.from_dict(config.model)
  mesh = sharding.make_mesh(config.mesh)
  _, state = nnx.split(nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0))))
  print(f"{distributed.describe_mesh(mesh)}; {cfg.num_params() / 1e6:.1f}M parameters")
  for name, shape, spec in sharding.spec_table(state, mesh, tuple(config.rules)):
    print(f"  {name:40s} {str(shape):22s} {spec}")


@command("convert", "PRM800K / scored-samples / MATH / Solution JSONL -> our JSONL records",
         flags=(Flag("input", "a JSONL file of any supported format"),
                Flag("output", "our records (written atomically)")),
         sections=("data",))
def _convert(config, args) -> None:
  from prm_jax.data import commands
  d = config.data
  commands.convert(args.input, args.output, d.format, d.skip_invalid, d.expand_alternatives)


@command("build-tfds", "build the PRM800K or MATH TFDS dataset from downloaded files",
         flags=(Flag("input", "folder with the downloaded files (PRM800K data/ or math_splits/)"),
                Flag("output", "TFDS data directory", required=False,
                     default=os.path.join("~", "tensorflow_datasets"))),
         sections=("data.dataset",))
def _build_tfds(config, args) -> None:
  from prm_jax.data import commands
  commands.build_tfds(config.data.dataset, args.input, args.output)


@command("train-tokenizer", "train a sentencepiece tokenizer on record files",
         flags=(Flag("input", "record files (repeat --input for several)", multi=True),
                Flag("output", "the .model file")),
         sections=("tokenizer", "data.format"))
def _train_tokenizer(config, args) -> None:
  from prm_jax.data import commands
  commands.train_tokenizer(args.input, args.output, config.tokenizer.vocab_size,
                           config.tokenizer.model_type, config.data.format)


def _search_settings(config) -> None:
  """`config.search` validated where it is parsed (one line naming the field)."""
  from prm_jax.search import SearchConfig
  for field in ("search.n", "search.beam_width", "search.max_steps", "search.max_step_tokens",
                "search.max_new_tokens", "search.batch_size"):
    _at_least(config, field, 1)
  _at_least(config, "search.lookahead", 0)
  SearchConfig.from_config(config.search)


@command("search", "PRM-guided search: step-level beam search, DVTS or best-of-N, one picked "
         "solution per problem with its search trace",
         flags=(_checkpoint("the generator"),
                Flag("prm", "the PRM that scores each step: a prm_jax run directory or hf:PATH"),
                Flag("input", "problems: Problem or MATH JSONL", aliases=("problems",)),
                Flag("output", "Solution JSONL, meta.search holds the trace (an incomplete one "
                               "is resumed)")),
         sections=("search", "sample", "score.neutral_is_positive", "seed", "mesh",
                   "data.skip_invalid"))
def _search(config, args) -> None:
  from prm_jax import distributed
  from prm_jax.records import read_problems
  from prm_jax.search import Searcher, search_to_file
  _search_settings(config)
  problems = list(read_problems(args.input, config.data.skip_invalid))
  with distributed.OutputClaim(args.output) as claim:  # first: a second writer fails now
    searcher = Searcher.from_run(args.checkpoint, args.prm, config)
    s = searcher.sc
    distributed.log(f"{s.method} search, n={s.n}, beam_width={s.beam_width}, lookahead="
                    f"{s.lookahead}, for {len(problems)} problems on "
                    f"{distributed.describe_mesh(searcher.sampler.mesh)}")
    r = search_to_file(searcher, problems, args.output, config.seed, claim)
    r = _summarise("search", args, dict(r, prm=args.prm))
  distributed.log(f"searched {r['written']} problems ({r['resumed_from']} already in "
                  f"{args.output})")


@command("search-eval", "accuracy vs generated tokens of best-of-N, weighted best-of-N, beam "
         "search and DVTS at equal budgets (table + plot)",
         flags=(_checkpoint("the generator"),
                Flag("prm", "the PRM: a prm_jax run directory or hf:PATH"),
                Flag("input", "problems with answers: Problem or MATH JSONL",
                     aliases=("problems",)),
                Flag("output", "folder for each search's JSONL, search_eval.json, .md, .png")),
         sections=("search", "sample", "score.neutral_is_positive", "seed", "mesh",
                   "data.skip_invalid"))
def _search_eval(config, args) -> None:
  from prm_jax import distributed
  from prm_jax.records import read_problems
  from prm_jax.search_eval import markdown_table, run_search_eval
  _search_settings(config)
  ns = _int_list(config, "search.eval_n")
  _at_least(config, "search.eval_problems", 0)
  methods = [m for m in str(config.search.eval_methods).replace(" ", "").split(",") if m]
  problems = list(read_problems(args.input, config.data.skip_invalid))
  r = run_search_eval(args.checkpoint, args.prm, problems, args.output, config, ns, methods)
  distributed.log(markdown_table(r))
  distributed.log(f"wrote {args.output}/search_eval.json, .md, .png")


# ----------------------------------------------------------------------------- validation

def _field(config, path: str):
  node = config
  for p in path.split("."):
    node = node[p]
  return node


def _at_least(config, path: str, low: int) -> int:
  value = _field(config, path)
  if isinstance(value, bool) or not isinstance(value, int) or value < low:
    raise ValueError(f"config.{path}={value!r} must be an integer >= {low}")
  return value


def _int_list(config, path: str) -> list[int]:
  raw = str(_field(config, path))
  try:
    values = [int(x) for x in raw.replace(" ", "").split(",") if x]
  except ValueError:
    values = []
  if not values or min(values) < 1:
    raise ValueError(f"config.{path}={raw!r} must be comma-separated integers >= 1 (e.g. 1,2,4,8)")
  return values


# ----------------------------------------------------------------------------- main

def _fail(command: str, message: str, code: int) -> None:
  print(f"prm-jax {command}: {message}", file=sys.stderr)
  sys.exit(code)


def _error_text(e: BaseException) -> str:
  if isinstance(e, KeyError) and e.args:
    return str(e.args[0])
  if isinstance(e, OSError) and e.filename and e.strerror:
    return f"{e.filename}: {e.strerror}"
  return " ".join(str(e).split()) or type(e).__name__


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(usage())
    sys.exit(0 if len(argv) >= 2 else EXIT_USAGE)
  name, rest = argv[1], argv[2:]
  cmd = COMMANDS.get(name)
  if cmd is None:
    near = difflib.get_close_matches(name, list(COMMANDS), n=1)
    hint = f" (did you mean {near[0]!r}?)" if near else ""
    print(f"prm-jax: unknown command {name!r}{hint}\n\n{usage()}", file=sys.stderr)
    sys.exit(EXIT_USAGE)
  if any(a in ("-h", "--help", "-help", "--helpfull") for a in rest):
    print(command_help(cmd))
    sys.exit(0)
  debug = bool(os.environ.get("PRM_JAX_DEBUG"))
  try:
    config, args = parse(cmd, rest)
  except UsageError as e:
    _fail(name, f"error: {e}", EXIT_USAGE)
  try:
    from absl import logging
    from prm_jax import distributed
    from prm_jax.labellers import LabelsPending
    if not debug:  # orbax's INFO lines would drown the progress bars
      logging.set_verbosity(logging.WARNING)
    distributed.initialize(args.coordinator, _opt_int(args.num_processes),
                           _opt_int(args.process_id))
    cmd.handler(config, args)
  except KeyboardInterrupt:
    if debug:
      raise
    _fail(name, "interrupted", EXIT_INTERRUPTED)
  except LabelsPending as e:
    _fail(name, f"paused: {e}", EXIT_PAUSED)
  except (ValueError, KeyError, OSError) as e:  # bad input, paths, permissions: one clear line
    if debug:
      raise
    _fail(name, f"error: {_error_text(e)}", EXIT_ERROR)


def _opt_int(value: str | None) -> int | None:
  return None if value in (None, "") else int(value)


if __name__ == "__main__":
  main()
