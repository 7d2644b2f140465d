"""Several blocks in flight: d3LLM's multi-block decoding (Qian et al., arXiv 2601.07568; hao-ai-lab/d3LLM
`d3llm/d3llm_LLaDA/d3llm_llada_generate_util.py::generate_multi_block`), the pipelined schedule D2F introduced,
with dParallel's per-token entropy rule.

Each step, per row, in the reference code's order:
  1. a block that was added but is not yet *activated* becomes activated once the block before it is decoded to
     at least `decoded_token_threshold` (the prompt counts as fully decoded, so the first block starts activated);
  2. one more block is added once the newest block is decoded to at least `block_add_threshold` (or has no masks
     left); it starts activated if the block before it already passed `decoded_token_threshold`;
  3. one forward; every masked slot of the added blocks is a candidate of the entropy rule: the lowest-entropy
     candidate and every candidate with entropy <= `threshold` (nats) take their proposal;
  4. the first activated block that still has masks must progress: if step 3 committed nothing in it, its
     lowest-entropy slot takes its argmax.
A block that is added but not activated ("semi-active") is decoded only by the entropy bound, never forced.
With both block thresholds at 1 this is plain blockwise entropy-threshold decoding (`entropy_threshold`).

The view is the whole answer (`view_span="answer"`, cache 'none': d3LLM's no-cache function), and each row holds
itself open with `Decision.hold` until its answer has no masks, so the engine's own block index plays no part: a
row's schedule is its own, as in the reference's batch-1 loop.

`early_stop=True` (the reference's `handle_early_stop`, off by default as in the function; d3LLM's chat demos turn
it on): once a committed EOS is on the canvas and masks remain, every slot after the first committed EOS becomes
EOS at once (even with masks before it; `Decision.truncate`), so the blocks after it count as done, and no block
is added any more.  The reference applies it at the top of the next iteration, after counting that iteration's
forward: when it leaves no mask the loop ends with one forward counted that never ran; dlm counts forwards run.

Where dlm differs from the reference code: its entropy is -sum p log(p + 1e-12) in float64 with the mask column
included (here: exact, float32, mask id banned, as `entropy_threshold`); ties go to the lower slot; its KV-cache
variant (`generate_multi_block_kv_cache`: a block's keys enter the cache `cache_delay_iter` steps after it
completes, with periodic refreshes) is not built; rows are batched (the reference: batch 1).  The defaults are
the settings of d3LLM's evaluation scripts (`block_add_threshold=0.1`, `decoded_token_threshold=0.95`,
`threshold=0.5`; the function's own defaults are 0.5 / 0.5 / 0.5).
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp

from dlm.engine.state import BlockState, Decision, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import AdaptiveSampler, check_number
from dlm.samplers.entropy_threshold import entropy_commit
from dlm.samplers.threshold import top1_per_row


@dataclasses.dataclass(frozen=True)
class MultiBlock(AdaptiveSampler):
  """d3LLM's multi-block entropy-threshold decoding (module docstring)."""

  threshold: float = 0.5
  block_add_threshold: float = 0.1
  decoded_token_threshold: float = 0.95
  temperature: float = 0.0
  early_stop: bool = False

  view_span = "answer"

  def __post_init__(self):
    check_number("threshold", self.threshold, 0)
    check_number("block_add_threshold", self.block_add_threshold, 0, 1)
    check_number("decoded_token_threshold", self.decoded_token_threshold, 0, 1)
    check_number("temperature", self.temperature, 0)
    if not isinstance(self.early_stop, bool):
      raise ValueError(f"early_stop={self.early_stop!r} must be True or False")

  @property
  def head_request(self):
    # top-1: the forced slot takes its argmax (the reference re-draws it without noise)
    return HeadRequest(sample=True, temperature=self.temperature, entropy=True, top=1)

  @property
  def family(self):
    return "multi_block"

  def init(self, batch, block_length, vocab_size=0):
    del block_length, vocab_size
    # blocks in flight so far (the first is added at the start).  Which of them are activated is not kept: a
    # block's predecessor only ever gains decoded slots, so "it passed the threshold at some step" is "it passes
    # it now", both read at the start of a step as the reference reads them.
    return dict(added=jnp.ones((batch,), jnp.int32))

  def step(self, view: View, block: BlockState, carry, key):
    del key
    bk, (b, g) = block.block_length, block.tokens.shape
    nb = g // bk
    masked = block.masked  # [B, G] every answer slot
    counts = masked.reshape(b, nb, bk).sum(-1)  # [B, nb] masks left per block
    progress = 1.0 - counts / bk
    ids = jnp.arange(nb)[None]  # [1, nb]
    added = carry["added"]
    newest = jnp.take_along_axis(progress, (added - 1)[:, None], 1)[:, 0]  # 2
    newest_left = jnp.take_along_axis(counts, (added - 1)[:, None], 1)[:, 0]
    grow = (added < nb) & ((newest >= self.block_add_threshold) | (newest_left == 0))
    eos = block.end_ids[0]
    if self.early_stop:  # no block is added once an EOS is committed
      grow = grow & ~jnp.any((block.tokens == eos) & ~masked, axis=-1)
    added = added + grow
    prev_progress = jnp.concatenate([jnp.ones((b, 1)), progress[:, :-1]], axis=1)  # [B, nb]; the prompt: 1
    # 1 and the new block's start: activated once the block before it passed the threshold (init's comment)
    activated = (ids < added[:, None]) & (prev_progress >= self.decoded_token_threshold)  # [B, nb]
    slot_block = jnp.arange(g) // bk  # [G]
    candidates = masked & (slot_block[None] < added[:, None])  # 3
    commit = entropy_commit(view.entropy, candidates, self.threshold)
    lagging = activated & (counts > 0)  # 4: the first activated block with masks
    first = jnp.argmax(lagging, axis=-1)  # [B]
    in_first = (slot_block[None] == first[:, None]) & lagging.any(-1, keepdims=True)  # [B, G]
    forced = top1_per_row(-view.entropy, masked & in_first) & ~jnp.any(commit & in_first, -1, keepdims=True)
    tokens = jnp.where(forced, view.top1, view.sample)
    commit = commit | forced
    active = block.active
    carry = dict(added=jnp.where(active, added, carry["added"]))
    left = masked & ~commit
    truncate = None
    if self.early_stop:  # after this step's commits: the first committed EOS ends the answer while masks remain
      ended = jnp.where(commit, tokens, block.tokens) == eos  # committed slots only: a mask is never EOS
      cut = ended.any(-1) & left.any(-1)
      truncate = jnp.where(cut, jnp.argmax(ended, axis=-1), jnp.iinfo(jnp.int32).max).astype(jnp.int32)
      left = left & (jnp.arange(g)[None] <= jnp.where(cut, truncate, g)[:, None])
    hold = jnp.any(left, axis=-1)  # the row decodes on until its whole answer is resolved
    return Decision(tokens=tokens, commit=commit, hold=hold, truncate=truncate), carry
