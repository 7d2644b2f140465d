"""What every `dlm` subcommand shares: argument types, settings parsing, model loading, and the one-line errors.

Bad input ends in one line on stderr naming the argument and what was expected, with exit status 2: argparse
`type=` callables check each value, the subcommands check the combinations, and any library error is caught in
`run_main` and printed as one line.  `--debug` (or DLM_DEBUG=1) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
from importlib import resources
from pathlib import Path

def packaged_config(name: str) -> Path:
  """A YAML shipped in the `dlm.configs` package (the repository's configs/ folder, or the installed copy)."""
  return Path(str(resources.files("dlm.configs").joinpath(name)))


# argparse `type=` callables: each raises ArgumentTypeError with the expected value, which argparse prefixes
# with the argument's name.

def _int_at_least(minimum: int, expected: str):
  def parse(text: str) -> int:
    try:
      value = int(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if value < minimum:
      raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value
  return parse


positive_int = _int_at_least(1, "a positive integer")
nonnegative_int = _int_at_least(0, "an integer >= 0")


def _float_above(minimum: float, strict: bool, expected: str):
  def parse(text: str) -> float:
    try:
      value = float(text)
    except ValueError:
      raise argparse.ArgumentTypeError(f"expected {expected}, got {text!r}") from None
    if not (value > minimum if strict else value >= minimum) or value != value:
      raise argparse.ArgumentTypeError(f"expected {expected}, got {value}")
    return value
  return parse


positive_float = _float_above(0.0, True, "a number > 0")
nonnegative_float = _float_above(0.0, False, "a number >= 0")


def existing_dir(text: str) -> str:
  if not Path(text).is_dir():
    raise argparse.ArgumentTypeError(f"expected an existing folder, {text} is not one")
  return text


def existing_file(text: str) -> str:
  path = Path(text)
  if not path.exists():
    raise argparse.ArgumentTypeError(f"expected an existing file, {text} does not exist")
  if not path.is_file():
    raise argparse.ArgumentTypeError(f"expected a file, {text} is a directory")
  if not os.access(path, os.R_OK):
    raise argparse.ArgumentTypeError(f"expected a readable file, {text} is not readable")
  return text


def model_source(text: str) -> str:
  """A bundled model's name, a model folder, or a hub id (org/name) that dlm.io reads from the cache or downloads."""
  from dlm.io.shipped import model_source_problem
  problem = model_source_problem(text)
  if problem is not None:
    raise argparse.ArgumentTypeError(problem)
  return text


def _choice(kind: str, names):
  def parse(text: str) -> str:
    if text not in names:
      raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}; expected one of {sorted(names)}")
    return text
  parse.__name__ = kind
  return parse


def sampler_name():
  from dlm.samplers.registry import SAMPLERS
  return _choice("sampler", SAMPLERS)


def task_name():
  from dlm.tasks import TASKS
  return _choice("task", TASKS)


def cache_name():
  from dlm.engine.cache import CACHE_POLICIES
  return _choice("cache policy", CACHE_POLICIES)


def mesh_spec(text: str):
  from dlm.parallel.mesh import MeshSpec
  try:
    return MeshSpec.parse(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e).removeprefix(f"--mesh {text!r}: ")) from None


class _Parser(argparse.ArgumentParser):
  """argparse with a one-line error (no usage block): `dlm compare: error: argument --n: expected ...`."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_value(text: str):
  import yaml
  return yaml.safe_load(text)


def _settings(pairs, flag: str = "--set") -> dict:
  out = {}
  for pair in pairs or []:
    if "=" not in pair or not pair.split("=", 1)[0]:
      raise ValueError(f"{flag} expects NAME=VALUE, got {pair!r}")
    k, v = pair.split("=", 1)
    out[k] = _parse_value(v)
  return out


def writable_dir(path: str | None, flag: str = "--out") -> None:
  """Check, before any work, that `path` is (or can become) a folder this process can write into."""
  if path is None:
    return
  folder = Path(path)
  if folder.exists() and not folder.is_dir():
    raise ValueError(f"{flag} {path}: expected a folder, it is a file")
  try:
    folder.mkdir(parents=True, exist_ok=True)
    import tempfile
    with tempfile.NamedTemporaryFile(dir=folder, prefix=".dlm-write-check-"):
      pass
  except OSError as e:
    raise ValueError(f"{flag} {path}: not writable ({e.strerror or type(e).__name__}); choose another folder") from None


def writable_file(path: str | None, flag: str = "--out") -> None:
  """Check, before any work, that the file `path` can be written (its folder is writable; it is not a folder)."""
  if path is None:
    return
  if Path(path).is_dir():
    raise ValueError(f"{flag} {path}: expected a file path, it is a folder")
  writable_dir(str(Path(path).parent), flag=f"{flag} {path}: its folder")


def _load_model(path: str | None, dtype: str | None, *, with_tokenizer: bool = False, default: str = "bundled"):
  """-> (model, name) or, with_tokenizer, (model, name, HF tokenizer or None): `dlm.io.shipped.load_named`."""
  from dlm.io.shipped import load_named
  return load_named(path, dtype, with_tokenizer=with_tokenizer, default=default)


def _grid_from_args(sampler, pairs, grid_path):
  """One `--sampler` with its `--set` settings, or the entries of a grid file (`--set` belongs to --sampler)."""
  from dlm.eval.compare import GridEntry, load_grid
  if grid_path is None:
    return [GridEntry(sampler, tuple(sorted(_settings(pairs).items())))]
  if pairs:
    raise ValueError("--set needs --sampler (a grid file carries its own settings)")
  return load_grid(grid_path)


def _print_records(records) -> None:
  """compare's table, then the AUP table when the records make one."""
  from dlm.eval.aup import aup_table, format_aup
  from dlm.eval.compare import format_table
  print(format_table(records))
  rows = aup_table(records)
  if rows:
    print(format_aup(rows))


