"""LLaDA2.x's block decoding, with LLaDA2.1's token-to-token editing (the `generate` of inclusionAI's
modeling_llada2_moe.py), for block-causal models; it runs on any model.

Per block, each iteration runs one forward and (greedy, temperature 0) proposes x0 = argmax with confidence
p(x0) at every slot of the block.  Masked slots: every one with p > `threshold` (strict), provided at least
`num_to_transfer` pass; otherwise the `num_to_transfer` most confident.  With `editing_threshold` set (LLaDA2.1),
every slot the loop committed earlier in this block (never a prompt token) whose x0 differs from its token and has
p > `editing_threshold` is replaced by x0 in the same iteration.  Slots unmasked in an iteration are editable from
the next.  Once a block has no masks the loop goes on with *post steps* while they edit: an iteration that starts
with no masks is a post step; the block ends after a post step that edits nothing, or before the
(max_post_steps + 1)-th post step.  Every iteration is one forward (one NFE).  Without `editing_threshold` the
block ends when its masks are gone, with no post step: threshold decoding with a strict comparison and a
minimum of `num_to_transfer` tokens a step (LLaDA2.0's rule as dlm runs it; LLaDA2.1's `generate` with editing
that never fires would still run one post step a block, which `editing_threshold=1.0` reproduces).

Departures from the reference code (README, known differences): the reference decodes one sequence at a time;
dlm decodes a batch, each row its own iterations.  Its `eos_early_stop` stops after a block whose answer holds an
EOS; dlm's `stop_at_eos` (off by default, as there) ends a row once an EOS follows only resolved slots, which
can be inside a block, and that row edits no further.  top-k / top-p filters are not offered (its default is
greedy).  The defaults are those of its `generate` (threshold 0.95, editing threshold 0.9 when editing, 16 post
steps, at least one token a step).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dlm.engine.state import BlockState, Decision, View
from dlm.samplers.base import check_number, check_positive_int, topk_per_row
from dlm.samplers.threshold import ParallelBase


@dataclasses.dataclass(frozen=True)
class LLaDA2Sampler(ParallelBase):
  """LLaDA2.x threshold decoding; `editing_threshold` turns on LLaDA2.1's token editing (None: LLaDA2.0)."""

  threshold: float = 0.95
  editing_threshold: float | None = None
  max_post_steps: int = 16
  num_to_transfer: int = 1
  temperature: float = 0.0

  def __post_init__(self):
    check_number("threshold", self.threshold, 0)
    if self.editing_threshold is not None:
      check_number("editing_threshold", self.editing_threshold, 0)
    if not isinstance(self.max_post_steps, int) or isinstance(self.max_post_steps, bool) or self.max_post_steps < 0:
      raise ValueError(f"max_post_steps={self.max_post_steps!r} must be an int >= 0")
    check_positive_int("num_to_transfer", self.num_to_transfer)
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "threshold"

  def max_nfe(self, gen_length, block_length):
    post = self.max_post_steps if self.editing_threshold is not None else 0
    return gen_length + (gen_length // block_length) * post

  def init(self, batch, block_length, vocab_size=0):
    # post: the post steps taken in the current block; edits: slots replaced over the whole generation.
    return dict(post=jnp.zeros((batch,), jnp.int32), edits=jnp.zeros((batch,), jnp.int32))

  def step(self, view: View, block: BlockState, carry, key):
    x0, conf = self._propose(view, key)  # [B, Bk] each
    masked = block.masked
    above = masked & (conf > self.threshold)
    fewest = topk_per_row(conf, jnp.full(masked.shape[:1], self.num_to_transfer, jnp.int32), masked)
    commit = jnp.where((above.sum(-1) >= self.num_to_transfer)[:, None], above, fewest)
    if self.editing_threshold is None:
      return Decision(tokens=x0, commit=commit), carry
    no_mask = ~masked.any(-1)  # [B] this iteration is a post step
    post = jnp.where(block.step == 0, 0, carry["post"]) + no_mask.astype(jnp.int32)
    edit = block.committed & ~masked & (conf > self.editing_threshold) & (x0 != block.tokens)  # [B, Bk]
    edited = edit.any(-1)
    ends = no_mask & ~edited  # a post step that edits nothing ends the block
    hold = ~ends & (post + 1 <= self.max_post_steps)  # matters once the block has no masks left
    rows = block.active.astype(jnp.int32)
    carry = dict(post=post, edits=carry["edits"] + edit.sum(-1).astype(jnp.int32) * rows)
    return Decision(tokens=x0, commit=commit, edit=edit, hold=hold), carry

  def report(self, carry):
    return {"edits": carry["edits"]} if self.editing_threshold is not None else {}
