"""The compare harness: a grid of samplers x tasks on one model, scored, timed and plotted.

Metric definitions follow DESIGN.md §3: NFE per row (and `batch_nfe_mean`, the forward calls of one batch, as
Fast-dLLM counts them), generated tokens up to and including the first end-of-text,
TPF = generated tokens / NFE, TPS = generated tokens / wall seconds measured after a compile-and-warm-up call on
the same shapes (compile time is reported apart), score with a 95% interval (normal approximation, half-width).
`tpf_fast_dllm` and `tpf_dinfer` count tokens as those peers do (dlm.engine.metrics).
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
import time
from pathlib import Path

import jax
from flax import nnx
import numpy as np
import yaml
from tqdm.auto import tqdm

from dlm.engine import generate
from dlm.engine.block_layout import placed_answer_length
from dlm.engine.cache import CACHE_POLICIES
from dlm.engine.metrics import peer_token_counts
from dlm.samplers import SAMPLERS, make_sampler
from dlm.tasks import get_task


_G_FORM = re.compile(r"^(\d+)?G(?:/(\d+))?$")


ENGINE_OPTIONS = ("cache", "stop_at_eos", "block_length")  # grid keys that set the engine, not the sampler


@dataclasses.dataclass(frozen=True)
class GridEntry:
  """One sampler setting; string values "G", "G/2", "2G", "4G/2"... are resolved against the task's gen_length.

  `engine` overrides the run's cache / stop_at_eos / block_length for this entry, and `tasks` restricts the entry
  to some tasks (the default grid runs fewer settings on the long tasks).
  """

  sampler: str
  settings: tuple = ()  # sorted (name, value) pairs, hashable
  engine: tuple = ()  # sorted (option, value) pairs from ENGINE_OPTIONS
  tasks: tuple | None = None  # task names this entry runs on; None: every task

  def runs_on(self, task: str) -> bool:
    return self.tasks is None or task in self.tasks

  def resolve(self, gen_length: int) -> dict:
    out = {}
    for name, value in self.settings:
      match = _G_FORM.match(value) if isinstance(value, str) else None
      if match:
        factor, divisor = int(match.group(1) or 1), int(match.group(2) or 1)
        value = max(factor * gen_length // divisor, 1)
      out[name] = value
    return out


def read_yaml(path, what: str):
  """A YAML file's contents, or a one-line error naming the file (`what`: "grid", "experiment")."""
  try:
    return yaml.safe_load(Path(path).read_text())
  except yaml.YAMLError as e:
    raise ValueError(f"{what} {path} is not valid YAML: {' '.join(str(e).split())}") from None


def load_grid(path) -> list[GridEntry]:
  """A YAML list of {sampler: name, <setting>: value, ...}."""
  return parse_grid(read_yaml(path, "grid"), path)


def parse_grid(entries, path) -> list[GridEntry]:
  """Grid entries from parsed YAML (`path` names their origin in errors)."""
  if not entries:
    raise ValueError(f"grid {path} is empty; expected a YAML list of {{sampler: NAME, SETTING: VALUE}} entries")
  if not isinstance(entries, list):
    raise ValueError(f"grid {path}: expected a YAML list of grid entries, got {type(entries).__name__}")
  grid = []
  for e in entries:
    if not isinstance(e, dict):
      raise ValueError(f"grid {path}: entry {e!r} is not a mapping {{sampler: NAME, SETTING: VALUE}}")
    e = dict(e)
    if "sampler" not in e:
      raise ValueError(f"{path}: grid entry {e} has no 'sampler'")
    name = e.pop("sampler")
    tasks = e.pop("tasks", None)
    if tasks is not None:
      if isinstance(tasks, str):
        tasks = [tasks]
      if not isinstance(tasks, list) or not all(isinstance(t, str) for t in tasks):
        raise ValueError(f"{path}: grid entry {name!r} has tasks={tasks!r}; expected a list of task names")
      tasks = tuple(tasks)
    engine = tuple(sorted((k, e.pop(k)) for k in ENGINE_OPTIONS if k in e))
    grid.append(GridEntry(name, tuple(sorted(e.items())), engine, tasks))
  return grid


