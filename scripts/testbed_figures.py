"""The testbed's five regime figures (issue 14) from a `dlm compare` results.json of configs/compare_long.yaml.

    dlm compare --grid configs/compare_long.yaml --tasks chain sudoku hmm128 --n 64 --batch 64 --out runs/long
    python scripts/testbed_figures.py runs/long/results.json

1. one token per step (LowConfidence, steps = G): `chain` and `sudoku` scores (targets >= 0.90 and >= 0.80);
2. fixed 4 tokens per step (steps = G/4): the loss in points on `chain` and `sudoku` (target >= 15 on one);
3. Threshold(0.9) against one token per step on `chain`: score difference (target within 2 points) and NFE ratio
   (target >= 3x);
4. share of `chain`'s 256 answer slots that are EOS padding (target >= 50%), reference answers and generated;
5. `dual` cache against `none` on `chain` (threshold 0.9): score difference and wall-clock speedup.
Each figure is printed with its 95% interval where it has one; ratios are within this one run.
"""

from __future__ import annotations

import json
import sys


def pick(records, task, sampler, **want):
  for r in records:
    if r["task"] != task or r["sampler"] != sampler:
      continue
    label = dict(kv.split("=", 1) for kv in r["label"].split(",") if "=" in kv)
    if all(label.get(k) == str(v) for k, v in want.items()) and all(
        k in want for k in label if k in ("cache", "stop_at_eos")):
      return r
  raise SystemExit(f"no record for {task} {sampler} {want} in the results; run configs/compare_long.yaml")


def main(path: str) -> None:
  records = json.loads(open(path).read())
  out = []
  for task in ("chain", "sudoku"):
    one = pick(records, task, "low_confidence", steps="G")
    four = pick(records, task, "low_confidence", steps="G/4")
    out.append(f"1. {task}: one token per step {one['score']:.3f} ± {one['score_ci95']:.3f} (NFE {one['nfe_mean']:.0f})")
    out.append(f"2. {task}: 4 per step {four['score']:.3f} ± {four['score_ci95']:.3f} (NFE {four['nfe_mean']:.0f}), "
               f"loss {100 * (one['score'] - four['score']):.1f} points")
  one = pick(records, "chain", "low_confidence", steps="G")
  thr = pick(records, "chain", "threshold", tau=0.9)
  out.append(f"3. chain: threshold 0.9 {thr['score']:.3f} ± {thr['score_ci95']:.3f} at NFE {thr['nfe_mean']:.1f}: "
             f"{100 * (thr['score'] - one['score']):+.1f} points at {one['nfe_mean'] / thr['nfe_mean']:.2f}x "
             f"fewer NFE")
  out.append(f"4. chain (gen {one['gen_length']}): EOS padding {100 * one['reference_eos_fraction']:.1f}% of answer "
             f"slots in the reference answers, {100 * one['eos_fraction']:.1f}% in one-token-per-step outputs")
  dual = pick(records, "chain", "threshold", tau=0.9, cache="dual")
  out.append(f"5. chain: threshold 0.9 dual {dual['score']:.3f} ± {dual['score_ci95']:.3f} vs none "
             f"{thr['score']:.3f} ± {thr['score_ci95']:.3f} ({100 * (dual['score'] - thr['score']):+.1f} points); "
             f"wall {thr['wall_s']:.1f} s -> {dual['wall_s']:.1f} s ({thr['wall_s'] / dual['wall_s']:.2f}x), "
             f"TPS {thr['tps']:.0f} -> {dual['tps']:.0f}")
  try:
    eos = pick(records, "chain", "threshold", tau=0.9, stop_at_eos=True)
    out.append(f"   chain: threshold 0.9 with stop_at_eos {eos['score']:.3f} at NFE {eos['nfe_mean']:.1f} "
               f"(wall {thr['wall_s'] / eos['wall_s']:.2f}x faster than without)")
  except SystemExit:
    pass
  print("\n".join(out))


if __name__ == "__main__":
  main(sys.argv[1] if len(sys.argv) > 1 else "runs/long/results.json")
