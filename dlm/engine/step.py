"""One denoising step as a free function: `step(ctx, state) -> state`, shared by `lax.while_loop` and the Python
driver (dlm/engine/driver.py).

  StepContext   everything fixed for one compiled program: the merged network and its calls, the prompts, the
                sampler and its traced parameters, the engine spec, and the objects chosen once at trace time
                from them (the forward program, the input feed).  Built inside a jitted function.
  LoopState     the carry (dlm/engine/state.py): the canvas and counters the loop owns, `carry` (the sampler's),
                `forward` (the forward program's) and `inputs` (the input transforms').

A step runs five phases, each a function below, none of which asks what the sampler declared:
  locate   where the loop stands: the view's slots, which are masked, which rows are active;
  forward  the forward program's network call(s) -> hidden states of the view (+ its own state);
  head     the fused decode head -> the View the sampler reads (the program may add to it);
  decide   the sampler's step -> Decision and its carry;
  apply    commits, remasks, beliefs, truncation -> the new canvas;
  advance  end of text, block completion, NFE and token accounting, the recorded history.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
from flax import nnx

from dlm.engine.calls import NetworkCalls
from dlm.engine.inputs import InputFeed
from dlm.engine.programs import choose_program
from dlm.engine.state import BlockState, Generation, LoopState, View, as_decision
from dlm.parallel.rules import constrain, kv_heads_split


class StepContext:
  """The static context of one generation program (built at trace time, inside jit)."""

  def __init__(self, graphdef, state, prompts, prompt_valid, params, max_steps, *, sampler, spec, answer=None):
    net = nnx.merge(graphdef, state)
    if spec.attention != "xla":
      net.set_attention(spec.attention)
    self.net, self.sampler, self.spec = net, sampler, spec
    self.prompts, self.prompt_valid, self.params, self.max_steps = prompts, prompt_valid, params, max_steps
    self.batch, self.prompt_length = prompts.shape
    self.gen_length, self.block_length = spec.gen_length, spec.block_length
    self.seq_length = self.prompt_length + self.gen_length
    self.calls = NetworkCalls(net, prompts, prompt_valid, gen_length=spec.gen_length,
                              block_length=spec.block_length, cfg_scale=sampler.cfg_scale, plan=spec.plan,
                              head_impl=spec.head, head_blocks=spec.head_blocks)
    capabilities = spec.capabilities  # checked against the capability table in `_prepare`
    # The view: the active block (default) or every answer slot (view_span "answer"), Bv slots.
    self.answer_view = "view_span_answer" in capabilities
    self.view_length = self.gen_length if self.answer_view else self.block_length
    self.program = choose_program(capabilities, cached=spec.plan is not None, probe=spec.probe,
                                  row_window=min(sampler.row_window, self.seq_length),
                                  block_cache=spec.cache == "block", copies=sampler.draft_copies)
    self.feed = InputFeed(capabilities)
    self.split_heads = kv_heads_split(net.cfg, spec.mesh)
    # A block-causal placement (dlm/engine/block_layout.py): the answer's initial tokens [B, G] (a prompt tail,
    # then masks) and the first slot of each row the engine decodes [B]; None: every answer slot masked.
    self.answer_init, self.answer_start = (None, None) if answer is None else answer

  def view_of(self, hidden, uncond, request, key, tokens) -> View:
    """The head's statistics of hidden [B, N, D] as a View.  The head bans the mask id: a slot committed to it
    would stay unresolved forever, so no sampler may propose it (MDLM's SUBS does the same; LLaDA and Dream leave
    it, but their trained networks give it ~zero mass)."""
    stats = self.calls.head(hidden, uncond, request, key=key, tokens=tokens)
    return View.from_stats(stats, hidden).replace(params=self.params)

  def constrain(self, s: LoopState) -> LoopState:
    return constrain(s, self.batch, self.spec.mesh, kv_heads_split=self.split_heads)


def initial_state(ctx: StepContext, key) -> LoopState:
  b, g, spec = ctx.batch, ctx.gen_length, ctx.spec
  init = LoopState(
      tokens=ctx.calls.initial_tokens(ctx.prompts, ctx.answer_init), block=jnp.int32(0), step=jnp.int32(0), iteration=jnp.int32(0),
      entry_masked=jnp.zeros((b,), jnp.int32), nfe=jnp.zeros((b,), jnp.int32), batch_nfe=jnp.int32(0),
      steps=jnp.zeros((b,), jnp.int32), done=jnp.zeros((b,), bool), commit_step=jnp.full((b, g), -1, jnp.int32),
      remasked=jnp.zeros((b,), jnp.int32), hold=jnp.zeros((b,), bool),
      history=jnp.zeros((spec.history_length if spec.record else 0, b, g), jnp.int32), key=key,
      carry=ctx.sampler.init(b, ctx.view_length, ctx.net.cfg.vocab_size), forward=ctx.program.init(ctx),
      inputs=ctx.feed.init(ctx.net, b, g), tokens_computed=jnp.zeros((b,), jnp.int32),
      block_iterations=jnp.zeros((spec.num_blocks,), jnp.int32))
  return ctx.constrain(init)


def running(ctx: StepContext, s: LoopState):
  """[] bool: the loop goes on (budget left and some row not done)."""
  return (s.iteration < ctx.max_steps) & ~jnp.all(s.done)


@dataclasses.dataclass
class Where:
  """Where the loop stands at the start of a step (trace-time container)."""

  start: jax.Array  # [] first canvas slot of the active block
  view_start: jax.Array  # [] first canvas slot of the view
  in_block: jax.Array  # [Bv] bool, the view slots inside the active block
  view_tokens: jax.Array  # [B, Bv]
  masked: jax.Array  # [B, Bv] bool
  view_steps: jax.Array  # [B, Bv] int32, the view's commit steps (-1: never committed by the loop)
  active: jax.Array  # [B] bool, rows that decode this step
  entry_masked: jax.Array  # [B] int32, the block's masked count at its entry


def locate(ctx: StepContext, s: LoopState) -> Where:
  p, bk, bv, mask_id = ctx.prompt_length, ctx.block_length, ctx.view_length, ctx.net.cfg.mask_id
  start = p + s.block * bk
  vs = p if ctx.answer_view else start
  slots = vs + jnp.arange(bv)
  in_block = (slots >= start) & (slots < start + bk)  # [Bv]
  view_tokens = jax.lax.dynamic_slice_in_dim(s.tokens, vs, bv, axis=1)  # [B, Bv]
  masked = view_tokens == mask_id
  view_steps = jax.lax.dynamic_slice_in_dim(s.commit_step, vs - p, bv, axis=1)  # [B, Bv]
  block_masked = masked & in_block[None]
  active = ~s.done & (block_masked.any(-1) | s.hold)
  entry_masked = jnp.where(s.step == 0, block_masked.sum(-1).astype(jnp.int32), s.entry_masked)
  return Where(start=start, view_start=vs, in_block=in_block, view_tokens=view_tokens, masked=masked,
               view_steps=view_steps, active=active, entry_masked=entry_masked)


def head(ctx: StepContext, fwd, s: LoopState, where: Where, key) -> View:
  view = ctx.view_of(fwd.hidden, fwd.uncond, ctx.sampler.head_request, key, where.view_tokens)
  return ctx.program.extend_view(ctx, view, fwd, s, where, key)


def decide(ctx: StepContext, view: View, s: LoopState, where: Where, key):
  cfg = ctx.net.cfg
  block = BlockState(tokens=where.view_tokens, masked=where.masked, active=where.active,
                     entry_masked=where.entry_masked, step=s.step, block=s.block, num_blocks=ctx.spec.num_blocks,
                     block_length=ctx.block_length, mask_id=cfg.mask_id, end_ids=cfg.end_ids,
                     in_block=where.in_block if ctx.answer_view else None, prompt=ctx.prompts,
                     prompt_valid=ctx.prompt_valid, committed=where.view_steps >= 0)
  return as_decision(ctx.sampler.step(view, block, s.carry, key))


@dataclasses.dataclass
class Applied:
  """The canvas after a decision (trace-time container)."""

  tokens: jax.Array  # [B, L]
  commit_step: jax.Array  # [B, G]
  remasked: jax.Array  # [B]
  hold: jax.Array  # [B] bool
  changed: jax.Array  # [B] bool: the row's canvas changed (a commit or a remask)
  inputs: tuple  # the input transforms' new state


def apply_decision(ctx: StepContext, s: LoopState, where: Where, decision) -> Applied:
  p, g, mask_id, eos_id = ctx.prompt_length, ctx.gen_length, ctx.net.cfg.mask_id, ctx.net.cfg.eos_id
  active, vs, bv = where.active, where.view_start, ctx.view_length
  commit = decision.commit & where.masked & active[:, None]
  view = jnp.where(commit, decision.tokens.astype(jnp.int32), where.view_tokens)
  old_steps = where.view_steps
  new_steps = jnp.where(commit, s.iteration, old_steps)
  changed, remasked = commit.any(-1), s.remasked
  if decision.remask is not None:
    # Only slots committed before this step (so never one committed now), of rows that took this step.
    remask = decision.remask & ~where.masked & active[:, None]
    view = jnp.where(remask, mask_id, view)
    new_steps = jnp.where(remask, -1, new_steps)
    changed, remasked = changed | remask.any(-1), remasked + remask.sum(-1).astype(jnp.int32)
  if decision.edit is not None:
    # Only slots the loop committed before this step (commit_step >= 0 excludes prompt tails and masks).
    edit = decision.edit & (old_steps >= 0) & ~where.masked & active[:, None]
    proposed = decision.tokens.astype(jnp.int32)
    edit = edit & (proposed != view)
    view = jnp.where(edit, proposed, view)
    new_steps = jnp.where(edit, s.iteration, new_steps)
    changed = changed | edit.any(-1)
  hold = jnp.zeros((ctx.batch,), bool) if decision.hold is None else decision.hold & active
  inputs = ctx.feed.update(ctx.net, s.inputs, decision, active, vs - p, bv, type(ctx.sampler).__name__)
  tokens = jax.lax.dynamic_update_slice_in_dim(s.tokens, view, vs, axis=1)
  commit_step = jax.lax.dynamic_update_slice_in_dim(s.commit_step, new_steps, vs - p, axis=1)
  if decision.truncate is not None:
    answer = tokens[:, p:]
    cut = jnp.where(active, decision.truncate.astype(jnp.int32), g)  # [B]
    dropped = jnp.arange(g)[None] > cut[:, None]  # [B, G]
    commit_step = jnp.where(dropped & (answer != eos_id), s.iteration, commit_step)
    tokens = tokens.at[:, p:].set(jnp.where(dropped, eos_id, answer))
  return Applied(tokens=tokens, commit_step=commit_step, remasked=remasked, hold=hold, changed=changed,
                 inputs=inputs)


def first_end(answer, end_ids, start=None):
  """Index of the first end-of-text token in each row of answer [B, G] (G when none) -> [B].  start [B]: slots
  before it are a block-causal placement's prompt tail, never an end."""
  is_end = jnp.isin(answer, jnp.asarray(end_ids))
  if start is not None:
    is_end = is_end & (jnp.arange(answer.shape[1])[None] >= start[:, None])
  return jnp.where(is_end.any(-1), jnp.argmax(is_end, -1), answer.shape[1])


