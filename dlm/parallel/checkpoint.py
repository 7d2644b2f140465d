"""Sharded checkpoints (orbax): a network or a trained head saved from one mesh, restored onto any other.

    save_sharded(model, "ckpt/llada")                 # every process writes the shards it holds
    model = load_sharded("ckpt/llada", mesh=mesh)      # each process reads only the shards its devices need

Layout: `<folder>/config.json` (the ModelConfig, with "dlm_checkpoint": "orbax") and `<folder>/state/` (orbax,
one array per parameter, stacked layers as one array each).  Orbax writes into a temporary directory and renames
it on completion, and config.json is written after it, so a folder with config.json is complete.  Restoring
places each parameter by dlm's sharding rules on the target mesh (or by a `shardings` function for heads, whose
parameters have no rules: replicated by default), whatever mesh it was saved from.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import jax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

from dlm.model.transformer import flat_params

MARKER = "orbax"


def _checkpointer():
  import orbax.checkpoint as ocp
  return ocp.StandardCheckpointer()


def is_sharded_checkpoint(folder: str | os.PathLike) -> bool:
  cfg = Path(folder) / "config.json"
  if not cfg.is_file():
    return False
  try:
    return json.loads(cfg.read_text()).get("dlm_checkpoint") == MARKER
  except (json.JSONDecodeError, AttributeError):
    return False


def save_sharded(module: nnx.Module, folder: str | os.PathLike, *, config: dict | None = None,
                 overwrite: bool = False) -> Path:
  """Write `module`'s parameters (wherever they live: one device or a mesh over many processes) as an orbax
  checkpoint; `config` (default: a Transformer's ModelConfig) goes to config.json.  Every process calls it."""
  folder = Path(folder)
  if config is None:
    if not hasattr(module, "cfg"):
      raise ValueError("save_sharded: pass config= (a JSON-ready dict) for a module without a ModelConfig `cfg`")
    config = module.cfg.to_dict()
  if folder.exists():
    if not overwrite:
      raise FileExistsError(f"{folder} exists; pass overwrite=True (or choose a new folder)")
    if jax.process_index() == 0:
      shutil.rmtree(folder)
  from dlm.parallel.distributed import barrier
  barrier("dlm-save-sharded-clear")
  checkpointer = _checkpointer()
  checkpointer.save((folder / "state").absolute(), flat_params(module))
  checkpointer.wait_until_finished()
  barrier("dlm-save-sharded-state")
  if jax.process_index() == 0:
    from dlm.io.params import atomic_write
    text = json.dumps({**config, "dlm_checkpoint": MARKER}, indent=1)
    atomic_write(folder / "config.json", lambda tmp: Path(tmp).write_text(text))
  barrier("dlm-save-sharded-done")
  return folder


def restore_sharded(make, folder: str | os.PathLike, *, mesh: Mesh | None = None, shardings=None):
  """The module `make()` builds (abstractly), with parameters from `folder` placed on `mesh`: by `shardings`
  (path, shape) -> Sharding | None when given, else dlm's rules for a Transformer, else replicated."""
  folder = Path(folder)
  if not is_sharded_checkpoint(folder):
    raise FileNotFoundError(f"{folder} is not a complete sharded checkpoint (config.json with "
                            f"\"dlm_checkpoint\": \"orbax\" and state/); write one with dlm.parallel.save_sharded")
  abstract = nnx.eval_shape(make)
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  rules = None
  if shardings is None and mesh is not None:
    from dlm.model.transformer import Transformer
    if isinstance(abstract, Transformer):
      from dlm.parallel.rules import param_shardings
      rules = param_shardings(abstract, mesh)
  replicated = NamedSharding(mesh, P()) if mesh is not None else jax.sharding.SingleDeviceSharding(
      jax.local_devices()[0])

  def target(path: str, var):
    value = var.get_value()
    s = shardings(path, tuple(value.shape)) if shardings is not None else (rules or {}).get(path)
    return jax.ShapeDtypeStruct(value.shape, value.dtype, sharding=s or replicated)

  keys = [".".join(map(str, p)) for p, _ in flat]
  abstract_tree = {k: target(k, v) for k, (_, v) in zip(keys, flat)}
  try:
    restored = _checkpointer().restore((folder / "state").absolute(), abstract_tree)
  except (ValueError, KeyError) as e:
    raise ValueError(f"{folder}: the checkpoint does not match the network ({str(e).splitlines()[0]})") from e
  leaves = [(p, v.replace(restored[k])) for k, (p, v) in zip(keys, flat)]
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def load_sharded(folder: str | os.PathLike, *, mesh: Mesh | None = None, dtype: str | None = None):
  """A Transformer saved by `save_sharded`, restored onto `mesh` (any mesh, whatever it was saved from)."""
  from dlm.model.config import ModelConfig
  from dlm.model.transformer import Transformer
  folder = Path(folder)
  raw = json.loads((folder / "config.json").read_text()) if (folder / "config.json").is_file() else {}
  raw.pop("dlm_checkpoint", None)
  cfg = ModelConfig.from_dict(raw)
  if dtype is not None:
    cfg = cfg.replace(dtype=dtype)
  return restore_sharded(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), folder, mesh=mesh)
