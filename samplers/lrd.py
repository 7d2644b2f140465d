"""LRD, latent refinement decoding (Zhu et al., arXiv 2510.11052): refine a soft belief over the block, then
decode it one lowest-entropy slot at a time while the rest stay soft, stopping once the belief stops moving.

No reference code is public (the paper's supplement only), so the paper is the reference; ../shared/research/
samplers_core.md §7 has the equations.  Per block (the paper's semi-autoregressive variant, its Appendix C):

Soft input (Eq. 3-4).  A still-masked slot i is fed e~_i = (1 - a_i) e[MASK] + a_i sum_{v in T_p(i)} p~_i(v) e_v,
  with T_p(i) the top-p nucleus (p = 0.9) of its current distribution p_i, p~ renormalised over it, and
  a_i = r_f (1 - H(p_i) / log V), the entropy normalised over the full vocabulary: confident slots carry more
  token information.  This is `Decision.soft` = (1 - a) onehot(MASK) + a p~, mixed by the engine.
Phase 1, latent refinement (no commits): the block's first forward sees hard masks; every forward after it sees
  the beliefs built from the one before.  D_t = mean over the block's masked slots of KL(p_t || p_{t-1}); the
  phase ends after the forward with D_t < tau_refine, or after T_refine forwards.
Phase 2, predictive feedback: each forward commits the argmax at the `per_step` lowest-entropy masked slots
  (the paper: one, Eq. 7) and rebuilds the other slots' beliefs; once D between two consecutive phase-2 forwards
  falls below tau_decode, that forward commits the argmax at every remaining masked slot of the block (the
  early stop, the paper's main source of speed).

Choices where the paper is ambiguous (each tested in tests/test_soft_inputs.py):
- a_i uses (1 - H^) as in Eq. 4; Appendix D writes r_f H^, which would give uncertain slots the most token
  information, against the stated intent.  H is the entropy over the vocabulary the engine shows (the mask id
  is banned, so it has probability 0), normalised by log V with V the full vocabulary size.
- Eq. 6 writes KL(p_t || p_{t+1}); we use KL(p_t || p_{t-1}) (the new distribution against the previous one),
  averaged over the slots masked at this step.
- The early stop emits the argmax of the current distribution at the remaining slots of the block (the paper
  does not say what it emits); in a block of the semi-autoregressive variant decoding then moves to the next
  block, which starts again with phase 1.
- Phase 2's KL compares consecutive *phase-2* forwards: comparing its first forward with the last refinement
  forward would stop at once whenever refinement converged (both fall below 0.1 together), committing the whole
  block from the refined belief in one step, which is not the paper's feedback loop.
- The forward at which phase 1 converges commits nothing (the paper's phase 2 starts with a new forward).
r_f = 0 feeds exactly the mask embedding, so the soft path is then token-for-token the hard-input algorithm.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, Decision, View
from dlm.kernels.head import LOGITS
from dlm.samplers.base import Sampler, check_number, check_positive_int, topk_per_row


def nucleus(probs: jax.Array, top_p: float) -> jax.Array:
  """The top-p nucleus of each distribution, renormalised.  probs [..., V] -> [..., V].

  Keeps the most probable tokens up to and including the first at which the cumulative mass reaches top_p (the
  usual rule of HF's TopPLogitsWarper, ties in probability broken toward the lower id); top_p = 1 keeps all.
  """
  order = jnp.argsort(-probs, axis=-1, stable=True)
  sorted_p = jnp.take_along_axis(probs, order, axis=-1)
  before = jnp.cumsum(sorted_p, axis=-1) - sorted_p  # mass strictly before each token in the order
  keep_sorted = before < top_p
  keep = jnp.take_along_axis(keep_sorted, jnp.argsort(order, axis=-1, stable=True), axis=-1)  # back to id order
  kept = jnp.where(keep, probs, 0.0)
  return kept / jnp.maximum(kept.sum(-1, keepdims=True), 1e-30)


def mean_kl(logp: jax.Array, logq: jax.Array, where: jax.Array) -> jax.Array:
  """Mean over the `where` slots of KL(p || q).  logp, logq [B, N, V] (banned tokens -inf in both), where
  [B, N] -> [B]; +inf for a row with no such slot."""
  p = jnp.exp(logp)
  kl = jnp.sum(jnp.where(p > 0, p * (logp - logq), 0.0), axis=-1)  # [B, N]
  n = where.sum(-1)
  return jnp.where(n > 0, jnp.sum(jnp.where(where, kl, 0.0), -1) / jnp.maximum(n, 1), jnp.inf)


@dataclasses.dataclass(frozen=True)
class LatentRefinement(Sampler):
  """LRD (module docstring): soft-belief refinement, then lowest-entropy feedback decoding with a KL early stop.
  Defaults are the paper's: T_refine 20, tau_refine = tau_decode = 0.1, top-p 0.9, one commit per step, greedy;
  r_f = 0.15, the middle of its recommended [0.1, 0.2]."""

  r_f: float = 0.15  # maximum share of the token mixture in a soft input (0: hard masks, the baseline)
  top_p: float = 0.9  # nucleus of the mixture
  refine_steps: int = 20  # T_refine: at most this many phase-1 forwards per block (0: no refinement)
  tau_refine: float = 0.1  # phase 1 ends once the mean KL between consecutive beliefs falls below this
  tau_decode: float = 0.1  # phase 2 commits the rest of the block once the mean KL falls below this
  per_step: int = 1  # slots committed per phase-2 forward, lowest entropy first (the paper: 1)

  soft_inputs = True

  def __post_init__(self):
    check_number("r_f", self.r_f, 0, 1)
    check_number("top_p", self.top_p, 0, 1, open_lo=True)
    if isinstance(self.refine_steps, bool) or not isinstance(self.refine_steps, int) or self.refine_steps < 0:
      raise ValueError(f"refine_steps={self.refine_steps!r} must be an int >= 0")
    check_number("tau_refine", self.tau_refine, 0)
    check_number("tau_decode", self.tau_decode, 0)
    check_positive_int("per_step", self.per_step)

  @property
  def family(self):
    return "lrd"

  @property
  def head_request(self):
    return LOGITS  # the nucleus and the KL need the whole distribution

  def max_nfe(self, gen_length, block_length):
    return (gen_length // block_length) * self.refine_steps + gen_length

  def init(self, batch, block_length, vocab_size=0):
    return dict(logp=jnp.zeros((batch, block_length, vocab_size), jnp.float32),
                phase=jnp.zeros((batch,), jnp.int32), refined=jnp.zeros((batch,), jnp.int32),
                has_prev=jnp.zeros((batch,), bool))

  def step(self, view: View, block: BlockState, carry, key):
    del key
    logp = jax.nn.log_softmax(view.logits.astype(jnp.float32), axis=-1)  # [B, Bv, V]; banned ids -inf
    p = jnp.exp(logp)
    masked = block.block_masked  # [B, Bv]
    entry = block.step == 0
    phase = jnp.where(entry, jnp.int32(0 if self.refine_steps > 0 else 1), carry["phase"])  # [B]
    refined = jnp.where(entry, 0, carry["refined"])
    has_prev = jnp.where(entry, False, carry["has_prev"])
    drift = jnp.where(has_prev, mean_kl(logp, carry["logp"], masked), jnp.inf)  # [B]
    entropy = -jnp.sum(jnp.where(p > 0, p * logp, 0.0), axis=-1)  # [B, Bv]

    refining = phase == 0
    refined = refined + refining
    converged = refining & ((drift < self.tau_refine) | (refined >= self.refine_steps))
    decoding = phase == 1
    stop = decoding & (drift < self.tau_decode)
    lowest = topk_per_row(-entropy, jnp.full(masked.shape[:1], self.per_step), masked)
    commit = decoding[:, None] & jnp.where(stop[:, None], masked, lowest)
    tokens = jnp.argmax(logp, axis=-1).astype(jnp.int32)

    vocab = logp.shape[-1]
    alpha = self.r_f * (1.0 - entropy / math.log(vocab))  # [B, Bv]
    belief = nucleus(p, self.top_p)
    mask_share = jax.nn.one_hot(block.mask_id, vocab, dtype=jnp.float32)
    soft = (1.0 - alpha)[..., None] * mask_share + alpha[..., None] * belief  # [B, Bv, V]

    carry = dict(logp=logp, phase=jnp.where(converged, 1, phase).astype(jnp.int32),
                 refined=refined.astype(jnp.int32), has_prev=~converged)
    return Decision(tokens=tokens, commit=commit, soft=soft), carry
