"""SDAR's block-diffusion decoding rules (JetAstra/SDAR `generate.py: block_diffusion_generate` and its HF
evaluation sampler `huggingface_bd3.py`), for block-causal models; they run on any model.

Per block of B slots and S = `steps` denoising steps, step s may commit k_s = B // S + (1 if s < B % S else 0)
slots: the count comes from the block length, not from the masks the block holds (a prompt tail in the first
block finishes it sooner).  Rules (`rule`):

  dynamic     SDAR's default `low_confidence_dynamic`: if at least k_s masked slots have confidence > threshold
              (strict), commit exactly those; otherwise the k_s most confident masked slots.
  static      `low_confidence_static`: the k_s most confident masked slots.
  sequential  the k_s leftmost masked slots.

Confidence is the probability of the proposed token.  Greedy (temperature 0, the default) proposes the argmax
and scores it by its softmax probability: what SDAR's published evaluation runs (`huggingface_bd3.py` with
top_k=1, where x0_p = softmax(logits)[argmax]).  Departures from the reference code (README, known differences):
  * generate.py's confidence under top_k=1 is the *filtered* probability, always 1.0, so its dynamic rule commits
    every mask in the first step; and temperature=0 divides by zero there.  dlm's greedy is the evaluation
    sampler's.  At temperature > 0 dlm scores with the clean softmax (LLaDA's confidence), SDAR with softmax(l/T).
  * the static/dynamic fall-back never overwrites a committed slot (generate.py's top-k over `-inf` scores can
    pick unmasked slots when fewer than k_s masks remain; huggingface_bd3.py guards it the same way as here).
  * top_k / top_p filters are not offered (SDAR's evaluation runs top_k=1, i.e. greedy).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.samplers.base import check_number, check_positive_int, topk_per_row
from dlm.samplers.threshold import ParallelBase

SDAR_RULES = ("dynamic", "static", "sequential")


def sdar_transfer_count(block_length: int, steps: int, step) -> jnp.ndarray:
  """k_s = B // S + (s < B % S) (SDAR generate.py L49-54); at least 1 past the S-th step.  -> [] int32."""
  k = block_length // steps + (step < block_length % steps).astype(jnp.int32)
  return jnp.maximum(jnp.where(step < steps, k, 1), 1).astype(jnp.int32)


@dataclasses.dataclass(frozen=True)
class SDARSampler(ParallelBase):
  """SDAR block decoding: `steps` denoising steps per block, the `rule` above, `threshold` for 'dynamic'."""

  steps: int = 4  # SDAR's denoising_steps (per block); its README and evaluation use steps = block length 4
  rule: str = "dynamic"
  threshold: float = 0.85  # generate.py's default; the evaluation configs use 0.95 (and 1.0 = static)
  temperature: float = 0.0

  def __post_init__(self):
    check_positive_int("steps", self.steps)
    if self.rule not in SDAR_RULES:
      raise ValueError(f"rule={self.rule!r}; expected one of {SDAR_RULES}")
    check_number("threshold", self.threshold, 0)
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "sdar"

  def validate(self, gen_length, block_length):
    if self.steps > block_length:
      raise ValueError(f"{self.steps=} must be at most block_length={block_length} (each step commits at least "
                       f"one slot of the block)")

  def max_nfe(self, gen_length, block_length):
    return (gen_length // block_length) * self.steps

  def step(self, view: View, block: BlockState, carry, key):
    x0, conf = self._propose(view, key)  # [B, Bk] each
    masked = block.masked
    k = jnp.broadcast_to(sdar_transfer_count(block.block_length, self.steps, block.step), masked.shape[:1])
    if self.rule == "sequential":
      commit = topk_per_row(-jnp.arange(masked.shape[-1], dtype=jnp.float32)[None], k, masked)
    else:
      commit = topk_per_row(conf, k, masked)
      if self.rule == "dynamic":
        above = masked & (conf > self.threshold)
        commit = jnp.where((above.sum(-1) >= k)[:, None], above, commit)
    return x0, commit, carry
