"""Wall-clock benchmark of one generation setting (DESIGN.md §3 metrics), per cache policy.

  compile_s       lowering + XLA compilation of the generation program (ahead of time, not run).
  wall_s          median over `repeats` runs of the compiled program, blocking on every output, after one
                  untimed warm-up run (the first execution pays one-time allocation costs).
  nfe_mean        mean NFE per row; batch_nfe: the forward calls of the batch (Fast-dLLM's count); tokens:
                  generated tokens (up to and including the first end-of-text) summed over the batch;
                  tps = tokens / wall_s; tpf = tokens / total NFE over the batch.
  tokens_computed_mean: mean per row of the canvas positions the network recomputed (Generation.tokens_computed).
  head, temp_bytes  the decode head implementation, and the compiled program's temporary buffer bytes from XLA's
                  memory analysis (the peak working memory beside weights, arguments and outputs).
  iterations      loop iterations of the run (a batch step; rows in lockstep), block_iterations per block.
  replay_s        median wall of the *replay*: one compiled program that makes exactly the network calls the run
                  made (`dlm.engine.calls.NetworkCalls`: the same forward programs, cache windows, number of
                  iterations per block, inside one loop, the sampler's head statistics included) and no sampler
                  work.  Each iteration writes one canvas slot so that no call is loop-invariant.
  overhead_ratio  wall_s / replay_s: >= 1 up to timing noise; the excess is what the sampler, the engine's
                  bookkeeping (commits, counts, end-of-text checks) and the loop cost beside the network.
                  overhead_ratio_min divides the fastest runs (less sensitive to a busy machine).
The denominator is never a forward timed on its own: that pays a dispatch the in-loop forward does not.
"""

from __future__ import annotations

import functools
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm.engine.cache import DEFAULT_WINDOW
from dlm.engine.calls import NetworkCalls
from dlm.engine.generate import EngineSpec, _generate_jit, _prepare, _result
from dlm.kernels.head import LOGITS, HeadRequest


def _fold(stats) -> jax.Array:
  """A scalar that depends on every statistic the head returned (so none of them is dead code)."""
  total = jnp.float32(0)
  for leaf in jax.tree.leaves(stats):
    total = total + jnp.sum(jnp.where(jnp.isfinite(leaf), leaf, 0).astype(jnp.float32))
  return total


@functools.partial(jax.jit, static_argnames=("graphdef", "spec", "cfg_scale", "answer_view", "verify", "request",
                                             "verify_request"))
def _replay_jit(graphdef, state, prompts, prompt_valid, block_iterations, calls_made, key, *, spec: EngineSpec,
                cfg_scale: float, answer_view: bool = False, verify: bool = False, request: HeadRequest = LOGITS,
                verify_request: HeadRequest = LOGITS):
  """The run's network calls and nothing else -> a scalar that depends on every head statistic.

  answer_view / verify mirror the sampler's `view_span == "answer"` (the head over every answer slot) and
  `verify_rows` (the forward with WINO's shadow rows, and the head over them); request / verify_request are the
  sampler's head requests, computed by the run's head implementation."""
  net = nnx.merge(graphdef, state)
  if spec.attention != "xla":
    net.set_attention(spec.attention)
  calls = NetworkCalls(net, prompts, prompt_valid, gen_length=spec.gen_length, block_length=spec.block_length,
                       cfg_scale=cfg_scale, plan=spec.plan, head_impl=spec.head, head_blocks=spec.head_blocks)
  p, bk, last_block = prompts.shape[1], spec.block_length, spec.num_blocks - 1

  def body(i, c):
    tokens, kv, block, step, acc = c
    start = p + block * bk
    k_step = jax.random.fold_in(key, i)
    view_start, view_length = (p, spec.gen_length) if answer_view else (start, bk)
    if spec.plan is None:
      if verify:
        hidden, shadow = calls.forward_with_shadow(tokens, start)
        shadow_tokens = jax.lax.dynamic_slice_in_dim(tokens, start, bk, axis=1)
        acc = acc + _fold(calls.head(shadow, None, verify_request, key=k_step, tokens=shadow_tokens))
      else:
        hidden = calls.forward(tokens)
      hidden_block, uncond = calls.block_hidden(tokens, hidden, view_start, view_length)
    else:
      hidden_block, uncond, kv, _ = calls.cached(tokens, kv, start, block, step)
    view_tokens = jax.lax.dynamic_slice_in_dim(tokens, view_start, view_length, axis=1)
    acc = acc + _fold(calls.head(hidden_block, uncond, request, key=k_step, tokens=view_tokens))
    tokens = jax.lax.dynamic_update_slice_in_dim(
        tokens, jnp.full((tokens.shape[0], 1), net.cfg.eos_id, jnp.int32), start + jnp.minimum(step, bk - 1), axis=1)
    done = step + 1 >= block_iterations[block]
    block = jnp.where(done, jnp.minimum(block + 1, last_block), block)
    return tokens, kv, block, jnp.where(done, 0, step + 1), acc

  init = (calls.initial_tokens(prompts), calls.empty_kv(), jnp.int32(0), jnp.int32(0), jnp.float32(0))
  return jax.lax.fori_loop(0, calls_made, body, init)[-1]


