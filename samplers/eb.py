"""EB-Sampler: entropy-bounded unmasking (Ben-Hamu, Gat, Severo, Nolte, Karrer, arXiv 2505.24857).

Paper.  Sort the masked slots of the active block by an error proxy, most certain first, and commit the largest
prefix U whose entropies satisfy

    sum_{l in U} H(p_l) - max_{l in U} H(p_l) <= gamma,

so the first slot is always committed (its own entropy is excluded) and gamma = 0 commits the first slot plus
only zero-entropy slots beside it.  The proxy is the entropy itself (ascending; then the max is the last slot
and the bound is the entropy accumulated before it) or the confidence p(x0) (descending).  Tokens are x0, the
Gumbel-max sample at `temperature` (greedy at 0).

Code.  The authors' code is not public.  Two public implementations share the entropy-ordered bound (accept
while accumulated - current <= bound): google-deepmind/gemma `SampleFromPredictions` (DiffusionGemma;
`entropy_bound=0.1`, natural-log entropy, but of the temperature-annealed logits, and its process re-noises the
slots it did not select) and the DUS repository's EB baseline (the same `cumsum - cummax` form, entropy in bits
from the Gumbel-noised logits).  We follow the paper: entropy of the clean softmax in nats (`units="bits"`
divides by ln 2, which is gamma * ln 2 in nats), unselected slots stay masked; at T > 0 the entropies come from
the clean logits, not the annealed or noised ones (at T = 1 gemma's entropies are ours; at T = 0 DUS's are ours in bits).

Defaults: proxy="entropy", gamma=0.1 (gemma's), units="nats".  The paper sweeps gamma in [1e-3, 1] on LLaDA/Dream.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import AdaptiveSampler, check_number, rank_per_row

EB_PROXIES = ("entropy", "confidence")
EB_UNITS = ("nats", "bits")


def eb_commit(entropy: jax.Array, score: jax.Array, eligible: jax.Array, gamma: float) -> jax.Array:
  """The entropy bound on the eligible slots ranked by descending `score`.  [B, N] each -> bool [B, N].

  The accepted prefix is where cumsum(H) - cummax(H) <= gamma along the ranking; that quantity never decreases
  along the ranking (each step adds H_i and raises the max by at most H_i), so the test selects a prefix, and its
  first element always passes.
  """
  rank = rank_per_row(score, eligible)  # [B, N]
  order = jnp.argsort(rank, axis=-1)  # [B, N] slot at each rank
  h = jnp.take_along_axis(jnp.where(eligible, entropy, jnp.inf), order, axis=-1)  # [B, N] in rank order
  excess = jnp.cumsum(h, axis=-1) - jax.lax.cummax(h, axis=h.ndim - 1)
  count = jnp.sum((excess <= gamma) & jnp.isfinite(h), axis=-1)  # [B]
  return (rank < count[:, None]) & eligible


@dataclasses.dataclass(frozen=True)
class EntropyBounded(AdaptiveSampler):
  """EB-Sampler (module docstring): the largest prefix with sum(H) - max(H) <= gamma, at least one slot."""

  gamma: float = 0.1
  proxy: str = "entropy"
  units: str = "nats"
  temperature: float = 0.0

  def __post_init__(self):
    check_number("gamma", self.gamma, 0)
    check_number("temperature", self.temperature, 0)
    if self.proxy not in EB_PROXIES:
      raise ValueError(f"proxy={self.proxy!r}; expected one of {EB_PROXIES}")
    if self.units not in EB_UNITS:
      raise ValueError(f"units={self.units!r}; expected one of {EB_UNITS}")

  @property
  def family(self):
    return "eb"

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=self.temperature, entropy=True)

  def step(self, view: View, block: BlockState, carry, key):
    del key  # the sample is the view's (the head half of the key, as LowConfidence/Threshold)
    x0 = view.sample  # [B, Bk]
    entropy = view.entropy  # [B, Bk] nats
    if self.units == "bits":
      entropy = entropy / math.log(2.0)
    score = -entropy if self.proxy == "entropy" else view.sample_prob
    return x0, eb_commit(entropy, score, block.block_masked, self.gamma), carry
