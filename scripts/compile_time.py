"""Compile time of the whole generation program at a real model's shape, on abstract arrays (no weights).

    python scripts/compile_time.py                      # LLaDA-8B shape, every cache policy
    python scripts/compile_time.py --preset dream-7b --caches dual prefix
    XLA_FLAGS=--xla_force_host_platform_device_count=16 python scripts/compile_time.py --mesh data=4,tensor=4 \
        --batch 32        # the SPMD program of a 16-chip slice, with XLA's per-device memory figures
    XLA_FLAGS=--xla_force_host_platform_device_count=16 python scripts/compile_time.py --preset llada2-flash \
        --caches block --sampler llada2 --mesh expert=16 --batch 32   # an MoE model's expert-parallel program

Builds the network with `nnx.eval_shape` (shapes and dtypes only), lowers `generate`'s jitted program with
`jax.ShapeDtypeStruct` prompts and compiles it for the local backend; prints one JSON line per cache policy
(lower_s, compile_s).  Issue 10's target: every policy <= 10 s on CPU at LLaDA-8B shape (32 layers, bf16,
batch 8, prompt 128, gen 256, block 32).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import time

import jax
import jax.numpy as jnp
from flax import nnx

from dlm.engine.generate import _generate_jit, _prepare
from dlm.model.config import PRESETS
from dlm.model.transformer import Transformer
from dlm.parallel.mesh import MeshSpec
from dlm.parallel.rules import batch_spec, param_shardings
from dlm.samplers.registry import SAMPLERS, make_sampler


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
  ap.add_argument("--mesh", default=None, help="compile the sharded program for this mesh (fake CPU devices)")
  args = ap.parse_args(argv)
  overrides = {} if args.layers is None else {"n_layers": args.layers}
  cfg = PRESETS[args.preset](**overrides)
  model = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  takes_steps = "steps" in getattr(SAMPLERS.get(args.sampler), "__dataclass_fields__", {})
  sampler = make_sampler(args.sampler, **({"steps": args.gen_length} if takes_steps else {}))
  prompts = jnp.zeros((args.batch, args.prompt_length), jnp.int32)  # only its shape is used below
  mesh = None if args.mesh is None else MeshSpec.parse(args.mesh).make()
  for cache in args.caches:
    jargs, statics = _prepare(model, prompts, sampler=sampler, gen_length=args.gen_length,
                              block_length=args.block_length, cache=cache)
    abstract = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype) if hasattr(x, "shape") else x,
                            jargs[1:])
    if mesh is not None:
      statics["spec"] = dataclasses.replace(statics["spec"], mesh=mesh)
      abstract = _sharded(model, abstract, mesh)
    t0 = time.perf_counter()
    lowered = _generate_jit.lower(jargs[0], *abstract, **statics)
    t1 = time.perf_counter()
    compiled = lowered.compile()
    t2 = time.perf_counter()
    record = dict(preset=args.preset, n_layers=cfg.n_layers, cache=cache, lower_s=round(t1 - t0, 2),
                  compile_s=round(t2 - t1, 2), total_s=round(t2 - t0, 2), backend=jax.default_backend(),
                  jax=jax.__version__)
    memory = compiled.memory_analysis()
    if memory is not None:  # per device for a sharded program
      gib = lambda n: round(n / 2**30, 3)  # noqa: E731
      record.update(mesh=args.mesh, batch=args.batch, argument_gib=gib(memory.argument_size_in_bytes),
                    output_gib=gib(memory.output_size_in_bytes), temp_gib=gib(memory.temp_size_in_bytes))
    print(json.dumps(record), flush=True)


def _sharded(model, abstract, mesh):
  """Abstract (state, prompts, valid, key, max_steps, params) with the shardings `generate` gives them."""
  from jax.sharding import NamedSharding, PartitionSpec as P
  state, prompts, valid, key, max_steps, params, *answer = abstract  # answer: a block-causal placement's
  shardings = param_shardings(model, mesh)
  flat = [(p, v.replace(jax.ShapeDtypeStruct(v.get_value().shape, v.get_value().dtype,
                                             sharding=shardings[".".join(map(str, p))])))
          for p, v in nnx.to_flat_state(state)]
  batch = NamedSharding(mesh, batch_spec(2, mesh=mesh))
  rep = NamedSharding(mesh, P())
  with_sharding = lambda x, s: jax.ShapeDtypeStruct(x.shape, x.dtype, sharding=s)  # noqa: E731
  rows = lambda x: with_sharding(x, NamedSharding(mesh, batch_spec(x.ndim, mesh=mesh)))  # noqa: E731
  placed = [None if a is None else jax.tree.map(rows, a) for a in answer]
  return (nnx.from_flat_state(flat), with_sharding(prompts, batch), with_sharding(valid, batch),
          with_sharding(key, rep), with_sharding(max_steps, rep), jax.tree.map(lambda x: with_sharding(x, rep), params),
          *placed)


if __name__ == "__main__":
  main()
