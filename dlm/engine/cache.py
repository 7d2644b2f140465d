"""KV-cache policies of the engine: which canvas slots each denoising step recomputes.

Every policy starts a block with a *refresh*: one full forward over the canvas that is also that step's
prediction (Fast-dLLM fuses the two, so the refresh costs no extra NFE) and whose per-layer keys/values become the
cache.  The later steps of the block run the network on a *window* of the canvas: the window's keys/values are
written into the cache at its offset (`dynamic_update_slice` inside the network) and its queries attend over all L
cached keys.  What lies outside the window is stale: it was computed at the block's entry, from a canvas whose
active block has changed since.

  none    every step is a full forward (the reference).
  prefix  window = [s, L): the active block and everything after it; the prefix [0, s) comes from the cache
          (Fast-dLLM `generate_with_prefix_cache`).
  dual    window = [s, s + Bk): the active block only; prefix and suffix come from the cache, the suffix stays
          stale until the next block entry (Fast-dLLM `generate_with_dual_cache`).
  window  window = [s - w, s + Bk + w): the block and w neighbours on each side (dInfer's vicinity refresh
          with prefix_look = after_look = w).  dInfer's warm-up full steps and periodic refresh are not modelled.
  block   a block-causal model's exact cache (SDAR, Fast-dLLM v2): no refresh; the finished block's keys are
          stored once by an extra forward (dlm/engine/block_cache.py).

Shapes must be static inside the engine's `lax.while_loop`, where the block start s is traced.  The window of
each block is therefore fixed in advance (`CachePlan`): a static width and a start looked up from a per-block
table.  dual/window have one width for every block (a window that would cross an edge of the canvas is slid
inside it, recomputing a few extra neighbours, so `dynamic_slice` never clamps onto the wrong slots).  prefix
needs width L - s, which shrinks block by block; it gets one compiled window program per block, selected by
`lax.switch`.  Cost of that choice: compile time grows with the number of blocks (each branch is a separate
forward program), but a step computes exactly the L - s (+1 for Dream) queries Fast-dLLM computes.  The
alternative, one program of width G over a canvas padded on the right with G - Bk invalid slots, computes G
queries at every step (about twice the work, averaged over the blocks) and needs a key buffer of P + 2G - Bk
slots, which the network refuses beyond its `max_len` (e.g. 16 + 256 + 224 > 320 for the bench model).

Dream (logit_shift): slot i is predicted by the output at position i - 1, so a window whose first predicted slot
is s must also recompute position s - 1.  We start every window one slot earlier instead of Fast-dLLM's Dream
variant, which commits slot s unconditionally from the refresh pass (a forced commit the sampler did not choose).
Position s - 1 is already resolved (prompt or a finished block); recomputing it only refreshes its keys/values.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.model.transformer import KVCache, Transformer

CACHE_POLICIES = ("none", "prefix", "dual", "window", "block")  # block: block-causal models (block_cache.py)
DEFAULT_WINDOW = 16  # dInfer's prefix_look / after_look


def check_cache(cache: str, window: int) -> None:
  if cache not in CACHE_POLICIES:
    raise ValueError(f"{cache=}; expected one of {CACHE_POLICIES}")
  if not isinstance(window, int) or isinstance(window, bool) or window < 0:
    raise ValueError(f"{window=} must be a non-negative int (tokens recomputed on each side of the block)")


@dataclasses.dataclass(frozen=True)
class CachePlan:
  """The static window geometry of one cache policy on one canvas.

  starts[b], widths[b]: the canvas slots [starts[b], starts[b] + widths[b]) that a non-refresh step of block b
  recomputes (absolute canvas indices, 0 <= start, start + width <= L).  `programs` lists the distinct widths:
  one compiled window forward each.
  """

  policy: str
  seq_length: int  # L = P + G
  block_length: int
  shift: bool  # Dream's logit shift
  starts: tuple[int, ...]
  widths: tuple[int, ...]

  @property
  def programs(self) -> tuple[int, ...]:
    return tuple(sorted(set(self.widths)))

  @property
  def branch_of_block(self) -> tuple[int, ...]:
    """Index of block b's window program in `programs`."""
    return tuple(self.programs.index(w) for w in self.widths)