def check_grid(grid: list[GridEntry]) -> None:
  """Raise ValueError naming the first entry with an unknown sampler or setting (before any model is loaded)."""
  for entry in grid:
    if entry.sampler not in SAMPLERS:
      raise ValueError(f"unknown sampler {entry.sampler!r} in the grid; expected one of {sorted(SAMPLERS)}")
    fields = {f.name for f in dataclasses.fields(SAMPLERS[entry.sampler])}
    unknown = sorted(name for name, _ in entry.settings if name not in fields)
    if unknown:
      raise ValueError(f"unknown setting(s) {unknown} for sampler {entry.sampler!r}; its settings are "
                       f"{sorted(fields)} (engine options per entry: {list(ENGINE_OPTIONS)})")
    for task in entry.tasks or ():
      get_task(task)  # one-line error naming the unknown task
    try:  # every setting's own check (types, ranges, head folders) before any model loads
      make_sampler(entry.sampler, **entry.resolve(256))
    except (ValueError, FileNotFoundError) as e:
      raise ValueError(f"grid entry {entry.sampler!r} {dict(entry.settings)}: {e}") from None
    engine = dict(entry.engine)
    if "cache" in engine and engine["cache"] not in CACHE_POLICIES:
      raise ValueError(f"grid entry {entry.sampler!r}: cache={engine['cache']!r}; expected one of {CACHE_POLICIES}")
    if "stop_at_eos" in engine and not isinstance(engine["stop_at_eos"], bool):
      raise ValueError(f"grid entry {entry.sampler!r}: stop_at_eos={engine['stop_at_eos']!r}; expected true or false")
    if "block_length" in engine and not (isinstance(engine["block_length"], int) and engine["block_length"] > 0):
      raise ValueError(f"grid entry {entry.sampler!r}: block_length={engine['block_length']!r}; expected a positive "
                       f"integer")


def ci95(scores: np.ndarray) -> float:
  """Half-width of the normal-approximation 95% interval of the mean."""
  if len(scores) < 2:
    return float("nan")
  return float(1.96 * scores.std(ddof=1) / math.sqrt(len(scores)))


def check_task_fits(model, task, seed: int = 0) -> None:
  """A task whose tokens the model has no embedding for would read clamped rows: refuse it in one line."""
  prompts = task.encode(task.examples(32, seed))[0]
  needed = int(prompts.max())
  if needed >= model.cfg.vocab_size:
    raise ValueError(f"task {task.name!r} uses token ids up to {needed} but the model's vocabulary has "
                     f"{model.cfg.vocab_size} entries; the testbed tasks need the testbed model (--model testbed)")


def pad_batch(batch: int, *arrays):
  """Pad a last, short batch to `batch` rows by repeating its last row, so no new program is compiled (the caller
  drops the padded rows).  arrays: [rows, ...] each -> [batch, ...] each."""
  return tuple(np.concatenate([a, np.repeat(a[-1:], batch - len(a), 0)]) if len(a) < batch else a for a in arrays)


def cell_setup(task, entry: GridEntry, *, block_length: int | None, stop_at_eos: bool, cache: str = "none",
               model_block: int | None = None):
  """-> (sampler, engine options) of one grid entry on one task: the entry's settings resolved against the task
  (its `G` forms, the task's sampler defaults) and its engine overrides applied.  block_length None: the task's
  own block (`Task.block_length`), else one block.

  model_block: a block-causal model's block size.  Its engine decodes the model's own blocks (or sub-blocks of
  them): a block that does not divide it becomes the model's block, and `G` forms resolve against the answer
  length the engine places (`placed_answer_length`: the prompt's last partial block joins the answer), so
  `steps: G` is one token per step there too."""
  engine = dict(entry.engine)
  cache = engine.get("cache", cache)
  stop_at_eos = engine.get("stop_at_eos", stop_at_eos)
  block_length = engine.get("block_length", block_length)
  if block_length is None:
    block_length = task.block_length
  gen_length = task.gen_length
  settings = entry.resolve(answer_slots(gen_length, model_block))
  fields = {f.name for f in dataclasses.fields(SAMPLERS[entry.sampler])} if entry.sampler in SAMPLERS else set()
  for name, value in task.sampler_defaults.items():
    if name in fields:
      settings.setdefault(name, value)
  sampler = make_sampler(entry.sampler, **settings)
  block = gen_length if block_length is None else min(block_length, gen_length)
  if model_block is not None and model_block % block:
    block = model_block
  return sampler, dict(gen_length=gen_length, block_length=block, stop_at_eos=stop_at_eos, cache=cache)


