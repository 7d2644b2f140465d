"""Named sharding rules: every network parameter, the KV cache, the canvas and the loop state over a mesh.

Parameters (per-layer shapes; a stacked layer parameter gets a replicated leading [n_layers] axis):

    embed.embedding        [V, D]        (tensor, fsdp)    vocabulary-parallel table
    head.kernel            [D, V]        (fsdp, tensor)    vocabulary-parallel head
    attn.{q,k,v}_proj      [D, H*Dh]     (fsdp, tensor)    column-parallel: heads split over tensor
    attn.{q,k,v}_proj.bias [H*Dh]        (tensor,)
    attn.o_proj            [H*Dh, D]     (tensor, fsdp)    row-parallel
    mlp.{gate,up}_proj     [D, F]        (fsdp, tensor)    column-parallel: hidden units split over tensor
    mlp.down_proj          [F, D]        (tensor, fsdp)    row-parallel
    moe.{gate,up}_proj     [E, D, F]     (expert, fsdp, tensor)  experts split over `expert`
    moe.down_proj          [E, F, D]     (expert, tensor, fsdp)
    moe.shared.*           as mlp.*                        the shared expert is a dense SwiGLU
    moe.router.*           replicated    (the gate [D, E] and expert bias [E]: small, read by every token)
    *_norm.scale           [D] or [Dh]   replicated        (D floats: gathering them costs more than it saves)

k/v projections (and the KV cache's head axis) are split over `tensor` only when the key/value heads divide
evenly (GQA with fewer KV heads than `tensor`, e.g. Dream's 4 at tensor=8, keeps them replicated over `tensor`,
as Megatron does); every other split must divide its dimension, or `param_shardings` says which does not.

Arrays of the generation loop: the batch axis over (data, fsdp, expert), everything else replicated; the KV cache
[n_layers, B, L, Hkv, Dh] also over tensor on its head axis.  `unruled_parameters` lists any parameter no rule
covers; `param_shardings` refuses to place a network that has one, so nothing is replicated by accident.
"""

from __future__ import annotations

import re

import jax
import numpy as np
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dlm.model.transformer import Transformer, flat_params, stacked_prefix
from dlm.parallel.mesh import BATCH_AXES, batch_axes, padded_rows

REPLICATED = "replicated"
_RULES: tuple[tuple[str, tuple | str], ...] = (
    (r"embed\.embedding", ("tensor", "fsdp")),
    (r"head\.kernel", ("fsdp", "tensor")),
    (r"attn\.(q|k|v)_proj\.kernel", ("fsdp", "tensor")),
    (r"attn\.(q|k|v)_proj\.bias", ("tensor",)),
    (r"attn\.o_proj\.kernel", ("tensor", "fsdp")),
    (r"mlp\.(gate|up)_proj\.kernel", ("fsdp", "tensor")),
    (r"mlp\.down_proj\.kernel", ("tensor", "fsdp")),
    (r"moe\.(gate|up)_proj", ("expert", "fsdp", "tensor")),
    (r"moe\.down_proj", ("expert", "tensor", "fsdp")),
    (r"moe\.shared\.(gate|up)_proj\.kernel", ("fsdp", "tensor")),
    (r"moe\.shared\.down_proj\.kernel", ("tensor", "fsdp")),
    (r"moe\.router\.(gate\.kernel|expert_bias)", REPLICATED),
    (r"(attn_norm|mlp_norm|final_norm|attn\.q_norm|attn\.k_norm)\.scale", REPLICATED),
)


def _present(mesh: Mesh, axis):
  """An axis name, or None where the mesh has no such axis (or it has size 1: nothing to split)."""
  return axis if axis in mesh.axis_names and mesh.shape[axis] > 1 else None


def rule_for(path: str):
  """The per-layer partition of a parameter path (stacked prefix removed), or None if no rule covers it."""
  stack = stacked_prefix(path)
  inner = path[len(stack) + 1:] if stack else path
  for pattern, spec in _RULES:
    if re.fullmatch(pattern, inner):
      return spec
  return None


def unruled_parameters(model: Transformer) -> list[str]:
  """Parameter paths no rule covers (each would be silently replicated): [] for a dlm network."""
  return sorted(path for path in flat_params(model) if rule_for(path) is None)


