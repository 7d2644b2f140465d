"""Wall-clock benchmark of one generation setting (DESIGN.md §3 metrics), per cache policy.

  compile_s       lowering + XLA compilation of the generation program (ahead of time, not run).
  wall_s          median over `repeats` runs of the compiled program, blocking on every output, after one
                  untimed warm-up run (the first execution pays one-time allocation costs).
  nfe_mean        mean NFE per row; tokens: generated tokens (up to and including the first end-of-text) summed
                  over the batch; tps = tokens / wall_s; tpf = tokens / total NFE over the batch.
  tokens_computed_mean: mean per row of the canvas positions the network recomputed (Generation.tokens_computed).
  iterations      loop iterations of the run (a batch step; rows in lockstep), block_iterations per block.
  refresh_s       median wall of one full forward of the canvas: what 'none' runs at every iteration and the
                  cached policies at each block entry.  Under CFG 'none' runs two forwards of B rows per iteration
                  and the cached policies one of 2B rows; each is timed as the engine runs it.
  forward_s       median wall of the forward one iteration runs: 'none' = refresh_s; dual/window = the window
                  forward against a cache; prefix (one window width per block) = the mean over its cached
                  iterations of the width each ran (window_s lists the width -> seconds).  Each forward program
                  (plus the head on the active block) is jitted and timed alone.
  network_s       the time the loop would take if it ran the network only:
                    sum over blocks b of  [it_b > 0] * refresh_s + max(it_b - 1, 0) * window_s[width of b]
                  with it_b the loop iterations spent in block b ('none': iterations * refresh_s).
  overhead_ratio  wall_s / network_s.  1.0 means the sampler, the loop and the cache writes cost nothing beside the
                  network; the ratio is per loop iteration, not per row NFE, because a batch iteration runs the
                  network once for all rows whatever their own NFE.
"""

from __future__ import annotations

import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm.engine.cache import DEFAULT_WINDOW, block_slots, full_forward, window_forward
from dlm.engine.generate import _generate_jit, _prepare
from dlm.model.transformer import positions_from_valid


