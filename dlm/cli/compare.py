"""`dlm compare`: run a grid of samplers on the built-in tasks."""

from __future__ import annotations

from pathlib import Path

from dlm.cli.common import (_check_head, _grid_from_args, _load_model, _print_records, _with_head, add_common,
                            add_scaled, cache_name, existing_dir, existing_file, model_source, packaged_config,
                            positive_int, sampler_name, task_name, writable_dir)

# `dlm compare` with no --model/--tasks: the testbed model on the short tasks and the long ones (gen 128/81/128).
DEFAULT_COMPARE_MODEL = "testbed"
DEFAULT_COMPARE_TASKS = ("sudoku4_hard", "hmm", "chain128", "sudoku6", "hmm128")


def cmd_compare(args):
  from dlm.eval.compare import check_grid, compare, tag_models, write_results
  if args.models and args.model:  # before --out is claimed: bad input writes nothing
    raise ValueError("pass --model NAME or --models NAME [NAME ...], not both")
  grid = _grid_from_args(args.sampler, args.set,
                         None if args.sampler else args.grid or packaged_config("compare_default.yaml"))
  if args.head:
    grid = [_with_head(entry, args.head) for entry in grid]
  check_grid(grid)  # unknown samplers and settings fail before the model loads
  from dlm.eval.aup import anchor_entries
  grid, anchored = anchor_entries(grid, args.tasks)
  if anchored:
    print(f"AUP anchor: the grid has no one-token-per-step run on {', '.join(anchored)}; adding low_confidence "
          "steps=G there", flush=True)
  if args.out:
    writable_dir(args.out)
    from dlm.parallel.distributed import is_primary
    if is_primary():
      _claim_out(Path(args.out), args, grid)
  from dlm.parallel.distributed import is_primary
  primary = is_primary()  # several processes (--distributed): each runs the grid, one writes
  records = []
  for wanted in args.models or [args.model]:
    model, name = _load_model(wanted, args.dtype, default=DEFAULT_COMPARE_MODEL)
    if args.head:
      _check_head(args.head, name)
    records += compare(model, grid, args.tasks, n=args.n, batch=args.batch, seed=args.seed,
                       block_length=args.block_length, stop_at_eos=args.stop_at_eos, cache=args.cache,
                       model_name=name, cells_dir=Path(args.out) / "cells" if args.out and primary else None)
  records = tag_models(records)  # several models: each family split by model
  if not primary:
    return
  _print_records(records)
  if args.out:
    write_results(records, args.out)
    print(f"wrote {Path(args.out) / 'results.json'}, aup.json and frontier.png")


def _claim_out(out: Path, args, grid) -> None:
  """Refuse a folder that holds another run (a `dlm run` experiment, or a compare of other models, tasks, grid or
  options) unless --overwrite; the same command again reuses its finished cells.  Writes out/compare.json, the
  run's identity."""
  import json
  from dlm.eval.experiment import grid_as_yaml
  from dlm.io.params import atomic_write
  identity = dict(kind="compare", model=args.models or args.model or DEFAULT_COMPARE_MODEL, dtype=args.dtype,
                  tasks=list(args.tasks), grid=grid_as_yaml(grid), n=args.n, batch=args.batch, seed=args.seed,
                  block_length=args.block_length, stop_at_eos=args.stop_at_eos, cache=args.cache, head=args.head)
  marker = out / "compare.json"
  if not args.overwrite:
    if (out / "config.yaml").is_file():
      raise ValueError(f"--out {out} holds a `dlm run` experiment; use another folder, or --overwrite")
    previous = json.loads(marker.read_text()) if marker.is_file() else None
    if (out / "results.json").is_file() and previous != json.loads(json.dumps(identity)):
      raise ValueError(f"--out {out} holds the results of another compare (other models, tasks, grid or options); "
                       "use another folder, or --overwrite")
  body = json.dumps(identity, indent=1)
  atomic_write(marker, lambda tmp: Path(tmp).write_text(body))


def add_parser(sub):
  sampler_name_, task_name_, cache_name_ = sampler_name(), task_name(), cache_name()
  p = sub.add_parser("compare", help="run a grid of samplers on the built-in tasks")
  add_common(p)
  p.add_argument("--models", nargs="+", default=None, type=model_source,
                 help="run the grid on each of these models side by side (e.g. testbed testbed_bd); the table, AUP "
                 "and plot keep each model's families apart")
  p.add_argument("--tasks", nargs="+", type=task_name_, default=list(DEFAULT_COMPARE_TASKS))
  p.add_argument("--grid", default=None, type=existing_file, help="YAML grid (default: the packaged "
                 "configs/compare_default.yaml)")
  p.add_argument("--sampler", default=None, type=sampler_name_, help="run this one sampler instead of the grid")
  p.add_argument("--set", nargs="*", default=None, help="sampler settings NAME=VALUE with --sampler")
  p.add_argument("--n", type=positive_int, default=64)
  p.add_argument("--batch", type=positive_int, default=32)
  p.add_argument("--block-length", type=positive_int, default=None)
  p.add_argument("--stop-at-eos", action="store_true")
  p.add_argument("--cache", default="none", type=cache_name_, help="none | prefix | dual | window")
  p.add_argument("--out", default=None, help="folder for results.json and frontier.png")
  p.add_argument("--overwrite", action="store_true",
                 help="let --out replace another run's results (default: refuse a folder that holds one)")
  p.add_argument("--head", default=None, type=existing_dir,
                 help="a trained head folder for the samplers that read one (learn2pd, adjust)")
  add_scaled(p)
  p.set_defaults(fn=cmd_compare)