def advance(ctx: StepContext, s: LoopState, where: Where, fwd, applied: Applied, key, carry) -> LoopState:
  cfg, spec = ctx.net.cfg, ctx.spec
  p, g, bk = ctx.prompt_length, ctx.gen_length, ctx.block_length
  tokens, hold = applied.tokens, applied.hold
  answer = tokens[:, p:]
  unresolved = answer == cfg.mask_id
  done = s.done | (~unresolved.any(-1) & ~hold)
  if spec.stop_at_eos:
    end = first_end(answer, cfg.end_ids, ctx.answer_start)
    slot = jnp.arange(g)[None]
    ended = (end < g) & ~jnp.any(unresolved & (slot < end[:, None]), -1)
    answer = jnp.where(ended[:, None] & (slot > end[:, None]), cfg.eos_id, answer)
    tokens = tokens.at[:, p:].set(answer)
    done = done | ended
  block_after = jax.lax.dynamic_slice_in_dim(tokens, where.start, bk, axis=1)
  block_complete = ~jnp.any(~done[:, None] & ((block_after == cfg.mask_id) | hold[:, None]))
  history = s.history
  if spec.record:
    row = jnp.minimum(s.iteration, spec.history_length - 1)
    history = jax.lax.dynamic_update_index_in_dim(history, answer, row, 0)
  passes = ctx.calls.forwards_per_step
  extra = 0 if fwd.extra_charged is None else fwd.extra_charged.astype(jnp.int32)  # [B] a store forward
  return LoopState(
      tokens=tokens, block=jnp.where(block_complete, s.block + 1, s.block).astype(jnp.int32),
      step=jnp.where(block_complete, 0, s.step + 1).astype(jnp.int32), iteration=s.iteration + 1,
      entry_masked=where.entry_masked, nfe=s.nfe + fwd.charged * passes + extra,
      batch_nfe=s.batch_nfe + jnp.asarray(fwd.ran, jnp.int32), steps=s.steps + where.active, done=done,
      commit_step=applied.commit_step, remasked=applied.remasked, hold=hold & ~done, history=history, key=key,
      carry=carry, forward=ctx.program.settle(fwd.state, fwd, applied.changed), inputs=applied.inputs,
      tokens_computed=s.tokens_computed + fwd.charged * (fwd.width * passes) + extra * fwd.extra_width,
      block_iterations=s.block_iterations.at[s.block].add(1))


