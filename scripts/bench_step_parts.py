"""Where one denoising step's time goes at batch 1: the network forward and the decode head, timed alone.

    python scripts/bench_step_parts.py                 # the 157M shape of scripts/bench_suite.py
    python scripts/bench_step_parts.py --rows 8 32 64 128 256 512

Prints one JSON line per part (minimum and median of --repeats runs after a warm-up, milliseconds):
  forward_full     the network over the whole canvas (prompt 32 + answer 64 = 96 tokens): cache 'none'
  forward_window   32 tokens against a filled KV cache of 96: a dual-cache step
  head_<impl>_<N>  the greedy head request (sample + its probability) over N rows, 'ref' and 'chunked'
  matmul_<N>       the bare [N, D] x [D, V] product the head cannot avoid
  read_weights     one pass over all parameters' bytes (a reduction): the memory floor of a step
A step of `dlm bench` costs about forward + head; docs/perf.md §4 reads these against the end-to-end figures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

sys.path.insert(0, str(Path(__file__).resolve().parent))
from bench_suite import SHAPES  # noqa: E402


def _time(fn, *args, repeats: int) -> dict:
  jax.block_until_ready(fn(*args))
  walls = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    walls.append(1000 * (time.perf_counter() - t0))
  return dict(min_ms=round(min(walls), 2), median_ms=round(statistics.median(walls), 2))


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  ap.add_argument("--shape", default="157m", choices=sorted(SHAPES))
  ap.add_argument("--rows", type=int, nargs="+", default=[32], help="head rows N (batch x view slots)")
  ap.add_argument("--repeats", type=int, default=15)
  args = ap.parse_args(argv)
  from dlm.engine.cache import full_forward, window_forward
  from dlm.kernels.head import HeadRequest, head_statistics
  from dlm.model.config import ModelConfig
  from dlm.model.transformer import init_model
  cfg = ModelConfig(**SHAPES[args.shape])
  model = init_model(cfg, seed=0)
  graphdef, state = nnx.split(model)
  tokens = jnp.asarray(np.random.default_rng(0).integers(3, 126000, (1, 96)), jnp.int32)
  positions, valid = jnp.arange(96)[None], jnp.ones((1, 96), bool)

  def emit(part, result):
    print(json.dumps(dict(part=part, **result)), flush=True)

  full = jax.jit(lambda st: full_forward(nnx.merge(graphdef, st), tokens, positions, valid))
  emit("forward_full", _time(full, state, repeats=args.repeats))
  _, cache = full(state)
  window = jax.jit(lambda st, kv, start: window_forward(nnx.merge(graphdef, st), tokens, positions, valid, kv,
                                                        start, 32))
  emit("forward_window", _time(window, state, cache, jnp.int32(32), repeats=args.repeats))
  weight, v_axis = model.head_weight()
  request = HeadRequest(sample=True)
  for n in args.rows:
    hidden = jax.random.normal(jax.random.key(0), (n, cfg.d_model)) * 0.05
    for impl in ("ref", "chunked"):
      head = jax.jit(lambda h, w, impl=impl: head_statistics(h, w, request, mask_id=cfg.mask_id, v_axis=v_axis,
                                                              impl=impl))
      emit(f"head_{impl}_{n}", _time(head, hidden, weight, repeats=args.repeats))
    emit(f"matmul_{n}", _time(jax.jit(lambda h, w: h @ w), hidden, weight, repeats=args.repeats))
  leaves = jax.tree.leaves(nnx.state(model, nnx.Param))
  read = jax.jit(lambda xs: sum(jnp.sum(x) for x in xs))
  result = _time(read, leaves, repeats=args.repeats)
  gigabytes = sum(x.nbytes for x in leaves) / 1e9
  emit("read_weights", dict(result, gigabytes=round(gigabytes, 3),
                            gb_per_s=round(gigabytes / (result["min_ms"] / 1000), 1)))
  return 0


if __name__ == "__main__":
  sys.exit(main())
