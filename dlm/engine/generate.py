"""The generation driver: canvas, semi-autoregressive blocks, one `lax.while_loop`, NFE accounting.

`generate` compiles one XLA program per (network graph, sampler, shapes, options); everything from the first to
the last denoising step runs inside it, with no host round trip per step.

Blocks advance in lockstep over the batch: the loop moves to block b+1 once every row is done with block b.
A row that finishes a block early waits without being charged NFE (per-row counts are what a batch-1 run
would spend); rows finish at different times and their counts differ.

KV-cache policies (`cache=`, see dlm/engine/cache.py): every block starts with a full forward that refreshes the
cache and is that step's prediction; later steps of the block recompute a window.  Blocks are in lockstep, so the
window is shared by the rows and each policy is one `lax.switch` between static-shape forward programs.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm.engine.cache import DEFAULT_WINDOW, CachePlan, check_cache, plan_cache
from dlm.engine.calls import NetworkCalls
from dlm.engine.features import canvas_features
from dlm.engine.state import BlockState, Generation, LoopState, View, as_decision
from dlm.kernels.attention import ATTENTION_IMPLS
from dlm.kernels.head import IMPLEMENTATIONS, LOGITS, HeadBlocks, HeadRequest
from dlm.model.transformer import Transformer
from dlm.parallel.mesh import current_mesh
from dlm.parallel.rules import (constrain, kv_heads_split, place_params, replicate, shard_batch, to_host,
                                unpad_rows)
from dlm.samplers.base import Sampler


@dataclasses.dataclass(frozen=True)
class EngineSpec:
  """Static options of one compiled generation program."""

  gen_length: int
  block_length: int
  history_length: int  # rows of the recorded trace: the sampler's own step bound
  cache: str = "none"
  record: bool = False
  stop_at_eos: bool = False
  plan: CachePlan | None = None  # window geometry of a cache policy (None for 'none')
  probe: bool = False  # also run a full forward at every step and record the cached prediction's error
  head: str = "chunked"  # decode head implementation (dlm.kernels.head): 'ref', 'chunked' or 'pallas'
  head_blocks: HeadBlocks | None = None  # tile sizes of the fused head (None: its defaults)
  attention: str = "xla"  # attention backend (dlm.kernels.attention)
  mesh: jax.sharding.Mesh | None = None  # shard the batch / parameters / KV cache over it (dlm/parallel)

  @property
  def trace_length(self) -> int:
    """Rows of the per-iteration probe trace (the same bound as the recorded history)."""
    return self.history_length if self.probe else 0

  @property
  def num_blocks(self) -> int:
    return self.gen_length // self.block_length


HEAD_CHOICES = ("auto",) + IMPLEMENTATIONS
ATTENTION_CHOICES = ("auto",) + ATTENTION_IMPLS


def resolve_head(head: str) -> str:
  """'auto' -> the implementation the engine uses by default: the chunked XLA head on every backend (the Pallas
  kernels are opt-in until they are measured on the device, see docs/perf.md)."""
  if head not in HEAD_CHOICES:
    raise ValueError(f"head={head!r}; expected one of {HEAD_CHOICES}")
  return "chunked" if head == "auto" else head


def resolve_attention(attention: str) -> str:
  """'auto' -> 'xla' on every backend: cuDNN and splash are opt-in until they are measured on a device."""
  if attention not in ATTENTION_CHOICES:
    raise ValueError(f"attention={attention!r}; expected one of {ATTENTION_CHOICES}")
  return "xla" if attention == "auto" else attention


def _check_inputs(model, prompts, prompt_valid, sampler, gen_length, block_length, cache, window, max_nfe):
  if not isinstance(model, Transformer):
    raise TypeError(f"model must be a dlm Transformer, got {type(model).__name__}")
  if not isinstance(sampler, Sampler):
    raise TypeError(f"sampler must be a dlm.samplers.Sampler, got {type(sampler).__name__}")
  if prompts.ndim != 2:
    raise ValueError(f"prompts must be [B, P] token ids, got {prompts.shape=}")
  if not jnp.issubdtype(prompts.dtype, jnp.integer):
    raise ValueError(f"prompts must hold integer token ids, got {prompts.dtype=}")
  if prompt_valid is not None and prompt_valid.shape != prompts.shape:
    raise ValueError(f"{prompt_valid.shape=} must equal {prompts.shape=}")
  if not isinstance(gen_length, int) or gen_length <= 0:
    raise ValueError(f"{gen_length=} must be a positive int")
  if not isinstance(block_length, int) or block_length <= 0 or gen_length % block_length:
    raise ValueError(f"{block_length=} must be a positive divisor of {gen_length=}")
  total = prompts.shape[1] + gen_length
  if total > model.cfg.max_len:
    raise ValueError(f"prompt length {prompts.shape[1]} + {gen_length=} = {total} exceeds the model's "
                     f"max_len={model.cfg.max_len}")
  check_cache(cache, window)
  if max_nfe is not None and (not isinstance(max_nfe, int) or max_nfe <= 0):
    raise ValueError(f"{max_nfe=} must be a positive int or None")
  sampler.validate(gen_length, block_length)
  for name in ("head_request", "verify_request"):
    if not isinstance(getattr(sampler, name), HeadRequest):
      raise TypeError(f"sampler.{name} must be a dlm.kernels.HeadRequest, got {getattr(sampler, name)!r}")
  if sampler.view_span not in ("block", "answer"):
    raise ValueError(f"sampler.view_span={sampler.view_span!r}; expected 'block' or 'answer'")
  needs = [what for what, on in (("view_span='answer'", sampler.view_span == "answer"),
                                 ("verification rows", sampler.verify_rows)) if on]
  if needs and cache != "none":
    raise ValueError(f"cache={cache!r}: {type(sampler).__name__} needs {needs[0]}, which only cache='none' provides")
  if sampler.input_horizon and (cache != "none" or sampler.cfg_scale > 0 or sampler.verify_rows):
    raise ValueError(f"cache={cache!r}: {type(sampler).__name__} limits the inputs of each forward (input_horizon), "
                     "which needs cache='none', cfg_scale=0 and no verification rows")
  if sampler.row_window and (not sampler.input_horizon or sampler.soft_inputs or sampler.reuse_unchanged):
    raise ValueError(f"{type(sampler).__name__}.row_window needs input_horizon and excludes soft inputs and the "
                     "reuse of unchanged predictions")
  if sampler.canvas_features and (cache != "none" or sampler.cfg_scale > 0 or sampler.reuse_unchanged
                                  or sampler.row_window or sampler.verify_rows):
    raise ValueError(f"cache={cache!r}: {type(sampler).__name__} reads the whole canvas's features "
                     "(canvas_features), which needs cache='none', cfg_scale=0, no reuse of unchanged predictions, "
                     "no per-row window and no verification rows")
  if sampler.soft_inputs and (sampler.verify_rows or sampler.reuse_unchanged):
    raise ValueError(f"{type(sampler).__name__}: soft_inputs cannot be combined with verification rows or the "
                     "reuse of unchanged predictions (a belief update is a change the canvas does not show)")
  if sampler.verify_rows and (model.cfg.logit_shift or sampler.cfg_scale > 0 or sampler.reuse_unchanged):
    raise ValueError(f"{type(sampler).__name__}'s verification rows need a model without logit shift (LLaDA "
                     "layout), cfg_scale=0 and no reuse of unchanged predictions")


def generate(model: Transformer, prompts, prompt_valid=None, *, sampler: Sampler, gen_length: int,
             block_length: int | None = None, cache: str = "none", window: int = DEFAULT_WINDOW,
             max_nfe: int | None = None, key: jax.Array | None = None, record: bool = False,
             stop_at_eos: bool = False, head: str = "auto", head_blocks: HeadBlocks | None = None,
             attention: str = "auto", sampler_params=None, mesh: jax.sharding.Mesh | None = None) -> Generation:
  """Fill `gen_length` answer slots after each (left-padded) prompt.

  prompts: [B, P] int token ids, left-padded; prompt_valid: [B, P] bool (False on padding; default all True).
  cache: 'none' (full forward every step), 'prefix', 'dual' or 'window' (dlm/engine/cache.py).  A cached step
    still counts one NFE per row (DESIGN.md §3); `Generation.tokens_computed` counts the positions recomputed.
  window: with cache='window', the tokens recomputed on each side of the active block (ignored otherwise).
  max_nfe: per-row budget of network forward calls (default: what the sampler needs to finish).
  stop_at_eos: a row stops once an end-of-text token is committed with everything before it resolved; the
    slots after it are set to end-of-text and cost nothing.
  head: the decode head ('auto' = 'chunked': a fused XLA scan over vocabulary tiles that writes no [B, Bk, V]
    logits unless the sampler asks for them; 'ref' materialises them; 'pallas' runs kernels/head_pallas.py).
    Every implementation gives the sampler the same statistics (the same sample for the same key).
  attention: the attention backend ('auto' = 'xla'; 'dot_product', 'cudnn', 'splash': dlm.kernels.attention).
  sampler_params: a pytree the sampler reads as `View.params` (learned heads' weights, APD's AR model), passed
    as a traced argument: new weights reuse the compiled program.  None: `sampler.default_params()`.
  mesh: a device mesh (dlm.parallel.MeshSpec(...).make()) to run over; default the current one
    (`dlm.parallel.use_mesh`), else one device.  The batch is split over its data x fsdp devices (padded to a
    multiple with copies of row 0, dropped from the result), parameters placed by dlm/parallel/rules.py;
    results are the single-device ones (docs/parallel.md).  Under several processes, host `prompts` are the
    global batch (every process passes the same) and the result is all-gathered to host arrays on every
    process; a global jax.Array (`dlm.parallel.rules.global_batch`: each process built only its own rows) gets
    a result of global arrays (`dlm.parallel.rules.to_host` gathers them).
  """
  args, statics = _prepare(model, prompts, prompt_valid, sampler=sampler, gen_length=gen_length,
                           block_length=block_length, cache=cache, window=window, max_nfe=max_nfe, key=key,
                           record=record, stop_at_eos=stop_at_eos, head=head, head_blocks=head_blocks,
                           attention=attention, sampler_params=sampler_params, mesh=mesh)
  out, _ = _generate_jit(*args, **statics)
  out = out.replace(prompt_length=args[2].shape[1])
  if statics["spec"].mesh is None:
    return out
  out = unpad_rows(out, len(prompts))
  if jax.process_count() > 1 and not (isinstance(prompts, jax.Array) and not prompts.is_fully_addressable):
    out = to_host(out)  # host prompts (the same on every process) get host results, every row on every process
  return out


def _prepare(model, prompts, prompt_valid=None, *, sampler, gen_length, block_length=None, cache="none",
             window=DEFAULT_WINDOW, max_nfe=None, key=None, record=False, stop_at_eos=False, probe=False,
             head="auto", head_blocks=None, attention="auto", sampler_params=None, mesh=None):
  """Check the arguments -> (positional args, static kwargs) of `_generate_jit` (also used to time its compile)."""
  mesh = current_mesh() if mesh is None else mesh

  def as_array(x, dtype=None):  # under a mesh host data stays on the host: shard_batch cuts it into shards
    return np.asarray(x, dtype) if mesh is not None and not isinstance(x, jax.Array) else jnp.asarray(x, dtype)

  prompts = as_array(prompts)
  if prompt_valid is not None:
    prompt_valid = as_array(prompt_valid, bool)
  block_length = gen_length if block_length is None else block_length
  _check_inputs(model, prompts, prompt_valid, sampler, gen_length, block_length, cache, window, max_nfe)
  if prompt_valid is None:
    prompt_valid = jnp.ones(prompts.shape, bool)
  if mesh is not None:
    prompts, prompt_valid = shard_batch(mesh, prompts.astype(np.int32), prompt_valid)
  forwards_per_step = 2 if sampler.cfg_scale > 0 else 1
  budget = sampler.max_nfe(gen_length, block_length) * forwards_per_step if max_nfe is None else max_nfe
  traced = record or (probe and cache != "none")
  history_length = max(sampler.max_nfe(gen_length, block_length), budget // forwards_per_step) if traced else 0
  plan = None if cache == "none" else plan_cache(cache, prompt_length=prompts.shape[1], gen_length=gen_length,
                                                 block_length=block_length, shift=model.cfg.logit_shift,
                                                 window=window)
  spec = EngineSpec(gen_length=gen_length, block_length=block_length, history_length=history_length,
                    cache=cache, record=record, stop_at_eos=stop_at_eos, plan=plan, probe=probe and cache != "none",
                    head=resolve_head(head), head_blocks=head_blocks, attention=resolve_attention(attention),
                    mesh=mesh)
  key = jax.random.key(0) if key is None else key
  graphdef, state = nnx.split(model)
  # The budget is a traced argument, so sweeping max_nfe reuses one compiled program.
  max_steps = jnp.int32(budget // forwards_per_step)
  if sampler_params is None:
    sampler_params = sampler.default_params(gen_length, block_length)
  params = () if sampler_params is None else sampler_params
  if mesh is not None:
    state = place_params(model, state, mesh)
    params, key = replicate(mesh, (params, key))
  args = (graphdef, state, prompts.astype(jnp.int32), prompt_valid, key, max_steps, params)
  return args, dict(sampler=sampler, spec=spec)


def _first_end(answer, end_ids):
  """Index of the first end-of-text token in each row of answer [B, G] (G when none) -> [B]."""
  is_end = jnp.isin(answer, jnp.asarray(end_ids))
  return jnp.where(is_end.any(-1), jnp.argmax(is_end, -1), answer.shape[1])


def _update_beliefs(net, soft_embed, soft_on, soft, active, offset, width: int, name: str, soft_mode: bool):
  """Write a step's beliefs (Decision.soft [B, Bv, V]) into the loop's [B, G, D] soft inputs at the view's
  answer slots [offset, offset + Bv), for active rows.  Checked at trace time against `soft_inputs`."""
  if not soft_mode:
    if soft is not None:
      raise ValueError(f"{name}.step returned Decision.soft but {name}.soft_inputs is False; set it to True")
    return soft_embed, soft_on
  b = soft_on.shape[0]
  expected = (b, width, net.cfg.vocab_size)
  if soft is None or soft.shape != expected:
    got = None if soft is None else soft.shape
    raise ValueError(f"{name}.soft_inputs is True, so its step must return Decision.soft of shape "
                     f"[B, Bv, V]={expected}, got {got}")
  mixed = net.embed_mixture(soft)  # [B, Bv, D]
  old_embed = jax.lax.dynamic_slice_in_dim(soft_embed, offset, width, axis=1)
  old_on = jax.lax.dynamic_slice_in_dim(soft_on, offset, width, axis=1)
  new_embed = jnp.where(active[:, None, None], mixed, old_embed)
  new_on = old_on | active[:, None]
  return (jax.lax.dynamic_update_slice_in_dim(soft_embed, new_embed, offset, axis=1),
          jax.lax.dynamic_update_slice_in_dim(soft_on, new_on, offset, axis=1))


@functools.partial(jax.jit, static_argnames=("graphdef", "sampler", "spec"))
def _generate_jit(graphdef, state, prompts, prompt_valid, key, max_steps, params, *, sampler: Sampler,
                  spec: EngineSpec):
  """-> (Generation, aux): aux holds the loop's iteration counts (and the divergence probe) for bench/reports."""
  net: Transformer = nnx.merge(graphdef, state)
  if spec.attention != "xla":
    net.set_attention(spec.attention)
  cfg = net.cfg
  b, p = prompts.shape
  g, bk = spec.gen_length, spec.block_length
  plan = spec.plan
  calls = NetworkCalls(net, prompts, prompt_valid, gen_length=g, block_length=bk, cfg_scale=sampler.cfg_scale,
                       plan=plan, head_impl=spec.head, head_blocks=spec.head_blocks)
  tokens0 = calls.initial_tokens(prompts)  # [B, L]
  forwards_per_step = calls.forwards_per_step

  def to_view(hidden_block, uncond, request, key, view_tokens):
    # The head bans the mask id: a slot committed to it would stay unresolved forever, so no sampler may propose
    # it (MDLM's SUBS does the same; LLaDA and Dream leave it, but their trained networks give it ~zero mass).
    stats = calls.head(hidden_block, uncond, request, key=key, tokens=view_tokens)
    return View.from_stats(stats, hidden_block).replace(params=params)

  # No-change reuse (MDLM's cache) only with cache='none': under a KV cache a skipped step would also skip the
  # cache bookkeeping (a block-entry refresh could be skipped), and the cached policies already make steps cheap.
  reuse = sampler.reuse_unchanged and sampler.cfg_scale == 0 and plan is None
  hidden_shape = (b, p + g, cfg.d_model) if reuse else (0, 0, 0)
  row_window = min(sampler.row_window, p + g)  # static width of a sampler's per-row window (0: none)
  kv0 = calls.empty_kv(row_window > 0)
  t = spec.trace_length
  # Divergence probe: per row, the max |cached - full-forward| logit over the masked slots it decoded; per
  # iteration, the max over rows and the step inside the block (0 = refresh).
  probe0 = dict(gap=jnp.zeros((b,), jnp.float32), trace=jnp.zeros((t,), jnp.float32),
                trace_step=jnp.full((t,), -1, jnp.int32)) if spec.probe else ()
  # The sampler's view: the active block (default) or every answer slot (view_span "answer"), Bv slots from vs.
  answer_view = sampler.view_span == "answer"
  bv = g if answer_view else bk
  verify = sampler.verify_rows
  # Belief state (docs/design.md §1, item 2): the mixed input embedding of every answer slot and whether it has
  # one; zero-size unless the sampler feeds soft inputs, so other samplers' programs are unchanged.
  soft_mode = sampler.soft_inputs
  soft_slots = g if soft_mode else 0

  init = LoopState(
      tokens=tokens0, block=jnp.int32(0), step=jnp.int32(0), iteration=jnp.int32(0),
      entry_masked=jnp.zeros((b,), jnp.int32), nfe=jnp.zeros((b,), jnp.int32), batch_nfe=jnp.int32(0),
      steps=jnp.zeros((b,), jnp.int32),
      done=jnp.zeros((b,), bool), commit_step=jnp.full((b, g), -1, jnp.int32),
      remasked=jnp.zeros((b,), jnp.int32), hold=jnp.zeros((b,), bool), fresh=jnp.zeros((b,), bool),
      cached_hidden=jnp.zeros(hidden_shape, cfg.compute_dtype),
      history=jnp.zeros((spec.history_length if spec.record else 0, b, g), jnp.int32), key=key,
      carry=sampler.init(b, bv, cfg.vocab_size), kv=kv0, tokens_computed=jnp.zeros((b,), jnp.int32),
      block_iterations=jnp.zeros((spec.num_blocks,), jnp.int32), probe=probe0,
      soft_embed=jnp.zeros((b, soft_slots, cfg.d_model), cfg.compute_dtype),
      soft_on=jnp.zeros((b, soft_slots), bool))
  split_heads = kv_heads_split(cfg, spec.mesh)
  init = constrain(init, b, spec.mesh, kv_heads_split=split_heads)

  def cond(s: LoopState):
    return (s.iteration < max_steps) & ~jnp.all(s.done)

  def body(s: LoopState):
    start = p + s.block * bk
    vs = p if answer_view else start  # first canvas slot of the view
    in_block = (vs + jnp.arange(bv) >= start) & (vs + jnp.arange(bv) < start + bk)  # [Bv]
    blk = jax.lax.dynamic_slice_in_dim(s.tokens, vs, bv, axis=1)  # [B, Bv]
    masked = blk == cfg.mask_id
    block_masked = masked & in_block[None]
    active = ~s.done & (block_masked.any(-1) | s.hold)
    entry_masked = jnp.where(s.step == 0, block_masked.sum(-1).astype(jnp.int32), s.entry_masked)
    kv, probe = s.kv, s.probe
    key, k_step = jax.random.split(s.key)
    soft = (s.soft_embed, s.soft_on) if soft_mode else None
    if plan is not None:
      hidden_block, uncond, kv, width = calls.cached(s.tokens, s.kv, start, s.block, s.step, soft)
      view = to_view(hidden_block, uncond, sampler.head_request, k_step, blk)
      ran, charged = True, active
      if spec.probe:
        _, full_logits = calls.block_logits(s.tokens, calls.forward(s.tokens, soft), start)
        logits = calls.head(hidden_block, uncond, LOGITS).logits
        gap = jnp.where(jnp.isfinite(full_logits), jnp.abs(logits - full_logits), 0.0).max(-1)  # [B, Bk]
        gap = jnp.where(masked & active[:, None], gap, 0.0).max(-1)  # [B]
        row = jnp.minimum(s.iteration, t - 1)
        probe = dict(gap=jnp.maximum(probe["gap"], gap), trace=probe["trace"].at[row].set(gap.max()),
                     trace_step=probe["trace_step"].at[row].set(s.step))
    else:
      width = p + g
      shadow = None
      if reuse:
        need = active & ~s.fresh
        ran = need.any()
        hidden = jax.lax.cond(ran, calls.forward, lambda _: s.cached_hidden, s.tokens)
        charged = need
      elif verify:
        hidden, shadow = calls.forward_with_shadow(s.tokens, start)
        ran, charged = True, active
        width = p + g + bk
      elif row_window:
        # A sampler's per-row window against its own cache (APD's kv_window): a full refresh first.
        horizon = sampler.horizon(s.carry)
        starts = jnp.clip(sampler.window_start(s.carry), 0, p + g - row_window).astype(jnp.int32)
        hidden_block, kv = jax.lax.cond(
            s.iteration == 0, lambda kv: calls.row_refresh(s.tokens, horizon, vs, bv),
            lambda kv: calls.row_window(s.tokens, kv, starts, row_window, horizon, vs, bv), s.kv)
        hidden, uncond = None, None
        ran, charged = True, active
        width = jnp.where(s.iteration == 0, p + g, row_window)
      else:
        hidden = calls.forward(s.tokens, soft, sampler.horizon(s.carry) if sampler.input_horizon else None)
        ran, charged = True, active
      if hidden is not None:
        hidden_block, uncond = calls.block_hidden(s.tokens, hidden, vs, bv, soft=soft)
      view = to_view(hidden_block, uncond, sampler.head_request, k_step, blk)
      if sampler.canvas_features:
        view = view.replace(base=canvas_features(net, hidden, s.tokens, calls.positions, calls.valid,
                                                 head_impl=spec.head, head_blocks=spec.head_blocks))
      if shadow is not None:
        shadow_tokens = jax.lax.dynamic_slice_in_dim(s.tokens, start, bk, axis=1)  # [B, Bk]
        view = view.replace(verify=to_view(shadow, None, sampler.verify_request, k_step, shadow_tokens))
    block_state = BlockState(tokens=blk, masked=masked, active=active, entry_masked=entry_masked, step=s.step,
                             block=s.block, num_blocks=spec.num_blocks, block_length=bk, mask_id=cfg.mask_id,
                             end_ids=cfg.end_ids, in_block=in_block if answer_view else None, prompt=prompts,
                             prompt_valid=prompt_valid)
    decision, carry = as_decision(sampler.step(view, block_state, s.carry, k_step))
    commit = decision.commit & masked & active[:, None]
    blk = jnp.where(commit, decision.tokens.astype(jnp.int32), blk)
    old_steps = jax.lax.dynamic_slice_in_dim(s.commit_step, vs - p, bv, axis=1)
    new_steps = jnp.where(commit, s.iteration, old_steps)
    changed, remasked = commit.any(-1), s.remasked
    if decision.remask is not None:
      # Only slots committed before this step (so never one committed now), of rows that took this step.
      remask = decision.remask & ~masked & active[:, None]
      blk = jnp.where(remask, cfg.mask_id, blk)
      new_steps = jnp.where(remask, -1, new_steps)
      changed, remasked = changed | remask.any(-1), remasked + remask.sum(-1).astype(jnp.int32)
    hold = jnp.zeros((b,), bool) if decision.hold is None else decision.hold & active
    soft_embed, soft_on = _update_beliefs(net, s.soft_embed, s.soft_on, decision.soft, active, vs - p, bv,
                                          type(sampler).__name__, soft_mode)
    tokens = jax.lax.dynamic_update_slice_in_dim(s.tokens, blk, vs, axis=1)
    commit_step = jax.lax.dynamic_update_slice_in_dim(s.commit_step, new_steps, vs - p, axis=1)

    answer = tokens[:, p:]
    if decision.truncate is not None:
      cut = jnp.where(active, decision.truncate.astype(jnp.int32), g)  # [B]
      dropped = jnp.arange(g)[None] > cut[:, None]  # [B, G]
      commit_step = jnp.where(dropped & (answer != cfg.eos_id), s.iteration, commit_step)
      answer = jnp.where(dropped, cfg.eos_id, answer)
      tokens = tokens.at[:, p:].set(answer)
    unresolved = answer == cfg.mask_id
    done = s.done | (~unresolved.any(-1) & ~hold)
    if spec.stop_at_eos:
      first_end = _first_end(answer, cfg.end_ids)
      slot = jnp.arange(g)[None]
      ended = (first_end < g) & ~jnp.any(unresolved & (slot < first_end[:, None]), -1)
      answer = jnp.where(ended[:, None] & (slot > first_end[:, None]), cfg.eos_id, answer)
      tokens = tokens.at[:, p:].set(answer)
      done = done | ended
    blk_after = jax.lax.dynamic_slice_in_dim(tokens, start, bk, axis=1)
    block_complete = ~jnp.any(~done[:, None] & ((blk_after == cfg.mask_id) | hold[:, None]))
    history = s.history
    if spec.record:
      row = jnp.minimum(s.iteration, spec.history_length - 1)
      history = jax.lax.dynamic_update_index_in_dim(history, answer, row, 0)
    return constrain(LoopState(
        tokens=tokens, block=jnp.where(block_complete, s.block + 1, s.block).astype(jnp.int32),
        step=jnp.where(block_complete, 0, s.step + 1).astype(jnp.int32), iteration=s.iteration + 1,
        entry_masked=entry_masked, nfe=s.nfe + charged * forwards_per_step,
        batch_nfe=s.batch_nfe + jnp.asarray(ran, jnp.int32),
        steps=s.steps + active, done=done, commit_step=commit_step, remasked=remasked, hold=hold & ~done,
        fresh=(s.fresh | ran) & ~changed if reuse else s.fresh,
        cached_hidden=hidden if reuse else s.cached_hidden, history=history, key=key, carry=carry, kv=kv,
        tokens_computed=s.tokens_computed + charged * (width * forwards_per_step),
        block_iterations=s.block_iterations.at[s.block].add(1), probe=probe, soft_embed=soft_embed,
        soft_on=soft_on), b, spec.mesh, kv_heads_split=split_heads)

  final = jax.lax.while_loop(cond, body, init)
  answer = final.tokens[:, p:]
  finished = ~jnp.any(answer == cfg.mask_id, -1)
  if spec.stop_at_eos:
    finished = finished | final.done
  gen_tokens = jnp.minimum(_first_end(answer, cfg.end_ids) + 1, g)
  out = Generation(tokens=final.tokens, nfe=final.nfe, steps=final.steps, batch_nfe=final.batch_nfe,
                   finished=finished,
                   gen_tokens=gen_tokens.astype(jnp.int32), commit_step=final.commit_step, remasked=final.remasked,
                   history=final.history if spec.record else None,
                   tokens_computed=final.tokens_computed.astype(jnp.int32), extras=sampler.report(final.carry))
  aux = dict(iterations=final.iteration, block_iterations=final.block_iterations, probe=final.probe)
  return out, aux
