"""Learn2PD's filter: collect its data (the EGP replay), train it with optax, checkpoint it with orbax, load it.

Collection (`collect_filter_data`, `dlm collect`): for each batch of a task's prompts, the reference answer y
is one-token-per-step greedy decoding (LowConfidence, steps = gen_length, T = 0, the task's blocks); then the
EGP replay (`samplers.learn2pd.EgpReplay`, y passed as its traced params) records, at every step of every block,
the block's confidence vector, the labels [x0 == y] and which slots were masked.  Rows go to a `RecordStore`
(dlm/heads/store.py) one batch of prompts at a time, so a killed collection resumes at the next batch.

Training (`train_filter`, `dlm train-head filter`): full-batch BCE-with-logits over every slot of every row,
AdamW (lr 3e-3, the reference's), the last 10% of rows held out; the reference's metric, the false-positive
rate at the decision threshold (slots with label 0 the filter would accept), is reported on the held-out rows.
Orbax checkpoints every `ckpt_every` steps and resumes.  The finished filter is a folder: `ckpt/` (orbax, training
state), `params.npz` (the four arrays) and `head.json` {kind, block_length, model, task, steps, metrics},
written last.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import orbax.checkpoint as ocp
from tqdm.auto import tqdm

from dlm.heads.folder import asset_or_path, read_head
from dlm.heads.store import RecordStore, open_store, pending_batches
from dlm.train.loop import checkpoint_manager
from dlm.samplers.learn2pd import EgpReplay, filter_logits, init_filter

KIND = "learn2pd_filter"


def collect_filter_data(model, task, out, *, n: int, batch: int, model_name: str, seed: int = 0,
                        progress: bool = True, stop_after: int | None = None) -> RecordStore:
  """Record the EGP replay of `n` prompts of `task` into the store at `out` (resumes an interrupted run).
  stop_after: process at most this many batches in this call (tests use it to interrupt)."""
  from dlm.engine.generate import generate
  from dlm.samplers import LowConfidence
  g, bk = task.gen_length, task.block_length or task.gen_length
  meta = {"kind": "egp", "model": model_name, "task": task.name, "n": n, "batch": batch, "seed": seed,
          "gen_length": g, "block_length": bk}
  store = RecordStore(out, {"conf": ((bk,), "float32"), "label": ((bk,), "bool"), "masked": ((bk,), "bool"),
                            "prompt": ((), "int32"), "step": ((), "int32")}, meta)
  exs = task.examples(n, seed=seed)
  prompts, valid, _ = task.encode(exs)
  reference = LowConfidence(steps=g)
  replay = EgpReplay(max_steps=g)
  for start, rows, p, v in pending_batches(store, prompts, valid, n=n, batch=batch, progress=progress,
                                          stop_after=stop_after):
    y = generate(model, p, v, sampler=reference, gen_length=g, block_length=bk).answers
    rec = generate(model, p, v, sampler=replay, gen_length=g, block_length=bk, sampler_params=y).extras
    rec = jax.tree.map(np.asarray, rec)
    steps = rec["steps"][:rows]
    keep = np.arange(g)[None] < steps[:, None]  # [rows, T]
    store.append({"conf": rec["conf"][:rows][keep], "label": rec["label"][:rows][keep],
                  "masked": rec["masked"][:rows][keep],
                  "prompt": np.broadcast_to(start + np.arange(rows)[:, None], keep.shape)[keep],
                  "step": np.broadcast_to(np.arange(g)[None], keep.shape)[keep]}, units_done=start + rows)
  return store


def _bce(params, conf, label):
  logits = filter_logits(params, conf)
  return optax.sigmoid_binary_cross_entropy(logits, label.astype(jnp.float32)).mean()


def false_positive_rate(params, conf, label, tau: float) -> float:
  """Share of label-0 slots the filter accepts (sigmoid > tau): the reference's monitored metric."""
  accept = np.asarray(jax.nn.sigmoid(filter_logits(params, jnp.asarray(conf)))) > tau
  negatives = ~np.asarray(label, bool)
  return float((accept & negatives).sum() / max(negatives.sum(), 1))


def finished_head(out, steps: int) -> dict | None:
  """head.json of a head already trained to `steps` in `out` (a rerun reports it and leaves it intact), else None."""
  info_path = Path(out) / "head.json"
  if not info_path.is_file():
    return None
  info = json.loads(info_path.read_text())
  done = int(info.get("step", info.get("steps", 0)) or 0)  # the filter records "step", the joint layer "steps"
  metrics = info.get("metrics") or {}
  return info if done >= steps and metrics.get("loss_last") is not None else None


