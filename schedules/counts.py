"""Per-step unmask counts: how many masked positions a confidence-ordered sampler commits at each step.

- LLaDA: at block entry, split the block's m masked positions evenly over the block's steps; the remainder goes
  to the first steps (`llada_counts`).  Fixed for the whole block.
- Dream: at every step, n = int(mean_masked * (1 - s/t)) on the grid linspace(1, eps, steps + 1), and every
  remaining position at the last step (`dream_count`; `dream_count_np` and `dream_counts_np` on the host).
- MDLM / MD4 draw no count: each masked position unmasks independently with `Schedule.unmask_prob(t, s)`.
- DUS uses fixed position groups instead (`dlm.schedules.dilated`).
"""

from __future__ import annotations

import numpy as np

import jax
import jax.numpy as jnp

from dlm.schedules._checks import static_int, static_real
from dlm.schedules.grids import uniform_grid, uniform_grid_np


def llada_counts(masked, steps: int) -> jax.Array:
  """LLaDA's `get_num_transfer_tokens`: per-row counts of positions to commit at each of `steps` steps.

  masked: [B] (or any [...]) integer array, the number of masked positions of each row's block at block entry.
  Returns [B, steps] int32 with base = m // steps everywhere and one more on the first m % steps steps, so each
  row sums to m and no step differs from another by more than one.  `steps` must be a static int; `masked` may
  be traced.  Counts must be >= 0 (not checked: the values may be traced).
  """
  steps = static_int("steps", steps, minimum=1)
  m = jnp.asarray(masked)
  if not jnp.issubdtype(m.dtype, jnp.integer):
    raise ValueError(f"masked must hold integer counts (e.g. mask.sum(-1)), got dtype {m.dtype}")
  m = m.astype(jnp.int32)
  base = m // steps  # [B]
  rem = m % steps  # [B]
  step = jnp.arange(steps, dtype=jnp.int32)  # [steps]
  return base[..., None] + (step < rem[..., None]).astype(jnp.int32)  # [B, steps]


def dream_count(mean_masked, step, steps: int, eps: float = 1e-3) -> jax.Array:
  """Dream's number of positions to commit at step `step` (0-based) of `steps`: an int32 array of mean_masked's shape.

  mean_masked: the batch mean of the masked counts, mask.sum() / B, as float32 (Dream uses one count for every
  row).  step may be traced (the engine's loop counter); steps and eps are static.  With t, s = grid[step],
  grid[step + 1] of `uniform_grid(steps, eps)`:

      n = floor(mean_masked * (1 - s / t))     for step < steps - 1, in float32 as Dream computes it
      n = floor(mean_masked)                   at the last step: everything that remains

  The floor is Dream's `int()` and it is kept on purpose: n can be 0 at step 0 (a forward pass that commits
  nothing).  With steps = length = 256 (or 512) and eps = 1e-3, step 0 gives floor(256 * 0.999 / 256) = 0, the
  middle steps 1 each and the last step 2; with steps = length = 1024 the first two steps commit 0 and the last 3.
  A step outside [0, steps) is clipped into it.
  """
  steps = static_int("steps", steps, minimum=1)
  grid = uniform_grid(steps, eps)  # [steps + 1] float32
  step = jnp.clip(jnp.asarray(step, jnp.int32), 0, steps - 1)
  m = jnp.asarray(mean_masked, jnp.float32)
  t, s = grid[step], grid[step + 1]
  n = jnp.floor(m * (1.0 - s / t))  # same float32 operations, in the same order, as Dream: int() truncates (n >= 0)
  return jnp.where(step == steps - 1, jnp.floor(m), n).astype(jnp.int32)


def dream_count_np(mean_masked: float, step: int, steps: int, eps: float = 1e-3) -> int:
  """Host version of `dream_count` for one step, in NumPy float32 (bit-identical grid and arithmetic)."""
  steps = static_int("steps", steps, minimum=1)
  step = static_int("step", step, minimum=0)
  if step >= steps:
    raise ValueError(f"{step=} must be < {steps=}")
  grid = uniform_grid_np(steps, eps)
  m = np.float32(mean_masked)
  if step == steps - 1:
    return int(m)
  t, s = grid[step], grid[step + 1]
  return int(m * (np.float32(1.0) - s / t))


def dream_counts_np(masked: int, steps: int, eps: float = 1e-3) -> np.ndarray:
  """Dream's whole count sequence [steps] (int64) for `masked` positions when every row has the same mask count.

  Host-side: it replays the loop, feeding each step the positions still masked after the previous ones.  Sums to
  `masked`.  E.g. (256, 256) -> [0, 1, ..., 1, 2] and (256, 32) -> [7, 8, ..., 8, 9].
  """
  masked = static_int("masked", masked, minimum=0)
  steps = static_int("steps", steps, minimum=1)
  static_real("eps", eps, 0.0, 1.0)
  out = np.zeros(steps, np.int64)
  left = masked
  for i in range(steps):
    out[i] = min(dream_count_np(left, i, steps, eps), left)
    left -= int(out[i])
  return out
