"""Time grids of the reverse process: `steps + 1` decreasing times t_0 = 1 > t_1 > ... > t_steps.

Step i of a sampler goes from t = grid[i] to s = grid[i + 1].  The grids are built on the host in float64 and
rounded once to float32, so the same `(steps, eps)` gives bit-identical times on every backend and in the NumPy
host versions (`dream_count_np` relies on that); inside `jax.jit` they are compile-time constants, since `steps`
and `eps` are static Python numbers.
"""

from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp

from dlm.schedules._checks import static_int, static_real


def uniform_grid_np(steps: int, eps: float = 1e-3) -> np.ndarray:
  """Host version of `uniform_grid`: float32 NumPy array [steps + 1]."""
  steps = static_int("steps", steps, minimum=1)
  eps = static_real("eps", eps, 0.0, 1.0)
  # float64 then one rounding: the correctly rounded float32 times.  torch.linspace(1, eps, n) in float32 (Dream)
  # can differ from these by an ulp; that flips none of Dream's documented per-step counts (see tests).
  return np.linspace(1.0, eps, steps + 1, dtype=np.float64).astype(np.float32)


def uniform_grid(steps: int, eps: float = 1e-3) -> jax.Array:
  """linspace(1, eps, steps + 1) in float32: Dream's `timesteps` (eps = 1e-3) and MDLM's `_sample` grid.

  Stopping at eps > 0 rather than 0 keeps 1 - s/t away from 0/0; Dream and MDLM commit whatever is still masked at
  the last step (Dream explicitly, MDLM with a final noise-removal forward).  Returns [steps + 1] float32.
  """
  return jnp.asarray(uniform_grid_np(steps, eps))


def cosine_grid_np(steps: int) -> np.ndarray:
  """Host version of `cosine_grid`: float32 NumPy array [steps + 1]."""
  steps = static_int("steps", steps, minimum=1)
  t = np.linspace(1.0, 0.0, steps + 1, dtype=np.float64)  # MD4: t_i = (T - i) / T
  warped = np.cos(np.pi / 2 * (1.0 - t))  # = sin(pi t / 2)
  # cos(pi / 2) is 6e-17, not 0, in floating point; pin the ends so the last step reaches t = 0 exactly.
  warped[0], warped[-1] = 1.0, 0.0
  return warped.astype(np.float32)


def cosine_grid(steps: int) -> jax.Array:
  """MD4's 'cosine' sampling grid: the uniform grid 1 -> 0 warped by t <- cos(pi/2 (1 - t)).

  The warp is sin(pi t / 2): flat at t = 1, so the early steps (high noise) are short in time and the late ones
  long; MD4's OWT config pairs it with the linear schedule.  Unlike `uniform_grid` it ends at 0, as MD4's does
  (MD4 decodes any position still masked after the last step with the model's mode).  Returns [steps + 1] float32.
  """
  return jnp.asarray(cosine_grid_np(steps))
