"""Memory and wall time of the decode head implementations (issue 9's CPU figures for docs/perf.md).

For each vocabulary size: XLA's compiled memory analysis (temporary bytes) and the median wall time of
  ref      the reference: [N, V] float32 logits materialised, then reduced
  chunked  the fused XLA scan over vocabulary tiles (the engine's default)
  pallas   the Pallas kernel (only with --pallas: in interpret mode on CPU it is a correctness tool, not fast)
for a request typical of the confidence samplers (a sample with its clean probability; --request picks others).

  python scripts/bench_head.py                       # N=4096, D=512, V in {32768, 126464}, float32
  python scripts/bench_head.py --n 256 --vocab 126464 --repeats 5
"""

from __future__ import annotations

import argparse
import json
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from dlm.kernels.head import HeadBlocks, HeadRequest, head_statistics
from dlm.kernels.noise import seed_words

REQUESTS = {
    "sample": HeadRequest(sample=True),  # greedy x0 and its probability (LowConfidence, threshold, ...)
    "sample_t1": HeadRequest(sample=True, temperature=1.0),  # Gumbel-max at T = 1 (MDLM ancestral)
    "entropy": HeadRequest(sample=True, entropy=True),  # EB-Sampler
    "top2": HeadRequest(sample=True, top=2),  # Prophet
}


def measure(n, d, vocab, impl, request, blocks, repeats, dtype):
  rng = np.random.default_rng(0)
  hidden = jnp.asarray(rng.normal(size=(n, d)), dtype)
  weight = jnp.asarray(rng.normal(size=(d, vocab)) * d**-0.5, dtype)
  seed = seed_words(jax.random.key(0))

  def run(h, w, s):
    stats = head_statistics(h, w, request, mask_id=vocab - 1, seed=s, v_axis=1, dtype=dtype, impl=impl,
                            blocks=blocks)
    return jax.tree.map(lambda x: x, stats)

  compiled = jax.jit(run).lower(hidden, weight, seed).compile()
  mem = compiled.memory_analysis()
  jax.block_until_ready(compiled(hidden, weight, seed))
  walls = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(compiled(hidden, weight, seed))
    walls.append(time.perf_counter() - t0)
  return dict(impl=impl, n=n, d=d, vocab=vocab, temp_bytes=int(mem.temp_size_in_bytes),
              argument_bytes=int(mem.argument_size_in_bytes), output_bytes=int(mem.output_size_in_bytes),
              wall_s=statistics.median(walls), walls=walls)


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=4096)
  parser.add_argument("--d", type=int, default=512)
  parser.add_argument("--vocab", type=int, nargs="+", default=[32768, 126464])
  parser.add_argument("--request", choices=sorted(REQUESTS), default="sample")
  parser.add_argument("--block-v", type=int, default=HeadBlocks().block_v)
  parser.add_argument("--repeats", type=int, default=3)
  parser.add_argument("--dtype", choices=["float32", "bfloat16"], default="float32")
  parser.add_argument("--pallas", action="store_true")
  args = parser.parse_args()
  impls = ["ref", "chunked"] + (["pallas"] if args.pallas else [])
  blocks = HeadBlocks(block_v=args.block_v)
  rows = []
  for vocab in args.vocab:
    by_impl = {}
    for impl in impls:
      row = measure(args.n, args.d, vocab, impl, REQUESTS[args.request], blocks, args.repeats,
                    jnp.dtype(args.dtype))
      row.update(request=args.request, block_v=args.block_v, dtype=args.dtype)
      by_impl[impl] = row
      rows.append(row)
    for impl in impls[1:]:
      by_impl[impl]["temp_ratio_vs_ref"] = by_impl[impl]["temp_bytes"] / by_impl["ref"]["temp_bytes"]
      by_impl[impl]["wall_ratio_vs_ref"] = by_impl[impl]["wall_s"] / by_impl["ref"]["wall_s"]
  print(json.dumps(dict(device=jax.devices()[0].device_kind, rows=rows), indent=1))


if __name__ == "__main__":
  main()