def run_one(model, task, entry: GridEntry, *, n: int, batch: int, seed: int, block_length: int | None,
            stop_at_eos: bool, model_name: str, cache: str = "none") -> dict:
  """One grid entry on one task.  block_length None: the task's own block (`Task.block_length`), else one block.

  TPS times only compiled, warmed runs: the first batch runs once untimed exactly as it is then timed (the same
  padded shape, the same key derivation), so neither the compile nor any one-off dispatch lands in `wall_s`;
  `compile_s` reports that first run apart."""
  model_block = block_causal_size(model)
  sampler, options = cell_setup(task, entry, block_length=block_length, stop_at_eos=stop_at_eos, cache=cache,
                                model_block=model_block)
  gen_length, block = options["gen_length"], options["block_length"]
  stop_at_eos, cache = options["stop_at_eos"], options["cache"]
  exs = task.examples(n, seed=seed)
  prompts, valid, reference_answers = task.encode(exs)
  key = jax.random.key(seed)

  def run(p, v, k):
    out = generate(model, p, v, sampler=sampler, gen_length=gen_length, block_length=block, key=k,
                   stop_at_eos=stop_at_eos, cache=cache)
    return jax.block_until_ready(out)

  batches = []
  for i in range(0, n, batch):  # every batch padded to `batch` rows: one compiled program for the cell
    p, v = pad_batch(batch, prompts[i:i + batch], valid[i:i + batch])
    batches.append((min(batch, n - i), p, v, jax.block_until_ready(jax.random.fold_in(key, i))))
  t0 = time.perf_counter()
  run(*batches[0][1:])  # compile + warm up: the first timed call, untimed
  compile_s = time.perf_counter() - t0
  answers, nfe, gen_tokens, batch_nfe, wall, extras = [], [], [], [], 0.0, {}
  for rows, p, v, k in batches:
    t0 = time.perf_counter()
    out = run(p, v, k)
    wall += time.perf_counter() - t0
    answers.append(np.asarray(out.answers)[:rows])
    nfe.append(np.asarray(out.nfe)[:rows])
    gen_tokens.append(np.asarray(out.gen_tokens)[:rows])
    batch_nfe.append(int(out.batch_nfe))
    for name, value in (out.extras or {}).items():
      extras.setdefault(name, []).append(np.asarray(value)[:rows])
  answers, nfe, gen_tokens = np.concatenate(answers), np.concatenate(nfe), np.concatenate(gen_tokens)
  end_ids = np.asarray(model.cfg.end_ids)
  scores = task.score(exs, answers)
  distribution = (task.distribution_metrics([task.decode(a) for a in answers])
                  if hasattr(task, "distribution_metrics") else None)
  peers = peer_token_counts(answers, model.cfg.end_ids)
  total_nfe = max(int(nfe.sum()), 1)
  extras = {name: np.concatenate(parts) for name, parts in extras.items()}
  record_extras = summarize_extras(model, extras, nfe, prompts.shape[1] + gen_length)
  return {
      "sampler": entry.sampler, "family": family_name(entry, sampler), "settings": sampler.settings(), "task": task.name,
      "n": n, "score": float(scores.mean()), "score_ci95": ci95(scores), "nfe_mean": float(nfe.mean()),
      "batch_nfe_mean": float(np.mean(batch_nfe)), "tpf": float(gen_tokens.sum() / total_nfe),
      "tpf_fast_dllm": float(peers["fast_dllm"].sum() / total_nfe),
      "tpf_dinfer": float(peers["dinfer"].sum() / total_nfe),
      "tps": float(gen_tokens.sum() / wall), "gen_tokens_mean": float(gen_tokens.mean()),
      # share of answer slots holding an end token (EOS padding), generated and in the reference answers
      "eos_fraction": float(np.isin(answers, end_ids).mean()),
      "reference_eos_fraction": float(np.isin(reference_answers, end_ids).mean()),
      "wall_s": wall, "compile_s": compile_s, "gen_length": gen_length, "block_length": block, "batch": batch,
      "answer_slots": answer_slots(gen_length, model_block),  # what `G` forms resolved against
      "stop_at_eos": stop_at_eos, "cache": cache, "model": model_name,
      "device": str(jax.devices()[0].device_kind),
      "reference_score": task.reference_score(exs), "accuracy_scored": task.accuracy_scored,
      "distribution": distribution, "label": label(entry, sampler), **record_extras,
  }


