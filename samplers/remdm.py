"""ReMDM: remasking discrete diffusion (Wang, Schiff, Sahoo, Kuleshov, arXiv 2503.00307, NeurIPS 2025;
kuleshov-group/remdm `diffusion.py::_ddpm_caching_update`).

MDLM's reverse step on the log-linear schedule alpha(t) = 1 - t, over the time grid linspace(1, eps, steps + 1)
per block, with a remasking rate sigma_t: going from t to s,
- a committed slot returns to the mask with probability sigma_t (otherwise it keeps its token: the SUBS
  parameterisation's carry-over, which the reference gets from its network);
- a masked slot is revealed with probability (alpha_s - (1 - sigma_t) alpha_t) / (1 - alpha_t), with a token drawn
  from p_theta(x0 | x_t) (nucleus `top_p`, then temperature), else stays masked.
Strategies for sigma_t (`strategy`):
- "cap":     sigma = min(eta, (1 - alpha_s) / alpha_t)   (eta when alpha_t = 0)
- "rescale": sigma = eta * min(1, (1 - alpha_s) / alpha_t)
- "conf":    sigma_i = softmax_i(score) * min(1, (1 - alpha_s) / alpha_t), score_i = -p(token_i) at the step slot
             i was revealed (-inf while masked), so the least confident reveals are remasked first
- "loop":    alpha rises linearly from 0 to alpha_on over t in [1, t_on] and from alpha_on to 1 over [t_off, 0]
             with plain MDLM steps there; between t_on and t_off alpha stays at alpha_on and sigma = eta
             (reveal probability eta * alpha_on / (1 - alpha_on)).
eta = 0 (any strategy but conf) is MDLM's ancestral sampler: with top_p = 1 and eps = 0 it equals
`Ancestral(schedule=LogLinear(eps=0))` token for token (tested).

Defaults are the reference's remdm-cap script: eta = 0.008, top_p = 0.9, eps = 1e-5 (its `_sample`); the loop
script uses eta 0.02, t_on 0.55, t_off 0.05, alpha_on 0.9 (our defaults for those fields); rescale uses eta 0.015.

Where dlm differs, and why:
- The reference samples the unconditional canvas in one block; with several blocks we run the schedule per block
  (steps split evenly), BD3-LM style.  A block keeps its steps even when it has no masks left (the sampler holds
  the block open), since later steps may remask.
- At a block's last step every remaining masked slot is revealed and nothing is remasked.  The reference's last
  step (s = eps) reveals with probability 1 - O(eps) and then runs one more forward (`noise_removal`) to fill any
  slot still masked with the argmax; we skip that extra forward (it changes a slot with probability O(eps)).
- `cache_predictions` reuses the previous forward when nothing changed (the reference's `ddpm_cache`).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dlm.engine.state import BlockState, Decision, View
from dlm.samplers.base import FixedStepsSampler, check_number, check_positive_int, gumbel_argmax, probability_of

STRATEGIES = ("cap", "rescale", "conf", "loop")


def nucleus_logits(logits: jax.Array, top_p: float) -> jax.Array:
  """The reference's nucleus: keep sorted tokens while the cumulative probability is <= top_p (always the first),
  renormalise.  [..., V] -> [..., V] log-probabilities (-inf outside the nucleus)."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  if top_p >= 1:
    return logp
  order = jnp.argsort(-logp, axis=-1)
  sorted_logp = jnp.take_along_axis(logp, order, axis=-1)
  keep_sorted = jnp.cumsum(jnp.exp(sorted_logp), axis=-1) <= top_p
  keep_sorted = keep_sorted.at[..., 0].set(True)
  keep = jnp.put_along_axis(jnp.zeros_like(keep_sorted), order, keep_sorted, axis=-1, inplace=False)
  return jax.nn.log_softmax(jnp.where(keep, logp, -jnp.inf), axis=-1)


