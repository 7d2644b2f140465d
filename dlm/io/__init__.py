"""Reading and writing networks: Hugging Face LLaDA/Dream folders, dlm's own params folders, tokenizers.

    from dlm.io import load_hf, export_hf, HFTokenizer, save_model, load_model

The names are resolved on first use (PEP 562), so `import dlm.io` and the light submodules
(`dlm.io.safetensors_stream`, `dlm.io.tokenizer`) do not pull in JAX.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING

_EXPORTS = {
    "load_hf": "dlm.io.hf", "export_hf": "dlm.io.hf", "CheckpointError": "dlm.io.hf",
    "HFTokenizer": "dlm.io.tokenizer", "ChatTemplateError": "dlm.io.tokenizer",
    "save_model": "dlm.io.params", "load_model": "dlm.io.params",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
  from dlm.io.hf import CheckpointError, export_hf, load_hf
  from dlm.io.params import load_model, save_model
  from dlm.io.tokenizer import ChatTemplateError, HFTokenizer


def __getattr__(name: str):
  if name not in _EXPORTS:  # AttributeError lets `from dlm.io import convert` fall back to the submodule
    raise AttributeError(f"module 'dlm.io' has no attribute {name!r}")
  value = getattr(importlib.import_module(_EXPORTS[name]), name)
  globals()[name] = value
  return value


def __dir__():
  return sorted(set(globals()) | set(_EXPORTS))
