"""The network calls of one generation program, shared by the engine's loop and by the benchmark's replay.

`NetworkCalls` is built inside a jitted function from the merged network, the prompts and the static engine
spec.  It owns the canvas geometry (valid mask, positions, the prompt region for CFG's unconditional rows) and
the cache plan, and exposes the two ways a step can obtain the active block's logits:

  full(tokens, start)                      every slot recomputed (cache 'none'); under CFG a second forward of
                                           the prompt-masked canvas, as LLaDA runs it.
  cached(tokens, kv, start, block, step)   a block-entry refresh (step 0) or a window forward against the cache
                                           (dlm/engine/cache.py); under CFG one forward of 2B rows.

Both return the *raw* block logits [B, Bk, V] (CFG applied, nothing banned) and the hidden states [B, Bk, D] that
produced them.  `dlm.eval.bench` replays exactly these calls with no sampler work to measure the sampler's cost.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlm.engine.cache import block_slots, empty_cache, full_forward, window_forward
from dlm.model.transformer import Transformer, positions_from_valid


def block_view(net: Transformer, hidden, start, block_length):
  """Hidden states and logits of slots [start, start + Bk) from full-sequence hidden states [B, L, D]."""
  hidden_block = jnp.take(hidden, block_slots(start, block_length, net.cfg.logit_shift), axis=1)  # [B, Bk, D]
  return hidden_block, net.logits(hidden_block, shift=False)


class NetworkCalls:
  """The forward programs of one canvas (module docstring).  Built and used inside one jitted function."""

  def __init__(self, net: Transformer, prompts, prompt_valid, *, gen_length: int, block_length: int,
               cfg_scale: float, plan):
    self.net, self.plan, self.cfg_scale = net, plan, cfg_scale
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

  def initial_tokens(self, prompts):
    """[B, P] prompts -> [B, L] canvas with every answer slot masked."""
    mask = jnp.full((self.batch, self.gen_length), self.net.cfg.mask_id, jnp.int32)
    return jnp.concatenate([prompts, mask], axis=1)

  def unconditional(self, tokens):
    """LLaDA's unsupervised CFG input: every prompt position masked.  [B, L] -> [B, L]."""
    return jnp.where(self.prompt_region[None], self.net.cfg.mask_id, tokens)

  def guided(self, logits, un_logits):
    return un_logits + (self.cfg_scale + 1.0) * (logits - un_logits)

  def empty_kv(self):
    if self.plan is None:
      return ()
    return empty_cache(self.net.cfg, self.forwards_per_step * self.batch, self.prompt_length + self.gen_length)

  # -- cache 'none' ------------------------------------------------------------------------------------------

  def forward(self, tokens):
    """[B, L] -> hidden [B, L, D]: one full forward of the conditional canvas."""
    hidden, _ = self.net(tokens, self.positions, self.valid)
    return hidden

  def block_logits(self, tokens, hidden, start, length: int | None = None):
    """-> hidden [B, N, D], raw logits [B, N, V] of slots [start, start + N) (N = Bk unless `length` says) from
    the conditional hidden states, plus CFG's second pass."""
    n = self.block_length if length is None else length
    hidden_block, logits = block_view(self.net, hidden, start, n)
    if self.cfg_scale > 0:
      _, un_logits = block_view(self.net, self.forward(self.unconditional(tokens)), start, n)
      logits = self.guided(logits, un_logits)
    return hidden_block, logits

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

  # -- cached policies ---------------------------------------------------------------------------------------

  def _rows(self, tokens):  # [B, L] -> [R, L]: the unconditional canvas rides along as B extra rows under CFG
    if self.cfg_scale > 0:
      return jnp.concatenate([tokens, self.unconditional(tokens)], axis=0)
    return tokens

  def cached(self, tokens, kv, start, block, step):
    """-> hidden [B, Bk, D], raw logits [B, Bk, V], new cache, canvas positions recomputed per row."""
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
    hidden_block, kv = jax.lax.switch(which, programs, self._rows(tokens), kv, start, block)  # [R, Bk, D]
    logits = self.net.logits(hidden_block, shift=False)  # [R, Bk, V]
    if self.cfg_scale > 0:
      logits = self.guided(logits[:b], logits[b:])
      hidden_block = hidden_block[:b]
    width = jnp.where(step == 0, self.prompt_length + self.gen_length, self.window_widths[block])
    return hidden_block, logits, kv, width
