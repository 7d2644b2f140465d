"""Iteration smoothing (dInfer's "SoftDiff"; inclusionAI/dInfer `decoding/generate_uniform.py` `IterationSmooth`
with `ThresholdParallelDecoder`, and `H2Embed` in its model files): threshold decoding whose still-masked slots
are fed the previous iteration's prediction as a soft input.

At iteration t of the generation (t counts the row's forwards from 0, across blocks, as dInfer's `iter_no`):
  w_t   = min(w_0 + growth * t, w_max)         (dInfer cont_weight_init 0.15, cont_weight_growth 0.02, cont_weight 0.3)
  tau_t = max(1 - decay * t, tau)             (threshold_decay 0.02: the first iterations commit only the top-1)
  commit every masked slot of the block with confidence >= tau_t, always the most confident one;
  each slot still masked afterwards is next fed  E[MASK] + w_t * softmax(logits / T_e) @ E  (T_e = 1):
  the mask embedding *plus* a weighted expected token embedding (not a convex mixture, unlike LRD).
This is `Decision.soft` = onehot(MASK) + w_t * softmax(logits / T_e).

Span.  dInfer's no-cache path rebuilds the soft inputs of every masked slot of the canvas from the full logits,
so the blocks ahead are fed beliefs too: `span="answer"` (the default, cache 'none') does that.  With a KV
cache dInfer rebuilds them for the active block only (dual) or from the block on (prefix; at a refresh, the whole
canvas); `span="block"` feeds the active block only and runs with every cache policy.  The difference from dInfer
under a cache: beliefs of slots after the block are not fed at a refresh.

Forwards per check (dInfer's `BlockRunner`, on by default).  dInfer runs k = max(min(masked // expected_tpf,
maximum_unroll), 1) forwards back to back (masked: the block's masked slots; expected_tpf 8, maximum_unroll 4)
and only then checks whether the block is done, so forwards after the block completes still run: they commit
nothing but advance t (shifting the weight and threshold schedules) and rebuild the beliefs, and the next block
starts from those.  dlm holds the finished block open (`Decision.hold`) for the rest of the group, each such
forward charged as an NFE; `maximum_unroll=1` checks after every forward (dlm's rule before, and the README's
figures).  dInfer counts the masked slots over the batch; dlm per row, so a row decodes as it would alone.

Where dlm differs from the code: the threshold tie rule is Fast-dLLM's (>= tau_t, always the top-1), not
dInfer's `conf >= min(tau_t, max conf - 1e-5)` (which also commits slots within 1e-5 of the top-1), as for
every threshold sampler here; the mask id is banned in the softmax that forms the belief (dInfer includes its
logit, which trained models give ~zero mass); t counts the row's own forwards, so each row decodes as it would
alone (dInfer's counter is per batch).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, Decision, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import AdaptiveSampler, check_number, check_positive_int
from dlm.samplers.threshold import threshold_commit

SPANS = ("answer", "block")


@dataclasses.dataclass(frozen=True)
class IterationSmoothing(AdaptiveSampler):
  """dInfer's iteration smoothing with its threshold decoder (module docstring); defaults are dInfer's."""

  tau: float = 0.9
  w_max: float = 0.3  # dInfer cont_weight
  w_init: float = 0.15  # dInfer cont_weight_init
  w_growth: float = 0.02  # dInfer cont_weight_growth
  decay: float = 0.02  # dInfer threshold_decay
  belief_temperature: float = 1.0  # H2Embed tau
  temperature: float = 0.0
  span: str = "answer"
  maximum_unroll: int = 4  # dInfer BlockRunner: at most this many forwards before the block is checked
  expected_tpf: int = 8  # dInfer BlockRunner: forwards in a group = masked slots // expected_tpf, in [1, max]

  soft_inputs = True

  def __post_init__(self):
    check_number("tau", self.tau, 0, open_lo=True)
    for name in ("w_max", "w_init", "w_growth", "decay", "temperature"):
      check_number(name, getattr(self, name), 0)
    check_number("belief_temperature", self.belief_temperature, 0, open_lo=True)
    check_positive_int("maximum_unroll", self.maximum_unroll)
    check_positive_int("expected_tpf", self.expected_tpf)
    if self.span not in SPANS:
      raise ValueError(f"span={self.span!r}; expected one of {SPANS} ('block' for the KV-cache policies)")

  @property
  def view_span(self):
    return self.span

  @property
  def family(self):
    return "smoothing"

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=self.temperature, logits=True)

  def max_nfe(self, gen_length, block_length):
    # >= 1 commit per forward, plus at most maximum_unroll - 1 forwards held after each block completes
    return gen_length + (self.maximum_unroll - 1) * (gen_length // block_length)

  def init(self, batch, block_length, vocab_size=0):
    del block_length, vocab_size
    zeros = jnp.zeros((batch,), jnp.int32)
    # t: forwards this row has taken (dInfer's iter_no); left: forwards left in the current group
    return dict(t=zeros, left=zeros)

  def step(self, view: View, block: BlockState, carry, key):
    del key
    t = carry["t"].astype(jnp.float32)  # [B]
    weight = jnp.minimum(self.w_init + self.w_growth * t, self.w_max)  # [B]
    tau_t = jnp.maximum(1.0 - self.decay * t, self.tau)  # [B]
    conf = view.sample_prob  # [B, Bv]
    commit = threshold_commit(conf, block.block_masked, tau_t[:, None])
    vocab = view.logits.shape[-1]
    probs = jax.nn.softmax(view.logits.astype(jnp.float32) / self.belief_temperature, axis=-1)  # [B, Bv, V]
    soft = jax.nn.one_hot(block.mask_id, vocab, dtype=jnp.float32) + weight[:, None, None] * probs
    group = jnp.clip(block.block_masked.sum(-1) // self.expected_tpf, 1, self.maximum_unroll)  # [B]
    left = jnp.where(carry["left"] > 0, carry["left"], group) - 1  # this forward is one of the group
    left = jnp.where(block.active, left, carry["left"]).astype(jnp.int32)
    finished = ~jnp.any(block.block_masked & ~commit, axis=-1)  # [B] the block has no masks after this step
    hold = block.active & finished & (left > 0)  # the group's remaining forwards still run
    carry = dict(t=carry["t"] + block.active, left=jnp.where(finished & ~hold, 0, left).astype(jnp.int32))
    return Decision(tokens=view.sample, commit=commit, soft=soft, hold=hold), carry
