"""Replay overhead ratio of every registered sampler at its default settings (issue 13 §3).

    python scripts/bench_overhead.py [--gen-length 256] [--block-length 32] [--batch 8] [--caches none dual]
                                     [--repeats 3] [--out runs/overhead]

Runs `dlm.eval.bench.bench` on the bundled model with random prompts of length 16 and prints a Markdown table
(wall, replay, ratio of medians, ratio of minima, NFE); writes results.json beside it when --out is given.
Fixed-step samplers get steps = gen_length (one token per step), as `dlm bench` does; samplers that need cache
'none' (prophet, wino) are skipped for the other policies.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
from pathlib import Path

import numpy as np

from dlm.eval.bench import bench
from dlm.io.params import load_model
from dlm.samplers import SAMPLERS, make_sampler

BUNDLED = Path(__file__).resolve().parents[1] / "dlm" / "assets" / "bundled"


def main():
  ap = argparse.ArgumentParser()
  ap.add_argument("--gen-length", type=int, default=256)
  ap.add_argument("--block-length", type=int, default=32)
  ap.add_argument("--batch", type=int, default=8)
  ap.add_argument("--caches", nargs="+", default=["none", "dual"])
  ap.add_argument("--samplers", nargs="+", default=sorted(SAMPLERS))
  ap.add_argument("--repeats", type=int, default=3)
  ap.add_argument("--out", default=None)
  args = ap.parse_args()
  model = load_model(BUNDLED)
  rng = np.random.default_rng(0)
  prompts = rng.integers(3, model.cfg.vocab_size, size=(args.batch, 16)).astype(np.int32)
  prompts[prompts == model.cfg.mask_id] = 3
  rows = []
  print("| sampler | cache | wall s | replay s | ratio (medians) | ratio (minima) | NFE/row | batch NFE |")
  print("|---|---|---|---|---|---|---|---|")
  for name in args.samplers:
    fields = {f.name for f in dataclasses.fields(SAMPLERS[name])}
    settings = {"steps": args.gen_length} if "steps" in fields else {}
    sampler = make_sampler(name, **settings)
    for cache in args.caches:
      if cache != "none" and (sampler.view_span != "block" or sampler.verify_rows):
        continue
      r = bench(model, prompts, sampler=sampler, gen_length=args.gen_length, block_length=args.block_length,
                cache=cache, repeats=args.repeats)
      r.update(sampler=name, settings=sampler.settings())
      rows.append(r)
      print(f"| {name} | {cache} | {r['wall_s']:.2f} | {r['replay_s']:.2f} | {r['overhead_ratio']:.3f} | "
            f"{r['overhead_ratio_min']:.3f} | {r['nfe_mean']:.1f} | {r['batch_nfe']} |", flush=True)
  if args.out:
    Path(args.out).mkdir(parents=True, exist_ok=True)
    (Path(args.out) / "results.json").write_text(json.dumps(rows, indent=1, default=str))


if __name__ == "__main__":
  main()