def _with_head(entry, head: str):
  """A grid entry with `head=PATH` for samplers that read a learned head (the others are left as they are)."""
  import dataclasses
  from dlm.samplers import SAMPLERS
  fields = {f.name for f in dataclasses.fields(SAMPLERS[entry.sampler])} if entry.sampler in SAMPLERS else set()
  if "head" not in fields:
    return entry
  settings = tuple(sorted({**dict(entry.settings), "head": head}.items()))
  return dataclasses.replace(entry, settings=settings)


def _check_head(head: str, model_name) -> None:
  """Refuse a head trained for another model (head.json records the model it was collected with)."""
  import json
  info = Path(head) / "head.json"
  if not info.is_file():
    raise ValueError(f"--head {head}: no head.json there; train a head with `dlm train-head`")
  trained = json.loads(info.read_text()).get("model")
  if trained is not None and str(trained) != str(model_name):
    raise ValueError(f"--head {head} was trained for the model {trained!r}, not {str(model_name)!r}; collect and "
                     "train a head for this model")


def add_common(p):
  p.add_argument("--model", default=None, type=model_source,
                 help="bundled | testbed | testbed_bd (the shipped models), a model folder or a hub id (default: "
                 "testbed for compare and the testbed tasks, bundled otherwise)")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
  p.add_argument("--seed", type=nonnegative_int, default=0)


def add_scaled(p):
  from dlm.parallel import distributed
  p.add_argument("--mesh", default=None, type=mesh_spec,
                 help="device mesh, e.g. data=8 or data=2,tensor=4 (axes data, fsdp, tensor; docs/parallel.md)")
  distributed.add_arguments(p)


@contextlib.contextmanager
def _scaled_run(args):
  """Start jax.distributed when asked and make --mesh the current mesh for the command."""
  from dlm.parallel import distributed
  from dlm.parallel.mesh import MeshSpec, use_mesh
  settings = distributed.settings_from(args) if hasattr(args, "mesh") else None
  distributed.initialize(settings)
  spec = getattr(args, "mesh", None)
  if spec is None and settings is not None:
    import jax
    spec = MeshSpec(data=jax.device_count())  # several processes and no --mesh: split the batch over all
  with use_mesh(None if spec is None else spec.make()):
    yield


def run_main(parser: argparse.ArgumentParser, argv=None) -> int:
  """Parse argv and run the chosen subcommand; a library error is one line on stderr and exit status 2."""
  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # argparse: --help (0) or a bad argument (2, message already printed)
    return e.code if isinstance(e.code, int) else 2
  debug = args.debug or os.environ.get("DLM_DEBUG", "") not in ("", "0")
  try:
    with _scaled_run(args):
      args.fn(args)
  except KeyboardInterrupt:
    if debug:
      raise
    print(f"dlm {args.command}: interrupted; what had finished is kept (results, cells, checkpoints, stores are "
          "written atomically): rerun the same command to resume", file=sys.stderr)
    return 130
  except Exception as e:  # library errors: one line, the traceback only with --debug
    if debug:
      raise
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not isinstance(e, ValueError):
      message = f"{type(e).__name__}: {message}"
    print(f"dlm {args.command}: error: {message}", file=sys.stderr)
    return 2
  return 0
