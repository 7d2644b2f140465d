"""Fast-dLLM's confidence-aware parallel decoding: the threshold rule and the factor rule.

Both rules run each block until it has no masks (Fast-dLLM's `while True` block loop); they commit a
data-dependent number of slots per step, always at least one, so a block of Bk slots takes at most Bk steps and
the whole answer at most gen_length.  Confidence is LLaDA's: the *clean* softmax probability of the proposal
x0, where x0 is the Gumbel-max sample at `temperature` (greedy at 0).

Theory (Fast-dLLM Thm 1): if n slots each have a top-1 marginal above 1 - eps with (n + 1) eps <= 1, greedy
decoding from the product of marginals picks the same tokens as greedy decoding from the joint, so committing
them in one step loses nothing.  The threshold rule applies a fixed eps = 1 - tau; the factor rule picks the
largest n for which the bound holds on the n most confident slots.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.samplers.base import AdaptiveSampler, check_number, gumbel_argmax, probability_of, topk_per_row


def top1_per_row(score: jax.Array, eligible: jax.Array) -> jax.Array:
  """The single highest-scoring eligible slot of each row (ties to the lower index).  [B, N] -> [B, N] bool.

  Equal to `topk_per_row(score, 1, eligible)` but one argmax instead of two sorts; a row without eligible slots
  selects nothing.
  """
  best = jnp.argmax(jnp.where(eligible, score, -jnp.inf), axis=-1)  # [B]
  return (jnp.arange(score.shape[-1])[None] == best[:, None]) & eligible


def threshold_commit(conf: jax.Array, eligible: jax.Array, tau: float) -> jax.Array:
  """Fast-dLLM's rule: every eligible slot with conf >= tau, plus the most confident one.  [B, N] -> bool [B, N]."""
  return (eligible & (conf >= tau)) | top1_per_row(conf, eligible)


def factor_count(conf: jax.Array, eligible: jax.Array, f: float) -> jax.Array:
  """The factor rule's per-row count: the largest n with (n + 1)(1 - c_(n)) < f, at least 1.  -> [B] int32.

  c_(1) >= c_(2) >= ... are the eligible confidences sorted in descending order.  (n + 1)(1 - c_(n)) never
  decreases with n (both factors are non-decreasing and >= 0), so the n that pass form a prefix 1..N and N is
  their count; the cumulative product only guards against float noise breaking that monotonicity.
  """
  ranked = -jnp.sort(-jnp.where(eligible, conf, -jnp.inf), axis=-1)  # [B, N] descending; ineligible -> -inf last
  n = jnp.arange(1, conf.shape[-1] + 1, dtype=jnp.float32)  # [N]
  # Paper rule, strict "<".  Fast-dLLM's get_transfer_index_dynamic instead keeps c_(n) >= 1 - f/(n + 1), i.e.
  # "<=" (equal only on exact ties), and has a quirk we do not copy: when the first failing n is the last masked
  # slot (n = m) it commits all m instead of m - 1.  Ineligible slots give (n + 1) * inf, which always fails.
  passes = (n + 1.0) * (1.0 - ranked) < f  # [B, N]
  count = jnp.sum(jnp.cumprod(passes.astype(jnp.int32), axis=-1), axis=-1)  # [B]
  return jnp.maximum(count, 1).astype(jnp.int32)


class _ParallelBase(AdaptiveSampler):
  """Shared proposal of the rules that commit >= 1 slot per step until the block is full.

  Subclasses are frozen dataclasses that declare `temperature` themselves (so their own settings come first).
  """

  def _propose(self, view: View, key: jax.Array):
    """x0 [B, Bk] (Gumbel-max at `temperature`) and its clean-softmax confidence [B, Bk]."""
    # The same key split as LowConfidence, so that with one commit per step the two agree token for token even
    # at temperature > 0 (the second key is LowConfidence's 'random' score key, unused here).
    k_sample, _ = jax.random.split(key)
    x0 = gumbel_argmax(k_sample, view.logits, self.temperature)  # [B, Bk]
    return x0, probability_of(view.logits, x0)  # [B, Bk]


@dataclasses.dataclass(frozen=True)
class Threshold(_ParallelBase):
  """Fast-dLLM threshold decoding: commit every masked slot with confidence >= tau, always the top-1 one.

  tau > 1 commits exactly one slot per step: LowConfidence with one token per step (steps == gen_length).
  """

  tau: float = 0.9
  temperature: float = 0.0

  def __post_init__(self):
    if not isinstance(self.tau, (int, float)) or not self.tau > 0:
      raise ValueError(f"{self.tau=} must be a number > 0 (tau > 1 means one token per step)")
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "threshold"

  def step(self, view: View, block: BlockState, carry, key):
    x0, conf = self._propose(view, key)
    return x0, threshold_commit(conf, block.masked, self.tau), carry


@dataclasses.dataclass(frozen=True)
class Factor(_ParallelBase):
  """Fast-dLLM factor decoding: commit the n most confident masked slots, n the largest with (n+1)(1 - c_(n)) < f.

  With f = 1 the 2nd slot needs c > 2/3, the 3rd c > 3/4, the 4th c > 4/5, ...; at least one slot per step.
  """

  f: float = 1.0
  temperature: float = 0.0

  def __post_init__(self):
    if not isinstance(self.f, (int, float)) or not self.f > 0:
      raise ValueError(f"{self.f=} must be a number > 0")
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "factor"

  def step(self, view: View, block: BlockState, carry, key):
    x0, conf = self._propose(view, key)
    k = factor_count(conf, block.masked, self.f)  # [B]
    return x0, topk_per_row(conf, k, block.masked), carry
