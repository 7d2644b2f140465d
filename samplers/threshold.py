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
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import AdaptiveSampler, check_number, topk_per_row


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


FACTOR_RULES = ("fast_dllm", "paper")


def factor_count(conf: jax.Array, eligible: jax.Array, f: float, rule: str = "fast_dllm") -> jax.Array:
  """The factor rule's per-row commit count -> [B] int32 (at least 1 where a row has an eligible slot).

  c_(1) >= c_(2) >= ... >= c_(m) are the m eligible confidences sorted in descending order.

  rule="paper" (Fast-dLLM paper): the largest n with (n + 1)(1 - c_(n)) < f, at least 1.
  rule="fast_dllm" (NVlabs/Fast-dLLM `get_transfer_index_dynamic`, what its published tables ran): slot n
    passes when c_(n) >= 1 - f / (n + 1), slot 1 always passes; P = the number of leading passes; the code's
    `top_i` loop then takes one more when the first failure is the last slot or nothing fails (and when m = 1),
    so it commits m if P >= m - 1, else P.  With two masks left both are always committed.
  The two differ in the comparison (the code's ">=" is the paper's "<=" on ties) and in that quirk.
  (n + 1)(1 - c_(n)) never decreases with n, so the passing n form a prefix; the cumulative product only guards
  against float noise breaking that monotonicity.
  """
  ranked = -jnp.sort(-jnp.where(eligible, conf, -jnp.inf), axis=-1)  # [B, N] descending; ineligible -> -inf last
  n = jnp.arange(1, conf.shape[-1] + 1, dtype=jnp.float32)  # [N]
  m = eligible.sum(-1).astype(jnp.int32)  # [B]
  if rule == "paper":
    passes = (n + 1.0) * (1.0 - ranked) < f  # [B, N]; ineligible slots give inf, which fails
  else:
    passes = (ranked >= 1.0 - f / (n + 1.0)) | (n == 1.0)  # [B, N]; the code's threshs[0] = -1
    passes = passes & (jnp.arange(conf.shape[-1]) < m[:, None])
  count = jnp.sum(jnp.cumprod(passes.astype(jnp.int32), axis=-1), axis=-1)  # [B]
  if rule == "fast_dllm":
    count = jnp.where(count >= m - 1, m, count)
  return jnp.maximum(count, 1).astype(jnp.int32)


class ParallelBase(AdaptiveSampler):
  """Shared proposal of the rules that commit >= 1 slot per step until the block is full.

  Subclasses are frozen dataclasses that declare `temperature` themselves (so their own settings come first).
  """

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=self.temperature)

  def _propose(self, view: View, key: jax.Array):
    """x0 [B, Bk] (Gumbel-max at `temperature`) and its clean-softmax confidence [B, Bk]."""
    # The view's sample comes from the step key's head half, as LowConfidence's does, so that with one commit
    # per step the two agree token for token even at temperature > 0.
    del key
    return view.sample, view.sample_prob  # [B, Bk] each


@dataclasses.dataclass(frozen=True)
class Threshold(ParallelBase):
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
class Factor(ParallelBase):
  """Fast-dLLM factor decoding: commit the n most confident masked slots, n chosen by `factor_count`.

  With f = 1 the 2nd slot needs c >= 2/3, the 3rd c >= 3/4, the 4th c >= 4/5, ...; at least one slot per step.
  rule: "fast_dllm" (default) reproduces NVlabs/Fast-dLLM's `get_transfer_index_dynamic`, including its quirk of
    committing all m slots when only the last one fails (so two remaining masks are always committed together);
    "paper" is the paper's rule, the largest n with (n + 1)(1 - c_(n)) < f.
  """

  f: float = 1.0
  temperature: float = 0.0
  rule: str = "fast_dllm"

  def __post_init__(self):
    if not isinstance(self.f, (int, float)) or not self.f > 0:
      raise ValueError(f"{self.f=} must be a number > 0")
    check_number("temperature", self.temperature, 0)
    if self.rule not in FACTOR_RULES:
      raise ValueError(f"rule={self.rule!r}; expected one of {FACTOR_RULES}")

  @property
  def family(self):
    return "factor"

  def step(self, view: View, block: BlockState, carry, key):
    x0, conf = self._propose(view, key)
    k = factor_count(conf, block.masked, self.f, self.rule)  # [B]
    return x0, topk_per_row(conf, k, block.masked), carry
