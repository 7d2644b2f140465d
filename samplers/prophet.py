"""Prophet: early answer commit ("Diffusion LMs know the answer before decoding", Li et al., arXiv 2508.19982;
pixeli99/Prophet `generate_earlyexit.py`).

Decoding is LLaDA's low-confidence rule (semi-AR blocks, even split of the steps).  Before each step's commit the
sampler measures how sure the model already is of the answer: the top-1 minus top-2 *logit* gap, averaged over
answer slots.  When the average reaches the threshold of the current phase (progress = global step / steps,
global step counted from 1: < 0.33 early, < 0.67 mid, else late; defaults 7.5 / 5.0 / 2.5), every masked answer
slot, in every block, is committed at once from this step's proposal x0, and the row is finished.

Which slots are averaged:
- `anchor=None` (default, the rule as the issue states it for any task): every answer slot still masked.
- `anchor=k`: the reference's rule, the `span` (5) answer slots starting at answer slot k, masked or not.  The
  reference places them after answer-anchor tokens it forces into the canvas (`constraints_text="200:The|201:answer|
  202:is"`, then k = 204); dlm does not force tokens, so k only points at where the task puts its answer.

Where dlm differs: nothing in the rule; the reference runs batch 1 and stops the whole generation, here each row
stops on its own.  The sampler sees every answer slot (`view_span="answer"`), so it needs cache 'none' (as the
reference, which always runs full forwards).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.samplers.base import check_number
from dlm.samplers.llada import LowConfidence


@dataclasses.dataclass(frozen=True)
class Prophet(LowConfidence):
  """LLaDA low-confidence decoding with Prophet's phase-dependent early answer commit (module docstring)."""

  thresholds: tuple = (7.5, 5.0, 2.5)
  anchor: int | None = None
  span: int = 5

  view_span = "answer"

  def __post_init__(self):
    super().__post_init__()
    object.__setattr__(self, "thresholds", tuple(self.thresholds) if isinstance(self.thresholds, list)
                       else self.thresholds)
    if not (isinstance(self.thresholds, tuple) and len(self.thresholds) == 3):
      raise ValueError(f"thresholds={self.thresholds!r} must be three gaps (early, mid, late)")
    for name, value in zip(("early", "mid", "late"), self.thresholds):
      check_number(f"thresholds[{name}]", value, 0)
    if self.anchor is not None and (isinstance(self.anchor, bool) or not isinstance(self.anchor, int)
                                    or self.anchor < 0):
      raise ValueError(f"anchor={self.anchor!r} must be None or an answer slot index >= 0")
    if isinstance(self.span, bool) or not isinstance(self.span, int) or self.span <= 0:
      raise ValueError(f"span={self.span!r} must be a positive int")

  @property
  def family(self):
    return "prophet"

  def validate(self, gen_length, block_length):
    super().validate(gen_length, block_length)
    if self.anchor is not None and self.anchor >= gen_length:
      raise ValueError(f"anchor={self.anchor} must be an answer slot < {gen_length=}")

  @property
  def head_request(self):
    return dataclasses.replace(super().head_request, top=2)  # the top-2 logit gap, besides LLaDA's reads

  def step(self, view: View, block: BlockState, carry, key):
    x0, commit, carry = super().step(view, block, carry, key)  # [B, G] each; commits only in the active block
    gap = view.margin  # [B, G] top-1 minus top-2 logit
    g = gap.shape[-1]
    if self.anchor is None:
      counted = block.masked  # [B, G]
    else:
      slot = jnp.arange(g)
      counted = jnp.broadcast_to((slot >= self.anchor) & (slot < self.anchor + self.span), gap.shape)
    count = counted.sum(-1)  # [B]
    mean_gap = jnp.where(counted, gap, 0.0).sum(-1) / jnp.maximum(count, 1)  # [B]
    spb = self.steps // block.num_blocks
    progress = (block.block * spb + block.step + 1).astype(jnp.float32) / self.steps
    early, mid, late = self.thresholds
    threshold = jnp.where(progress < 0.33, early, jnp.where(progress < 0.67, mid, late))
    exit_now = (count > 0) & (mean_gap >= threshold)  # [B]
    return x0, jnp.where(exit_now[:, None], block.masked, commit), carry