def _program_commits(ctx: StepContext, s: LoopState, fwd):
  """The canvas the forward program ran on, with the slots it committed recorded at this iteration; the step
  goes on from there (the view, the sampler and the block's masked count all see them as committed)."""
  p = ctx.prompt_length
  changed = (fwd.tokens[:, p:] != s.tokens[:, p:]) & fwd.placed[:, None]  # [B, G]
  commit_step = jnp.where(changed, s.iteration, s.commit_step)
  s = s.replace(tokens=fwd.tokens, commit_step=commit_step)
  return s, locate(ctx, s)


def step(ctx: StepContext, s: LoopState) -> LoopState:
  """One iteration of the loop: locate -> forward -> head -> decide -> apply -> advance."""
  where = locate(ctx, s)
  key, k_step = jax.random.split(s.key)
  feed = ctx.feed.read(s.inputs, s.carry, ctx.sampler)
  fwd = ctx.program.run(ctx, s, where, feed)
  if fwd.tokens is not None:  # the program committed slots before its forward (a block's left-to-right token)
    s, where = _program_commits(ctx, s, fwd)
  view = head(ctx, fwd, s, where, k_step)
  decision, carry = decide(ctx, view, s, where, k_step)
  applied = apply_decision(ctx, s, where, decision)
  return ctx.constrain(advance(ctx, s, where, fwd, applied, key, carry))


def finish(ctx: StepContext, final: LoopState):
  """-> (Generation, aux): aux holds the loop's iteration counts (and the divergence probe) for bench/reports."""
  cfg, p, g = ctx.net.cfg, ctx.prompt_length, ctx.gen_length
  answer = final.tokens[:, p:]
  finished = ~jnp.any(answer == cfg.mask_id, -1)
  if ctx.spec.stop_at_eos:
    finished = finished | final.done
  gen_tokens = jnp.minimum(first_end(answer, cfg.end_ids, ctx.answer_start) + 1, g)
  out = Generation(tokens=final.tokens, nfe=final.nfe, steps=final.steps, batch_nfe=final.batch_nfe,
                   finished=finished, gen_tokens=gen_tokens.astype(jnp.int32), commit_step=final.commit_step,
                   remasked=final.remasked, history=final.history if ctx.spec.record else None,
                   tokens_computed=final.tokens_computed.astype(jnp.int32), extras=ctx.sampler.report(final.carry))
  aux = dict(iterations=final.iteration, block_iterations=final.block_iterations, probe=())
  aux.update(ctx.program.aux(final.forward))
  return out, aux