@dataclasses.dataclass(frozen=True)
class ReMDM(FixedStepsSampler):
  """ReMDM (module docstring): MDLM's reverse step with remasking rate sigma_t."""

  steps: int = 64
  strategy: str = "cap"
  eta: float = 0.008
  top_p: float = 0.9
  temperature: float = 1.0
  eps: float = 1e-5
  t_on: float = 0.55
  t_off: float = 0.05
  alpha_on: float = 0.9
  cache_predictions: bool = True

  def __post_init__(self):
    check_positive_int("steps", self.steps)
    if self.strategy not in STRATEGIES:
      raise ValueError(f"strategy={self.strategy!r}; expected one of {STRATEGIES}")
    check_number("eta", self.eta, 0, 1)
    check_number("top_p", self.top_p, 0, 1, open_lo=True)
    check_number("temperature", self.temperature, 0)
    check_number("eps", self.eps, 0, 1)
    check_number("alpha_on", self.alpha_on, 0, 1)
    check_number("t_on", self.t_on, 0, 1)
    check_number("t_off", self.t_off, 0, 1)
    if self.strategy == "loop" and not (0 < self.t_off < self.t_on < 1 and 0 < self.alpha_on < 1):
      raise ValueError(f"the loop strategy needs 0 < t_off < t_on < 1 and 0 < alpha_on < 1, got t_on={self.t_on}, "
                       f"t_off={self.t_off}, alpha_on={self.alpha_on}")

  @property
  def reuse_unchanged(self):
    return self.cache_predictions

  @property
  def family(self):
    return f"remdm_{self.strategy}"

  def init(self, batch, block_length, vocab_size=0):
    del vocab_size
    return jnp.full((batch, block_length), -jnp.inf, jnp.float32)  # conf strategy's scores

  def rates(self, step, steps_per_block):
    """-> (alpha_t, alpha_s, sigma) at block step `step` (sigma before the conf strategy's per-slot weights)."""
    grid = jnp.asarray(np.linspace(1.0, self.eps, steps_per_block + 1), jnp.float32)
    t, s = grid[step], grid[jnp.minimum(step + 1, steps_per_block)]
    if self.strategy == "loop":
      ramp_in = lambda u: (1.0 - u) * self.alpha_on / (1.0 - self.t_on)  # noqa: E731  alpha on [t_on, 1]
      ramp_out = lambda u: 1.0 - u * (1.0 - self.alpha_on) / self.t_off  # noqa: E731  alpha on [0, t_off]
      alpha_t = jnp.where(t > self.t_on, ramp_in(t), jnp.where(t <= self.t_off, ramp_out(t), self.alpha_on))
      alpha_s = jnp.where(t > self.t_on, ramp_in(s), jnp.where(t <= self.t_off, ramp_out(s), self.alpha_on))
      sigma = jnp.where((t > self.t_on) | (t <= self.t_off), 0.0, self.eta)
      return alpha_t, alpha_s, sigma
    alpha_t, alpha_s = 1.0 - t, 1.0 - s
    bound = jnp.where(alpha_t > 0, (1.0 - alpha_s) / jnp.maximum(alpha_t, 1e-30), 1.0)
    if self.strategy == "cap":
      sigma = jnp.where(alpha_t > 0, jnp.minimum(self.eta, bound), self.eta)
    else:  # rescale; conf scales this sigma_max per slot
      sigma = (self.eta if self.strategy == "rescale" else 1.0) * jnp.minimum(1.0, bound)
    return alpha_t, alpha_s, sigma

  def step(self, view: View, block: BlockState, carry, key):
    # Ancestral's key split and draws, so that eta = 0 reproduces it exactly; the remask draw has its own key.
    k_tok, k_reveal = jax.random.split(key)
    k_remask = jax.random.fold_in(key, 2)
    spb = self.steps // block.num_blocks
    last = block.step >= spb - 1
    logp = view.logits if self.top_p >= 1 else nucleus_logits(view.logits, self.top_p)  # [B, Bk, V]
    x0 = gumbel_argmax(k_tok, logp, self.temperature)  # [B, Bk]
    alpha_t, alpha_s, sigma = self.rates(block.step, spb)
    scores = jnp.where(block.step == 0, -jnp.inf, carry)  # [B, Bk] conf scores of committed slots
    if self.strategy == "conf":
      finite = jnp.isfinite(scores)
      weights = jax.nn.softmax(jnp.where(finite, scores, -1e30), axis=-1) * finite  # masked slots weigh 0
      sigma = weights * sigma  # [B, Bk]
    sigma = jnp.broadcast_to(jnp.where(last, 0.0, sigma), block.masked.shape)
    reveal_p = (alpha_s - (1.0 - sigma) * alpha_t) / jnp.maximum(1.0 - alpha_t, 1e-30)
    reveal_p = jnp.where(last, 1.0, jnp.clip(reveal_p, 0.0, 1.0))
    reveal = (jax.random.uniform(k_reveal, x0.shape) < reveal_p) & block.masked
    remask = (jax.random.uniform(k_remask, x0.shape) < sigma) & ~block.masked
    scores = jnp.where(reveal, -probability_of(logp, x0), jnp.where(remask, -jnp.inf, scores))
    # Hold the block open for its remaining steps only when a later step can remask something.
    can_remask = self.strategy in ("conf", "loop") or self.eta > 0
    hold = block.active & ~last & can_remask
    return Decision(tokens=x0, commit=reveal, remask=remask, hold=hold), scores
