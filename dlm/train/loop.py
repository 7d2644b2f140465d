"""Training a base denoiser on the built-in task mixture, with orbax checkpoints and resume."""

from __future__ import annotations

import dataclasses
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
import yaml
from flax import nnx
from tqdm.auto import tqdm

from dlm.io.params import save_model
from dlm.model.config import ModelConfig
from dlm.model.transformer import Transformer
from dlm.tasks import TOKENIZER, Add, Chain, HMM, Reverse, Sudoku, Sudoku4, Task
from dlm.train.loss import autoregressive_loss, block_diffusion_loss, masked_diffusion_loss

_TASK_CLASSES = {"add": Add, "sudoku4": Sudoku4, "reverse": Reverse, "hmm": HMM, "chain": Chain, "sudoku": Sudoku}


OBJECTIVES = {"diffusion": masked_diffusion_loss, "autoregressive": autoregressive_loss,
              "block_diffusion": block_diffusion_loss}


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """A training recipe (configs/*.yaml)."""

  model: dict  # ModelConfig fields except the tokenizer-derived ones
  # entry name -> {"weight": float, "batch": int (default batch_per_task), "task": class name (default: the entry
  # name), **task kwargs}; "task" lets one class appear twice, e.g. `chain` at two canvas lengths.
  tasks: dict
  steps: int = 4000
  batch_per_task: int = 64
  lr: float = 1e-3
  warmup: int = 200
  weight_decay: float = 0.01
  grad_clip: float = 1.0
  seed: int = 0
  ckpt_every: int = 250
  log_every: int = 50
  # "diffusion": the masked-diffusion loss (a dLLM); "autoregressive": next-token CE on a causal network (the
  # small AR model of APD; `dlm train --causal` sets it and model.causal); "block_diffusion": every block of a
  # block-causal network (model.attention_layout: block_causal) in one pass (dlm.train.loss.block_diffusion_loss).
  objective: str = "diffusion"
  # A model to start from (a shipped name or a model folder) instead of a random initialisation: its parameters
  # must have this recipe's shapes (the attention layout may differ, as SDAR and Fast-dLLM v2 were adapted from
  # left-to-right models).  Read once, on a fresh run; a resumed run reads its checkpoint.
  init_from: str | None = None

  def __post_init__(self):
    if self.objective not in OBJECTIVES:
      raise ValueError(f"objective={self.objective!r}; expected one of {sorted(OBJECTIVES)}")
    if (self.objective == "autoregressive") != bool(self.model.get("causal", False)):
      raise ValueError(f"objective={self.objective!r} needs model.causal={self.objective == 'autoregressive'} "
                       "(a causal network trains autoregressively, a bidirectional one by masked diffusion)")
    block_causal = self.model.get("attention_layout") == "block_causal"
    if (self.objective == "block_diffusion") != block_causal:
      raise ValueError(f"objective={self.objective!r} needs model.attention_layout="
                       f"{'block_causal' if self.objective == 'block_diffusion' else 'bidirectional'} (a "
                       "block-causal network trains with objective 'block_diffusion')")
    if block_causal and self.model.get("logit_shift"):
      raise ValueError("model.logit_shift=True is not trained by 'block_diffusion' in this version; expected False")
    if self.init_from is not None:
      from dlm.io.shipped import model_source_problem
      problem = model_source_problem(str(self.init_from))
      if problem:
        raise ValueError(f"init_from={self.init_from!r}: {problem}")
    for name in ("steps", "batch_per_task", "ckpt_every", "log_every"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{name}={value!r} must be a positive integer")
    if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or not 0 <= self.warmup < self.steps:
      raise ValueError(f"warmup={self.warmup!r} must be an integer in [0, steps={self.steps}) (the learning rate "
                       "warms up, then decays over the remaining steps)")
    if not self.lr > 0:
      raise ValueError(f"lr={self.lr!r} must be positive")
    for name, spec in self.tasks.items():
      kind = (spec or {}).get("task", name)
      if kind not in _TASK_CLASSES:
        raise ValueError(f"unknown task {kind!r} in the recipe's entry {name!r}; expected one of "
                         f"{sorted(_TASK_CLASSES)}")
      batch = (spec or {}).get("batch", self.batch_per_task)
      if not isinstance(batch, int) or batch <= 0:
        raise ValueError(f"tasks.{name}.batch={batch!r} must be a positive integer")

  @classmethod
  def from_yaml(cls, path) -> "TrainConfig":
    return cls(**yaml.safe_load(Path(path).read_text()))

  def model_config(self) -> ModelConfig:
    return ModelConfig(vocab_size=TOKENIZER.vocab_size, mask_id=TOKENIZER.mask_id, eos_id=TOKENIZER.eos_id,
                       pad_id=TOKENIZER.pad_id, **self.model)

  def task_objects(self) -> list[tuple[Task, float, int]]:
    """(task, loss weight, examples per step) for each entry."""
    out = []
    for name, spec in self.tasks.items():
      spec = dict(spec or {})
      weight = float(spec.pop("weight", 1.0))
      batch = int(spec.pop("batch", self.batch_per_task))
      out.append((_TASK_CLASSES[spec.pop("task", name)](**spec), weight, batch))
    return out


# Fields a resumed run may change: how often it checkpoints and logs, and `steps` (training on past the first
# target stretches the cosine schedule from there, as the shipped testbed model was made: README).
RESUMABLE_CHANGES = ("ckpt_every", "log_every", "steps")
RECIPE_FILE = "recipe.json"  # the recipe a run's checkpoints were made with, beside ckpt/


def check_resume(cfg: TrainConfig, out_dir: Path) -> None:
  """Refuse to resume a run's checkpoints with another recipe (a changed learning rate would be taken silently,
  a changed shape fail inside orbax); record the recipe on a fresh run.  Runs before any checkpoint is read."""
  import json
  path = out_dir / RECIPE_FILE
  mine = json.loads(json.dumps(dataclasses.asdict(cfg)))
  has_ckpt = (out_dir / "ckpt").is_dir() and any((out_dir / "ckpt").iterdir())
  if has_ckpt and path.is_file():
    saved = json.loads(path.read_text())
    changed = sorted(k for k in set(saved) | set(mine) if k not in RESUMABLE_CHANGES and saved.get(k) != mine.get(k))
    if changed:
      detail = ", ".join(f"{k}: {saved.get(k)!r} -> {mine.get(k)!r}" for k in changed)
      raise ValueError(f"--out {out_dir} holds checkpoints of another recipe ({detail}); resume with the same "
                       "recipe or train into a new --out")
  if not has_ckpt:  # a fresh run (a run from before this file was kept resumes unchecked)
    from dlm.io.params import atomic_write
    atomic_write(path, lambda tmp: Path(tmp).write_text(json.dumps(mine, indent=1, sort_keys=True) + "\n"))


def _batch(tasks, seed: int, step: int):
  """Deterministic in (seed, step): a resumed run sees the same data as an uninterrupted one."""
  out = []
  for i, (task, _, batch) in enumerate(tasks):
    rng = np.random.default_rng([seed, step, i])
    out.append(tuple(jnp.asarray(a) for a in task.encode([task.sample(rng) for _ in range(batch)])))
  return out


def _lr_schedule(cfg: TrainConfig):
  return optax.warmup_cosine_decay_schedule(0.0, cfg.lr, cfg.warmup, cfg.steps, end_value=cfg.lr * 0.05)


def make_model_and_optimizer(cfg: TrainConfig):
  model = Transformer(cfg.model_config(), rngs=nnx.Rngs(cfg.seed))
  tx = optax.chain(optax.clip_by_global_norm(cfg.grad_clip),
                   optax.adamw(_lr_schedule(cfg), b1=0.9, b2=0.98, weight_decay=cfg.weight_decay))
  return model, nnx.Optimizer(model, tx, wrt=nnx.Param)


def checkpoint_manager(out_dir) -> ocp.CheckpointManager:
  return ocp.CheckpointManager(
      (Path(out_dir) / "ckpt").absolute(),
      options=ocp.CheckpointManagerOptions(max_to_keep=2, create=True, save_interval_steps=1))


def restore_latest(manager: ocp.CheckpointManager, model, optimizer, step: int | None = None) -> int:
  """Restore model and optimizer in place from `step` (default: the latest); returns the step (0 if none).

  Orbax writes each step to a temporary folder and renames it when complete, so an interrupted save is never
  picked up as the latest step.
  """
  step = manager.latest_step() if step is None else step
  if step is None:
    return 0
  target = {"model": nnx.state(model), "opt": nnx.state(optimizer)}
  abstract = jax.tree.map(ocp.utils.to_shape_dtype_struct, target)
  restored = manager.restore(step, args=ocp.args.StandardRestore(abstract))
  nnx.update(model, restored["model"])
  nnx.update(optimizer, restored["opt"])
  return step


def _init_from(model: Transformer, source: str) -> None:
  """Copy the parameters of `source` (a shipped name or a model folder) into `model`, shapes checked."""
  from dlm.io.shipped import load_named
  src, _ = load_named(source, dtype=model.cfg.dtype)
  mine, theirs = nnx.state(model, nnx.Param), nnx.state(src, nnx.Param)
  shapes = lambda state: jax.tree.map(lambda a: (a.shape, str(a.dtype)), state.to_pure_dict())
  if shapes(mine) != shapes(theirs):
    raise ValueError(f"init_from={source!r}: its parameters do not have this recipe's shapes (model.* must "
                     "match the source's config.json apart from attention_layout/block_size)")
  nnx.update(model, theirs)


def train(cfg: TrainConfig, out_dir, *, progress: bool = True, stop_after: int | None = None) -> Transformer:
  """Train, checkpointing to out_dir/ckpt and resuming from its latest step; writes out_dir/model at the end.

  `stop_after` ends the run early after that many steps of this call (used to test resume).
  """
  out_dir = Path(out_dir)
  check_resume(cfg, out_dir)
  tasks = cfg.task_objects()
  model, optimizer = make_model_and_optimizer(cfg)
  manager = checkpoint_manager(out_dir)
  start = restore_latest(manager, model, optimizer)
  if start == 0 and cfg.init_from is not None:
    _init_from(model, cfg.init_from)

  weights = [w for _, w, _ in tasks]
  objective = OBJECTIVES[cfg.objective]

  @nnx.jit
  def train_step(model, optimizer, key, batches):
    def loss_fn(model):
      total, metrics = 0.0, {}
      for (task, _, _), w, k, (p, v, a) in zip(tasks, weights, jax.random.split(key, len(tasks)), batches):
        loss, m = objective(model, k, p, v, a)
        total = total + w * loss
        metrics[f"ce_{task.name}"] = m["ce"]
      return total / sum(weights), metrics

    (loss, metrics), grads = nnx.value_and_grad(loss_fn, has_aux=True)(model)
    optimizer.update(model, grads)
    return loss, metrics

  base_key = jax.random.key(cfg.seed)
  end = cfg.steps if stop_after is None else min(cfg.steps, start + stop_after)
  bar = tqdm(range(start, end), initial=start, total=cfg.steps, disable=not progress, desc="train")
  t0, ema = time.time(), None
  for step in bar:
    loss, metrics = train_step(model, optimizer, jax.random.fold_in(base_key, step),
                               _batch(tasks, cfg.seed, step))
    if step % cfg.log_every == 0 or step == end - 1:
      loss = float(loss)
      ema = loss if ema is None else 0.9 * ema + 0.1 * loss
      bar.set_postfix(loss=f"{loss:.3f}", **{k: f"{float(v):.3f}" for k, v in metrics.items()})
    if (step + 1) % cfg.ckpt_every == 0 or step + 1 == end:
      manager.save(step + 1, args=ocp.args.StandardSave({"model": nnx.state(model), "opt": nnx.state(optimizer)}))
  manager.wait_until_finished()
  if end == cfg.steps:
    save_model(model, out_dir / "model")
  bar.close()
  if progress:
    print(f"trained steps {start}..{end} in {time.time() - t0:.1f}s")
  return model