def param_spec(path: str, shape: tuple[int, ...], cfg, mesh: Mesh) -> P:
  """The PartitionSpec of one parameter on `mesh` (ValueError where no rule covers it or a split is uneven)."""
  spec = rule_for(path)
  if spec is None:
    raise ValueError(f"parameter {path} has no sharding rule (dlm/parallel/rules.py); add one")
  stacked = stacked_prefix(path) is not None
  inner_shape = shape[1:] if stacked else shape
  axes = (None,) * len(inner_shape) if spec == REPLICATED else tuple(_present(mesh, a) for a in spec)
  if re.search(r"attn\.(k|v)_proj", path) and not kv_heads_split(cfg, mesh):
    axes = tuple(None if a == "tensor" else a for a in axes)
  for dim, (size, axis) in enumerate(zip(inner_shape, axes)):
    if axis is not None and size % mesh.shape[axis]:
      raise ValueError(f"mesh axis {axis}={mesh.shape[axis]} does not divide dimension {dim} (size {size}) of "
                       f"parameter {path} {tuple(shape)}; choose a {axis} size that divides {size}")
  return P(*(((None,) if stacked else ()) + axes))


def param_shardings(model: Transformer, mesh: Mesh) -> dict[str, NamedSharding]:
  """{parameter path: NamedSharding} for every parameter; refuses a network with an unruled parameter."""
  missing = unruled_parameters(model)
  if missing:
    raise ValueError(f"parameters without a sharding rule (dlm/parallel/rules.py): {missing}")
  return {path: NamedSharding(mesh, param_spec(path, tuple(value.shape), model.cfg, mesh))
          for path, value in flat_params(model).items()}


def loading_rule(mesh: Mesh, cfg):
  """A `load_hf(..., shardings=)` function placing each parameter by these rules as it is read."""
  return lambda path, shape: NamedSharding(mesh, param_spec(path, tuple(shape), cfg, mesh))


def put(value, sharding: NamedSharding):
  """`value` on `sharding`, also when the mesh spans processes: a process-local value (the same on every
  process: weights read from one file, a seed's key) is cut into this process's shards from its host copy."""
  if isinstance(value, jax.Array) and not value.is_fully_addressable:
    return jax.device_put(value, sharding)
  if isinstance(value, jax.Array) and jax.dtypes.issubdtype(value.dtype, jax.dtypes.prng_key):
    return jax.random.wrap_key_data(put(jax.random.key_data(value), sharding), impl=jax.random.key_impl(value))
  if jax.process_count() == 1:
    return jax.device_put(value, sharding)
  host = np.asarray(value)
  return jax.make_array_from_callback(host.shape, sharding, lambda idx: host[idx])


def shard_model(model: Transformer, mesh: Mesh) -> Transformer:
  """Move a network's parameters onto `mesh` by the rules (in place; returns the model)."""
  nnx.update(model, place_params(model, nnx.state(model, nnx.Param), mesh))
  return model


def batch_spec(ndim: int, batch_axis: int = 0, mesh: Mesh | None = None) -> P:
  """The batch axis over the mesh's batch axes (data, fsdp, expert), every other axis replicated."""
  axes = [None] * ndim
  axes[batch_axis] = batch_axes(mesh) if mesh is not None else BATCH_AXES
  return P(*axes)


def state_shardings(tree, batch: int, mesh: Mesh, *, kv_heads_split: bool = False):
  """Shardings for a loop-state pytree: an array whose leading axis is the batch is split over (data, fsdp, expert);
  the KV cache [n_layers, B, L, Hkv, Dh] (5-D with the batch second) also over tensor on its heads; the rest
  (scalars, per-block counters, the key) replicated."""
  def one(x):
    shape = getattr(x, "shape", ())
    if len(shape) == 5 and shape[1] == batch:  # KV cache
      return NamedSharding(mesh, P(None, batch_axes(mesh), None, "tensor" if kv_heads_split else None, None))
    if len(shape) >= 1 and shape[0] == batch:
      return NamedSharding(mesh, batch_spec(len(shape), mesh=mesh))
    if len(shape) >= 2 and shape[1] == batch:  # the recorded history [T, B, G]
      return NamedSharding(mesh, batch_spec(len(shape), 1, mesh))
    return NamedSharding(mesh, P())
  return jax.tree.map(one, tree)


def constrain(tree, batch: int, mesh: Mesh | None, *, kv_heads_split: bool = False):
  """with_sharding_constraint of every array in `tree` by `state_shardings` (identity without a mesh)."""
  if mesh is None:
    return tree
  shardings = state_shardings(tree, batch, mesh, kv_heads_split=kv_heads_split)
  return jax.tree.map(jax.lax.with_sharding_constraint, tree, shardings)


def kv_heads_split(cfg, mesh: Mesh | None) -> bool:
  """Whether the key/value heads (k/v projections, KV cache) are split over `tensor`: only where they divide."""
  return (mesh is not None and "tensor" in mesh.axis_names and mesh.shape["tensor"] > 1
          and cfg.num_kv_heads % mesh.shape["tensor"] == 0)


