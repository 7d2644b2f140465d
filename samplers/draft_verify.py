"""Lossless draft-and-verify: FreeDave (Wu and Zhang, arXiv 2510.00294; cychomatica/FreeDave
`generation/core.py::block_decode_with_full_attention_FreeDave`, static one-token-per-step path).

One token per step (LLaDA's low-confidence rule with steps = answer length) is the output to reproduce.  From the
prediction P(A) of a state A, the next K states of that trajectory *if the prediction did not change* are drafts:
draft k commits the k + 1 most confident masked slots of A with their proposals.  One forward runs all K drafts
(K candidate copies of the block, `draft_copies`); draft k + 1 is verified when one step of the rule applied to
draft k with draft k's own fresh prediction gives exactly draft k + 1.  The longest verified chain is accepted,
with the prediction of its last draft, so a forward advances 1 + (accepted drafts) steps, and the answer is token
for token the one-token-per-step answer at temperature 0 (the drafts only decide how many forwards it takes).

How this file keeps the books.  The loop's canvas is always a state of the exact trajectory, S = one step after an
anchor A whose prediction the carry holds.  Copy 0 of a forward is S itself and copy k (k = 1..K-1) is A with its
k + 1 most confident slots committed (so copy 0 is draft 0 and the copies are exactly the reference's K drafts).
The step finds the longest verified chain 0..m, commits the rule's step from copy m (one more exact step, computed
from copy m's prediction, which the reference would take at the start of its next round without a forward) and
keeps copy m's prediction as the new anchor.  At a block's entry there is no anchor: the forward runs the canvas
alone (the reference's cache-refresh forward, which in its code commits nothing for LLaDA; here it commits that
step, and the next forward's copies are the reference's first drafts).  Forward for forward, and so in NFE, this
is the reference's schedule.

Where dlm differs from the reference code: its batch is 1 (asserted); here rows are batched, each row accepting
its own chain.  Its verification uses the `subset` rule of `draft_verification`, which on one-token-per-step drafts
(each holds one more committed slot than the last) is exact equality, what this file tests.  Ties in confidence go
to the lower slot here (torch.topk's order is unspecified).  Temperature 0 only: the reference samples each copy
with fresh noise, so at T > 0 its output is not the one-token-per-step output it claims; its FreeDave++ variant
(drafts from a confidence threshold), `eager_acceptance_mode` (drafts reaching into the next blocks) and the
`tree_attention` layout (the copies as extra query rows against one shared cache instead of K rows) are not built;
the batch-expanded layout here computes the same statistics.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import AdaptiveSampler, check_positive_int, rank_per_row
from dlm.samplers.threshold import top1_per_row


def one_step(tokens, x0, conf, masked):
  """The low-confidence rule's step at one token per step: the most confident masked slot takes its proposal.
  tokens, x0 [..., N] int32, conf [..., N], masked [..., N] bool -> tokens [..., N]."""
  lead, n = tokens.shape[:-1], tokens.shape[-1]
  flat = lambda a: a.reshape(-1, n)
  pick = top1_per_row(flat(conf), flat(masked)).reshape(*lead, n)
  return jnp.where(pick, x0, tokens)


def draft_states(tokens, x0, conf, masked, copies: int):
  """Copies 1..K-1 of a block: the k + 1 (k = 1..K-1) most confident masked slots of the *anchor* committed, where
  tokens [B, N] is one step past the anchor (its single most confident slot already committed) and x0/conf
  [B, N] are the anchor's proposals.  -> [B, K-1, N]."""
  rank = rank_per_row(conf, masked)  # [B, N] 0 = S's most confident masked slot = the anchor's second
  ahead = jnp.arange(1, copies)[None, :, None]  # [1, K-1, 1]: copy k commits k more slots than S
  pick = masked[:, None] & (rank[:, None] < ahead)
  return jnp.where(pick, x0[:, None], tokens[:, None]).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class DraftVerify(AdaptiveSampler):
  """FreeDave's lossless draft-and-verify (module docstring): the one-token-per-step low-confidence answer in
  fewer forwards, `draft_steps` candidate copies of the block per forward (the reference's `draft_steps`; its
  published runs use 2 and 4)."""

  draft_steps: int = 4
  temperature: float = 0.0

  def __post_init__(self):
    check_positive_int("draft_steps", self.draft_steps)
    if self.draft_steps < 2:
      raise ValueError(f"draft_steps={self.draft_steps} must be >= 2 (1 is plain one-token-per-step decoding: "
                       f"use low_confidence with steps equal to the answer length)")
    if self.temperature != 0:
      raise ValueError(f"temperature={self.temperature!r} must be 0: draft-and-verify reproduces the greedy "
                       f"one-token-per-step answer only")

  @property
  def draft_copies(self) -> int:
    return self.draft_steps

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=0.0)

  @property
  def family(self):
    return "draft_verify"

  def init(self, batch, block_length, vocab_size=0):
    del vocab_size
    return dict(x0=jnp.zeros((batch, block_length), jnp.int32), conf=jnp.zeros((batch, block_length), jnp.float32),
                anchored=jnp.zeros((batch,), bool), accepted=jnp.zeros((batch,), jnp.int32))

  def drafts(self, carry, tokens, masked):
    drafts = draft_states(tokens, carry["x0"], carry["conf"], masked, self.draft_steps)  # [B, K-1, Bk]
    return jnp.where(carry["anchored"][:, None, None], drafts, tokens[:, None])

  def step(self, view: View, block: BlockState, carry, key):
    del key
    k = self.draft_steps
    b, n = block.tokens.shape
    masked = block.block_masked
    copies = jnp.concatenate([block.tokens[:, None], self.drafts(carry, block.tokens, masked)], axis=1)  # [B,K,N]
    x0 = jnp.concatenate([view.sample[:, None], view.drafts.sample.reshape(b, k - 1, n)], axis=1)  # [B, K, N]
    conf = jnp.concatenate([view.sample_prob[:, None], view.drafts.sample_prob.reshape(b, k - 1, n)], axis=1)
    targets = one_step(copies, x0, conf, copies == block.mask_id)  # [B, K, N]: one exact step from each copy
    verified = jnp.all(copies[:, 1:] == targets[:, :-1], axis=-1) & carry["anchored"][:, None]  # [B, K-1]
    chain = jnp.sum(jnp.cumprod(verified.astype(jnp.int32), axis=-1), axis=-1)  # [B] accepted drafts
    pick = lambda a: jnp.take_along_axis(a, chain[:, None, None], axis=1)[:, 0]  # [B, K, N] -> [B, N]
    new_tokens = pick(targets)
    commit = masked & (new_tokens != block.mask_id)
    left = jnp.any(masked & ~commit, axis=-1)  # the block still has masks after this step
    active = block.active
    carry = dict(x0=jnp.where(active[:, None], pick(x0), carry["x0"]),
                 conf=jnp.where(active[:, None], pick(conf), carry["conf"]),
                 anchored=jnp.where(active, left, carry["anchored"]),
                 # Slots committed beyond the first: copies past the block's end repeat the full block, so the
                 # chain's length can exceed what it advanced.
                 accepted=carry["accepted"] + jnp.where(active, commit.sum(-1) - 1, 0).astype(jnp.int32))
    return new_tokens, commit, carry

  def report(self, carry):
    return {"accepted_drafts": carry["accepted"]}