def plan_cache(policy: str, *, prompt_length: int, gen_length: int, block_length: int, shift: bool,
               window: int = DEFAULT_WINDOW) -> CachePlan:
  if policy == "none":
    raise ValueError("cache='none' recomputes everything; it has no window plan")
  check_cache(policy, window)
  p, g, bk = prompt_length, gen_length, block_length
  length = p + g
  lead = int(shift)  # Dream: the output at s - 1 predicts slot s
  starts, widths = [], []
  for b in range(g // bk):
    s = p + b * bk
    if policy == "prefix":
      # The prefix must come from the cache, so the window starts exactly at s (s - 1 for Dream) and runs to L.
      start = max(s - lead, 0)
      width = length - start
    else:
      side = window if policy == "window" else 0
      width = min(bk + lead + 2 * side, length)
      # Slide the window inside [0, L) at the canvas edges: it still covers [s - lead, s + Bk).
      start = min(max(s - lead - side, 0), length - width)
    starts.append(start)
    widths.append(width)
  return CachePlan(policy=policy, seq_length=length, block_length=bk, shift=shift, starts=tuple(starts),
                   widths=tuple(widths))


def block_slots(start, block_length: int, shift: bool):
  """Positions whose outputs predict the block's slots [start, start + Bk): the slot itself, or (Dream) the slot
  before it (slot 0 of the canvas keeps its own output, as `Transformer.logits` does).  -> [Bk]"""
  idx = start + jnp.arange(block_length)
  return jnp.maximum(idx - 1, 0) if shift else idx


def full_forward(net: Transformer, rows, positions, valid):
  """Refresh: the whole canvas.  rows, positions, valid: [R, L] -> hidden [R, L, D], cache [n_layers, R, L, ...]."""
  return net(rows, positions, valid)


def window_forward(net: Transformer, rows, positions, valid, cache: KVCache, start, width: int):
  """Recompute slots [start, start + width) against the cache.  rows, positions, valid: [R, L]; start: traced
  scalar with start + width <= L (the plan guarantees it, so the slice never clamps).
  -> hidden [R, width, D], updated cache."""
  window_rows = jax.lax.dynamic_slice_in_dim(rows, start, width, axis=1)  # [R, W]
  window_positions = jax.lax.dynamic_slice_in_dim(positions, start, width, axis=1)  # [R, W]
  return net(window_rows, window_positions, valid, cache=cache, window_start=start)


def row_window_forward(net: Transformer, rows, positions, valid, cache: KVCache, starts, width: int):
  """Per-row windows: row b recomputes slots [starts[b], starts[b] + width) against its own cache (vmapped, so
  each row has its own start).  rows: [B, L] ids (or [B, L, D] embeddings); positions, valid: [B, L]; starts:
  [B] with start + width <= L.  -> hidden [B, width, D], updated cache."""
  def one(row, pos, val, keys, values, start):
    row_cache = KVCache(keys=keys[:, None], values=values[:, None])
    hidden, row_cache = window_forward(net, row[None], pos[None], val[None], row_cache, start, width)
    return hidden[0], row_cache.keys[:, 0], row_cache.values[:, 0]

  hidden, keys, values = jax.vmap(one, in_axes=(0, 0, 0, 1, 1, 0), out_axes=(0, 1, 1))(
      rows, positions, valid, cache.keys, cache.values, starts)
  return hidden, KVCache(keys=keys, values=values)


def empty_cache(cfg, rows: int, length: int) -> KVCache:
  shape = (cfg.n_layers, rows, length, cfg.num_kv_heads, cfg.dim_per_head)
  return KVCache(keys=jnp.zeros(shape, cfg.compute_dtype), values=jnp.zeros(shape, cfg.compute_dtype))
