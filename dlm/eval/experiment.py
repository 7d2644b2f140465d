"""Experiment runs (`dlm run EXPERIMENT.yaml --out DIR`): a grid of models x samplers x settings x tasks run into
one folder that holds everything needed to read or redo it.

The YAML file:
    models: [testbed]                 # shipped model names or model folders
    tasks: [sudoku6, hmm]
    n: 64                             # examples per cell (optional: batch, seed, block_length, stop_at_eos, cache)
    mesh: data=2,tensor=4             # optional: the device mesh (as `--mesh`; docs/parallel.md)
    grid:                             # compare's grid entries, or a path to a grid file
      - {sampler: low_confidence, steps: G}
      - {sampler: threshold, tau: 0.9}
The folder:
    config.yaml        the resolved experiment (the grid written out, every default filled in)
    environment.json   python, jax and flax versions, devices, the git commit (and whether the tree was dirty)
    cells/<key>.json   one record per finished cell, written when the cell completes (the same files
                       `dlm compare --out` writes): a rerun skips them, and an interrupted cell runs again
    results.json, results.csv, aup.json, frontier.png   the whole grid, rewritten at the end of every run
"""

from __future__ import annotations

import csv
import io
import json
import platform
import subprocess
from pathlib import Path

import yaml

DEFAULTS = {"n": 64, "batch": 32, "seed": 0, "block_length": None, "stop_at_eos": False, "cache": "none"}


def load_experiment(path) -> dict:
  from dlm.eval.compare import check_grid, load_grid, parse_grid, read_yaml
  from dlm.tasks import get_task
  path = Path(path)
  spec = read_yaml(path, "experiment")
  if not isinstance(spec, dict):
    raise ValueError(f"experiment {path}: expected a mapping with models, tasks and grid")
  unknown = sorted(set(spec) - {"models", "tasks", "grid", "mesh", *DEFAULTS})
  if unknown:
    raise ValueError(f"experiment {path}: unknown keys {unknown}; expected models, tasks, grid, mesh, "
                     f"{sorted(DEFAULTS)}")
  for key in ("models", "tasks", "grid"):
    if not spec.get(key):
      raise ValueError(f"experiment {path}: '{key}' is missing or empty")
  models, tasks = spec["models"], spec["tasks"]
  if not isinstance(models, list) or not isinstance(tasks, list):
    raise ValueError(f"experiment {path}: models and tasks must be lists")
  for t in tasks:
    get_task(t)
  grid_spec = spec["grid"]
  if isinstance(grid_spec, str):
    grid = load_grid((path.parent / grid_spec) if not Path(grid_spec).is_absolute() else grid_spec)
  else:
    grid = parse_grid(grid_spec, path)
  check_grid(grid)
  options = {k: spec.get(k, v) for k, v in DEFAULTS.items()}
  from dlm.eval.compare import check_run_options
  try:
    check_run_options(**options)
  except ValueError as e:
    raise ValueError(f"experiment {path}: {e}") from None
  if spec.get("mesh") is not None:
    from dlm.parallel.mesh import MeshSpec
    options["mesh"] = str(MeshSpec.parse(str(spec["mesh"])))
  return {"models": [str(m) for m in models], "tasks": [str(t) for t in tasks], "grid": grid, **options}


def environment() -> dict:
  import flax
  import jax
  root = Path(__file__).resolve().parents[2]

  def git(*args):
    try:
      return subprocess.run(["git", *args], cwd=root, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
      return ""
  return {"python": platform.python_version(), "jax": jax.__version__, "flax": flax.__version__,
          "devices": [str(d.device_kind) for d in jax.devices()], "platform": platform.platform(),
          "git_commit": git("rev-parse", "HEAD") or None, "git_dirty": bool(git("status", "--porcelain"))}


def grid_as_yaml(grid) -> list[dict]:
  out = []
  for e in grid:
    entry = {"sampler": e.sampler, **dict(e.settings), **dict(e.engine)}
    if e.tasks is not None:
      entry["tasks"] = list(e.tasks)
    out.append(entry)
  return out


def write_csv(records: list[dict], path) -> None:
  from dlm.io.params import atomic_write
  columns = ["model", "task", "sampler", "family", "label", "score", "score_ci95", "nfe_mean", "batch_nfe_mean",
             "tpf", "tps", "wall_s", "n"]
  buf = io.StringIO()
  writer = csv.DictWriter(buf, columns, extrasaction="ignore")
  writer.writeheader()
  for r in records:
    writer.writerow(r)
  atomic_write(Path(path), lambda tmp: Path(tmp).write_text(buf.getvalue()))


def run_experiment(path, out, *, progress: bool = True, load=None) -> list[dict]:
  """Run (or finish) the experiment in `path` into folder `out` -> every record of the grid.
  load: model name -> (model, name) (default: the CLI's loader)."""
  from dlm.eval.compare import compare, write_results
  from dlm.io.params import atomic_write
  spec = load_experiment(path)
  out = Path(out)
  resolved = {"models": spec["models"], "tasks": spec["tasks"], "grid": grid_as_yaml(spec["grid"]),
              **{k: spec[k] for k in (*DEFAULTS, "mesh") if k in spec}}
  if load is None:  # before the folder is written, so a typo does not lock it
    from dlm.io.shipped import model_source_problem
    for name in spec["models"]:
      problem = model_source_problem(name)
      if problem is not None:
        raise ValueError(f"experiment {path}: model {name!r}: {problem}")
  config = out / "config.yaml"
  if config.is_file():
    # A rerun may add (or drop) models, tasks and grid entries: every cell is keyed by what makes its result, so
    # finished cells are reused and new ones run.  Options that change every cell make it another experiment.
    previous = yaml.safe_load(config.read_text()) or {}
    changed = sorted(k for k in (*DEFAULTS, "mesh")
                     if previous.get(k, DEFAULTS.get(k)) != resolved.get(k, DEFAULTS.get(k)))
    if changed:
      raise ValueError(f"{out} holds another experiment (its config.yaml differs in {changed}); use another --out "
                       "folder")
  atomic_write(config, lambda tmp: Path(tmp).write_text(yaml.safe_dump(resolved, sort_keys=False)))
  atomic_write(out / "environment.json", lambda tmp: Path(tmp).write_text(json.dumps(environment(), indent=1)))
  if load is None:
    from dlm.io.shipped import load_named
    load = lambda name: load_named(name, None, default="testbed")  # noqa: E731
  from dlm.parallel.mesh import MeshSpec, use_mesh
  from dlm.eval.aup import anchor_entries
  grid, anchored = anchor_entries(spec["grid"], spec["tasks"])
  if anchored and progress:
    print(f"AUP anchor: the grid has no one-token-per-step run on {', '.join(anchored)}; adding low_confidence "
          "steps=G there", flush=True)
  records = []
  with use_mesh(MeshSpec.parse(spec["mesh"]).make() if "mesh" in spec else None):
    for name in spec["models"]:
      model, model_name = load(name)
      records += compare(model, grid, spec["tasks"], n=spec["n"], batch=spec["batch"], seed=spec["seed"],
                         block_length=spec["block_length"], stop_at_eos=spec["stop_at_eos"], cache=spec["cache"],
                         model_name=str(model_name), progress=progress, cells_dir=out / "cells")
  from dlm.eval.compare import tag_models
  records = tag_models(records)  # several models: each family split by model
  write_results(records, out)
  write_csv(records, out / "results.csv")
  return records
