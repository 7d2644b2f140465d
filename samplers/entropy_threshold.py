"""dParallel's per-token entropy threshold (Chen et al., arXiv 2509.26488; czg1225/dParallel `generate.py`,
`get_transfer_index_entropy` with `threshold`): the inference half of the certainty-forcing distilled models.

Each step commits the masked slot of lowest entropy and every other masked slot whose entropy is at most `tau`
(nats; 0.5 in dParallel's evaluation, 0.45 for MBPP), with the proposal x0 drawn at `temperature` (greedy at 0).
Unlike `eb` (EB-Sampler: the *sum* of the committed entropies is bounded), the bound is per token.  The released
checkpoints (`Zigeng/dParallel-LLaDA-8B-instruct`, `d3LLM/d3LLM_LLaDA`) are LLaDA-layout networks, so they load
as they are; d3LLM's multi-block decoding with this rule is a separate sampler (not built).

Where dlm differs from the reference code: its entropy is -sum p log(p + 1e-12) in float64 over every column,
the mask id's included; here it is the clean softmax's exact entropy in float32 with the mask id banned (every
dlm view bans it; LLaDA gives it ~zero mass).  Ties in entropy go to the lower slot (torch.topk's order is
unspecified).  Batch 1 there; rows here each apply the rule to their own block.
"""

from __future__ import annotations

import dataclasses


from dlm.engine.state import BlockState, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import AdaptiveSampler, check_number
from dlm.samplers.threshold import top1_per_row


def entropy_commit(entropy, eligible, tau: float):
  """dParallel's rule: the lowest-entropy eligible slot, plus every eligible slot with entropy <= tau.
  [B, N] -> bool [B, N]."""
  return (eligible & (entropy <= tau)) | top1_per_row(-entropy, eligible)


@dataclasses.dataclass(frozen=True)
class EntropyThreshold(AdaptiveSampler):
  """Commit every masked slot whose entropy is at most `tau` nats, always the lowest-entropy one (module
  docstring).  tau < 0 commits exactly one slot per step, in entropy order."""

  tau: float = 0.5
  temperature: float = 0.0

  def __post_init__(self):
    if isinstance(self.tau, bool) or not isinstance(self.tau, (int, float)):
      raise ValueError(f"tau={self.tau!r} must be a number (entropy in nats; < 0 means one slot per step)")
    check_number("temperature", self.temperature, 0)

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=self.temperature, entropy=True)

  @property
  def family(self):
    return "entropy_threshold"

  def step(self, view: View, block: BlockState, carry, key):
    del key  # the sample comes from the step key's head half (dlm.engine.calls.head_key)
    return view.sample, entropy_commit(view.entropy, block.block_masked, self.tau), carry
