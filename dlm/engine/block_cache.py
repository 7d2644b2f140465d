"""The exact KV cache of a block-causal model (`cache="block"`), written as SDAR and Fast-dLLM v2 write it.

A block-causal model's finished blocks never see later ones, so their keys and values are final once the block
is clean.  Both references (../shared/research/block_diffusion_reference.md §1.2, §2.3) therefore

  * prefill: one forward over the prompt's full blocks, storing their keys/values (only when the prompt has one);
  * per model block: every denoising step forwards the block alone (its B slots) against the stored prefix and
    stores nothing;
  * once the block is clean: one more forward over it, storing its keys/values (SDAR's `store_kv=True`,
    Fast-dLLM v2's `update_past_key_values=True`); both count it as a forward call.

Here the store forward of block m runs at the entry of block m + 1, in the same loop iteration as that block's
first denoising forward (the prefill at the entry of the first block), so a row is charged two NFE at a block
entry.  Only rows that decode the new block are charged: a row whose own canvas has ended, or that stopped at
end of text, pays nothing more, so its NFE is its batch-1 run's.  The store forward after a row's last block
(which the references run and count, and whose keys nothing reads) is not run and not counted: per row,
reference NFE = dlm NFE + 1.

The engine block may be a sub-block of the model block (Fast-dLLM v2: blocks of 32 decoded in sub-blocks of 8):
every step still forwards the whole model block, as Fast-dLLM v2 does without its block cache, and the view takes
the sub-block's rows.  With a logit shift (Fast-dLLM v2) slot i reads output i - 1; the block's first slot reads
the last output of the store forward (the previous block's last slot), which is where Fast-dLLM v2 takes the
block's first token from (it commits that argmax before denoising the block; here the sampler decides it with the
rest, from the same logits).  Its literal in-block shift gives the first slot its own output, a row it never
decides from except for a prompt of exactly one block.

Cache state: [n_layers, B, L, Hkv, Dh] over the whole canvas (the maximum length).  A denoising forward writes
its noisy keys into the current block's slots; no later block reads them before the store forward overwrites
them with the clean block's.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlm.engine.cache import empty_cache, window_forward
from dlm.engine.programs import Forward, ForwardProgram, draft_canvases, split_copies, with_draft_view
from dlm.kernels.head import LOGITS


class BlockCausalCache(ForwardProgram):
  """State: (KV cache [n_layers, B, L, Hkv, Dh], edge [B, D]: the output at the slot before the model block, which
  a shifted model's first block slot reads; it comes from the store forward, or the prefill).

  copies: a sampler's candidate copies (`draft_copies`, draft-and-verify): the denoising forward then runs the
  model block of each copy as a row of its own (B * K rows against the repeated cache, which none of them
  writes: no denoising forward's noisy keys are kept), the prefill and store forwards stay on the B rows."""

  name = "block-causal-cache"

  def __init__(self, copies: int = 0):
    self.copies = copies

  def init(self, ctx):
    cfg = ctx.net.cfg
    return (empty_cache(cfg, ctx.batch, ctx.seq_length), jnp.zeros((ctx.batch, cfg.d_model), cfg.compute_dtype))

  def run(self, ctx, s, where, feed) -> Forward:
    del feed  # soft inputs are refused with this cache (generate's checks)
    calls, cfg = ctx.calls, ctx.net.cfg
    bs, bk, p = cfg.block_size, ctx.block_length, ctx.prompt_length
    per_model_block = bs // bk
    model_block = s.block // per_model_block
    block_start = p + model_block * bs  # [] first canvas slot of the model block
    entry = (s.step == 0) & (s.block % per_model_block == 0)

    def store(state, start, width):
      hidden, kv = window_forward(ctx.net, s.tokens, calls.positions, calls.valid, state[0], start, width)
      return kv, hidden[:, -1]

    def store_previous(state):
      return store(state, block_start - bs, bs)

    def prefill(state):
      return store(state, 0, p)

    kv, edge = jax.lax.cond(entry & (model_block == 0), prefill,
                            lambda st: jax.lax.cond(entry, store_previous, lambda st: st, st), s.forward)
    tokens, placed = s.tokens, None
    if ctx.sampler.block_start_ar and cfg.logit_shift:
      tokens, placed = self._block_start_token(ctx, s, where, edge, entry, block_start)
    def denoise(tokens, positions, valid, kv, edge):
      """The model block's forward against the cache -> hidden of the view's slots [R, Bk, D] (R = B or B*K);
      its noisy keys are dropped: the store forward writes the clean block's."""
      hidden, _ = window_forward(ctx.net, tokens, positions, valid, kv, block_start, bs)  # [R, bs, D]
      local = where.start - block_start + jnp.arange(bk)  # [Bk] the view's slots inside the forwarded block
      if cfg.logit_shift:  # slot i reads output i - 1; the block's first slot reads the slot before the block
        hidden = jnp.concatenate([edge[:, None].astype(hidden.dtype), hidden], axis=1)  # [R, 1 + bs, D]
      return jnp.take(hidden, local, axis=1)  # [R, Bk, D]

    drafts, copies = None, 1
    if self.copies:
      hidden_view, drafts, copies = self._denoise_copies(ctx, s, where, tokens, kv, edge, denoise)
    else:
      hidden_view = denoise(tokens, calls.positions, calls.valid, kv, edge)
    has_prompt_block = ctx.prompt_valid.any(-1)  # [B] the row's prompt has a full block: the reference prefills
    stored = entry & where.active & ((model_block > 0) | has_prompt_block)  # [B]
    width = jnp.where(model_block == 0, p, bs)
    return Forward(hidden=hidden_view, uncond=None, state=(kv, edge), ran=1 + stored.any().astype(jnp.int32),
                   charged=where.active, width=bs * copies, extra_charged=stored, extra_width=width,
                   tokens=None if placed is None else tokens, placed=placed, drafts=drafts)

  def extend_view(self, ctx, view, fwd, s, where, key):
    return with_draft_view(ctx, view, fwd, key)

  def _denoise_copies(self, ctx, s, where, tokens, kv, edge, denoise):
    """The denoising forward over the sampler's K candidate copies (B * K rows against the repeated cache) when
    some row drafts, else over the B rows alone.  -> hidden of copy 0 [B, Bk, D], (copies' hidden
    [B*(K-1), Bk, D], their view tokens), copies run ([] int, 1 or K)."""
    k, calls = self.copies, ctx.calls
    b, bk = where.view_tokens.shape
    drafts, drafting, canvases = draft_canvases(ctx, s, where, k, tokens)
    repeat = lambda x: jnp.repeat(x, k, axis=0)

    def plain(kv):
      hidden = denoise(tokens, calls.positions, calls.valid, kv, edge)
      return hidden, jnp.repeat(hidden, k - 1, axis=0), jnp.int32(1)

    def expanded(kv):
      kv_k = jax.tree.map(lambda x: jnp.repeat(x, k, axis=1), kv)  # [n_layers, B*K, L, ...]
      hidden = denoise(canvases, repeat(calls.positions), repeat(calls.valid), kv_k, repeat(edge))
      return (*split_copies(hidden, k), jnp.int32(k))

    hidden, draft_hidden, copies = jax.lax.cond(drafting, expanded, plain, kv)
    return hidden, (draft_hidden, drafts.reshape(b * (k - 1), bk)), copies

  @staticmethod
  def _block_start_token(ctx, s, where, edge, entry, block_start):
    """Fast-dLLM v2's left-to-right token: at a model block's entry, a still-masked first slot gets the argmax of
    the output before the block (greedy, as batch_sample's `argmax(logits[:, -1])`) before the block is
    forwarded.  -> (canvas [B, L], placed [B] bool)."""
    first = jax.lax.dynamic_slice_in_dim(s.tokens, block_start, 1, axis=1)[:, 0]  # [B]
    placed = entry & where.active & (first == ctx.net.cfg.mask_id)
    def greedy(edge):  # the vocabulary head runs at block entries only, not on every step
      logits = ctx.calls.head(edge[:, None], None, LOGITS).logits[:, 0]  # [B, V], the mask id banned
      return jnp.argmax(logits, -1).astype(jnp.int32)

    ar = jax.lax.cond(placed.any(), greedy, lambda edge: first, edge)
    token = jnp.where(placed, ar, first)
    return jax.lax.dynamic_update_slice_in_dim(s.tokens, token[:, None], block_start, axis=1), placed
