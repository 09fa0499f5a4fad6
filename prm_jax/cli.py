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
    "describe": ("base.py", "print the mesh, parameter count and every parameter's sharding"),
}


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
    try:
      if command == "demo":
        from prm_jax import demo
        demo.run(config)
      elif command == "describe":
        _describe(config)
    except (ValueError, KeyError, FileNotFoundError) as e:  # bad input: one clear line
      if os.environ.get("PRM_JAX_DEBUG"):
        raise
      msg = e.args[0] if isinstance(e, KeyError) and e.args else e
      print(f"prm-jax {command}: error: {msg}\n(set PRM_JAX_DEBUG=1 for the traceback)",
            file=sys.stderr)
      sys.exit(1)

  app.run(run, argv=[f"prm-jax {command}"] + argv[2:])


if __name__ == "__main__":
  main()
