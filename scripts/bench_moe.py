"""Time one MoE layer at a release's shape against a dense SwiGLU of the same active width, on this machine.

    python scripts/bench_moe.py                               # LLaDA2.0-mini's MoE layer, 8 x 96 tokens, float32
    python scripts/bench_moe.py --preset llada2-flash --tokens 2048 --dtype bfloat16 --dispatch grouped

Builds the layer's parameters directly (random, no network), jits four functions and reports the median of
`--repeats` warm runs of each: the router (gate matmul + routing rule), the expert dispatch alone (`--dispatch`:
tiled / grouped / dense), the whole MoE block (router + dispatch + shared expert), and a dense SwiGLU whose
width is the *active* width of one token (k x expert width + shared width).  One JSON line; the ratio
moe / dense is the price of routing at equal active FLOPs on this backend.
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
from flax import nnx

from dlm.model.config import PRESETS
from dlm.model.layers import SwiGLU
from dlm.model.moe import DISPATCH, MoE, resolve_dispatch


def _median_time(fn, *args, repeats: int) -> float:
  jax.block_until_ready(fn(*args))  # compile + warm
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - t0)
  return statistics.median(times)


def _module_fn(module):
  """A jitted x -> module(x) taking the module's state as an argument (split/merge, as the engine runs the
  network; `nnx.jit` re-walks the module on every call, seconds at 3 GB of experts)."""
  graphdef, state = nnx.split(module)
  fn = jax.jit(lambda st, v: nnx.merge(graphdef, st)(v))
  return lambda v: fn(state, v)


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="llada2-mini", choices=sorted(k for k, f in PRESETS.items() if f().moe))
  ap.add_argument("--tokens", type=int, default=8 * 96, help="tokens through the layer (batch x canvas)")
  ap.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
  ap.add_argument("--dispatch", default="auto", choices=["auto", *DISPATCH])
  ap.add_argument("--repeats", type=int, default=5)
  args = ap.parse_args(argv)
  cfg = PRESETS[args.preset](dtype=args.dtype, param_dtype=args.dtype, n_layers=2)
  moe = MoE(cfg, rngs=nnx.Rngs(0))
  active = cfg.experts_per_token * cfg.expert_hidden + cfg.shared_expert_hidden
  dense = SwiGLU(cfg, active, rngs=nnx.Rngs(1))
  x = jax.random.normal(jax.random.key(2), (1, args.tokens, cfg.d_model), cfg.compute_dtype)
  dispatch = resolve_dispatch(args.dispatch)
  moe.dispatch = dispatch
  flat = x[0]
  chosen, weights = _module_fn(moe.router)(flat)
  experts = tuple(p[...] for p in (moe.gate_proj, moe.up_proj, moe.down_proj))
  times = dict(
      router=_median_time(_module_fn(moe.router), flat, repeats=args.repeats),
      dispatch=_median_time(jax.jit(DISPATCH[dispatch]), flat, chosen, weights, *experts, repeats=args.repeats),
      moe=_median_time(_module_fn(moe), x, repeats=args.repeats),
      dense_same_active=_median_time(_module_fn(dense), x, repeats=args.repeats))
  record = dict(preset=args.preset, tokens=args.tokens, dtype=args.dtype, dispatch=dispatch,
                experts=cfg.n_experts, k=cfg.experts_per_token, active_width=active,
                backend=jax.default_backend(), jax=jax.__version__,
                **{f"{k}_ms": round(v * 1e3, 2) for k, v in times.items()},
                moe_over_dense=round(times["moe"] / times["dense_same_active"], 2),
                dispatch_share_of_moe=round(times["dispatch"] / times["moe"], 2))
  print(json.dumps(record), flush=True)


if __name__ == "__main__":
  main()
