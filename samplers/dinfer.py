"""dInfer's parallel decoders (inclusionAI/dInfer, `decoding/parallel_strategy.py`): credit and hierarchy decoding.

Both refine Fast-dLLM's threshold rule (commit every masked slot with confidence >= tau, always the top-1), so
like it they commit >= 1 slot per step and a block of Bk slots takes at most Bk steps.

Credit decoding.  A slot whose top-1 token stays the same across iterations earns credit for it, and credit
raises that token's logit, so a stable prediction crosses the threshold sooner.  dInfer keeps a credit matrix
C [B, Bk, V] per block; each iteration it decays C by beta (not on the block's first iteration), adds
(top-1 prob)^gamma at (slot, top-1 token) for every masked slot, and decodes from logits + alpha * log(1 + C)
with the threshold rule (x0 and its confidence both from the boosted logits).

We store C sparsely and exactly: a masked slot earns credit once per iteration, and a row with masks commits at
least one slot per iteration, so within a block a slot is credited on at most Bk iterations and holds at most Bk
distinct tokens.  The carry is a [B, Bk, Bk] table of (token id, credit) per slot; entry j is claimed by the
token first credited at block step j.  Where the notes are silent we chose:
- the top-1 token and probability that earn credit come from the raw (un-boosted, noise-free) logits, as in
  dInfer's code;
- C is reset at block entry (step 0): dInfer keys its matrix by block and clears it when the sequence is done,
  which amounts to the same since a block is never revisited;
- ties at the threshold use Fast-dLLM's rule (>= tau, top-1 by lowest index) rather than dInfer's
  `conf >= min(tau, max conf - 1e-5)`, which also commits slots within 1e-5 of the top-1.

Hierarchy decoding.  Split the block's masked slots into maximal contiguous runs; in each run commit only its
most confident slot, if its confidence is above `low_threshold`; also commit any slot above `tau` and always the
global top-1.  Spreading commits over separate runs keeps neighbouring (strongly dependent) tokens from being
decided in the same step.  With tau=None at most one slot per run is committed.  dInfer asserts batch 1 and
loops over runs in Python; here runs are found with a cumulative sum and the per-run maximum by an O(Bk^2)
comparison, batched.  dInfer commits nothing in the corner case max conf == low_threshold; we always commit the
top-1.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import AdaptiveSampler, check_number, gumbel_argmax, probability_of
from dlm.samplers.threshold import threshold_commit, top1_per_row


def credit_boost(logits: jax.Array, ids: jax.Array, credit: jax.Array, alpha: float) -> jax.Array:
  """logits + alpha * log(1 + C), C given sparsely.  logits [B, Bk, V]; ids, credit [B, Bk, E] (ids -1 = empty).

  The ids of one slot are distinct, so a scatter-add of alpha * log1p(credit) per entry is exact; empty entries
  add 0 (at token 0).
  """
  b, bk, _ = logits.shape
  rows = jnp.arange(b)[:, None, None]  # [B, 1, 1]
  slots = jnp.arange(bk)[None, :, None]  # [1, Bk, 1]
  boost = jnp.where(ids >= 0, alpha * jnp.log1p(credit), 0.0)  # [B, Bk, E]
  return logits.astype(jnp.float32).at[rows, slots, jnp.maximum(ids, 0)].add(boost)


@dataclasses.dataclass(frozen=True)
class Credit(AdaptiveSampler):
  """dInfer credit decoding: threshold decoding on logits boosted for tokens that stay top-1 (defaults: dInfer's)."""

  tau: float = 0.9
  alpha: float = 0.7  # dInfer credit_alpha: weight of log(1 + C) added to the logits
  gamma: float = 0.2  # dInfer boost_gamma: credit earned per iteration = (top-1 prob)^gamma
  beta: float = 0.8  # dInfer decay_beta: per-iteration decay of the credit
  temperature: float = 0.0

  def __post_init__(self):
    check_number("tau", self.tau, 0, open_lo=True)
    check_number("alpha", self.alpha, 0)
    check_number("gamma", self.gamma, 0)
    check_number("beta", self.beta, 0, 1)
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "credit"

  def init(self, batch, block_length, vocab_size=0):
    del vocab_size
    shape = (batch, block_length, block_length)  # [B, Bk slots, Bk entries]
    return jnp.full(shape, -1, jnp.int32), jnp.zeros(shape, jnp.float32)

  def update_credit(self, logits: jax.Array, block: BlockState, carry):
    """One iteration of the credit table: reset at block entry, else decay; credit each masked slot's top-1."""
    ids, credit = carry  # [B, Bk, E] each
    entry = block.step == 0
    ids = jnp.where(entry, -1, ids)
    credit = jnp.where(entry, 0.0, credit * self.beta)
    logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)  # [B, Bk, V]
    top = jnp.argmax(logp, axis=-1).astype(jnp.int32)  # [B, Bk]
    earned = jnp.where(block.masked, jnp.exp(self.gamma * jnp.max(logp, axis=-1)), 0.0)  # [B, Bk] p^gamma
    known = ids == top[..., None]  # [B, Bk, E] at most one True per slot
    # A token not yet in the table claims entry `step` (free: each step claims at most that one entry per slot);
    # the clip only matters for rows that are no longer decoding.
    new_entry = jnp.arange(ids.shape[-1]) == jnp.minimum(block.step, ids.shape[-1] - 1)  # [E]
    claim = block.masked[..., None] & ~known.any(-1, keepdims=True) & new_entry  # [B, Bk, E]
    ids = jnp.where(claim, top[..., None], ids)
    credit = credit + jnp.where(known | claim, earned[..., None], 0.0)
    return ids, credit

  def step(self, view: View, block: BlockState, carry, key):
    k_sample, _ = jax.random.split(key)
    ids, credit = self.update_credit(view.logits, block, carry)
    fused = credit_boost(view.logits, ids, credit, self.alpha)  # [B, Bk, V]
    x0 = gumbel_argmax(k_sample, fused, self.temperature)  # [B, Bk]
    conf = probability_of(fused, x0)  # [B, Bk]
    return x0, threshold_commit(conf, block.masked, self.tau), (ids, credit)