def family_name(entry: GridEntry, sampler) -> str:
  """The sampler's family, split by the entry's engine overrides (a dual-cache threshold line is its own line)."""
  if not entry.engine:
    return sampler.family
  return sampler.family + "[" + ",".join(f"{k}={v}" for k, v in entry.engine) + "]"


def label(entry: GridEntry, sampler) -> str:
  """Short text naming the setting: the grid's own settings, then engine overrides (plot labels, tables)."""
  parts = [f"{k}={v}" for k, v in entry.settings]
  parts += [f"{k}={v}" for k, v in entry.engine]
  return ",".join(parts) or sampler.family


def forward_flops(model, length: int) -> float:
  """2 * N * L: the matmul estimate of one network forward over a canvas of `length` (N: every parameter)."""
  return 2.0 * sum(x.size for x in jax.tree.leaves(nnx.state(model, nnx.Param))) * length


def summarize_extras(model, extras: dict, nfe, length: int) -> dict:
  """A sampler's own per-row measurements (`Generation.extras`, {name: [N]}) as `<name>_mean`; with `aux_flops`
  (a second model's or a head's FLOPs: APD's AR model, ADJUST's layer, Learn2PD's filter) also the FLOPs-weighted
  NFE `nfe_flops_mean` and `head_cost_per_forward`, both in units of one network forward over the canvas
  (2 N L per row)."""
  nfe = np.asarray(nfe)
  out = {f"{name}_mean": float(np.asarray(value).mean()) for name, value in extras.items()
         if np.asarray(value).ndim == 1}
  if "aux_flops" in extras:
    per_forward = forward_flops(model, length)
    aux = np.asarray(extras["aux_flops"])
    out["nfe_flops_mean"] = float((nfe + aux / per_forward).mean())
    out["head_cost_per_forward"] = float(aux.sum() / max(int(nfe.sum()), 1) / per_forward)
  return out


def cell_key(entry: GridEntry, task: str, **options) -> str:
  """A stable name for one cell of a grid (its results file's stem), from everything that changes its result:
  the grid entry, the task and every run option the caller passes (compare passes the weights' and the sampler
  parameters' fingerprints, the resolved sampler settings, n, batch, seed, the engine options and dlm's version)."""
  import hashlib
  blob = json.dumps({"sampler": entry.sampler, "settings": entry.settings, "engine": entry.engine, "task": task,
                     **options}, sort_keys=True, default=str)
  return hashlib.sha1(blob.encode()).hexdigest()[:16]


def block_causal_size(model) -> int | None:
  """A block-causal model's block size (`cell_setup`'s model_block), None for a bidirectional one."""
  return model.cfg.block_size if model.cfg.block_causal else None


def answer_slots(gen_length: int, model_block: int | None) -> int:
  """The answer slots `G` forms resolve against: gen_length, or the answer a block-causal model's engine places."""
  return gen_length if model_block is None else placed_answer_length(gen_length, model_block)


