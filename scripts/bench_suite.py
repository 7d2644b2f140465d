"""The standing speed record: a fixed set of generation cases, timed the same way on every commit.

    python scripts/bench_suite.py                          # print the figures (JSON lines, then a table row)
    python scripts/bench_suite.py --record docs/perf.md    # ... and append the row to perf.md's history table
    python scripts/bench_suite.py --compare                # also time the default `dlm compare` (about 5 min)
    python scripts/bench_suite.py --heads chunked ref      # an interleaved A/B of two decode heads, per case

Run it before a change to the engine, the network or the head lands, and once more after; compare the two rows
(same machine, same sitting).  It is a benchmark, not a test: nothing in CI runs it.

The cases (issue 30): a random 157M-parameter LLaDA-layout network (D = 512, 8 layers, 8 heads, MLP 1,536,
LLaDA-8B's vocabulary of 126,464, float32, seed 0), batch 1, a random prompt of 32 tokens, 64 new tokens in
blocks of 32; `LowConfidence(steps=64)` and `Threshold(0.9)` with no cache, `Threshold(0.9)` with the prefix and
the dual cache.  `--big` adds LLaDA-8B's real layer shape (D = 4,096, 32 heads, MLP 12,288) at 2 layers.  Each
figure is the median wall time of `--repeats` runs after one warm-up (compilation excluded); the tokens' digest
and the NFE are printed beside it, so two commits that differ in speed can be checked to agree in output.

Only the API every commit since the first engine shares is used (`init_model`, `make_sampler`, `generate`), so
the same file times an old commit installed in its own environment (`--commit` names it in the record).
"""

from __future__ import annotations

import argparse
import datetime
import hashlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time

SHAPES = {
    "157m": dict(vocab_size=126464, d_model=512, n_layers=8, n_heads=8, mlp_hidden=1536, max_len=4096,
                 mask_id=126336, eos_id=126081),
    "8b2l": dict(vocab_size=126464, d_model=4096, n_layers=2, n_heads=32, mlp_hidden=12288, max_len=4096,
                 mask_id=126336, eos_id=126081),
}
# (name, shape, sampler, settings, cache, gen_length, block_length)
CASES = (
    ("lowconf_none", "157m", "low_confidence", dict(steps=64), "none", 64, 32),
    ("threshold_none", "157m", "threshold", dict(tau=0.9), "none", 64, 32),
    ("threshold_prefix", "157m", "threshold", dict(tau=0.9), "prefix", 64, 32),
    ("threshold_dual", "157m", "threshold", dict(tau=0.9), "dual", 64, 32),
)
BIG_CASES = (
    ("8b2l_lowconf_none", "8b2l", "low_confidence", dict(steps=32), "none", 32, 32),
    ("8b2l_threshold_dual", "8b2l", "threshold", dict(tau=0.9), "dual", 32, 32),
)
PROMPT_LENGTH, BATCH = 32, 1
HISTORY_HEADER = "## History: `scripts/bench_suite.py`"


def _time_case(model, prompts, case, repeats: int) -> dict:
  import jax
  import numpy as np
  from dlm.engine.generate import generate
  from dlm.samplers import make_sampler
  name, _, sampler_name, settings, cache, gen_length, block_length = case
  sampler = make_sampler(sampler_name, **settings)

  def run():
    out = generate(model, prompts, sampler=sampler, gen_length=gen_length, block_length=block_length, cache=cache)
    return jax.block_until_ready(out)

  t0 = time.perf_counter()
  out = run()  # compile + warm-up
  first = time.perf_counter() - t0
  walls = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    out = run()
    walls.append(time.perf_counter() - t0)
  tokens = np.asarray(out.tokens)
  return dict(case=name, wall_s=round(statistics.median(walls), 3), walls=[round(w, 3) for w in walls],
              first_call_s=round(first, 2), nfe=int(np.asarray(out.nfe).sum()),
              digest=hashlib.sha1(tokens.tobytes()).hexdigest()[:10])


def _head_ab(model, prompts, case, repeats: int, heads: list[str]) -> dict:
  """One case with each decode head, the timed runs interleaved (head 1, head 2, head 1, ...) in this process,
  so a load change on the machine hits every side alike; -> the fastest and median run per head, and whether the
  heads gave the same tokens."""
  import jax
  import numpy as np
  from dlm.engine.generate import generate
  from dlm.samplers import make_sampler
  name, _, sampler_name, settings, cache, gen_length, block_length = case
  sampler = make_sampler(sampler_name, **settings)

  def run(head):
    return jax.block_until_ready(generate(model, prompts, sampler=sampler, gen_length=gen_length,
                                          block_length=block_length, cache=cache, head=head))

  tokens = {head: np.asarray(run(head).tokens) for head in heads}  # compile + warm-up
  walls = {head: [] for head in heads}
  for _ in range(repeats):
    for head in heads:
      t0 = time.perf_counter()
      run(head)
      walls[head].append(time.perf_counter() - t0)
  first = heads[0]
  return dict(case=name, **{f"{h}_min_s": round(min(w), 3) for h, w in walls.items()},
              **{f"{h}_median_s": round(statistics.median(w), 3) for h, w in walls.items()},
              **{f"{h}/{first}": round(min(walls[h]) / min(walls[first]), 3) for h in heads[1:]},
              same_tokens=all((t == tokens[first]).all() for t in tokens.values()))