def bench(model, prompts, valid=None, *, sampler, gen_length: int, block_length: int | None = None,
          cache: str = "none", window: int = DEFAULT_WINDOW, repeats: int = 3, key: jax.Array | None = None,
          max_nfe: int | None = None, head: str = "auto", head_blocks=None, attention: str = "auto") -> dict:
  """Compile once, run `repeats` times beside the replay of its network calls; -> a JSON-ready dict (module
  docstring).  head / head_blocks: the decode head implementation (`generate`'s options)."""
  if not isinstance(repeats, int) or repeats <= 0:
    raise ValueError(f"{repeats=} must be a positive int")
  prompts = jnp.asarray(prompts, jnp.int32)
  valid = jnp.ones(prompts.shape, bool) if valid is None else jnp.asarray(valid, bool)
  args, statics = _prepare(model, prompts, valid, sampler=sampler, gen_length=gen_length,
                           block_length=block_length, cache=cache, window=window, max_nfe=max_nfe, key=key,
                           head=head, head_blocks=head_blocks, attention=attention)
  spec = statics["spec"]
  t0 = time.perf_counter()
  compiled = _generate_jit.lower(*args, **statics).compile()
  compile_s = time.perf_counter() - t0
  memory = compiled.memory_analysis()
  temp_bytes = None if memory is None else int(memory.temp_size_in_bytes)
  dynamic = args[1:]  # the compiled program takes the traced arguments only (graphdef is static)

  out, aux = jax.block_until_ready(compiled(*dynamic))  # warm-up
  # With no-change reuse (cache 'none' only) a skipped iteration made no call: replay the calls made.
  block_iterations = np.asarray(aux["block_iterations"])
  iterations, calls_made = int(aux["iterations"]), int(out.batch_nfe)
  replay_args = (*args[:4], jnp.asarray(block_iterations, jnp.int32), jnp.int32(calls_made), args[4])
  replay = functools.partial(_replay_jit, spec=spec, cfg_scale=float(sampler.cfg_scale),
                             answer_view=sampler.view_span == "answer", verify=bool(sampler.verify_rows),
                             request=sampler.head_request, verify_request=sampler.verify_request)
  if model.cfg.block_causal or sampler.draft_copies:  # the replay composes NetworkCalls over the caller's canvas;
    # a block-causal model decodes a placed one (dlm/engine/block_layout.py) and its store/window program, like
    # the candidate copies' B * K rows (CandidateCopies), has no replay yet
    replay = None
  else:
    jax.block_until_ready(replay(*replay_args))  # compile and warm up
  walls, replay_walls = [], []
  for _ in range(repeats):  # interleaved, so a load change on the machine hits both sides alike
    t0 = time.perf_counter()
    out, aux = jax.block_until_ready(compiled(*dynamic))
    walls.append(time.perf_counter() - t0)
    if replay is not None:
      t0 = time.perf_counter()
      jax.block_until_ready(replay(*replay_args))
      replay_walls.append(time.perf_counter() - t0)
  wall_s = statistics.median(walls)
  replay_s = statistics.median(replay_walls) if replay_walls else None
  # the caller's view (a block-causal model's placed canvas cut back to each row's G slots): tokens and rows as
  # `generate` returns them
  out = _result(model, out, args, prompts, spec, gen_length, False)
  nfe = np.asarray(out.nfe)
  tokens = int(np.asarray(out.gen_tokens).sum())
  from dlm.eval.compare import summarize_extras
  from dlm.parallel.mesh import mesh_spec_of
  extras = summarize_extras(model, out.extras or {}, nfe, int(prompts.shape[1]) + gen_length)
  return dict(**extras,
      cache=cache, window=window if cache == "window" else None, device=jax.devices()[0].device_kind,
      mesh=None if spec.mesh is None else str(mesh_spec_of(spec.mesh)),
      head=spec.head, attention=spec.attention, temp_bytes=temp_bytes,
      batch=int(prompts.shape[0]), prompt_length=int(prompts.shape[1]), compile_s=compile_s, wall_s=wall_s,
      walls=walls, replay_walls=replay_walls, nfe_mean=float(nfe.mean()), batch_nfe=int(out.batch_nfe), tokens=tokens, tps=tokens / wall_s,
      tpf=tokens / max(int(nfe.sum()), 1), tokens_computed_mean=float(np.asarray(out.tokens_computed).mean()),
      iterations=iterations, block_iterations=block_iterations.tolist(), calls_made=calls_made, replay_s=replay_s,
      overhead_ratio=None if replay_s is None else wall_s / replay_s,
      overhead_ratio_min=None if replay_s is None else min(walls) / min(replay_walls),
      finished_frac=float(np.asarray(out.finished).mean()))
