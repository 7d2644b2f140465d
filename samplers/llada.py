"""LLaDA's reference sampler (ML-GSAI/LLaDA generate.py): low-confidence and random remasking.

Per block the `steps / num_blocks` steps commit a front-loaded even split of the block's masks
(base = m // spb, the first m % spb steps one more).  Every step samples x0 at all slots (Gumbel-max at
temperature T), scores the masked slots, and commits the k highest.  "Remasking" means keeping the
low-scoring predictions masked; committed tokens are never re-masked.

`confidence_eos_eot_inf` (LLaDA's evaluation flag for GSM8K, MATH, MBPP, HumanEval) exists in two forms:
- eos_rule="reference" (default), what ML-GSAI/LLaDA generate.py (b7e6c35, lines 94-101) computes: x0 is drawn
  first, then the chained assignment `logits_with_noise[:, :, EOS] = logits[:, :, EoT] = -inf`.  At T = 0
  `add_gumbel_noise` returns `logits` itself, so *both* end columns of `logits` become -inf before the softmax:
  an end-token proposal gets confidence 0 and every other confidence is renormalised to p / (1 - p_EOS - p_EoT).
  At T > 0 only the EoT column of `logits` is touched (LLaDA issue #137), so only EoT is renormalised away.
- eos_rule="intent": the clean confidences stay as they are and end-token proposals rank last (what PR #139
  meant: never commit end-of-text before the content).  This is not what any published LLaDA table ran.
The end columns are the model's `end_ids` (LLaDA: EOS 126081, EoT 126348); `steps > gen_length` is accepted as
LLaDA does: the extra steps of a block commit nothing, and the engine moves on once a block has no masks, so they
cost no NFE here (LLaDA's loop still runs them).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import (FixedStepsSampler, check_number, check_positive_int, gumbel_argmax, probability_of,
                               topk_per_row)


def even_split_count(entry_masked: jax.Array, step: jax.Array, steps_per_block: int) -> jax.Array:
  """LLaDA's per-step count for step `step` of a block entered with `entry_masked` [B] masks -> [B] int32."""
  base = entry_masked // steps_per_block
  return (base + (step < entry_masked % steps_per_block)).astype(jnp.int32)


EOS_RULES = ("reference", "intent")


@dataclasses.dataclass(frozen=True)
class _LLaDABase(FixedStepsSampler):
  steps: int = 64
  temperature: float = 0.0
  cfg_scale: float = 0.0
  logits_eos_inf: bool = False  # forbid <|endoftext|> entirely (LLaDA's HumanEval setting)
  confidence_eos_eot_inf: bool = False  # push end-of-text proposals back (see the module docstring)
  eos_rule: str = "reference"  # how confidence_eos_eot_inf acts: "reference" (LLaDA's code) or "intent"

  def __post_init__(self):
    check_positive_int("steps", self.steps)
    check_number("temperature", self.temperature, 0)
    if self.cfg_scale < 0:
      raise ValueError(f"{self.cfg_scale=} must be >= 0")
    if self.eos_rule not in EOS_RULES:
      raise ValueError(f"eos_rule={self.eos_rule!r}; expected one of {EOS_RULES}")

  # Whether the score reads the sample's clean probability (LowConfidence) or not (random remasking).
  _reads_confidence = True

  @property
  def head_request(self):
    # The reference eos rule bans the end columns for the confidence but not for the sample (module docstring):
    # two different distributions over the vocabulary, so that one setting reads the logits.
    if self.confidence_eos_eot_inf and self.eos_rule == "reference":
      return HeadRequest(logits=True)
    return HeadRequest(sample=True, temperature=self.temperature, ban_eos=self.logits_eos_inf)

  def _score(self, x0, conf, key):
    raise NotImplementedError

  def _reference_confidence_logits(self, logits, end_ids):
    """The logits LLaDA's softmax sees under confidence_eos_eot_inf (module docstring): [B, Bk, V]."""
    banned = end_ids if self.temperature == 0 else end_ids[1:]
    if banned:
      logits = logits.at[..., jnp.asarray(banned)].set(-jnp.inf)
    return logits

  def _from_logits(self, view: View, block: BlockState, key):
    """x0 and its confidence under the reference eos rule, from the full logits."""
    logits = view.logits  # [B, Bk, V]
    if self.logits_eos_inf:
      logits = logits.at[..., block.end_ids[0]].set(-jnp.inf)
    x0 = gumbel_argmax(key, logits, self.temperature)  # [B, Bk]
    return x0, probability_of(self._reference_confidence_logits(logits, block.end_ids), x0)

  def step(self, view: View, block: BlockState, carry, key):
    k_sample, k_score = jax.random.split(key)
    if view.logits is not None and self.confidence_eos_eot_inf and self.eos_rule == "reference":
      x0, conf = self._from_logits(view, block, k_sample)
    else:
      x0 = view.sample  # [B, Bk]
      conf = view.sample_prob if self._reads_confidence else None
    score = self._score(x0, conf, k_score)  # [B, Bk]
    if self.confidence_eos_eot_inf and self.eos_rule == "intent":
      is_end = jnp.isin(x0, jnp.asarray(block.end_ids))
      # Not -inf, which would tie with ineligible slots in top-k: end tokens stay eligible but rank last.
      score = jnp.where(is_end, -1e30, score)
    spb = self.steps // block.num_blocks
    k = even_split_count(block.entry_masked, block.step, spb)
    commit = topk_per_row(score, k, block.block_masked)
    return x0, commit, carry


@dataclasses.dataclass(frozen=True)
class LowConfidence(_LLaDABase):
  """Commit the k most confident masked slots; confidence = softmax of the *clean* logits at x0 (not tempered)."""

  def _score(self, x0, conf, key):
    del x0, key
    return conf

  @property
  def family(self):
    return "low_confidence"


@dataclasses.dataclass(frozen=True)
class RandomRemasking(_LLaDABase):
  """Commit k uniformly random masked slots (LLaDA remasking='random')."""

  _reads_confidence = False

  def _score(self, x0, conf, key):
    del conf
    return jax.random.uniform(key, x0.shape)

  @property
  def family(self):
    return "random"
