"""DUS dilated unmasking ("Plan for Speed: Dilated Scheduling for Masked Diffusion LMs", omerlux/DUS).

Each block is resolved in a fixed number of rounds, one forward pass each: round r commits the masked slots whose
`dlm.schedules.group_index` is r.  Early rounds are sparse and spread out (slots far apart are nearly independent,
so committing them together costs little), late rounds are dense but have the most context.  With base 2 a block
of B = 2^k slots takes log2 B passes instead of B (B = 32: rounds of 2, 2, 4, 8, 16 slots).

Skip heuristic (optional, `skip_threshold`): a slot of the current round whose confidence (clean softmax
probability of its proposal) is below the threshold is deferred to the next round, where it is proposed again
from the new, richer context; the last round commits everything left, so a block still takes exactly
num_rounds passes.  This is the paper's intent ("delay to the next round").  DUS's code instead re-masks such
slots and never puts them in a later round, so they can stay masked to the end; we do not copy that.
The skip confidence is the *clean* softmax probability of the proposal at every temperature (LLaDA's and
Fast-dLLM's confidence).  At T > 0 DUS computes it from the Gumbel-noised values instead, which makes the skip
depend on the noise draw rather than on how sure the model is; we keep the clean one (at T = 0 they agree).
A block of B slots takes `dlm.schedules.num_rounds` passes: ceil(log2 B) for base 2 when B is a power of 2,
one more or less otherwise (see dlm/schedules/dilated.py).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import Sampler, check_number
from dlm.schedules import group_index, num_rounds


@dataclasses.dataclass(frozen=True)
class Dilated(Sampler):
  """DUS: dilated groups of stride Bk / base^base_skip, then halving (for base 2), one group per forward pass.

  skip_threshold: None (off; DUS's code default is 0.3) or a confidence below which a slot waits a round.
  merge_last_level: fold the last round into the previous one when it is smaller (only matters when the block
    length is not a power of the base; DUS's generate_scheduled always does it, see dlm.schedules.dilated).
  """

  base: int = 2
  base_skip: int = 1
  temperature: float = 0.0
  skip_threshold: float | None = None
  merge_last_level: bool = False

  def __post_init__(self):
    for name in ("base", "base_skip"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"{name}={value!r} must be a positive int")
    check_number("temperature", self.temperature, 0)
    if self.skip_threshold is not None and not 0 <= self.skip_threshold <= 1:
      raise ValueError(f"{self.skip_threshold=} must be None or in [0, 1]")
    if not isinstance(self.merge_last_level, bool):
      raise ValueError(f"{self.merge_last_level=} must be a bool")

  @property
  def family(self):
    return "dilated"

  def rounds(self, block_length: int) -> int:
    """Forward passes per block."""
    return num_rounds(block_length, self.base, self.base_skip, self.merge_last_level)

  def max_nfe(self, gen_length, block_length):
    # Deferred slots ride along with a later round and the last round commits everything, so deferrals cost
    # no extra pass: the bound is exact.
    return (gen_length // block_length) * self.rounds(block_length)

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=self.temperature)

  def step(self, view: View, block: BlockState, carry, key):
    del key  # the sample is the view's
    group = jnp.asarray(group_index(block.block_length, self.base, self.base_skip, self.merge_last_level))  # [Bk]
    x0 = view.sample  # [B, Bk]
    # Slots of this round and any deferred from earlier rounds (committed slots are no longer masked).
    due = block.masked & (group[None] <= block.step)  # [B, Bk]
    if self.skip_threshold is not None:
      last = block.step >= self.rounds(block.block_length) - 1
      sure = view.sample_prob >= self.skip_threshold  # [B, Bk]
      due = due & (sure | last)
    return x0, due, carry
