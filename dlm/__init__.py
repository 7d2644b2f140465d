"""dlm: sampling from masked diffusion language models (LLaDA, Dream, MDLM) in JAX/Flax NNX.

`import dlm` is light: the network, engine and IO modules load when first used.
"""

from __future__ import annotations

import os
from pathlib import Path

__all__ = ["load"]


def load(path_or_hub_id: str | os.PathLike, **kwargs):
  """Load a network as (model, tokenizer or None) from any of the folders dlm reads.

  - "bundled", "testbed" or "testbed_bd": a model shipped inside the package (dlm.io.shipped), with no tokenizer
    (the tasks' character tokenizer, dlm.tasks.TOKENIZER, encodes their prompts);
  - a folder written by `dlm.io.save_model` (params.safetensors + config.json, e.g. `dlm train` output or
    `dlm convert` of a Hugging Face folder): `dlm.io.load_model(folder, **kwargs)` (kwargs: dtype);
  - a sharded checkpoint written by `dlm.parallel.save_sharded` / `dlm convert --sharded` (orbax; kwargs: dtype,
    mesh: restored straight onto the mesh, whatever mesh it was saved from);
  - otherwise a LLaDA or Dream Hugging Face folder, or a hub id `org/name[@revision]` (read from the local
    Hugging Face cache, downloaded into it when missing: dlm.io.hub): `dlm.io.load_hf(path_or_hub_id, **kwargs)`
    (kwargs: dtype, param_dtype, mesh, shardings, max_len, revision, token, local_files_only).

  mesh=: every kind places its weights on that device mesh by dlm's sharding rules (dlm/parallel/rules.py).

  The tokenizer is the folder's tokenizer.json (with its chat template) when it has one, else None.
  """
  from dlm.io.shipped import SHIPPED_MODELS, shipped_folder
  if isinstance(path_or_hub_id, str) and path_or_hub_id in SHIPPED_MODELS:
    from dlm.io.params import load_model
    return load_model(shipped_folder(path_or_hub_id), **kwargs), None
  folder = Path(path_or_hub_id)
  from dlm.parallel.checkpoint import is_sharded_checkpoint
  if is_sharded_checkpoint(folder):
    from dlm.io.tokenizer import HFTokenizer
    from dlm.parallel.checkpoint import load_sharded
    return load_sharded(folder, **kwargs), HFTokenizer.from_folder(folder)
  if (folder / "params.safetensors").is_file() and (folder / "config.json").is_file():
    from dlm.io.params import load_model
    from dlm.io.tokenizer import HFTokenizer
    return load_model(folder, **kwargs), HFTokenizer.from_folder(folder)
  from dlm.io.hf import load_hf
  return load_hf(path_or_hub_id, **kwargs)
