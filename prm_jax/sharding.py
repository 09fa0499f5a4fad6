"""Mesh construction and logical-axis sharding.

Parameters and activations name their axes logically (`embed`, `mlp`, `heads`, `batch`, ...); the rules
table in the config (`configs/base.py: RULES`, the only one) maps each logical name to mesh axes of the
mesh `("data", "fsdp", "tensor")`. A name
whose mesh axes do not divide the dimension, or are already used by an earlier dimension, is replicated,
so one rules table serves every model size and mesh shape.
"""

from __future__ import annotations

import contextlib
import contextvars
import functools
import math
from typing import Any, Callable, Iterable, Mapping, Sequence

import jax
import numpy as np
from flax import nnx
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec as P

MESH_AXES = ("data", "fsdp", "tensor")

Rules = Sequence[tuple[str, Any]]

def make_mesh(shape: Mapping[str, int] | Sequence[int], devices: Sequence[jax.Device] | None = None
              ) -> Mesh:
  """Mesh over all (global) devices; one axis may be -1 to take the remaining devices."""
  if isinstance(shape, Mapping) or hasattr(shape, "items"):
    sizes = [int(shape[a]) for a in MESH_AXES]
  else:
    sizes = [int(s) for s in shape]
  devices = list(devices if devices is not None else jax.devices())
  n = len(devices)
  if sizes.count(-1) > 1:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))}: at most one axis may be -1")
  if -1 in sizes:
    rest = math.prod(s for s in sizes if s != -1)
    if n % rest:
      raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} does not divide {n} devices")
    sizes[sizes.index(-1)] = n // rest
  if math.prod(sizes) != n:
    raise ValueError(f"mesh {dict(zip(MESH_AXES, sizes))} needs {math.prod(sizes)} devices, "
                     f"but {n} are available")
  if devices == list(jax.devices()):
    return jax.make_mesh(tuple(sizes), MESH_AXES, axis_types=(AxisType.Auto,) * 3)
  return Mesh(np.asarray(devices).reshape(sizes), MESH_AXES,
              axis_types=(AxisType.Auto,) * 3)


def _as_tuple(x) -> tuple[str, ...]:
  if x is None:
    return ()
  return (x,) if isinstance(x, str) else tuple(x)


def logical_to_spec(axes: Iterable[str | None], shape: Sequence[int], mesh: Mesh,
                    rules: Rules) -> P:
  """PartitionSpec for a value of `shape` whose dimensions are named `axes`."""
  table = {name: _as_tuple(target) for name, target in rules}
  used: set[str] = set()
  spec = []
  for name, dim in zip(axes, shape):
    if name is not None and name not in table:
      raise KeyError(f"logical axis {name!r} has no sharding rule; rules cover {sorted(table)}")
    chosen = []
    for mesh_axis in table.get(name, ()) if name is not None else ():
      size = mesh.shape[mesh_axis]
      if mesh_axis in used or size == 1:
        continue
      if dim % (math.prod(mesh.shape[a] for a in chosen) * size):
        break
      chosen.append(mesh_axis)
    used.update(chosen)
    spec.append(None if not chosen else chosen[0] if len(chosen) == 1 else tuple(chosen))
  while spec and spec[-1] is None:
    spec.pop()
  return P(*spec)


def _is_var(x) -> bool:
  return isinstance(x, nnx.Variable)


def state_shardings(state: nnx.State, mesh: Mesh, rules: Rules):
  """NamedSharding for every variable of `state` (abstract or concrete), from its logical axes."""
  def one(v):
    axes = v.get_metadata().get("out_sharding") or (None,) * len(v.shape)
    return NamedSharding(mesh, logical_to_spec(axes, v.shape, mesh, rules))
  return jax.tree.map(one, state, is_leaf=_is_var)


def init_sharded(make_model: Callable[[], nnx.Module], mesh: Mesh, rules: Rules) -> nnx.Module:
  """Initialises a model directly into its shardings: no parameter ever exists unsharded."""
  abstract = nnx.eval_shape(make_model)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh, rules)

  @functools.partial(jax.jit, out_shardings=shardings)
  def init():
    return nnx.state(make_model())

  return nnx.merge(graphdef, init())


def logical_sharding(axes: Sequence[str | None], shape: Sequence[int], mesh: Mesh,
                     rules: Rules) -> NamedSharding:
  return NamedSharding(mesh, logical_to_spec(axes, shape, mesh, rules))


def shard_batch(batch, mesh: Mesh, rules: Rules, axes: Sequence[str | None] = ("batch",)):
  """Puts a host-local batch (this process's rows) onto the mesh as global arrays split over `batch`.

  Single-process this is a device_put; multi-host each process contributes its own rows.
  """
  def one(x):
    x = np.asarray(x)
    names = tuple(axes) + (None,) * (x.ndim - len(axes))
    global_shape = (x.shape[0] * jax.process_count(),) + x.shape[1:]
    sh = logical_sharding(names, global_shape, mesh, rules)
    return jax.make_array_from_process_local_data(sh, x, global_shape)
  return jax.tree.map(one, batch)


