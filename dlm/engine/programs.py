"""Forward programs: each way a denoising step obtains the hidden states of the sampler's view.

A forward program is a small object chosen once, at trace time, from the cache policy and the sampler's checked
capabilities (`choose_program`; which combinations exist is dlm/engine/capabilities.py's table).  Each has one
interface:

  init(ctx)                          its slice of the loop state (`LoopState.forward`): a KV cache, the last
                                     prediction, a probe trace, or () when it keeps nothing.
  run(ctx, s, where, feed) -> Forward  the network call(s) of one step: the view's hidden states [B, Bv, D] (CFG's
                                     unconditional ones too), its new state, whether the batch made a call
                                     (`ran`), the rows charged one NFE (`charged` [B]) and the canvas positions
                                     each charged row recomputed (`width`).
  extend_view(ctx, view, fwd, s, where, key)  what the program adds to the View beyond the head statistics
                                     (WINO's verification rows, ADJUST's canvas features).
  settle(state, fwd, changed)        its state after the sampler's decision (no-change reuse marks rows fresh).
  aux(state)                         engine-internal measurements for reports (the divergence probe).

The programs:
  FullCanvas       every slot recomputed (cache 'none'); under CFG a second forward of the prompt-masked canvas.
  CanvasFeatures   FullCanvas that also hands the sampler the whole canvas's features (`View.base`).
  ReuseUnchanged   FullCanvas that skips the forward when no charged row's canvas changed (MDLM's cache).
  ShadowRows       the canvas plus Bk leave-one-out shadow rows in one forward (WINO's `View.verify`).
  RowWindow        a per-row recompute window against the sampler's own KV cache (APD's kv_window).
  CachedWindows    a KV-cache policy: a block-entry refresh, then a window per step (dlm/engine/cache.py).
  ProbedCache      CachedWindows plus a full forward per step that records the cached prediction's error.
  BlockCausalCache a block-causal model's exact cache: prefill, one block per step, a store forward per block
                   (dlm/engine/block_cache.py).
  CandidateCopies  FullCanvas or CachedWindows over K copies of the canvas that differ in the view's slots (a
                   sampler's drafts), one forward of B * K rows (draft-and-verify).
Input transforms (soft inputs, the input horizon) reach every program through `FeedInputs`
(dlm/engine/inputs.py).
"""

from __future__ import annotations

import copy
import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.calls import NetworkCalls
from dlm.engine.features import canvas_features
from dlm.kernels.head import LOGITS


@dataclasses.dataclass
class Forward:
  """One step's network result, as a forward program returns it (a trace-time container, not a pytree)."""

  hidden: jax.Array  # [B, Bv, D] hidden states feeding the view's slots
  uncond: jax.Array | None  # [B, Bv, D] CFG's unconditional hidden states, else None
  state: object  # the program's new slice of the loop state
  ran: object  # [] bool (or True): the batch made a network call this step
  charged: jax.Array  # [B] bool: rows charged one NFE (per pass)
  width: object  # [] int: canvas positions a charged row recomputed per pass
  canvas: jax.Array | None = None  # [B, L, D] the full forward's hidden states, when the program ran one
  shadow: jax.Array | None = None  # [B, Bk, D] the shadow rows' hidden states (ShadowRows)
  extra_charged: jax.Array | None = None  # [B] bool: rows charged one more NFE (a block-causal store forward)
  extra_width: object = 0  # [] int: canvas positions that extra forward recomputed
  tokens: jax.Array | None = None  # [B, L] the canvas after slots the program itself committed (else None)
  placed: jax.Array | None = None  # [B] bool: rows whose canvas the program changed (Fast-dLLM v2's first token)
  drafts: tuple | None = None  # (hidden [B*(K-1), Bv, D], tokens [B*(K-1), Bv]) of the candidate copies 1..K-1


class ForwardProgram:
  """The interface; FullCanvas is the reference implementation."""

  name = "base"

  def init(self, ctx):
    del ctx
    return ()

  def run(self, ctx, s, where, feed) -> Forward:
    raise NotImplementedError

  def extend_view(self, ctx, view, fwd: Forward, s, where, key):
    del ctx, fwd, s, where, key
    return view

  def settle(self, state, fwd: Forward, changed):
    del fwd, changed
    return state

  def aux(self, state) -> dict:
    del state
    return {}

  def __repr__(self):
    return type(self).__name__