def train_filter(data, out, *, steps: int = 3000, lr: float = 3e-3, tau: float = 0.96, seed: int = 0,
                 ckpt_every: int = 500, progress: bool = True) -> dict:
  """Train the filter on a collected store (`data` folder) into `out`; resumes from out/ckpt.  -> head.json."""
  finished = finished_head(out, steps)
  if finished is not None:  # a rerun of a finished command: report the head, leave it intact
    return finished
  store = open_store(data)
  if store.meta.get("kind") != "egp":
    raise ValueError(f"{data} holds {store.meta.get('kind')!r} data; the filter trains on `dlm collect` EGP data")
  if steps <= 0 or ckpt_every <= 0:
    raise ValueError(f"steps={steps} and ckpt_every={ckpt_every} must be positive")
  rows = store.read()
  n = len(rows["conf"])
  if n < 10:
    raise ValueError(f"{data} has {n} rows; collect more prompts (at least 10 rows are needed)")
  split = n - max(n // 10, 1)
  order = np.random.default_rng(seed).permutation(n)
  train_idx, held_idx = order[:split], order[split:]
  conf, label = jnp.asarray(rows["conf"][train_idx]), jnp.asarray(rows["label"][train_idx])
  bk = conf.shape[-1]
  tx = optax.adamw(lr, weight_decay=0.01)
  params = init_filter(jax.random.key(seed), bk)
  opt_state = tx.init(params)
  out = Path(out)
  manager = checkpoint_manager(out)  # the base model trainer's: out/ckpt, the last two steps kept
  start = manager.latest_step() or 0
  if start:
    target = {"params": params, "opt": opt_state}
    restored = manager.restore(start, args=ocp.args.StandardRestore(jax.tree.map(ocp.utils.to_shape_dtype_struct,
                                                                                 target)))
    params, opt_state = restored["params"], restored["opt"]

  @functools.partial(jax.jit, static_argnames="count")
  def run(params, opt_state, count):
    def one(state, _):
      params, opt_state = state
      loss, grads = jax.value_and_grad(_bce)(params, conf, label)
      updates, opt_state = tx.update(grads, opt_state, params)
      return (optax.apply_updates(params, updates), opt_state), loss
    (params, opt_state), losses = jax.lax.scan(one, (params, opt_state), None, length=count)
    return params, opt_state, losses

  t0 = time.time()
  first_loss, loss = None, None
  bar = tqdm(total=steps, initial=start, disable=not progress, desc="train-head filter")
  step = start
  while step < steps:
    count = min(ckpt_every, steps - step)
    params, opt_state, losses = run(params, opt_state, count)
    first_loss = float(losses[0]) if first_loss is None else first_loss
    loss = float(losses[-1])
    step += count
    manager.save(step, args=ocp.args.StandardSave({"params": params, "opt": opt_state}))
    bar.update(count)
    bar.set_postfix(loss=f"{loss:.4f}")
  manager.wait_until_finished()
  bar.close()
  held_conf, held_label = rows["conf"][held_idx], rows["label"][held_idx]
  metrics = {"train_rows": int(split), "held_rows": int(n - split), "loss_first": first_loss, "loss_last": loss,
             "held_bce": float(_bce(params, jnp.asarray(held_conf), jnp.asarray(held_label))),
             "held_fpr_at_tau": false_positive_rate(params, held_conf, held_label, tau), "tau": tau,
             "label_one_share": float(np.mean(rows["label"])), "wall_s": time.time() - t0}
  info = {"kind": KIND, "block_length": int(bk), "model": store.meta["model"], "task": store.meta["task"],
          "steps": steps, "step": step, "metrics": metrics}
  # The head itself: params.npz, then head.json last (its presence marks a complete head), each via a rename.
  with open(out / "params.npz.tmp", "wb") as f:
    np.savez(f, **{k: np.asarray(v) for k, v in params.items()})
  (out / "params.npz.tmp").replace(out / "params.npz")
  tmp = out / "head.json.tmp"
  tmp.write_text(json.dumps(info, indent=1))
  tmp.replace(out / "head.json")
  load_filter.cache_clear()
  return info


def filter_folder(name: str, block_length: int | None = None) -> Path:
  """A filter folder; "testbed" is the shipped set, one per block length (block<Bk>, default 32)."""
  return asset_or_path(name, "testbed", f"testbed_filter/block{block_length or 32}")


@functools.lru_cache(maxsize=8)
def _load(name: str, block_length: int | None):
  folder = filter_folder(name, block_length)
  info = read_head(folder, name, KIND, "Learn2PD filter", "`dlm collect` then `dlm train-head filter`")
  with np.load(folder / "params.npz") as data:
    params = {name: jnp.asarray(data[name]) for name in ("w1", "b1", "w2", "b2")}
  return params, info


def load_filter(name: str, block_length: int | None = None):
  """-> (params, head.json) of a trained filter; refuses one trained for another block length."""
  params, info = _load(name, block_length if name == "testbed" else None)
  if block_length is not None and info["block_length"] != block_length:
    raise ValueError(f"head={name!r} was trained for blocks of {info['block_length']} slots, the run uses "
                     f"{block_length}: train a filter for this block length (dlm collect --block-length)")
  return params, info


load_filter.cache_clear = _load.cache_clear
