"""The command line's grammar: `Command` / `Flag`, the registry the commands fill, and `parse`
(flags for inputs and outputs, `--config=FILE[:ARG]` and `--config.a.b=v` overrides, `~` and
`$VARS` expanded), each failure one `UsageError` line; `usage` and `command_help` print it."""

from __future__ import annotations

import dataclasses
import difflib
import os
from typing import Any, Callable


@dataclasses.dataclass(frozen=True)
class Flag:
  name: str
  help: str
  required: bool = True
  multi: bool = False        # repeatable (a list)
  default: str | None = None
  aliases: tuple[str, ...] = ()  # other names accepted for it (e.g. search's --problems)


@dataclasses.dataclass(frozen=True)
class Command:
  name: str
  help: str
  handler: Callable[[Any, Any], None]
  flags: tuple[Flag, ...]
  sections: tuple[str, ...]  # config fields it reads, shown by --help
  config: str                # default config file in configs/


COMMANDS: dict[str, Command] = {}
MULTI_HOST = (
    Flag("coordinator", "multi-process launch: HOST:PORT of process 0 (or JAX_COORDINATOR_ADDRESS)",
         required=False),
    Flag("num-processes", "multi-process launch: how many (or JAX_NUM_PROCESSES)", required=False),
    Flag("process-id", "multi-process launch: this one's index (or JAX_PROCESS_ID)",
         required=False))


def command(name: str, help: str, flags: tuple[Flag, ...] = (), sections: tuple[str, ...] = (),
            config: str = "base.py"):
  def register(fn):
    COMMANDS[name] = Command(name, help, fn, tuple(flags), tuple(sections), config)
    return fn
  return register


class UsageError(ValueError):
  """A bad command line: exit 2 with one line."""


def _config_dir() -> str:
  import prm_jax.configs
  return os.path.dirname(os.path.abspath(prm_jax.configs.__file__))


def _leaves(config, prefix: str = "") -> list[tuple[str, Any]]:
  out = []
  for key in sorted(config.keys()):
    value = config[key]
    if hasattr(value, "keys") and hasattr(value, "to_dict"):
      out += _leaves(value, f"{prefix}{key}.")
    else:
      out.append((prefix + key, value))
  return out


def _base_config(cmd: Command, argv: list[str]):
  """The config the `--config=` argument (or the command's default) gives, before overrides."""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  only = [a for a in argv if a.startswith("--config=")][-1:]
  config_flags.DEFINE_config_file("config", os.path.join(_config_dir(), cmd.config),
                                  flag_values=fv, sys_argv=["prm-jax"] + only)
  fv(["prm-jax"] + only)
  return fv.config


def _unknown_field(cmd: Command, argv: list[str]) -> str | None:
  """The first `--config.X=...` naming no field, with the nearest field names."""
  try:
    base = _base_config(cmd, argv)
  except Exception:  # noqa: BLE001  (the caller reports the original error)
    return None
  fields = [name for name, _ in _leaves(base)]
  sections = {f.rsplit(".", 1)[0] for f in fields if "." in f}
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    path = arg[len("--config."):].split("=", 1)[0]
    if path in fields or path in sections:
      continue
    near = difflib.get_close_matches(path, fields, n=2, cutoff=0.6)
    hint = f" (did you mean {' or '.join(near)}?)" if near else ""
    return f"unknown config field {path!r}{hint}; `prm-jax {cmd.name} --help` lists them"
  return None