class FullCanvas(ForwardProgram):
  name = "full"

  def run(self, ctx, s, where, feed) -> Forward:
    calls = ctx.calls
    hidden = calls.forward(s.tokens, feed.soft, feed.horizon)  # [B, L, D]
    hidden_view, uncond = calls.block_hidden(s.tokens, hidden, where.view_start, ctx.view_length, soft=feed.soft)
    return Forward(hidden=hidden_view, uncond=uncond, state=s.forward, ran=True, charged=where.active,
                   width=ctx.seq_length, canvas=hidden)


class CanvasFeatures(FullCanvas):
  name = "full+features"

  def extend_view(self, ctx, view, fwd, s, where, key):
    calls, spec = ctx.calls, ctx.spec
    return view.replace(base=canvas_features(ctx.net, fwd.canvas, s.tokens, calls.positions, calls.valid,
                                             head_impl=spec.head, head_blocks=spec.head_blocks))


class ReuseUnchanged(ForwardProgram):
  """State: (hidden [B, L, D] of the last forward, fresh [B]: the row's canvas is unchanged since then)."""

  name = "reuse-unchanged"

  def init(self, ctx):
    cfg = ctx.net.cfg
    return (jnp.zeros((ctx.batch, ctx.seq_length, cfg.d_model), cfg.compute_dtype),
            jnp.zeros((ctx.batch,), bool))

  def run(self, ctx, s, where, feed) -> Forward:
    cached, fresh = s.forward
    need = where.active & ~fresh
    ran = need.any()
    hidden = jax.lax.cond(ran, ctx.calls.forward, lambda _: cached, s.tokens)
    hidden_view, uncond = ctx.calls.block_hidden(s.tokens, hidden, where.view_start, ctx.view_length)
    return Forward(hidden=hidden_view, uncond=uncond, state=(hidden, fresh), ran=ran, charged=need,
                   width=ctx.seq_length)

  def settle(self, state, fwd, changed):
    hidden, fresh = state
    return hidden, (fresh | fwd.ran) & ~changed


class ShadowRows(ForwardProgram):
  name = "shadow-rows"

  def run(self, ctx, s, where, feed) -> Forward:
    calls = ctx.calls
    hidden, shadow = calls.forward_with_shadow(s.tokens, where.start)
    hidden_view, uncond = calls.block_hidden(s.tokens, hidden, where.view_start, ctx.view_length, soft=feed.soft)
    return Forward(hidden=hidden_view, uncond=uncond, state=s.forward, ran=True, charged=where.active,
                   width=ctx.seq_length + ctx.block_length, shadow=shadow)

  def extend_view(self, ctx, view, fwd, s, where, key):
    shadow_tokens = jax.lax.dynamic_slice_in_dim(s.tokens, where.start, ctx.block_length, axis=1)  # [B, Bk]
    return view.replace(verify=ctx.view_of(fwd.shadow, None, ctx.sampler.verify_request, key, shadow_tokens))


class RowWindow(ForwardProgram):
  """State: the sampler's own KV cache [n_layers, B, L, Hkv, Dh]; the first step is a full refresh."""

  name = "row-window"

  def __init__(self, width: int):
    self.width = width

  def init(self, ctx):
    return ctx.calls.empty_kv(row_window=True)

  def run(self, ctx, s, where, feed) -> Forward:
    calls, w, length = ctx.calls, self.width, ctx.seq_length
    starts = jnp.clip(ctx.sampler.window_start(s.carry), 0, length - w).astype(jnp.int32)
    first = s.iteration == 0
    hidden_view, kv = jax.lax.cond(
        first, lambda kv: calls.row_refresh(s.tokens, feed.horizon, where.view_start, ctx.view_length),
        lambda kv: calls.row_window(s.tokens, kv, starts, w, feed.horizon, where.view_start, ctx.view_length),
        s.forward)
    return Forward(hidden=hidden_view, uncond=None, state=kv, ran=True, charged=where.active,
                   width=jnp.where(first, length, w))

  def __repr__(self):
    return f"RowWindow(width={self.width})"


