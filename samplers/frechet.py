"""Fast-dLLM++: Fréchet profile decoding (Kasa et al., arXiv 2606.02955; Ringo-Star/FastdLLM_plusplus
`v1/llada/generate.py::get_transfer_index_frechet_profile`), a drop-in replacement for Fast-dLLM's factor rule.

With the masked slots' confidences sorted, c_(1) >= ... >= c_(m) (the clean probability of each proposal x0):

    L_n = sum_{j <= n} c_(j) - (n - 1)     (Fréchet lower bound on all n being right)
    U_n = 1 - c_(n)                         (upper bound on a competitor of the weakest)
    commit the n most confident, n = the number of n with L_n - U_n > margin, at least 1.

L_n - U_n never increases with n (each step adds 2 c_(n+1) - 1 - c_(n) <= 0), so those n are a prefix.  With
equal confidences the rule is the factor rule with f = 1 - margin.  Every step commits >= 1 slot until the block
has no masks (Fast-dLLM's `while True` block loop), as the threshold and factor rules do.

Where dlm differs from the reference code: nothing in the rule (its README writes L_n = max(0, ...), its code does
not clamp; for margin >= 0 the two commit the same slots); confidences are float32 here (float64 there), ties go
to the lower slot, rows are batched with their own counts (the reference code is batched the same way).  The
margin default is 0.25, the value of the repository's main tables (its function default is 0, its GSM8K script
0.02).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.samplers.base import check_number, topk_per_row
from dlm.samplers.threshold import ParallelBase


def frechet_count(conf, eligible, margin: float):
  """Per-row commit count of Fréchet profile decoding.  conf, eligible [B, N] -> [B] int32 (>= 1)."""
  ranked = -jnp.sort(-jnp.where(eligible, conf, -jnp.inf), axis=-1)  # [B, N] descending, ineligible last
  n = jnp.arange(conf.shape[-1])  # [N] 0-based: slot n holds c_(n+1)
  valid = n[None] < eligible.sum(-1, keepdims=True)
  lower = jnp.cumsum(jnp.where(valid, ranked, 0.0), axis=-1) - n  # L_(n+1) = sum - n
  score = jnp.where(valid, lower - (1.0 - ranked), -jnp.inf)
  count = jnp.sum((score > margin) | ((n == 0)[None] & valid), axis=-1)
  return jnp.maximum(count, 1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class FrechetProfile(ParallelBase):
  """Fast-dLLM++'s Fréchet profile rule (module docstring): the largest confident prefix whose Fréchet lower
  bound beats the competing-event bound by more than `margin`."""

  margin: float = 0.25
  temperature: float = 0.0

  def __post_init__(self):
    check_number("margin", self.margin, 0)
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "fastdllm_pp"

  def step(self, view: View, block: BlockState, carry, key):
    x0, conf = self._propose(view, key)
    k = frechet_count(conf, block.block_masked, self.margin)  # [B]
    return x0, topk_per_row(conf, k, block.block_masked), carry
