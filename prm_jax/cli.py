"""`prm-jax <command> [--config=configs/x.py[:arg]] [--config.a.b=v ...]`.

Every command reads an ml_collections config through absl's `config_flags`; each command has a default
config file in the installed `configs` package.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
from ml_collections import config_flags

# command -> (config file in configs/, one-line help)
COMMANDS = {
    "demo": ("demo.py", "run the embedded demo on a CPU"),
    "train": ("base.py", "train the generator (sft) or a reward model (orm, prm): --task"),
    "sample": ("base.py", "N graded solutions per problem from a generator checkpoint"),
    "score": ("base.py", "score Solution / PRM800K / scored-samples JSONL with an ORM or PRM"),
    "bon-eval": ("base.py", "best-of-N solve rates (PRM, ORM, majority, weighted vote) + plot"),
    "process-eval": ("base.py", "step-level metrics: earliest-error F1, AUROC, calibration"),
    "active-learn": ("base.py", "generations of sample -> score -> select -> label -> retrain PRM, "
                     "vs uniform selection"),
    "describe": ("base.py", "print the mesh, parameter count and every parameter's sharding"),
    "convert": ("base.py", "PRM800K / scored-samples / MATH / Solution JSONL -> our JSONL records"),
    "build-tfds": ("base.py", "build the PRM800K or MATH TFDS dataset from downloaded files"),
    "train-tokenizer": ("base.py", "train a sentencepiece tokenizer on record files"),
}

flags.DEFINE_enum("task", None, ["sft", "orm", "prm"], "train: the task (overrides train.task)")
flags.DEFINE_string("input", None, "input JSONL file")
flags.DEFINE_string("checkpoint", None, "sample/score/active-learn: a training workdir (config.json, params/, "
                    "tokenizer.model)")
flags.DEFINE_string("problems", None, "sample: Problem or MATH JSONL")
flags.DEFINE_string("eval-problems", None, "active-learn: Problem JSONL for best-of-N evaluation")
flags.DEFINE_string("n", "1", "sample: samples per problem; bon-eval: comma-separated N values")
flags.DEFINE_integer("trials", 400, "bon-eval: random subsets per N")
flags.DEFINE_string("out", None, "bon-eval / process-eval / active-learn: output folder")
flags.DEFINE_float("dev-fraction", 0.5, "process-eval: share of problems used to pick the threshold")
flags.DEFINE_integer("seed", 0, "sample: random seed")
flags.DEFINE_multi_string("inputs", [], "input files (train-tokenizer; repeatable)")
flags.DEFINE_string("output", None, "output file")
flags.DEFINE_enum("format", "auto", ["auto", "prm800k", "scored-samples", "solution", "math"],
                  "input format (auto detects PRM800K rows, scored samples and Solutions)")
flags.DEFINE_bool("skip-invalid", False, "skip malformed lines (counted and printed) instead of "
                  "stopping at the first with its file:line")
flags.DEFINE_bool("expand-alternatives", False, "convert: also emit each rated PRM800K alternative "
                  "step as its own (prefix + step) record")
flags.DEFINE_enum("dataset", "prm800k", ["prm800k", "math"], "build-tfds: which dataset")
flags.DEFINE_string("manual-dir", None, "build-tfds: folder with the downloaded files")
flags.DEFINE_string("data-dir", os.path.expanduser("~/tensorflow_datasets"),
                    "build-tfds: TFDS data directory")


def _configs_dir() -> str:
  import configs
  return os.path.dirname(os.path.abspath(configs.__file__))


def _describe(config) -> None:
  from flax import nnx
  from prm_jax import sharding
  from prm_jax.model import CausalLM, ModelConfig
  cfg = ModelConfig.from_dict(config.model)
  mesh = sharding.make_mesh(config.mesh)
  _, state = nnx.split(nnx.eval_shape(lambda: CausalLM(cfg, rngs=nnx.Rngs(0))))
  print(f"mesh {dict(mesh.shape)} over {mesh.devices.size} device(s); "
        f"{cfg.num_params() / 1e6:.1f}M parameters")
  for name, shape, spec in sharding.spec_table(state, mesh, tuple(config.rules)):
    print(f"  {name:40s} {str(shape):22s} {spec}")


def _int_flag(name: str) -> int:
  try:
    return int(flags.FLAGS[name].value)
  except ValueError:
    raise ValueError(f"--{name} must be an integer here, got {flags.FLAGS[name].value!r}") from None


def _need(*names: str) -> None:
  missing = [n for n in names if not flags.FLAGS[n].value]
  if missing:
    raise ValueError("missing " + ", ".join(f"--{n}" for n in missing))


def _data_command(command: str, config) -> None:
  from prm_jax.data import commands
  f = flags.FLAGS
  if command == "convert":
    _need("input", "output")
    commands.convert(f.input, f.output, f.format, f["skip-invalid"].value,
                     f["expand-alternatives"].value)
  elif command == "build-tfds":
    _need("manual-dir")
    commands.build_tfds(f.dataset, f["manual-dir"].value, f["data-dir"].value)
  elif command == "train-tokenizer":
    _need("inputs", "output")
    commands.train_tokenizer(f.inputs, f.output, config.tokenizer.vocab_size,
                             config.tokenizer.model_type, f.format)


def _usage() -> str:
  lines = ["usage: prm-jax <command> [--config=configs/NAME.py[:ARG]] [--config.FIELD=VALUE ...]", "",
           "commands:"]
  lines += [f"  {name:10s} {text} (default config: configs/{cfg})"
            for name, (cfg, text) in COMMANDS.items()]
  return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
  argv = list(sys.argv if argv is None else argv)
  if len(argv) < 2 or argv[1] in ("-h", "--help", "help"):
    print(_usage())
    sys.exit(0 if len(argv) >= 2 else 2)
  command = argv[1]
  if command not in COMMANDS:
    print(f"prm-jax: unknown command {command!r}\n\n{_usage()}", file=sys.stderr)
    sys.exit(2)
  config_file = os.path.join(_configs_dir(), COMMANDS[command][0])
  config_flags.DEFINE_config_file("config", config_file, "config file (get_config())",
                                  lock_config=True)

  def run(_):
    config = flags.FLAGS.config
    if not flags.FLAGS["verbosity"].present:  # orbax's INFO lines would drown the progress bars
      from absl import logging
      logging.set_verbosity(logging.WARNING)
    try:
      if command == "demo":
        from prm_jax import demo
        demo.run(config)
      elif command == "describe":
        _describe(config)
      elif command == "sample":
        from prm_jax.sampling import sample_to_file
        _need("checkpoint", "problems", "output")
        sc = config.sample
        r = sample_to_file(flags.FLAGS.checkpoint, flags.FLAGS.problems, flags.FLAGS.output,
                           _int_flag("n"), flags.FLAGS.seed, dict(
                               batch_size=sc.batch_size, max_new_tokens=sc.max_new_tokens,
                               temperature=sc.temperature, top_k=sc.top_k, top_p=sc.top_p),
                           flags.FLAGS["skip-invalid"].value)
        print(f"sampled {r['written']} solutions for {r['problems']} problems "
              f"({r['resumed_from']} already in {flags.FLAGS.output})")
      elif command == "score":
        from prm_jax.scoring import score_to_file
        _need("checkpoint", "input", "output")
        r = score_to_file(flags.FLAGS.checkpoint, flags.FLAGS.input, flags.FLAGS.output,
                          flags.FLAGS["skip-invalid"].value,
                          dict(seq_len=config.score.seq_len, rows=config.score.rows,
                               chunk=config.score.chunk))
        print(f"scored {r['written']} solutions into {r['output']} ({r['resumed_from']} already "
              f"there, {r['skipped_invalid']} invalid skipped)")
      elif command in ("bon-eval", "process-eval"):
        from prm_jax import evaluation
        from prm_jax.data.prm800k import read_any_solutions
        _need("input", "out")
        sols = list(read_any_solutions(flags.FLAGS.input, flags.FLAGS["skip-invalid"].value))
        if command == "bon-eval":
          ns = [int(x) for x in flags.FLAGS.n.split(",") if x.strip()]
          r = evaluation.run_bon_eval(sols, ns, flags.FLAGS.trials, flags.FLAGS.seed, flags.FLAGS.out)
          print(evaluation.markdown_table(r))
        else:
          r = evaluation.run_process_eval(sols, flags.FLAGS.out, flags.FLAGS["dev-fraction"].value)
          print(f"earliest-error F1 {100 * r['test']['f1']:.1f} (threshold {r['threshold']:.2f}), "
                f"step AUROC {r['step_auroc']:.3f}, ECE {r['calibration']['ece']:.3f}")
        print(f"wrote {flags.FLAGS.out}")
      elif command == "active-learn":
        from prm_jax.active_learning import ActiveLearning, markdown_table
        from prm_jax.records import read_problems
        _need("checkpoint", "problems", "eval-problems", "out")
        skip = flags.FLAGS["skip-invalid"].value
        summary = ActiveLearning(config, flags.FLAGS.checkpoint,
                                 list(read_problems(flags.FLAGS.problems, skip)),
                                 list(read_problems(flags.FLAGS["eval-problems"].value, skip)),
                                 flags.FLAGS.out).run()
        print(markdown_table(summary))
        print(f"wrote {flags.FLAGS.out}/active_learning.json, .md, .png")
      elif command == "train":
        from prm_jax.train.loop import train
        if flags.FLAGS.task:
          config.train.task = flags.FLAGS.task
        summary = train(config)
        print(f"{summary['task']}: stopped at step {summary['step']}"
              + (" (preempted; checkpoint written, run again to resume)" if summary["preempted"]
                 else f"; final params in {config.workdir}/params"))
      else:
        _data_command(command, config)
    except (ValueError, KeyError, FileNotFoundError) as e:  # bad input: one clear line
      if os.environ.get("PRM_JAX_DEBUG"):
        raise
      msg = e.args[0] if isinstance(e, KeyError) and e.args else e
      print(f"prm-jax {command}: error: {msg}\n(set PRM_JAX_DEBUG=1 for the traceback)",
            file=sys.stderr)
      sys.exit(1)
    except RuntimeError as e:
      from prm_jax.labellers import LabelsPending
      if not isinstance(e, LabelsPending):
        raise
      print(f"prm-jax {command}: paused: {e}", file=sys.stderr)
      sys.exit(3)

  app.run(run, argv=[f"prm-jax {command}"] + argv[2:])


if __name__ == "__main__":
  main()