class CachedWindows(ForwardProgram):
  """State: the KV cache [n_layers, R, L, Hkv, Dh] (R = B, or 2B under CFG)."""

  name = "cached"

  def init(self, ctx):
    return ctx.calls.empty_kv()

  def run(self, ctx, s, where, feed) -> Forward:
    hidden_view, uncond, kv, width = ctx.calls.cached(s.tokens, s.forward, where.start, s.block, s.step, feed.soft)
    return Forward(hidden=hidden_view, uncond=uncond, state=kv, ran=True, charged=where.active, width=width)


class ProbedCache(CachedWindows):
  """State: (KV cache, probe).  Per row, the max |cached - full-forward| logit over the masked slots it decoded;
  per iteration, the max over rows and the step inside the block (0 = refresh).  Doubles the network work, so
  only the divergence report runs it."""

  name = "cached+probe"

  def init(self, ctx):
    t = ctx.spec.trace_length
    probe = dict(gap=jnp.zeros((ctx.batch,), jnp.float32), trace=jnp.zeros((t,), jnp.float32),
                 trace_step=jnp.full((t,), -1, jnp.int32))
    return super().init(ctx), probe

  def run(self, ctx, s, where, feed) -> Forward:
    kv, probe = s.forward
    fwd = super().run(ctx, s.replace(forward=kv), where, feed)
    calls, t = ctx.calls, ctx.spec.trace_length
    _, full_logits = calls.block_logits(s.tokens, calls.forward(s.tokens, feed.soft), where.start)
    logits = calls.head(fwd.hidden, fwd.uncond, LOGITS).logits
    gap = jnp.where(jnp.isfinite(full_logits), jnp.abs(logits - full_logits), 0.0).max(-1)  # [B, Bk]
    gap = jnp.where(where.masked & where.active[:, None], gap, 0.0).max(-1)  # [B]
    row = jnp.minimum(s.iteration, t - 1)
    probe = dict(gap=jnp.maximum(probe["gap"], gap), trace=probe["trace"].at[row].set(gap.max()),
                 trace_step=probe["trace_step"].at[row].set(s.step))
    return dataclasses.replace(fwd, state=(fwd.state, probe))

  def aux(self, state) -> dict:
    return dict(probe=state[1])


def draft_canvases(ctx, s, where, k: int, tokens):
  """The sampler's drafts of the view and the B * K canvases that hold them (a sampler with `draft_copies`).

  -> drafts [B, K-1, Bv] (rows that do not decode this step keep their view), drafting [] bool (some row drafts
  something), canvases [B*K, L]: row b * K + k is `tokens` [B, L] with copy k in the view (copy 0: as it stands).
  """
  b, bv = where.view_tokens.shape
  drafts = ctx.sampler.drafts(s.carry, where.view_tokens, where.masked).astype(jnp.int32)  # [B, K-1, Bv]
  drafts = jnp.where(where.active[:, None, None], drafts, where.view_tokens[:, None])
  drafting = jnp.any(drafts != where.view_tokens[:, None])
  copies = jnp.concatenate([where.view_tokens[:, None], drafts], axis=1).reshape(b * k, bv)  # [B*K, Bv]
  canvases = jax.lax.dynamic_update_slice_in_dim(jnp.repeat(tokens, k, axis=0), copies, where.view_start, axis=1)
  return drafts, drafting, canvases


def split_copies(hidden, k: int):
  """[B*K, Bv, D] -> copy 0's [B, Bv, D] and copies 1..K-1 as [B*(K-1), Bv, D] (row b * (K-1) + k - 1)."""
  hidden = hidden.reshape(-1, k, *hidden.shape[1:])
  return hidden[:, 0], hidden[:, 1:].reshape(-1, *hidden.shape[2:])


def with_draft_view(ctx, view, fwd, key):
  """The View plus the candidate copies' statistics (`View.drafts`), when the program ran copies."""
  if fwd.drafts is None:
    return view
  hidden, tokens = fwd.drafts
  return view.replace(drafts=ctx.view_of(hidden, None, ctx.sampler.head_request, key, tokens))


