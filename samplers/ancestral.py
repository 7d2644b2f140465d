"""MDLM / MD4 ancestral sampling: the true reverse step of the masking process.

Within a block of `spb = steps / num_blocks` steps the time goes t_i = 1 - i/spb -> s = 1 - (i+1)/spb.  Each
still-masked slot is revealed independently with probability (alpha_s - alpha_t) / (1 - alpha_t) and, if
revealed, takes a token drawn from p_theta(x0 | x_t) (the mask token excluded, MDLM's SUBS
parameterisation).  At a block's last step every remaining slot is revealed (MD4 instead decodes leftovers with
the mode after the loop; Dream's 'origin' forces probability 1 at the last step as we do).

Time grid (`time_grid`): "uniform" (MDLM's `_sample`, t_i = 1 - i/spb) or "cosine" (MD4's OpenWebText
sampling grid, `dlm.schedules.cosine_grid`: short steps at high noise, long ones near t = 0).

The network is time-independent, so a step that changed nothing leaves the prediction valid: with
`cache_predictions` the engine skips the forward pass for such steps (MDLM's `ddpm_cache`), and the row is not
charged an NFE.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import FixedStepsSampler, check_number, check_positive_int
from dlm.schedules import LogLinear, Schedule, cosine_grid_np, get_schedule

TIME_GRIDS = ("uniform", "cosine")


@dataclasses.dataclass(frozen=True)
class Ancestral(FixedStepsSampler):
  steps: int = 64
  schedule: Schedule = LogLinear()  # or a name: 'loglinear', 'linear', 'cosine', 'polynomial'
  temperature: float = 1.0
  cache_predictions: bool = True
  time_grid: str = "uniform"

  def __post_init__(self):
    if self.time_grid not in TIME_GRIDS:
      raise ValueError(f"time_grid={self.time_grid!r}; expected one of {TIME_GRIDS}")
    if isinstance(self.schedule, str):
      object.__setattr__(self, "schedule", get_schedule(self.schedule))
    if not isinstance(self.schedule, Schedule):
      raise ValueError(f"{self.schedule=} must be a dlm.schedules.Schedule or a schedule name")
    check_positive_int("steps", self.steps)
    check_number("temperature", self.temperature, 0)

  @property
  def reuse_unchanged(self):
    return self.cache_predictions

  @property
  def family(self):
    return f"ancestral_{self.schedule.name}"

  def unmask_probability(self, step, steps_per_block):
    if self.time_grid == "cosine":
      grid = jnp.asarray(cosine_grid_np(steps_per_block))  # [spb + 1], 1 -> 0
      t, s = grid[step], grid[jnp.minimum(step + 1, steps_per_block)]
    else:
      t = 1.0 - step.astype(jnp.float32) / steps_per_block
      s = 1.0 - (step + 1).astype(jnp.float32) / steps_per_block
    p = self.schedule.unmask_prob(t, s)
    return jnp.where(step + 1 >= steps_per_block, 1.0, p)

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=self.temperature)

  def step(self, view: View, block: BlockState, carry, key):
    _, k_reveal = jax.random.split(key)  # the head drew x0 with the first half
    x0 = view.sample  # [B, Bk] from p_theta(x0 | x_t), the mask id excluded (SUBS)
    p = self.unmask_probability(block.step, self.steps // block.num_blocks)
    reveal = jax.random.uniform(k_reveal, x0.shape) < p
    return x0, reveal & block.masked, carry

  def settings(self):
    out = super().settings()
    out["schedule"] = self.schedule.name
    return out
