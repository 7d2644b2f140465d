"""PC-Sampler: position-aware, frequency-calibrated confidence (Huang et al., arXiv 2508.13021; NEUIR/PC-Sampler
`src/generate.py::generate_with_pc_sampler` and `pc_sampler_function`).

LLaDA's semi-autoregressive loop (the even split of `steps` per block, the top-k of a score), with the score of
a masked slot i of the block, proposing x0 with clean probability p:

    score_i = exp(-lambd * i) * min(-p * log(f(x0) + 1e-9), alpha)

f is the token's frequency in a reference corpus (`baseline`, a `P_baseline.json` table: dlm.io.token_freq;
`dlm token-freq` builds one), so frequent, uninformative tokens (spaces, punctuation, end of text) are held back
early, and exp(-lambd i) favours slots near the start.  The reference's published settings: lambd = 0.25,
alpha = 10, a single block of the whole answer with steps = answer length (lambd = 0 for Sudoku, 0.5 for
Countdown); those are the defaults here except the block, which is the caller's.

Where dlm differs from the reference code: i counts from the active block's first slot (the code's `positions`
restart in every block; the paper writes i - |prompt|, the same when the block is the whole answer); without a
`baseline` the calibration is off (score = exp(-lambd i) p, the paper's "w/o calibration" ablation) where the
reference cannot run; p is the float32 clean softmax with the mask id banned (the reference: the softmax in the
model's dtype, mask column included); ties go to the lower slot; rows are batched (the reference: batch 1).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.io.token_freq import read_table
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import FixedStepsSampler, check_number, check_positive_int, topk_per_row
from dlm.samplers.llada import even_split_count


def calibrated_score(prob, freq, lambd: float, alpha: float | None):
  """PC-Sampler's score of the block's slots: prob [B, N] clean probability of the proposal, freq [B, N] its
  corpus frequency (None: no calibration).  -> [B, N]."""
  bias = jnp.exp(-lambd * jnp.arange(prob.shape[-1], dtype=jnp.float32))  # [N]
  if freq is None:
    return bias * prob
  return bias * jnp.minimum(-prob * jnp.log(freq + 1e-9), alpha)


def frequency_of(tokens, ids, freq, default):
  """Look tokens [...] up in a sorted sparse table (ids [K] ascending, freq [K]); absent ids get `default`."""
  at = jnp.clip(jnp.searchsorted(ids, tokens), 0, ids.shape[0] - 1)
  return jnp.where(ids[at] == tokens, freq[at], default)


@dataclasses.dataclass(frozen=True)
class PCSampler(FixedStepsSampler):
  """PC-Sampler (module docstring): LLaDA's top-k per step by the position-aware calibrated confidence."""

  steps: int = 64
  lambd: float = 0.25
  alpha: float = 10.0
  baseline: str = ""  # a token frequency table file, or "testbed" (dlm.io.token_freq); "": no calibration
  temperature: float = 0.0

  def __post_init__(self):
    check_positive_int("steps", self.steps)
    check_number("lambd", self.lambd, 0)
    check_number("alpha", self.alpha, 0, open_lo=True)
    check_number("temperature", self.temperature, 0)
    if not isinstance(self.baseline, str):
      raise ValueError(f"baseline={self.baseline!r} must be a path to a token frequency table or ''")
    if self.baseline:
      read_table(self.baseline)  # a missing or malformed table fails here, in one line

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=self.temperature)

  @property
  def family(self):
    return "pc_sampler"

  def default_params(self, gen_length, block_length):
    del gen_length, block_length
    if not self.baseline:
      return None
    ids, freq, default = read_table(self.baseline)
    return dict(ids=jnp.asarray(ids), freq=jnp.asarray(freq), default=jnp.asarray(default))

  def step(self, view: View, block: BlockState, carry, key):
    del key  # the sample comes from the step key's head half
    x0, prob = view.sample, view.sample_prob  # [B, Bk]
    table = view.params
    freq = None if not table else frequency_of(x0, table["ids"], table["freq"], table["default"])
    score = calibrated_score(prob, freq, self.lambd, self.alpha)
    k = even_split_count(block.entry_masked, block.step, self.steps // block.num_blocks)
    return x0, topk_per_row(score, k, block.block_masked), carry