def _cell_identity(model_fp: str, task, entry: GridEntry, *, block_length, stop_at_eos, cache,
                   model_block: int | None = None) -> dict:
  """What a cell's result depends on beyond the grid entry and the run options: the resolved sampler (settings
  and the fingerprint of its traced parameters: a learned head's or APD's AR model's weights) and the engine
  options it runs with."""
  from dlm.eval.fingerprint import dlm_version, tree_fingerprint
  try:
    sampler, engine = cell_setup(task, entry, block_length=block_length, stop_at_eos=stop_at_eos, cache=cache,
                                 model_block=model_block)
    params = tree_fingerprint(sampler.default_params(engine["gen_length"], engine["block_length"]))
    settings = sampler.settings()
  except (ValueError, FileNotFoundError) as e:  # run_one reports it; the key only has to be stable
    params, settings, engine = f"unbuildable: {e}", {}, {}
  return dict(weights=model_fp, sampler_params=params, resolved=settings, engine_options=engine,
              dlm=dlm_version())


def compare(model, grid: list[GridEntry], tasks: list[str], *, n: int = 64, batch: int = 32, seed: int = 0,
            block_length: int | None = None, stop_at_eos: bool = False, cache: str = "none",
            model_name: str = "bundled", progress: bool = True, cells_dir=None) -> list[dict]:
  """Every grid entry on every task it runs on -> records.  With `cells_dir`, each finished cell is written there
  (one JSON file per cell, through a temporary file and a rename) and a cell already there is read instead of
  run: a rerun skips finished cells, and a cell that was interrupted runs again from its start."""
  from dlm.io.params import atomic_write
  check_run_options(n=n, batch=batch, seed=seed, block_length=block_length, stop_at_eos=stop_at_eos, cache=cache)
  for t in tasks:
    check_task_fits(model, get_task(t))
  jobs = [(get_task(t), e) for t in tasks for e in grid if e.runs_on(t)]
  if not jobs:
    raise ValueError(f"no grid entry runs on the tasks {list(tasks)} (each entry's `tasks` excludes them)")
  skipped = []
  records = []
  model_fp = None
  if cells_dir is not None:
    from dlm.eval.fingerprint import model_fingerprint
    model_fp = model_fingerprint(model)  # weights and dtype: a cell made with other weights is not reused
  bar = tqdm(jobs, disable=not progress, desc="compare")
  for task, entry in bar:
    bar.set_postfix(task=task.name, sampler=entry.sampler)
    path = None
    if cells_dir is not None:
      identity = _cell_identity(model_fp, task, entry, block_length=block_length, stop_at_eos=stop_at_eos,
                                cache=cache, model_block=block_causal_size(model))
      key = cell_key(entry, task.name, model=str(model_name), n=n, batch=batch, seed=seed,
                     block_length=block_length, stop_at_eos=stop_at_eos, cache=cache, **identity)
      path = Path(cells_dir) / f"{key}.json"
      if path.is_file():
        records.append(json.loads(path.read_text()))
        continue
    try:
      record = run_one(model, task, entry, n=n, batch=batch, seed=seed, block_length=block_length,
                       stop_at_eos=stop_at_eos, model_name=model_name, cache=cache)
    except ValueError as e:  # a setting that does not fit this task's canvas (e.g. steps vs blocks)
      bar.write(f"skipped {entry.sampler} {dict(entry.settings)} on {task.name}: {e}")
      skipped.append(f"{entry.sampler} on {task.name}: {e}")
      continue
    records.append(record)
    if path is not None:
      body = json.dumps(record, indent=1, default=str)
      atomic_write(path, lambda tmp: Path(tmp).write_text(body))
  if not records:  # an empty table is an error, never a result
    raise ValueError(f"no cell could run ({len(skipped)} skipped); the first: {skipped[0]}")
  return records


def check_run_options(*, n, batch, seed, block_length, stop_at_eos, cache) -> None:
  """The run options of compare / an experiment file, in one line each (before any model loads)."""
  def positive(name, value, allow_none=False):
    if allow_none and value is None:
      return
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
      raise ValueError(f"{name}={value!r}; expected a positive integer" + (" or null" if allow_none else ""))
  positive("n", n)
  positive("batch", batch)
  positive("block_length", block_length, allow_none=True)
  if isinstance(seed, bool) or not isinstance(seed, int) or seed < 0:
    raise ValueError(f"seed={seed!r}; expected an integer >= 0")
  if not isinstance(stop_at_eos, bool):
    raise ValueError(f"stop_at_eos={stop_at_eos!r}; expected true or false")
  if cache not in CACHE_POLICIES:
    raise ValueError(f"cache={cache!r}; expected one of {CACHE_POLICIES}")


