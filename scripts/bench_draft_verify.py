"""Draft-and-verify against the output it reproduces, on the testbed tasks: identical tokens, NFE ratio, wall.

For each task and cache policy, one token per step (`low_confidence`, steps = the answer length) and `draft_verify`
with each K run on the same prompts; the script checks the answers are identical token for token and prints
NFE per row, the positions recomputed (tokens_computed: K copies cost K times the positions of a plain forward)
and the wall time of a warmed, compiled run (median of --repeats, both sides interleaved).

  python scripts/bench_draft_verify.py --tasks sudoku6 sudoku4_hard hmm chain128 --n 64 --batch 64 \
      --cache none dual --draft-steps 2 4 8 --out docs/perf/draft_verify.json
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

import jax
import numpy as np


def main(argv=None):
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--model", default="testbed")
  ap.add_argument("--tasks", nargs="+", default=["sudoku6", "sudoku4_hard", "hmm"])
  ap.add_argument("--n", type=int, default=64)
  ap.add_argument("--batch", type=int, default=64)
  ap.add_argument("--cache", nargs="+", default=["none", "dual"])
  ap.add_argument("--draft-steps", nargs="+", type=int, default=[2, 4, 8])
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)

  from dlm.engine import generate
  from dlm.io.shipped import load_named
  from dlm.samplers.registry import make_sampler
  from dlm.tasks import get_task
  model, _ = load_named(args.model)
  rows = []
  for name in args.tasks:
    task = get_task(name)
    prompts, valid, _ = task.encode(task.examples(args.n, seed=0))
    prompts, valid = prompts[:args.batch], valid[:args.batch]
    for cache in args.cache:
      kw = dict(gen_length=task.gen_length, block_length=task.block_length, cache=cache)
      samplers = [("low_confidence", make_sampler("low_confidence", steps=task.gen_length))]
      samplers += [(f"draft_verify K={k}", make_sampler("draft_verify", draft_steps=k)) for k in args.draft_steps]
      runs = {label: (lambda s=s: generate(model, prompts, valid, sampler=s, **kw)) for label, s in samplers}
      outs = {label: jax.block_until_ready(run()) for label, run in runs.items()}  # compile and warm up
      walls = {label: [] for label in runs}
      for _ in range(args.repeats):  # interleaved: a load change on the machine hits every side alike
        for label, run in runs.items():
          t0 = time.perf_counter()
          jax.block_until_ready(run())
          walls[label].append(time.perf_counter() - t0)
      base = outs["low_confidence"]
      for label, out in outs.items():
        same = bool(np.array_equal(np.asarray(out.tokens), np.asarray(base.tokens)))
        row = dict(task=name, cache=cache, sampler=label, batch=int(prompts.shape[0]), identical=same,
                   nfe_mean=float(np.asarray(out.nfe).mean()),
                   nfe_ratio=float(np.asarray(base.nfe).mean() / np.asarray(out.nfe).mean()),
                   positions_ratio=float(np.asarray(out.tokens_computed).mean()
                                         / np.asarray(base.tokens_computed).mean()),
                   wall_s=statistics.median(walls[label]),
                   speedup=statistics.median(walls["low_confidence"]) / statistics.median(walls[label]))
        rows.append(row)
        print(json.dumps(row), flush=True)
  print()
  print("| task | cache | sampler | identical | NFE | NFE ratio | positions ratio | wall s | speed-up |")
  print("|---|---|---|---|---|---|---|---|---|")
  for r in rows:
    print(f"| {r['task']} | {r['cache']} | {r['sampler']} | {'yes' if r['identical'] else 'NO'} | "
          f"{r['nfe_mean']:.1f} | {r['nfe_ratio']:.2f} | {r['positions_ratio']:.2f} | {r['wall_s']:.2f} | "
          f"{r['speedup']:.2f} |")
  if args.out:
    path = Path(args.out)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(dict(command="python scripts/bench_draft_verify.py " + " ".join(sys.argv[1:]),
                                   device=jax.devices()[0].device_kind, rows=rows), indent=1))
    tmp.replace(path)
  return 0 if all(r["identical"] for r in rows) else 1


if __name__ == "__main__":
  sys.exit(main())
