"""KLASS: KL-adaptive stability sampling (Kim, Hong, Jung, Park, Yun, arXiv 2511.05664; shkim0116/KLASS).

Paper and code (`src/model/llada_klass.py`, `stable_confident_decode` with alg="klass").  Per step, with
p_t = softmax(logits) at every slot and x0 = argmax:
- keep, per slot, the last H = `history` values of KL(p_t || p_{t-1}) (the code: sum p_t (log(p_t + 1e-12) -
  log(p_{t-1} + 1e-12)), with p_{-1} = 0 before the first forward, which makes the first KL huge);
- a masked slot of the active block is *ready* when its confidence p_t(x0) > `conf_threshold` and, once the block
  has run H steps (step >= H - 1), all its last H KLs are < `kl_threshold`;
- commit every ready slot ("all", the code's default unmask_strategy); if a row has none, fall back to LLaDA's
  low-confidence rule: the top-k by confidence with k from LLaDA's even split of the block's steps.
Defaults are the code's argparse defaults: conf_threshold 0.9, kl_threshold 0.01, history 2 (its GSM8K script
uses 0.6 / 0.015 with block 64 and steps = gen_length).

Where dlm differs, and why:
- The code keeps p_{t-1} for the whole canvas, so the first step of block b > 0 compares against the last step of
  block b - 1.  Our view is the active block, so p_{t-1} restarts at 0 on block entry: blocks after the first
  need one more step before a slot can be stable (block 0 is identical).  Keeping a [B, G, V] history instead
  would cost G/Bk times the memory of the [B, Bk, V] carry we hold.
- At T > 0 the code takes the softmax of `add_gumbel_noise`'s output (exp(logits) / E^T, not logits), a
  distribution that is neither the model's nor the sampler's; we keep the clean softmax for confidence and KL and
  draw x0 by Gumbel-max at T.  At T = 0 (the paper's setting) the two agree.
- When stable commits lag behind the even split, the code can end a block's step budget with masks left (they
  stay masked forever); we commit what is left at the block's last step.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.samplers.base import FixedStepsSampler, check_number, check_positive_int, gumbel_argmax, topk_per_row
from dlm.samplers.llada import even_split_count

_EPS = 1e-12  # the code's KL smoothing


@dataclasses.dataclass(frozen=True)
class Klass(FixedStepsSampler):
  """KLASS (module docstring): commit confident slots whose predictive distribution stopped moving."""

  steps: int = 64
  conf_threshold: float = 0.9
  kl_threshold: float = 0.01
  history: int = 2
  temperature: float = 0.0

  def __post_init__(self):
    check_positive_int("steps", self.steps)
    check_positive_int("history", self.history)
    check_number("conf_threshold", self.conf_threshold, 0, 1)
    check_number("kl_threshold", self.kl_threshold, 0)
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "klass"

  def init(self, batch, block_length, vocab_size=0):
    # p_prev [B, Bk, V]: zeros mark "no previous step"; kl [B, Bk, H]: the last H KLs, newest last.
    return dict(kl=jnp.zeros((batch, block_length, self.history), jnp.float32),
                p_prev=jnp.zeros((batch, block_length, vocab_size), jnp.float32))

  def step(self, view: View, block: BlockState, carry, key):
    k_sample, _ = jax.random.split(key)
    logits = view.logits  # [B, Bk, V]
    p = jax.nn.softmax(logits.astype(jnp.float32), axis=-1)  # [B, Bk, V]
    x0 = gumbel_argmax(k_sample, logits, self.temperature)  # [B, Bk]
    conf = jnp.take_along_axis(p, x0[..., None], axis=-1)[..., 0]  # [B, Bk]
    p_prev = jnp.where(block.step == 0, 0.0, carry["p_prev"])  # a new block: no previous prediction for its slots
    kl = jnp.sum(p * (jnp.log(p + _EPS) - jnp.log(p_prev + _EPS)), axis=-1)  # [B, Bk]
    history = jnp.concatenate([carry["kl"][..., 1:], kl[..., None]], axis=-1)  # [B, Bk, H]
    stable = jnp.all(history < self.kl_threshold, axis=-1) & (block.step >= self.history - 1)
    ready = stable & (conf > self.conf_threshold) & block.masked  # [B, Bk]
    spb = self.steps // block.num_blocks
    k = even_split_count(block.entry_masked, block.step, spb)
    fallback = topk_per_row(conf, k, block.masked)
    commit = jnp.where(ready.any(-1, keepdims=True), ready, fallback)
    commit = commit | (block.masked & (block.step >= spb - 1))  # the block's last step: everything left
    return x0, commit, dict(kl=history, p_prev=p)
