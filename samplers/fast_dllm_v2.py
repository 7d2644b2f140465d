"""Fast-dLLM v2's decoding rule (NVlabs/Fast-dLLM `v2/generation_functions.py: batch_sample`, the hub model's
`generate`), for its block-causal model; run it with cache='block'.

Blocks of 32 (the model's block) are decoded in sub-blocks of `small_block_size` = 8, strictly in order: here
the engine's `block_length` is the sub-block and the model's block_size the block, and every step forwards the
whole block against the stored prefix (batch_sample's use_block_cache=False path, its eval default).  Each step
commits, per row, every masked slot of the sub-block whose greedy confidence softmax(logits)[argmax] is above
`threshold` (strict), plus the most confident one.  The first slot of every block after the prompt is not
diffused: it is the argmax of the output before the block (the store forward's last slot), placed before the
block's first forward (`block_start_ar`, done by the cache program).

Departures from the reference code (README, known differences):
  * a prompt of exactly one block is never encoded by the reference (its prefill needs P > block, strictly);
    dlm prefills it (the evident intent).  Other prompts are treated alike.
  * batches: batch_sample right-pads with the mask id, shares positions, prefills the shortest prompt's blocks
    only and runs one loop for the batch; dlm gives each row its own positions and blocks (a row in a batch equals
    the row alone) and `gen_length` new tokens (batch_sample gives G - the prompt tail, plus its AR token).
  * the block cache (use_block_cache=True: a sub-block forwarded alone against a cached block) is not built.
  * temperature > 0 (batch_sample samples for batch row 0 only) uses dlm's Gumbel-max sample and clean-softmax
    confidence; the left-to-right first token stays greedy.
"""

from __future__ import annotations

import dataclasses

from dlm.engine.state import BlockState, View
from dlm.samplers.base import check_number
from dlm.samplers.threshold import ParallelBase, top1_per_row


@dataclasses.dataclass(frozen=True)
class FastDLLMv2(ParallelBase):
  """Fast-dLLM v2 threshold decoding in sub-blocks (block_length = the sub-block), with its left-to-right token
  at each block start."""

  threshold: float = 0.9  # v2/eval.py and run_chatbot.py; threshold >= 1 commits one slot per step
  temperature: float = 0.0
  block_start_ar = True  # class attribute (samplers/base.py): the cache program places the block's first token

  def __post_init__(self):
    check_number("threshold", self.threshold, 0)
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "fast_dllm_v2"

  def step(self, view: View, block: BlockState, carry, key):
    x0, conf = self._propose(view, key)  # [B, Bk] each: greedy (or Gumbel-max) proposal, clean-softmax confidence
    commit = (block.masked & (conf > self.threshold)) | top1_per_row(conf, block.masked)
    return x0, commit, carry