def run_best(conf: jax.Array, masked: jax.Array) -> jax.Array:
  """The most confident slot of each maximal run of contiguous masked slots (ties to the lower index).

  conf, masked [B, N] -> bool [B, N].
  """
  n = conf.shape[-1]
  starts = masked & ~jnp.pad(masked[:, :-1], ((0, 0), (1, 0)))  # [B, N] a run begins here
  run = jnp.cumsum(starts, axis=-1)  # [B, N] run number of each masked slot
  same_run = (run[:, :, None] == run[:, None, :]) & masked[:, :, None] & masked[:, None, :]  # [B, N, N]
  idx = jnp.arange(n)
  ci, cj = conf[:, :, None], conf[:, None, :]
  beaten = (cj > ci) | ((cj == ci) & (idx[None, None, :] < idx[None, :, None]))  # [B, N, N] j beats i
  return masked & ~jnp.any(same_run & beaten, axis=-1)


@dataclasses.dataclass(frozen=True)
class Hierarchy(AdaptiveSampler):
  """dInfer hierarchy decoding: per contiguous masked run its best slot if conf > low_threshold, plus any slot
  with conf > tau (None: none), plus the global top-1.  Defaults: dInfer's class (its serving default is 0.6)."""

  tau: float | None = 0.9
  low_threshold: float = 0.4
  temperature: float = 0.0

  def __post_init__(self):
    check_number("low_threshold", self.low_threshold, 0)
    if self.tau is not None:
      check_number("tau", self.tau, 0, open_lo=True)
      if self.tau < self.low_threshold:
        raise ValueError(f"{self.tau=} must be >= {self.low_threshold=}")
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "hierarchy"

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=self.temperature)

  def step(self, view: View, block: BlockState, carry, key):
    del key  # the sample is the view's
    x0, conf = view.sample, view.sample_prob  # [B, Bk] each
    commit = run_best(conf, block.masked) & (conf > self.low_threshold)
    if self.tau is not None:
      commit = commit | (block.masked & (conf > self.tau))
    return x0, commit | top1_per_row(conf, block.masked), carry
