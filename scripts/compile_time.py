"""Compile time of the whole generation program at a real model's shape, on abstract arrays (no weights).

    python scripts/compile_time.py                      # LLaDA-8B shape, every cache policy
    python scripts/compile_time.py --preset dream-7b --caches dual prefix

Builds the network with `nnx.eval_shape` (shapes and dtypes only), lowers `generate`'s jitted program with
`jax.ShapeDtypeStruct` prompts and compiles it for the local backend; prints one JSON line per cache policy
(lower_s, compile_s).  Issue 10's target: every policy <= 10 s on CPU at LLaDA-8B shape (32 layers, bf16,
batch 8, prompt 128, gen 256, block 32).
"""

from __future__ import annotations

import argparse
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

from dlm.engine.generate import _generate_jit, _prepare
from dlm.model.config import PRESETS
from dlm.model.transformer import Transformer
from dlm.samplers.registry import make_sampler


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--preset", default="llada-8b", choices=sorted(PRESETS))
  ap.add_argument("--caches", nargs="+", default=["none", "dual", "prefix", "window"])
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--prompt-length", type=int, default=128)
  ap.add_argument("--gen-length", type=int, default=256)
  ap.add_argument("--block-length", type=int, default=32)
  ap.add_argument("--sampler", default="low_confidence")
  ap.add_argument("--layers", type=int, default=None, help="override the preset's depth")
  args = ap.parse_args(argv)
  overrides = {} if args.layers is None else {"n_layers": args.layers}
  cfg = PRESETS[args.preset](**overrides)
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  sampler = make_sampler(args.sampler, steps=args.gen_length)
  prompts = jnp.zeros((args.batch, args.prompt_length), jnp.int32)  # only its shape is used below
  for cache in args.caches:
    jargs, statics = _prepare(model, prompts, sampler=sampler, gen_length=args.gen_length,
                              block_length=args.block_length, cache=cache)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x,
                            jargs[1:])
    t0 = time.perf_counter()
    lowered = _generate_jit.lower(jargs[0], *abstract, **statics)
    t1 = time.perf_counter()
    lowered.compile()
    t2 = time.perf_counter()
    print(json.dumps(dict(preset=args.preset, n_layers=cfg.n_layers, cache=cache, lower_s=round(t1 - t0, 2),
                          compile_s=round(t2 - t1, 2), total_s=round(t2 - t0, 2), backend=jax.default_backend(),
                          jax=jax.__version__)), flush=True)


if __name__ == "__main__":
  main()
