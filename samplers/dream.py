"""Dream's sampling rules (HKUNLP/Dream `diffusion_generate`): origin, maskgit_plus, topk_margin, entropy.

Every step draws a proposal x0 at each slot from Dream's *tempered and filtered* distribution (logits / T, then
top-p, then top-k; greedy at T = 0), and

- 'origin' reveals each masked slot independently with probability 1 - s/t (the true reverse step of the linear
  schedule on the grid linspace(1, eps, steps + 1); probability 1 at the last step);
- the other algorithms score each slot by a confidence of that same distribution (unlike LLaDA, whose confidence
  uses the clean softmax) and commit the n highest, n = int(mean_masked * (1 - s/t)), every remaining slot at
  the last step (`dlm.schedules.dream_count`).  With `alg_temp` > 0 the order is sampled instead: n slots drawn
  without replacement with probability softmax(conf / alg_temp).

Blocks.  Dream's sampler is global (one block).  With several blocks we run it per block with the steps split
evenly, each block on its own grid linspace(1, eps, steps / num_blocks + 1).  Only that time grid matches
Fast-dLLM's block version of the Dream sampler (`generation_utils_block.py`); it is not that sampler: Fast-dLLM
also force-commits each block's first slot from the block-entry pass (needed there because its cached step
cannot predict slot s, see dlm/engine/cache.py; our windows start at s - 1 instead) and always ranks by entropy
or a threshold, whatever `alg` says.  Dream's logit shift (slot i predicted from the output at i - 1) is done by
the engine.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.samplers.base import (FixedStepsSampler, check_number, check_positive_int, exponential_hires, gumbel_argmax,
                               topk_per_row)
from dlm.schedules import dream_count, uniform_grid


def filter_logits(logits: jax.Array, temperature: float, top_p: float | None, top_k: int | None) -> jax.Array:
  """Dream's proposal distribution as logits: divide by T (if > 0), then top-p, then top-k.  [..., V] -> [..., V].

  Removed tokens get -inf (Dream fills the float minimum; the softmax is the same).
  """
  logits = logits.astype(jnp.float32)
  if temperature > 0:
    logits = logits / temperature
  if top_p is not None and top_p < 1:
    # Keep the smallest set of most likely tokens whose mass reaches top_p: sorted token j stays while the mass
    # of the tokens before it is <= top_p (Dream's "shift by one", so the token crossing top_p is kept).  We cut
    # at a logit value, so a tie with the last kept token is kept too (Dream's sort order would break it).
    ranked = -jnp.sort(-logits, axis=-1)  # [..., V] descending
    probs = jax.nn.softmax(ranked, axis=-1)
    mass_before = jnp.cumsum(probs, axis=-1) - probs  # [..., V]
    kept = jnp.sum(mass_before <= top_p, axis=-1, keepdims=True)  # [..., 1] >= 1
    cutoff = jnp.take_along_axis(ranked, kept - 1, axis=-1)  # [..., 1]
    logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
  if top_k is not None:
    k = min(top_k, logits.shape[-1])
    cutoff = jax.lax.top_k(logits, k)[0][..., -1:]  # [..., 1] the k-th largest logit
    logits = jnp.where(logits >= cutoff, logits, -jnp.inf)
  return logits


# Confidences, each from the filtered distribution `probs` [..., V] and the proposal x0 [...]: larger = surer.

def maskgit_plus_confidence(probs: jax.Array, x0: jax.Array) -> jax.Array:
  """Probability of the proposal (the top-1 probability at T = 0)."""
  return jnp.take_along_axis(probs, x0[..., None], axis=-1)[..., 0]


def topk_margin_confidence(probs: jax.Array, x0: jax.Array) -> jax.Array:
  """Top-1 minus top-2 probability (of the distribution, whatever x0 was drawn)."""
  del x0
  top2 = jax.lax.top_k(probs, 2)[0]  # [..., 2]
  return top2[..., 0] - top2[..., 1]


def entropy_confidence(probs: jax.Array, x0: jax.Array) -> jax.Array:
  """Negative entropy, sum_v p log(p + 1e-10) (Dream's epsilon keeps p = 0 finite)."""
  del x0
  return jnp.sum(probs * jnp.log(probs + 1e-10), axis=-1)


CONFIDENCES = {
    "maskgit_plus": maskgit_plus_confidence,
    "topk_margin": topk_margin_confidence,
    "entropy": entropy_confidence,
}
ALGS = ("origin", *CONFIDENCES)


@dataclasses.dataclass(frozen=True)
class DreamSampler(FixedStepsSampler):
  """Dream's `diffusion_generate` rules, per block.

  steps: denoising steps for the whole answer (split evenly over the blocks).
  alg: 'maskgit_plus' | 'topk_margin' | 'entropy' (confidence-ordered) or 'origin' (ancestral).  A string, as in
    Dream's API, so that settings read the same; each confidence is its own function above.
  temperature, top_p, top_k: the proposal distribution (and the confidence's).
  alg_temp: None or 0 -> commit the n most confident; > 0 -> draw the n slots without replacement from
    softmax(conf / alg_temp).
  eps: end of the time grid linspace(1, eps, steps_per_block + 1).
  """

  steps: int = 64
  alg: str = "maskgit_plus"
  temperature: float = 0.0
  top_p: float | None = None
  top_k: int | None = None
  alg_temp: float | None = None
  eps: float = 1e-3

  def __post_init__(self):
    check_positive_int("steps", self.steps)
    if self.alg not in ALGS:
      raise ValueError(f"{self.alg=}; expected one of {ALGS}")
    check_number("temperature", self.temperature, 0)
    if self.top_p is not None and not 0 < self.top_p <= 1:
      raise ValueError(f"{self.top_p=} must be None or in (0, 1]")
    if self.top_k is not None and (isinstance(self.top_k, bool) or not isinstance(self.top_k, int)
                                   or self.top_k < 1):
      raise ValueError(f"{self.top_k=} must be None or a positive int")
    if self.alg_temp is not None and not self.alg_temp >= 0:
      raise ValueError(f"{self.alg_temp=} must be None or >= 0")
    if not 0 < self.eps < 1:
      raise ValueError(f"{self.eps=} must lie in (0, 1)")

  @property
  def family(self):
    return f"dream_{self.alg}"

  def step(self, view: View, block: BlockState, carry, key):
    k_tok, k_order, k_reveal = jax.random.split(key, 3)
    spb = self.steps // block.num_blocks
    last = block.step >= spb - 1  # [] the block's last step: everything left is committed
    logits = filter_logits(view.logits, self.temperature, self.top_p, self.top_k)  # [B, Bk, V]
    # Dream samples from the already tempered probabilities, so the Gumbel-max runs at temperature 1.
    x0 = gumbel_argmax(k_tok, logits, 1.0 if self.temperature > 0 else 0.0)  # [B, Bk]

    if self.alg == "origin":
      grid = uniform_grid(spb, self.eps)  # [spb + 1]
      i = jnp.clip(block.step, 0, spb - 1)
      p = jnp.where(last, 1.0, 1.0 - grid[i + 1] / grid[i])  # (alpha_s - alpha_t)/(1 - alpha_t), alpha = 1 - t
      reveal = jax.random.uniform(k_reveal, x0.shape) < p  # [B, Bk]
      return x0, reveal & block.masked, carry

    conf = CONFIDENCES[self.alg](jax.nn.softmax(logits, axis=-1), x0)  # [B, Bk]
    # Dream uses one count for the whole batch, from the batch-mean number of masks (mask.sum() / B).  Its rows
    # all start with the same masks and commit the same n each step, so the mean equals every row's count; we
    # average over the rows still decoding this block so that a row that ended (end-of-text stop) does not
    # drag the count of the others down.
    counts = jnp.where(block.active, block.masked.sum(-1), 0)  # [B]
    mean_masked = counts.sum().astype(jnp.float32) / jnp.maximum(block.active.sum(), 1).astype(jnp.float32)
    n = dream_count(mean_masked, block.step, spb, self.eps)  # [] int32, 0 is possible (Dream's floor)
    n = jnp.where(last, block.block_length, n)
    if self.alg_temp:
      # Gumbel-top-n on conf / alg_temp is an exact draw of n slots without replacement from
      # softmax(conf / alg_temp) over the masked slots (Dream's torch.multinomial(..., replacement=False)).
      score = conf / self.alg_temp - jnp.log(exponential_hires(k_order, conf.shape))
    else:
      score = conf
    k = jnp.full(conf.shape[:1], n, jnp.int32)  # [B]
    return x0, topk_per_row(score, k, block.masked), carry