class CandidateCopies(ForwardProgram):
  """K candidate copies of the canvas in one forward (FreeDave's `batch_expanding` mode): copy 0 is the canvas as
  it stands, copies 1..K-1 hold the sampler's drafts in the view's slots (`Sampler.drafts`), and every copy is a
  row of its own, B * K rows through the inner program: a full forward (cache 'none') or a cached window whose
  cache is repeated per copy (prefix/dual/window: the copies share what lies outside the view, so copy 0's cache
  is kept).  When no active row drafts anything (a block's first step, so every cache refresh), the inner
  program runs on the B rows alone (one `lax.cond`; the copies' statistics are then copy 0's).
  One call: charged one NFE, K times the inner program's width in positions.  (A block-causal model's exact
  cache runs its copies inside BlockCausalCache.)"""

  name = "candidate-copies"

  def __init__(self, inner: ForwardProgram, copies: int):
    self.inner, self.copies = inner, copies

  def init(self, ctx):
    return self.inner.init(ctx)

  def _expanded_context(self, ctx):
    """A shallow copy of ctx whose network calls cover B * K rows (row b * K + k: copy k of row b)."""
    k, spec = self.copies, ctx.spec
    wide = copy.copy(ctx)
    wide.batch = ctx.batch * k
    wide.calls = NetworkCalls(ctx.net, jnp.repeat(ctx.prompts, k, 0), jnp.repeat(ctx.prompt_valid, k, 0),
                              gen_length=spec.gen_length, block_length=spec.block_length, cfg_scale=0.0,
                              plan=spec.plan, head_impl=spec.head, head_blocks=spec.head_blocks)
    return wide

  def run(self, ctx, s, where, feed) -> Forward:
    k, (b, bv) = self.copies, where.view_tokens.shape
    drafts, drafting, canvases = draft_canvases(ctx, s, where, k, s.tokens)
    repeat = lambda x: jnp.repeat(x, k, axis=0)

    def plain(state):
      fwd = self.inner.run(ctx, s.replace(forward=state), where, feed)
      return fwd.hidden, jnp.repeat(fwd.hidden, k - 1, axis=0), fwd.state, jnp.asarray(fwd.width, jnp.int32)

    def expanded(state):
      # A KV cache is [n_layers, R, L, ...]: rows on axis 1.
      state_k = jax.tree.map(lambda x: jnp.repeat(x, k, axis=1), state)
      where_k = dataclasses.replace(where, view_tokens=jax.lax.dynamic_slice_in_dim(canvases, where.view_start, bv, 1),
                                    masked=repeat(where.masked), view_steps=repeat(where.view_steps),
                                    active=repeat(where.active))
      fwd = self.inner.run(self._expanded_context(ctx), s.replace(tokens=canvases, forward=state_k), where_k, feed)
      kept = jax.tree.map(lambda x: x[:, ::k], fwd.state)  # copy 0 of each row
      return (*split_copies(fwd.hidden, k), kept, jnp.asarray(fwd.width, jnp.int32) * k)

    hidden, draft_hidden, state, width = jax.lax.cond(drafting, expanded, plain, s.forward)
    return Forward(hidden=hidden, uncond=None, state=state, ran=True, charged=where.active, width=width,
                   drafts=(draft_hidden, drafts.reshape(b * (k - 1), bv)))

  def extend_view(self, ctx, view, fwd, s, where, key):
    return with_draft_view(ctx, view, fwd, key)

  def __repr__(self):
    return f"CandidateCopies({self.inner!r}, copies={self.copies})"


def choose_program(capabilities: frozenset[str], *, cached: bool, probe: bool, row_window: int,
                   block_cache: bool = False, copies: int = 0) -> ForwardProgram:
  """The forward program of one compiled generation: from the cache policy and the capabilities the engine runs
  with (`check_combination` has already refused what does not combine, so at most one of these applies)."""
  if block_cache:
    from dlm.engine.block_cache import BlockCausalCache  # it imports this module
    return BlockCausalCache(copies if "draft_copies" in capabilities else 0)
  if "draft_copies" in capabilities:  # the divergence probe is not run under copies
    return CandidateCopies(CachedWindows() if cached else FullCanvas(), copies)
  if cached:
    return ProbedCache() if probe else CachedWindows()
  if "reuse_unchanged" in capabilities:
    return ReuseUnchanged()
  if "verify_rows" in capabilities:
    return ShadowRows()
  if "row_window" in capabilities:
    return RowWindow(row_window)
  if "canvas_features" in capabilities:
    return CanvasFeatures()
  return FullCanvas()
