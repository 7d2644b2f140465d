"""Save and load a network's parameters as one safetensors file plus its config (the bundled-model format).

Writes go to a temporary file in the same folder and are renamed into place, so a crash never leaves a
half-written file under the final name.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path

import jax
import numpy as np
from flax import nnx
from safetensors.numpy import load_file, save_file

from dlm.model.config import ModelConfig
from dlm.model.transformer import Transformer, flat_params, layer_path, per_layer_names, per_layer_shapes


def _flat_state(model: nnx.Module) -> dict[str, np.ndarray]:
  """Parameter name -> host array; a Transformer's stacked layers under their per-layer names (`layers.0.…`)."""
  out = {k: np.asarray(jax.device_get(v)) for k, v in flat_params(model).items()}
  return per_layer_names(out) if isinstance(model, Transformer) else out


def atomic_write(path: Path, write_fn) -> None:
  """Call write_fn(tmp_path) and move the result to `path` only once it is complete."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
  os.close(fd)
  try:
    write_fn(tmp)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp creates 0600; give the file the permissions open() would
    os.replace(tmp, path)
  except BaseException:
    if os.path.exists(tmp):
      os.unlink(tmp)
    raise


def save_model(model: Transformer, folder: str | os.PathLike, *, dtype=None) -> None:
  """Write `params.safetensors` and `config.json` into folder."""
  folder = Path(folder)
  save_params(model, folder / "params.safetensors", dtype=dtype)
  atomic_write(folder / "config.json",
               lambda tmp: Path(tmp).write_text(json.dumps(model.cfg.to_dict(), indent=1)))


def save_params(module: nnx.Module, path: str | os.PathLike, *, dtype=None) -> None:
  """Write a module's parameters to one safetensors file (names: the nnx state paths joined by dots)."""
  tensors = _flat_state(module)
  if dtype is not None:
    tensors = {k: v.astype(dtype) for k, v in tensors.items()}
  atomic_write(Path(path), lambda tmp: save_file(tensors, tmp))


def load_params(make, path: str | os.PathLike, *, mesh=None):
  """The module `make()` builds (abstractly, no initialisation runs) with its parameters read from `path`, a file
  written by `save_params`; a missing, extra or mis-shaped tensor is a one-line ValueError.  mesh: a network's
  parameters go from the host straight to their shardings on it (dlm/parallel/rules.py), never via one device."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing; expected a file written by dlm.io.save_params")
  tensors = load_file(str(path))
  abstract = nnx.eval_shape(make)
  graphdef, state = nnx.split(abstract)
  flat = nnx.to_flat_state(state)
  # A Transformer's layers are stored per layer (`layers.{i}.x`) and stacked here.
  expected = per_layer_shapes(abstract) if isinstance(abstract, Transformer) else {
      ".".join(map(str, p)): tuple(v.get_value().shape) for p, v in flat}
  missing = sorted(set(expected) - set(tensors))
  unexpected = sorted(set(tensors) - set(expected))
  if missing or unexpected:
    raise ValueError(f"parameter mismatch in {path}: missing={missing} unexpected={unexpected}")
  for key, shape in expected.items():
    if tensors[key].shape != tuple(shape):
      raise ValueError(f"{key}: checkpoint shape {tensors[key].shape} != model shape {tuple(shape)}")
  if isinstance(abstract, Transformer):
    grouped: dict[str, list] = {}
    for key in sorted(tensors, key=lambda k: layer_path(k)[1] or 0):
      stacked, layer = layer_path(key)
      if layer is not None:
        grouped.setdefault(stacked, []).append(tensors.pop(key))
    tensors.update({k: np.stack(v) for k, v in grouped.items()})
  placements = {}
  if mesh is not None:
    from dlm.parallel.rules import param_shardings, put
    placements = param_shardings(abstract, mesh)
  leaves = []
  for p, v in flat:
    key = ".".join(map(str, p))
    host = np.asarray(tensors.pop(key), dtype=v.get_value().dtype)
    leaves.append((p, v.replace(put(host, placements[key]) if key in placements else jax.numpy.asarray(host))))
  return nnx.merge(graphdef, nnx.from_flat_state(leaves))


def load_model(folder: str | os.PathLike, *, dtype: str | None = None, mesh=None) -> Transformer:
  """Inverse of save_model.  `dtype` overrides the compute dtype ("float32", "bfloat16"); `mesh` places the
  parameters on a device mesh by dlm's sharding rules (dlm/parallel/rules.py)."""
  folder = Path(folder)
  for name in ("config.json", "params.safetensors"):
    if not (folder / name).is_file():
      raise FileNotFoundError(f"{folder / name} is missing; expected a folder written by dlm.io.save_model")
  cfg = ModelConfig.from_dict(json.loads((folder / "config.json").read_text()))
  if dtype is not None:
    cfg = cfg.replace(dtype=dtype)
  return load_params(lambda: Transformer(cfg, rngs=nnx.Rngs(0)), folder / "params.safetensors", mesh=mesh)
