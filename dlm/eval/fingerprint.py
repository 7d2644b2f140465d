"""Content fingerprints of weights, so a stored result is reused only for the weights that produced it.

A finished compare/experiment cell is keyed by everything that changes its numbers (dlm.eval.compare.cell_key):
the network's weights and dtype, a learned head's or a second model's weights (a sampler's `default_params`), the
resolved sampler settings, the task, seed and n, the engine options and dlm's version.  The weights enter as a
fingerprint computed where they live (one small jitted reduction per array, on the device or mesh that holds
it): a position-mixed 32-bit checksum of the raw bits plus the shape and dtype, hashed together with the
parameter's path.  Reading every byte once is the price (milliseconds on an accelerator, well under a second for
the shipped models on CPU); it is paid once per model per run.
"""

from __future__ import annotations

import functools
import hashlib

import jax
import jax.numpy as jnp
import numpy as np

_UINT = {1: jnp.uint8, 2: jnp.uint16, 4: jnp.uint32, 8: jnp.uint32}


@jax.jit
def _checksum(x):
  """[...] any dtype -> [2] uint32: sum of bits x (odd, position-dependent multiplier), and of bits x position."""
  width = x.dtype.itemsize
  if x.dtype == jnp.bool_:
    bits = x.astype(jnp.uint32)
  else:
    bits = jax.lax.bitcast_convert_type(x, _UINT[width]).reshape(-1).astype(jnp.uint32)  # 8-byte -> [N, 2]
  bits = bits.reshape(-1)
  idx = jnp.arange(bits.shape[0], dtype=jnp.uint32)
  mixed = bits * (idx * jnp.uint32(0x9E3779B1) | jnp.uint32(1))
  return jnp.stack([jnp.sum(mixed, dtype=jnp.uint32), jnp.sum(bits ^ (idx * jnp.uint32(0x85EBCA77)),
                                                              dtype=jnp.uint32)])


def tree_fingerprint(tree) -> str:
  """A hex digest of every array leaf of a pytree (path, shape, dtype and content); None/() trees hash as empty."""
  digest = hashlib.sha256()
  for path, leaf in jax.tree_util.tree_flatten_with_path(tree)[0]:
    digest.update(jax.tree_util.keystr(path).encode())
    if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
      digest.update(f"{tuple(leaf.shape)}:{np.dtype(leaf.dtype).name}".encode())
      if leaf.size:
        digest.update(np.asarray(jax.device_get(_checksum(jnp.asarray(leaf)))).tobytes())
    else:
      digest.update(repr(leaf).encode())
  return digest.hexdigest()[:20]


def model_fingerprint(model) -> str:
  """The network's weights (every nnx.Param) and its config (dtypes, special ids, layout)."""
  from flax import nnx
  return tree_fingerprint((repr(model.cfg), nnx.state(model, nnx.Param)))


@functools.cache
def dlm_version() -> str:
  from importlib import metadata
  try:
    return metadata.version("dlm")
  except metadata.PackageNotFoundError:
    return "unknown"