def _median_wall(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile and warm up
  walls = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    walls.append(time.perf_counter() - t0)
  return statistics.median(walls)


def _forward_times(model, prompts, valid, *, spec, cfg_scale: float, repeats: int) -> tuple[float, dict]:
  """-> (refresh_s, {window width: seconds}) for the forward programs the engine runs under `spec`."""
  cfg = model.cfg
  b, p = prompts.shape
  g, bk = spec.gen_length, spec.block_length
  rows = jnp.concatenate([prompts, jnp.full((b, g), cfg.mask_id, jnp.int32)], axis=1)  # [B, L] entry canvas
  valid = jnp.concatenate([valid, jnp.ones((b, g), bool)], axis=1)  # [B, L]
  positions = positions_from_valid(valid)
  guided = cfg_scale > 0
  graphdef, state = nnx.split(model)
  start = p  # the first block: its slots are masked, as at every block entry
  shift = cfg.logit_shift

  def head(net, hidden, offset):
    return net.logits(jnp.take(hidden, block_slots(start, bk, shift) - offset, axis=1), shift=False)

  if spec.plan is None:
    @jax.jit
    def full(state, rows):
      net = nnx.merge(graphdef, state)
      # 'none' under CFG: two forwards of B rows (conditional, prompt-masked), as the engine runs them.
      return [head(net, full_forward(net, r, positions, valid)[0], 0) for r in ([rows, rows] if guided else [rows])]

    return _median_wall(full, state, rows, repeats=repeats), {}

  fps = 2 if guided else 1
  rows, valid, positions = (jnp.tile(x, (fps, 1)) for x in (rows, valid, positions))  # [R, L]

  @jax.jit
  def refresh(state, rows):
    net = nnx.merge(graphdef, state)
    hidden, kv = full_forward(net, rows, positions, valid)
    return head(net, hidden, 0), kv

  refresh_s = _median_wall(refresh, state, rows, repeats=repeats)
  _, kv = refresh(state, rows)
  windows = {}
  for width in spec.plan.programs:
    block = spec.plan.widths.index(width)
    ws = spec.plan.starts[block]
    window_start = p + block * bk

    @jax.jit
    def window(state, rows, kv, ws, width=width, window_start=window_start):
      net = nnx.merge(graphdef, state)
      hidden, kv = window_forward(net, rows, positions, valid, kv, ws, width)
      idx = block_slots(window_start, bk, shift) - ws
      return net.logits(jnp.take(hidden, idx, axis=1), shift=False), kv

    windows[width] = _median_wall(window, state, rows, kv, jnp.int32(ws), repeats=repeats)
  return refresh_s, windows


def bench(model, prompts, valid=None, *, sampler, gen_length: int, block_length: int | None = None,
          cache: str = "none", window: int = DEFAULT_WINDOW, repeats: int = 3, key: jax.Array | None = None,
          max_nfe: int | None = None) -> dict:
  """Compile once, run `repeats` times, time the forward programs; -> a JSON-ready dict (module docstring)."""
  if not isinstance(repeats, int) or repeats <= 0:
    raise ValueError(f"{repeats=} must be a positive int")
  prompts = jnp.asarray(prompts, jnp.int32)
  valid = jnp.ones(prompts.shape, bool) if valid is None else jnp.asarray(valid, bool)
  args, statics = _prepare(model, prompts, valid, sampler=sampler, gen_length=gen_length,
                           block_length=block_length, cache=cache, window=window, max_nfe=max_nfe, key=key)
  spec = statics["spec"]
  t0 = time.perf_counter()
  compiled = _generate_jit.lower(*args, **statics).compile()
  compile_s = time.perf_counter() - t0
  dynamic = args[1:]  # the compiled program takes the traced arguments only (graphdef is static)

  jax.block_until_ready(compiled(*dynamic))  # warm-up
  walls = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out, aux = jax.block_until_ready(compiled(*dynamic))
    walls.append(time.perf_counter() - t0)
  wall_s = statistics.median(walls)

  refresh_s, window_s = _forward_times(model, prompts, valid, spec=spec, cfg_scale=sampler.cfg_scale,
                                       repeats=repeats)
  block_iterations = np.asarray(aux["block_iterations"])
  iterations = int(aux["iterations"])
  if spec.plan is None:
    forward_s = refresh_s
    network_s = iterations * refresh_s
  else:
    cached_steps = np.maximum(block_iterations - 1, 0)  # [num_blocks] non-refresh iterations per block
    step_s = np.asarray([window_s[w] for w in spec.plan.widths])  # [num_blocks]
    network_s = float((block_iterations > 0).sum() * refresh_s + (cached_steps * step_s).sum())
    forward_s = float((cached_steps * step_s).sum() / cached_steps.sum()) if cached_steps.sum() else float(
        step_s.mean())
  nfe = np.asarray(out.nfe)
  tokens = int(np.asarray(out.gen_tokens).sum())
  return dict(
      cache=cache, window=window if cache == "window" else None, device=jax.devices()[0].device_kind,
      batch=int(prompts.shape[0]), prompt_length=int(prompts.shape[1]), compile_s=compile_s, wall_s=wall_s,
      walls=walls, nfe_mean=float(nfe.mean()), tokens=tokens, tps=tokens / wall_s,
      tpf=tokens / max(int(nfe.sum()), 1), tokens_computed_mean=float(np.asarray(out.tokens_computed).mean()),
      iterations=iterations, block_iterations=block_iterations.tolist(), refresh_s=refresh_s,
      forward_s=forward_s, window_s={int(k): v for k, v in window_s.items()}, network_s=network_s,
      overhead_ratio=wall_s / network_s if network_s > 0 else None,
      finished_frac=float(np.asarray(out.finished).mean()))