def shown_settings(record: dict) -> str:
  """The settings that tell a record apart: those that differ from its sampler's defaults, then the engine
  overrides of its grid entry; never cut (a prefix could make two rows read the same)."""
  cls = SAMPLERS.get(record["sampler"])
  defaults = {} if cls is None else {f.name: f.default for f in dataclasses.fields(cls)
                                     if f.default is not dataclasses.MISSING}
  shown = {k: v for k, v in record["settings"].items() if k not in defaults or defaults[k] != v}
  engine = [k for k in ENGINE_OPTIONS if f"{k}=" in record.get("label", "")]
  shown.update({k: record[k] for k in engine})
  return ",".join(f"{k}={v}" for k, v in shown.items()) or "(defaults)"


def tag_models(records: list[dict]) -> list[dict]:
  """Records of several models (`dlm compare --models`, `dlm run` with several models): each family is split by
  model (`threshold @ testbed_bd`), so the AUP table, the frontier plot and the table keep the models apart.
  Records of one model are returned as they are."""
  if len({r.get("model") for r in records}) < 2:
    return records
  suffix = lambda r: f" @ {r.get('model')}"
  return [r if r["family"].endswith(suffix(r)) else {**r, "family": r["family"] + suffix(r)} for r in records]


def format_table(records: list[dict]) -> str:
  """One line per record, sorted by task (in run order), model, then NFE; `dist` is the HMM distribution
  distance.  A `model` column (and the wall seconds of each cell) appears when the records hold several models."""
  texts = {id(r): shown_settings(r) for r in records}
  width = max([34, *map(len, texts.values())])
  models = list(dict.fromkeys(str(r.get("model")) for r in records))
  mw = max(len(m) for m in models) if len(models) > 1 else 0
  model_col = f"{'model':<{mw}} " if mw else ""
  head = (f"{'task':<12} {model_col}{'sampler':<16} {'settings':<{width}} {'score':>7} {'±95%':>6} {'NFE':>6} "
          f"{'bNFE':>6} {'TPF':>5} {'TPS':>8} {'dist':>6}" + (f" {'wall s':>7}" if mw else ""))
  lines = [head, "-" * len(head)]
  order = {t: i for i, t in enumerate(dict.fromkeys(r["task"] for r in records))}
  model_order = {m: i for i, m in enumerate(models)}
  for r in sorted(records, key=lambda r: (order[r["task"]], model_order[str(r.get("model"))], r["nfe_mean"])):
    dist = f"{r['distribution']['distance']:>6.3f}" if r.get("distribution") else ""
    model_cell = f"{str(r.get('model')):<{mw}} " if mw else ""
    wall = f"{dist:>6} {r['wall_s']:>7.1f}" if mw else dist  # the wall column after a padded dist
    lines.append(f"{r['task']:<12} {model_cell}{r['sampler']:<16} {texts[id(r)]:<{width}} {r['score']:>7.3f} "
                 f"{r['score_ci95']:>6.3f} {r['nfe_mean']:>6.1f} {r['batch_nfe_mean']:>6.1f} {r['tpf']:>5.2f} "
                 f"{r['tps']:>8.1f} {wall}")
  for task in dict.fromkeys(r["task"] for r in records):
    ref = next(r["reference_score"] for r in records if r["task"] == task)
    if ref != 1.0:
      lines.append(f"{task}: the reference data scores {ref:.3f} on the same examples")
  return "\n".join(lines)


def write_results(records: list[dict], out_dir) -> None:
  from dlm.eval.plots import frontier_plot
  from dlm.io.params import atomic_write

  from dlm.eval.aup import aup_table

  out_dir = Path(out_dir)
  atomic_write(out_dir / "results.json", lambda tmp: Path(tmp).write_text(json.dumps(records, indent=1)))
  atomic_write(out_dir / "aup.json", lambda tmp: Path(tmp).write_text(json.dumps(aup_table(records), indent=1)))
  frontier_plot(records, out_dir / "frontier.png")
