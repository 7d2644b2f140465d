"""Shared fixtures: tiny random networks and a left-padded prompt batch."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest

from dlm.model.config import tiny_dream, tiny_llada
from dlm.model.transformer import init_model


def _load_installed_kernels_first():
  """transformers (>= 5.2x) imports the `kernels` distribution (Hugging Face hub kernels) whenever it is
  installed; with the repository root on sys.path (`python -m pytest`) that import would find dlm's own
  top-level kernels/ folder (installed as dlm.kernels) and fail. Import the installed distribution first."""
  root = Path(__file__).resolve().parents[1]
  saved = sys.path[:]
  sys.path[:] = [p for p in saved if Path(p or ".").resolve() != root]
  try:
    if "kernels" not in sys.modules and importlib.util.find_spec("kernels") is not None:
      import kernels  # noqa: F401
  finally:
    sys.path[:] = saved


_load_installed_kernels_first()

# Three rows with 2, 0 and 4 pad tokens on the left.
PROMPTS = np.array([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 9], [0, 0, 0, 0, 11, 12]], np.int32)
VALID = PROMPTS != 0


@pytest.fixture(scope="session")
def model():
  return init_model(tiny_llada(), seed=3)


@pytest.fixture(scope="session")
def dream_model():
  return init_model(tiny_dream(), seed=4)


@pytest.fixture(scope="session")
def sharp_model():
  """The tiny LLaDA with its vocabulary head scaled by 32: confident predictions, so parallel rules commit several
  slots per step and drafts get accepted."""
  net = init_model(tiny_llada(), seed=3)
  net.head.kernel[...] = net.head.kernel[...] * 32.0
  return net


@pytest.fixture(autouse=True, scope="module")
def _release_compiled_programs():
  """Drop JAX's compiled programs after each test module.  Every XLA:CPU executable keeps its own memory
  mappings; the whole suite in one process compiles enough programs to pass the kernel's default limit of 65,530
  mappings per process (vm.max_map_count), and the next compile then crashes (SIGSEGV in backend_compile)."""
  yield
  import gc

  import jax
  jax.clear_caches()
  gc.collect()