def parameter_bytes(model: Transformer) -> dict:
  """Total parameter bytes and the bytes each device holds, read from the arrays' shardings."""
  total, per_device = 0, {}
  for value in flat_params(model).values():
    total += value.nbytes
    for shard in value.addressable_shards:
      per_device[shard.device] = per_device.get(shard.device, 0) + shard.data.nbytes
  return dict(total=total, per_device=per_device)


# -- placing the engine's inputs ---------------------------------------------------------------------------------


def _batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  return NamedSharding(mesh, batch_spec(ndim, mesh=mesh))


def shard_batch(mesh: Mesh, prompts, prompt_valid):
  """Prompts [B, P] and their mask onto the mesh, the batch split over (data, fsdp, expert).  Host arrays (the same
  global batch on every process) are padded to a multiple of data x fsdp x expert with copies of row 0; a global
  jax.Array (`global_batch`) is taken as it is."""
  if isinstance(prompts, jax.Array) and not prompts.is_fully_addressable:
    return prompts, prompt_valid
  return shard_rows(mesh, (prompts, np.asarray(prompt_valid, bool)))


def shard_rows(mesh: Mesh, arrays):
  """Host arrays with a leading batch axis onto the mesh, each padded to a multiple of data x fsdp x expert with
  copies of row 0 and split over the batch axes: the prompts and their mask (`shard_batch`), a block-causal
  placement's answer canvas."""
  out = []
  for a in arrays:
    a = np.asarray(a)
    pad = padded_rows(len(a), mesh) - len(a)
    if pad:
      a = np.concatenate([a, np.repeat(a[:1], pad, 0)])
    sharding = _batch_sharding(mesh, a.ndim)
    out.append(jax.make_array_from_callback(a.shape, sharding, lambda idx, a=a: a[idx]))
  return tuple(out)


def global_batch(mesh: Mesh, local_prompts, local_valid=None, global_rows: int | None = None):
  """Each process's own rows [B_local, P] -> the global [B, P] batch on the mesh (no process holds the rest).
  The rows of process k are the batch slice its devices hold (processes take consecutive slices)."""
  local_prompts = np.asarray(local_prompts, np.int32)
  local_valid = np.ones(local_prompts.shape, bool) if local_valid is None else np.asarray(local_valid, bool)
  sharding = _batch_sharding(mesh, 2)
  shape = None if global_rows is None else (global_rows, local_prompts.shape[1])
  return (jax.make_array_from_process_local_data(sharding, local_prompts, shape),
          jax.make_array_from_process_local_data(sharding, local_valid, shape))


def place_params(model: Transformer, state, mesh: Mesh):
  """The network's nnx state with every parameter on its rule's sharding (a no-op for arrays already there)."""
  shardings = param_shardings(model, mesh)

  def one(path, var):
    value = var.get_value()
    target = shardings.get(".".join(map(str, path)))
    if target is None or (isinstance(value, jax.Array) and value.sharding.is_equivalent_to(target, value.ndim)):
      return var
    return var.replace(put(value, target))

  return nnx.from_flat_state([(p, one(p, v)) for p, v in nnx.to_flat_state(state)])


def replicate(mesh: Mesh, tree):
  """Copies of every array of `tree` on every device of the mesh (sampler weights, the key)."""
  sharding = NamedSharding(mesh, P())
  return jax.tree.map(lambda x: put(x, sharding) if isinstance(x, (jax.Array, np.ndarray)) else x, tree)


def unpad_rows(out, rows: int):
  """Drop the padding rows `shard_batch` added: every per-row array of a Generation back to `rows` rows."""
  b = out.tokens.shape[0]
  if b == rows:
    return out
  cut = lambda x, axis=0: jax.lax.slice_in_dim(x, 0, rows, axis=axis)  # noqa: E731
  return out.replace(
      tokens=cut(out.tokens), nfe=cut(out.nfe), steps=cut(out.steps), finished=cut(out.finished),
      gen_tokens=cut(out.gen_tokens), commit_step=cut(out.commit_step),
      remasked=None if out.remasked is None else cut(out.remasked),
      history=None if out.history is None else cut(out.history, 1),
      tokens_computed=None if out.tokens_computed is None else cut(out.tokens_computed),
      extras=jax.tree.map(lambda x: cut(x) if getattr(x, "ndim", 0) and x.shape[0] == b else x, out.extras))


def to_host(tree):
  """Every array of `tree` as numpy on this process; arrays spread over processes are all-gathered first."""
  from jax.experimental import multihost_utils

  def one(x):
    if isinstance(x, jax.Array) and not x.is_fully_addressable:
      return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x) if isinstance(x, jax.Array) else x
  return jax.tree.map(one, tree)