def _compare_wall() -> float:
  """Wall time of the default `dlm compare` (the README's main job) in a fresh process."""
  import tempfile
  with tempfile.TemporaryDirectory() as out:
    t0 = time.perf_counter()
    subprocess.run([sys.executable, "-m", "dlm", "compare", "--out", os.path.join(out, "c")], check=True,
                   stdout=subprocess.DEVNULL)
    return time.perf_counter() - t0


def _commit() -> str:
  try:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True,
                          check=True).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    return "unknown"


def _machine() -> str:
  import jax
  return f"{jax.devices()[0].device_kind}, {os.cpu_count()} cores, jax {jax.__version__}, py{platform.python_version()}"


def append_history(path: str, row: dict, columns: list[str]) -> None:
  """Append one row to the history table at the end of `path` (the table and its header are made if absent);
  written to a temporary file and renamed, so an interrupted run never leaves the file half-written."""
  text = open(path).read() if os.path.exists(path) else ""
  header = ["commit", "date", "machine", *columns]
  if HISTORY_HEADER not in text:
    text = text.rstrip("\n") + (
        f"\n\n{HISTORY_HEADER}\n\nOne row per run of `python scripts/bench_suite.py --record docs/perf.md` "
        "(median wall seconds of each case; the cases are in the script's docstring).  Compare rows of the same "
        "machine only, and read them as a record, not as ratios: on a shared VM one sitting's medians move by up to "
        "a third; a ratio needs both sides interleaved in one process (`--heads`, or `dlm bench`'s replay).\n\n"
        "| " + " | ".join(header) + " |\n|" + "---|" * len(header) + "\n")
  cells = [row.get(c, "") for c in header]
  text = text.rstrip("\n") + "\n| " + " | ".join(str(c) for c in cells) + " |\n"
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(text)
  os.replace(tmp, path)


def main(argv=None) -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
  parser.add_argument("--repeats", type=int, default=3, help="timed runs per case after the warm-up (default 3)")
  parser.add_argument("--cases", nargs="+", help="run only these cases (default: all)")
  parser.add_argument("--big", action="store_true", help="add LLaDA-8B's layer shape at 2 layers (slow on CPU)")
  parser.add_argument("--compare", action="store_true", help="add the default `dlm compare` wall time")
  parser.add_argument("--record", metavar="PERF_MD", help="append the figures as one row of this file's history")
  parser.add_argument("--commit", help="the commit to name in the record (default: git rev-parse HEAD here)")
  parser.add_argument("--heads", nargs="+", metavar="HEAD",
                      help="instead of the record: time each case with these decode heads (e.g. chunked ref), "
                           "interleaved in this process, and print their ratio")
  args = parser.parse_args(argv)
  if args.repeats <= 0:
    parser.error(f"--repeats {args.repeats}: expected a positive int")
  cases = CASES + (BIG_CASES if args.big else ())
  known = [c[0] for c in CASES + BIG_CASES]
  if args.cases:
    unknown = sorted(set(args.cases) - set(known))
    if unknown:
      parser.error(f"--cases {' '.join(unknown)}: expected names among {', '.join(known)}")
    cases = tuple(c for c in CASES + BIG_CASES if c[0] in args.cases)
  import numpy as np
  from dlm.model.config import ModelConfig
  from dlm.model.transformer import init_model
  models, row = {}, {}
  for case in cases:
    shape = case[1]
    if shape not in models:
      models[shape] = init_model(ModelConfig(**SHAPES[shape]), seed=0)
    rng = np.random.default_rng(0)
    prompts = rng.integers(3, 126000, size=(BATCH, PROMPT_LENGTH)).astype(np.int32)
    if args.heads:
      print(json.dumps(_head_ab(models[shape], prompts, case, args.repeats, args.heads)), flush=True)
      continue
    result = _time_case(models[shape], prompts, case, args.repeats)
    print(json.dumps(result), flush=True)
    row[case[0]] = f"{result['wall_s']:.2f}"
  if args.heads:
    return 0
  if args.compare:
    wall = _compare_wall()
    print(json.dumps(dict(case="compare_default", wall_s=round(wall, 1))), flush=True)
    row["compare_default"] = f"{wall:.0f}"
  row.update(commit=args.commit or _commit(), date=datetime.date.today().isoformat(), machine=_machine())
  columns = known + ["compare_default"]  # every row has every column (empty where not run)
  print("| " + " | ".join(str(row.get(c, "")) for c in ["commit", "date", "machine", *columns]) + " |")
  if args.record:
    append_history(args.record, row, columns)
  return 0


if __name__ == "__main__":
  sys.exit(main())
