"""Config-as-code: each module has `get_config()` returning an ml_collections.ConfigDict.

Select one with `--config=configs/NAME.py[:ARG]`, override any field with `--config.a.b=value`.
Installed as `prm_jax.configs` (so `import prm_jax.configs.base` works after a plain pip install).
"""

from typing import Any, Mapping

import ml_collections


def derive(config: ml_collections.ConfigDict, updates: Mapping[str, Any] | None = None
           ) -> ml_collections.ConfigDict:
  """An unlocked copy of `config` with dotted-path updates (`{"train.task": "prm"}`): how one stage
  hands a variant of its config to another without touching the caller's."""
  c = ml_collections.ConfigDict(config.to_dict())
  for path, value in (updates or {}).items():
    *parents, leaf = path.split(".")
    node = c
    for p in parents:
      node = node[p]
    if leaf not in node:
      raise KeyError(f"config has no field {path!r}")
    node[leaf] = value
  return c