def put_global(x: np.ndarray, sharding: jax.sharding.Sharding) -> jax.Array:
  """A global array from a host array every process holds whole (inference batches): each process
  places only the slices its own devices own, so one code path serves one host and a pod."""
  x = np.asarray(x)
  return jax.make_array_from_callback(x.shape, sharding, lambda index: x[index])


def to_host(x: jax.Array) -> np.ndarray:
  """A replicated output as NumPy on every process (`np.asarray` refuses arrays that span other
  processes' devices, even replicated ones)."""
  if x.is_fully_addressable:
    return np.asarray(x)
  if not x.sharding.is_fully_replicated:
    raise ValueError(f"array of shape {x.shape} is split across processes; replicate it first")
  return np.asarray(x.addressable_shards[0].data)


def batch_divisor(mesh: Mesh, rules: Rules) -> int:
  """How many ways the rules split the `batch` axis on `mesh`: row counts must be multiples."""
  table = {name: _as_tuple(target) for name, target in rules}
  return math.prod(mesh.shape[a] for a in table.get("batch", ()))


_CONTEXT: contextvars.ContextVar[tuple[Mesh, Rules] | None] = contextvars.ContextVar(
    "prm_jax_sharding", default=None)


@contextlib.contextmanager
def use_rules(mesh: Mesh, rules: Rules):
  """Makes `constrain` active (while tracing) for activations of the model code."""
  token = _CONTEXT.set((mesh, tuple(rules)))
  try:
    yield
  finally:
    _CONTEXT.reset(token)


def constrain(x: jax.Array, axes: Sequence[str | None]) -> jax.Array:
  """Sharding constraint on an activation by logical axes; a no-op outside `use_rules`."""
  ctx = _CONTEXT.get()
  if ctx is None:
    return x
  mesh, rules = ctx
  return jax.lax.with_sharding_constraint(x, logical_sharding(axes, x.shape, mesh, rules))


def jit_apply(fn: Callable, graphdef: nnx.GraphDef, param_shardings, arg_shardings,
              out_shardings, mesh: Mesh, rules: Rules, donate_argnums=(), static=None):
  """`jax.jit` of `fn(model, *args)` over split model state with explicit in/out shardings.

  This is the project's pjit: every step function (forward, train step, scorer) is built with it.
  With `static` (a dict of hashable values), the program is `fn(model, *args, **static)` and is
  shared by every caller with the same `fn`, `static`, graph, shardings and mesh: a second Scorer
  or Sampler over a model of the same shape (the next PRM of an active-learning loop, another
  search method) reuses the compiled program instead of tracing and compiling it again. `fn` must
  then be a module-level function, whose behaviour `static` fully determines.
  """
  if static is None:
    return _jit_apply(fn, graphdef, param_shardings, arg_shardings, out_shardings, mesh, rules,
                      donate_argnums, {})
  key = (fn, tuple(sorted(static.items())), graphdef, _frozen(param_shardings),
         _frozen(arg_shardings), _frozen(out_shardings), mesh, _frozen(rules),
         tuple(donate_argnums))
  if key not in _SHARED_PROGRAMS:
    if len(_SHARED_PROGRAMS) >= _MAX_SHARED_PROGRAMS:  # oldest first; its holders keep theirs
      _SHARED_PROGRAMS.pop(next(iter(_SHARED_PROGRAMS)))
    _SHARED_PROGRAMS[key] = _jit_apply(fn, graphdef, param_shardings, arg_shardings,
                                       out_shardings, mesh, rules, donate_argnums, static)
  return _SHARED_PROGRAMS[key]


_SHARED_PROGRAMS: dict = {}
_MAX_SHARED_PROGRAMS = 64


def _frozen(tree) -> tuple:
  leaves, treedef = jax.tree.flatten(tree)
  return treedef, tuple(leaves)


def _jit_apply(fn, graphdef, param_shardings, arg_shardings, out_shardings, mesh, rules,
               donate_argnums, static):
  def wrapped(state, *args):
    with use_rules(mesh, rules):
      return fn(nnx.merge(graphdef, state), *args, **static)
  return jax.jit(wrapped, in_shardings=(param_shardings, *arg_shardings),
                 out_shardings=out_shardings, donate_argnums=donate_argnums)


def path_name(path) -> str:
  """'transformer/layers/0/attn/q_proj' for a pytree path into an nnx.State."""
  return "/".join(str(getattr(k, "key", getattr(k, "name", k))) for k in path
                  if getattr(k, "name", None) != "value")


def spec_table(state: nnx.State, mesh: Mesh, rules: Rules) -> list[tuple[str, tuple, P]]:
  """(name, shape, PartitionSpec) of every variable: what `prm-jax describe` prints."""
  flat = jax.tree_util.tree_flatten_with_path(state, is_leaf=_is_var)[0]
  specs = jax.tree.leaves(state_shardings(state, mesh, rules))
  return [(path_name(p), tuple(v.shape), s.spec) for (p, v), s in zip(flat, specs)]
