"""The network calls of one generation program, shared by the engine's loop and by the benchmark's replay.

`NetworkCalls` is built inside a jitted function from the merged network, the prompts and the static engine
spec.  It owns the canvas geometry (valid mask, positions, the prompt region for CFG's unconditional rows) and
the cache plan, and exposes the two ways a step can obtain the active block's hidden states:

  forward + block_hidden(tokens, hidden, start)   every slot recomputed (cache 'none'); under CFG a second forward
                                                  of the prompt-masked canvas, as LLaDA runs it.
  cached(tokens, kv, start, block, step)          a block-entry refresh (step 0) or a window forward against the
                                                  cache (dlm/engine/cache.py); under CFG one forward of 2B rows.

Both take an optional `soft` = (embed [B, G, D], on [B, G]): the belief inputs of a `soft_inputs` sampler, fed
at answer slots that are on and still masked (`inputs`); the active block always lies inside a cached window, so
every policy sees the current beliefs there.
Both return the view's conditional hidden states [B, N, D] and, under CFG, the unconditional ones; `head` turns
them into the statistics a sampler asked for (dlm.kernels.head, the fused decode head; CFG combined on the
logits tile by tile).  `dlm.eval.bench` replays exactly these calls with no sampler work to measure its cost.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.cache import block_slots, empty_cache, full_forward, row_window_forward, window_forward
from dlm.kernels.head import LOGITS, HeadBlocks, HeadRequest, HeadStats, head_statistics
from dlm.kernels.noise import seed_words
from dlm.model.transformer import Transformer, positions_from_valid


def block_hidden_of(net: Transformer, hidden, start, block_length):
  """Hidden states feeding slots [start, start + Bk) from full-sequence hidden states [B, L, D] -> [B, Bk, D]
  (Dream's logit shift: slot i reads position i - 1)."""
  return jnp.take(hidden, block_slots(start, block_length, net.cfg.logit_shift), axis=1)


def head_key(key: jax.Array) -> jax.Array:
  """The key of a step's head sample: the first half of `jax.random.split(step_key)`.  A sampler that draws its
  own randomness uses the second half (as LLaDA's random remasking and MDLM's reveal draws do)."""
  return jax.random.split(key)[0]


def head_seed(request: HeadRequest, key: jax.Array):
  """The counter-noise seed of a step's head sample ([2] uint32), or None when the request draws no noise."""
  return seed_words(head_key(key)) if request.sample and request.temperature > 0 else None


def resolve_request(request: HeadRequest, eos_id: int) -> HeadRequest:
  """A sampler's request with its symbolic bans made concrete for one model."""
  if not request.ban_eos:
    return request
  return dataclasses.replace(request, ban_eos=False, banned=tuple(request.banned) + (eos_id,))


class NetworkCalls:
  """The forward programs of one canvas (module docstring).  Built and used inside one jitted function."""

  def __init__(self, net: Transformer, prompts, prompt_valid, *, gen_length: int, block_length: int,
               cfg_scale: float, plan, head_impl: str = "chunked", head_blocks: HeadBlocks | None = None):
    self.net, self.plan, self.cfg_scale = net, plan, cfg_scale
    self.head_impl, self.head_blocks = head_impl, head_blocks
    self.batch, self.prompt_length = prompts.shape
    self.gen_length, self.block_length = gen_length, block_length
    g = gen_length
    self.valid = jnp.concatenate([prompt_valid, jnp.ones((self.batch, g), bool)], axis=1)  # [B, L]
    self.positions = positions_from_valid(self.valid)  # [B, L]
    self.prompt_region = jnp.arange(self.prompt_length + g) < self.prompt_length  # [L]
    self.forwards_per_step = 2 if cfg_scale > 0 else 1
    if plan is not None:
      r = self.forwards_per_step
      self.rows_valid = jnp.tile(self.valid, (r, 1))  # [R, L]
      self.rows_positions = jnp.tile(self.positions, (r, 1))  # [R, L]
      self.window_starts = jnp.asarray(plan.starts, jnp.int32)  # [num_blocks]
      self.window_widths = jnp.asarray(plan.widths, jnp.int32)  # [num_blocks]
      self.window_branch = jnp.asarray(plan.branch_of_block, jnp.int32)  # [num_blocks]

  # -- canvas ------------------------------------------------------------------------------------------------

  def initial_tokens(self, prompts, answer=None):
    """[B, P] prompts -> [B, L] canvas with every answer slot masked (or `answer` [B, G]: a block-causal
    placement's prompt tails, then masks)."""
    if answer is None:
      answer = jnp.full((self.batch, self.gen_length), self.net.cfg.mask_id, jnp.int32)
    return jnp.concatenate([prompts, answer.astype(jnp.int32)], axis=1)

  def unconditional(self, tokens):
    """LLaDA's unsupervised CFG input: every prompt position masked.  [B, L] -> [B, L]."""
    return jnp.where(self.prompt_region[None], self.net.cfg.mask_id, tokens)

  def inputs(self, tokens, soft=None):
    """The network's input for a canvas [B, L]: the token ids themselves, or with `soft` = (embed [B, G, D],
    on [B, G]) the embeddings [B, L, D] with the belief mixture at answer slots that are on and still masked."""
    if soft is None:
      return tokens
    embed, on = soft
    p = self.prompt_length
    x = self.net.embed_tokens(tokens)  # [B, L, D]
    use = on & (tokens[:, p:] == self.net.cfg.mask_id)  # [B, G]
    return x.at[:, p:].set(jnp.where(use[..., None], embed.astype(x.dtype), x[:, p:]))

  def empty_kv(self, row_window: bool = False):
    if row_window:
      return empty_cache(self.net.cfg, self.batch, self.prompt_length + self.gen_length)
    if self.plan is None:
      return ()
    return empty_cache(self.net.cfg, self.forwards_per_step * self.batch, self.prompt_length + self.gen_length)

  # -- cache 'none' ------------------------------------------------------------------------------------------

  def forward(self, tokens, soft=None, horizon=None):
    """[B, L] -> hidden [B, L, D]: one full forward of the conditional canvas.  horizon [B]: answer slots at or
    beyond it are hidden keys (a sampler's masked-input limit); their own outputs are not used."""
    valid = self.valid if horizon is None else self.horizon_valid(horizon)
    hidden, _ = self.net(self.inputs(tokens, soft), self.positions, valid)
    return hidden

  def block_hidden(self, tokens, hidden, start, length: int | None = None, soft=None):
    """-> hidden [B, N, D] of slots [start, start + N) (N = Bk unless `length` says) from the conditional hidden
    states, and under CFG the unconditional ones (a second forward), else None."""
    n = self.block_length if length is None else length
    hidden_block = block_hidden_of(self.net, hidden, start, n)
    uncond = None
    if self.cfg_scale > 0:
      uncond = block_hidden_of(self.net, self.forward(self.unconditional(tokens), soft), start, n)
    return hidden_block, uncond

  def head(self, hidden_block, uncond, request: HeadRequest, *, key=None, tokens=None) -> HeadStats:
    """The fused decode head over the view: hidden [B, N, D] (+ CFG's unconditional) -> HeadStats [B, N].

    key: the step's key (the sample's noise comes from `head_key(key)`); tokens [B, N]: for token_prob.
    """
    net = self.net
    request = resolve_request(request, net.cfg.eos_id)
    weight, v_axis = net.head_weight()
    return head_statistics(hidden_block, weight, request, mask_id=net.cfg.mask_id, seed=head_seed(request, key),
                           tokens=tokens,
                           v_axis=v_axis, dtype=net.cfg.compute_dtype, uncond=uncond, cfg_scale=self.cfg_scale,
                           impl=self.head_impl, blocks=self.head_blocks)

  def block_logits(self, tokens, hidden, start, length: int | None = None):
    """-> hidden [B, N, D] and logits [B, N, V] of slots [start, start + N) (CFG applied, the mask id banned)."""
    hidden_block, uncond = self.block_hidden(tokens, hidden, start, length)
    return hidden_block, self.head(hidden_block, uncond, LOGITS).logits

  def forward_with_shadow(self, tokens, start):
    """WINO's verification pass: the canvas plus Bk shadow rows in one forward (one NFE).

    Shadow row i is a mask token at block slot i's position; it attends to every canvas key except block slot i
    itself, and to all shadow rows; canvas rows do not see the shadow rows, so their outputs equal a plain forward.
    -> hidden [B, L, D] of the canvas, hidden [B, Bk, D] of the shadow rows.
    """
    b, length = tokens.shape
    bk = self.block_length
    shadow = jnp.full((b, bk), self.net.cfg.mask_id, jnp.int32)
    rows = jnp.concatenate([tokens, shadow], axis=1)  # [B, L + Bk]
    positions = jnp.concatenate(
        [self.positions, jax.lax.dynamic_slice_in_dim(self.positions, start, bk, axis=1)], axis=1)
    q = jnp.arange(length + bk)[:, None]
    k = jnp.arange(length + bk)[None, :]
    own_slot = start + q - length  # the block slot a shadow query stands for
    allowed = jnp.where(q < length, k < length, (k >= length) | (k != own_slot))  # [L + Bk, L + Bk]
    keys_valid = jnp.concatenate([self.valid, jnp.ones((b, bk), bool)], axis=1)  # [B, L + Bk]
    hidden, _ = self.net(rows, positions, allowed[None] & keys_valid[:, None, :])
    return hidden[:, :length], hidden[:, length:]

  # -- a sampler's per-row window (APD's kv_window) -----------------------------------------------------------

  def horizon_valid(self, horizon):
    """[B, L] key validity with answer slots at or beyond `horizon` [B] hidden."""
    return self.valid & (jnp.arange(self.valid.shape[1])[None] < self.prompt_length + horizon[:, None])

  def row_window(self, tokens, kv, starts, width: int, horizon, view_start: int, view_length: int):
    """Each row recomputes canvas slots [starts[b], starts[b] + width) against its own cache (keys at or beyond
    its horizon hidden); -> hidden [B, N, D] of view slots [view_start, view_start + N) (zeros where the row's
    window does not reach: a sampler using this reads only slots inside it), and the new cache.
    starts: [B] int32 with 0 <= start <= L - width."""
    hidden, kv = row_window_forward(self.net, tokens, self.positions, self.horizon_valid(horizon), kv, starts,
                                    width)  # hidden [B, width, D]
    at = block_slots(view_start, view_length, self.net.cfg.logit_shift)[None] - starts[:, None]  # [B, N]
    inside = (at >= 0) & (at < width)
    hidden = jnp.take_along_axis(hidden, jnp.clip(at, 0, width - 1)[..., None], axis=1)
    return jnp.where(inside[..., None], hidden, 0).astype(hidden.dtype), kv

  def row_refresh(self, tokens, horizon, view_start: int, view_length: int):
    """The first step of a per-row window sampler: a full forward that fills the cache (keys at or beyond each
    row's horizon hidden) -> hidden [B, N, D] of the view slots, cache."""
    hidden, kv = full_forward(self.net, tokens, self.positions, self.horizon_valid(horizon))
    return block_hidden_of(self.net, hidden, view_start, view_length), kv

  # -- cached policies ---------------------------------------------------------------------------------------

  def _rows(self, tokens, soft=None):
    """[B, L] -> [R, L] (or [R, L, D] embeddings with soft inputs): under CFG the unconditional canvas rides
    along as B extra rows."""
    if self.cfg_scale > 0:
      return jnp.concatenate([self.inputs(tokens, soft), self.inputs(self.unconditional(tokens), soft)], axis=0)
    return self.inputs(tokens, soft)

  def cached(self, tokens, kv, start, block, step, soft=None):
    """-> hidden [B, Bk, D], CFG's unconditional hidden [B, Bk, D] or None, new cache, positions recomputed."""
    plan, bk, b = self.plan, self.block_length, self.batch

    def refresh(rows, kv, start, block):
      del kv, block
      hidden, kv = full_forward(self.net, rows, self.rows_positions, self.rows_valid)  # [R, L, D]
      return jnp.take(hidden, block_slots(start, bk, plan.shift), axis=1), kv  # [R, Bk, D]

    def windowed(width):
      def run(rows, kv, start, block):
        ws = self.window_starts[block]
        hidden, kv = window_forward(self.net, rows, self.rows_positions, self.rows_valid, kv, ws, width)
        return jnp.take(hidden, block_slots(start, bk, plan.shift) - ws, axis=1), kv  # [R, Bk, D]
      return run

    programs = [refresh] + [windowed(w) for w in plan.programs]
    which = jnp.where(step == 0, 0, 1 + self.window_branch[block])
    hidden_block, kv = jax.lax.switch(which, programs, self._rows(tokens, soft), kv, start, block)  # [R, Bk, D]
    uncond = None
    if self.cfg_scale > 0:
      hidden_block, uncond = hidden_block[:b], hidden_block[b:]
    width = jnp.where(step == 0, self.prompt_length + self.gen_length, self.window_widths[block])
    return hidden_block, uncond, kv, width