def parse(cmd: Command, argv: list[str]):
  """(config, args) for a command line, or UsageError with one line."""
  from absl import flags
  from ml_collections import config_flags
  fv = flags.FlagValues()
  for f in cmd.flags + MULTI_HOST:
    define = flags.DEFINE_multi_string if f.multi else flags.DEFINE_string
    define(f.name, [] if f.multi else f.default, f.help, flag_values=fv)
    for alias in f.aliases:
      flags.DEFINE_alias(alias, f.name, flag_values=fv)
  for i, a in enumerate(argv):  # `--input` last, or followed by another flag
    if (a.startswith("-") and not a.startswith("--config") and "=" not in a
        and a.lstrip("-") in fv and (i + 1 == len(argv) or argv[i + 1].startswith("-"))):
      raise UsageError(f"{a} needs a value: {a}=VALUE")
  try:
    config_flags.DEFINE_config_file("config", os.path.join(_config_dir(), cmd.config),
                                    "config file (get_config())", flag_values=fv,
                                    lock_config=True, sys_argv=["prm-jax"] + argv)
    positional = fv(["prm-jax"] + argv)[1:]
    config = fv.config
    config.keys()  # a config file that failed to load raises here, not in the handler
  except flags.UnrecognizedFlagError as e:
    name = e.flagname
    known = [f.name for f in cmd.flags + MULTI_HOST]
    if name.startswith("config."):
      raise UsageError(_unknown_field(cmd, argv) or str(e)) from None
    fields = [n for n, _ in _leaves(_base_config(cmd, []))]
    as_field = sorted((f for f in fields if f.rsplit(".", 1)[-1] == name.replace("-", "_")),
                      key=lambda f: not any(f.startswith(s) for s in cmd.sections))
    hint = (f"; it is a config field: --config.{as_field[0]}=..." if as_field else
            f"; did you mean --{difflib.get_close_matches(name, known, n=1)[0]}?"
            if difflib.get_close_matches(name, known, n=1) else "")
    raise UsageError(f"unknown flag --{name}{hint}") from None
  except flags.Error as e:
    lines = [l for l in str(e).strip().splitlines() if l.strip()]
    raise UsageError(lines[-1].strip() if lines else str(e)) from None
  except (AttributeError, KeyError) as e:
    raise UsageError(_unknown_field(cmd, argv) or f"bad config override: {e}") from None
  except OSError as e:  # the --config file
    text = " ".join(str(e).split())
    raise UsageError("--config: " + (text[text.index("[Errno"):] if "[Errno" in text else text)
                     ) from None
  if positional:
    raise UsageError(f"unexpected argument {positional[0]!r} (flags are --name=value)")
  every = cmd.flags + MULTI_HOST
  args = dataclasses.make_dataclass("Args", [f.name.replace("-", "_") for f in every])(
      *[fv[f.name].value for f in every])
  missing = [f"--{f.name}" for f in cmd.flags if f.required and not fv[f.name].value]
  if missing:
    raise UsageError("missing " + ", ".join(missing))
  _expand_paths(cmd, config, args)
  for name in ("num-processes", "process-id"):
    value = fv[name].value
    if value is not None and not value.lstrip("-").isdigit():
      raise UsageError(f"--{name}={value!r} must be an integer")
  return config, args


# Config fields that name files or folders: `~` and `$VARS` in them are expanded like in a flag.
PATH_FIELDS = ("workdir", "train.data", "train.init_from", "tokenizer.path", "data_dir")


def _expand_paths(cmd: Command, config, args) -> None:
  """`~` and `$VARS` in every path flag and path config field, expanded the same way everywhere
  (shells leave `--output=~/x` and quoted `$X` alone); an unset variable is a UsageError."""
  from prm_jax.paths import expand_path
  try:
    for f in cmd.flags:
      name = f.name.replace("-", "_")
      value = getattr(args, name)
      what = f"--{f.name}"
      setattr(args, name, [expand_path(v, what) for v in value] if f.multi else
              expand_path(value, what))
    for path in PATH_FIELDS:
      *parents, leaf = path.split(".")
      node = config
      for p in parents:
        node = node.get(p) if node is not None else None
      if node is not None and leaf in node and isinstance(node[leaf], str):
        node[leaf] = expand_path(node[leaf], f"config.{path}")
  except ValueError as e:
    raise UsageError(str(e)) from None


def usage() -> str:
  lines = ["usage: prm-jax <command> [--input=... --output=...] [--config=configs/NAME.py[:ARG]] "
           "[--config.FIELD=VALUE ...]", "", "commands:"]
  lines += [f"  {c.name:15s} {c.help}" for c in COMMANDS.values()]
  lines += ["", "`prm-jax <command> --help` shows a command's flags and config fields."]
  return "\n".join(lines)


def command_help(cmd: Command) -> str:
  flags_line = " ".join(f"--{f.name}=..." if f.required else f"[--{f.name}=...]"
                        for f in cmd.flags)
  lines = [f"usage: prm-jax {cmd.name} {flags_line} [--config=configs/{cmd.config}[:ARG]] "
           "[--config.FIELD=VALUE ...]".replace("  ", " "), "", cmd.help, ""]
  if cmd.flags:
    lines.append("flags:")
    for f in cmd.flags:
      extra = " (required)" if f.required else f" (default {f.default})" if f.default else ""
      also = "".join(f" (or --{a})" for a in f.aliases)
      lines.append(f"  --{f.name:14s} {f.help}{also}{extra}")
    lines.append("")
  lines.append(f"config fields it reads (default configs/{cmd.config}; override with "
               "--config.FIELD=VALUE):")
  base = _base_config(cmd, [])
  for name, value in _leaves(base):
    if any(name == s or name.startswith(s + ".") for s in cmd.sections):
      lines.append(f"  {name} = {value!r}")
  lines += ["", "multi-process (every command): " + " ".join(f"--{f.name}=..." for f in MULTI_HOST),
            "  or JAX_COORDINATOR_ADDRESS / JAX_NUM_PROCESSES / JAX_PROCESS_ID; TPU pods, SLURM and "
            "Open MPI are detected; scripts/launch_local.sh N CMD runs N local processes.",
            "A user error prints one line; PRM_JAX_DEBUG=1 shows the traceback."]
  return "\n".join(lines)
