"""ADJUST's sampler layer (Bansal & Sanghavi, arXiv 2509.22738; academicanonymous2701/joint_sampling_diffusion_models,
`models/dream.py` `DrafterModel`, `jointsampler.py`): one transformer layer on top of the frozen network that
updates every slot's prediction after a token is committed, without another full forward.

The layer, in slot-aligned space (row i of every array feeds slot i's logits):
  h = RMSNorm_o(Block(Linear_2D->D(concat(RMSNorm_e(E[x]), RMSNorm_h(h_prev))))) + h_prev,
  logits = the frozen vocabulary head(h);
E: the network's frozen input embeddings of the current canvas x; h_prev: the network's final hidden states from
the last full forward (Dream's shift applied, as the reference shifts its base features), or the previous pass's
output; Block: one layer of the network's own shape (bidirectional attention + SwiGLU), randomly initialised.
Its parameters are data: `nnx.split` state passed to `generate` as `sampler_params` (docs/design.md §1, item 1).

Training (`train_joint`, `dlm train-head joint`), the reference's `kl_random` setting: from a recorded
one-token-per-step entropy-ordered trajectory x^(0), x^(1), ... (each state one committed slot more than the
last), a window start i and K ~ 1 + Categorical(softmax(decay^0, ..., decay^(S-1))) (S = 3, decay 0.5, the
reference's `sampled_spec_idx_weight`); h_0 = the network's features of x^(i); h_j = layer(x^(i+j), h_{j-1})
for j = 1..K with gradients through the unroll; loss = KL(p_net(. | x^(i+K)) || softmax(head(h_K))) summed over
the vocabulary and averaged over the answer slots still masked in x^(i+K).  AdamW, gradient clipping at 1.0.
The reference draws one K per batch; we draw one per example (the same objective in expectation).

Data (`collect_joint_data`, `dlm collect --kind joint`): the reference records the canvas of every state; a
trajectory is fully described by its final answer and the order in which slots were committed, so dlm records
those two ([G] each, from `Generation.commit_step`) and rebuilds any state x^(j) = answer where order < j, else
the mask.  The network's hidden states are recomputed during training (the reference recomputes them too: its
loss needs the network's forward at x^(i+K) anyway), so nothing of size [G, L, D] is stored.

A trained layer is a folder: `layer.safetensors`, `ckpt/` (orbax, the training state) and `head.json`
{kind, model, model_config, speculation, steps, metrics}, written last.
"""

from __future__ import annotations

import functools
import json
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from dlm.heads.folder import asset_or_path, read_head
from dlm.model.config import ModelConfig
from dlm.model.transformer import Block, RMSNorm, Transformer, positions_from_valid

KIND = "adjust_layer"


class JointLayer(nnx.Module):
  """The sampler layer (module docstring) for a network of config `cfg` (its d_model, heads and MLP width)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    cfg = cfg.replace(causal=False)
    d, eps, pdt = cfg.d_model, cfg.norm_eps, cfg.params_dtype
    self.norm_embed = RMSNorm(d, eps, param_dtype=pdt, rngs=rngs)
    self.norm_hidden = RMSNorm(d, eps, param_dtype=pdt, rngs=rngs)
    self.down_project = nnx.Linear(2 * d, d, use_bias=True, dtype=cfg.compute_dtype, param_dtype=pdt,
                                   kernel_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.layer = Block(cfg, rngs=rngs)
    self.norm_out = RMSNorm(d, eps, param_dtype=pdt, rngs=rngs)

  def __call__(self, embeds, h_prev, positions, valid):
    """embeds, h_prev: [B, L, D]; positions, valid: [B, L] -> h [B, L, D] (slot-aligned)."""
    z = jnp.concatenate([self.norm_embed(embeds), self.norm_hidden(h_prev.astype(embeds.dtype))], axis=-1)
    z = self.down_project(z)  # [B, L, D]
    z, _ = self.layer(z, positions, valid, None, 0)
    return (self.norm_out(z) + h_prev).astype(h_prev.dtype)


def layer_parameters(cfg: ModelConfig) -> int:
  """Trainable parameters of the layer: the 2D->D projection, one network layer, three norms."""
  d, h, hkv, dh, f = cfg.d_model, cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head, cfg.mlp_hidden
  attention = d * h * dh * 2 + d * hkv * dh * 2 + (h * dh + 2 * hkv * dh if cfg.qkv_bias else 0)
  return 2 * d * d + d + attention + 3 * d * f + 2 * d + 3 * d


def pass_flops(cfg: ModelConfig, length: int, answer: int) -> float:
  """FLOPs of one layer pass: 2 * layer params per canvas position plus the vocabulary head over the answer
  slots (the matmul estimate the NFE-FLOPs column uses for a full forward, 2 * N * L)."""
  return 2.0 * layer_parameters(cfg) * length + 2.0 * cfg.d_model * cfg.vocab_size * answer


def init_layer(cfg: ModelConfig, seed: int = 0):
  """-> (graphdef, state) of a freshly initialised layer."""
  return nnx.split(JointLayer(cfg, rngs=nnx.Rngs(seed)))


def apply_layer(graphdef, state, embeds, h_prev, positions, valid):
  return nnx.merge(graphdef, state)(embeds, h_prev, positions, valid)


# -- loading ---------------------------------------------------------------------------------------------------

def joint_folder(name: str) -> Path:
  return asset_or_path(name, "testbed", "testbed_joint")


@functools.lru_cache(maxsize=8)
def load_joint(name: str):
  """-> (graphdef, state, head.json) of a trained layer folder ("testbed": the one shipped for the testbed model)."""
  from dlm.io.params import load_params
  folder = joint_folder(name)
  info = read_head(folder, name, KIND, "ADJUST layer", "`dlm collect --kind joint` then `dlm train-head joint`")
  cfg = ModelConfig.from_dict(info["model_config"])
  layer = load_params(lambda: JointLayer(cfg, rngs=nnx.Rngs(0)), folder / "layer.safetensors")
  graphdef, state = nnx.split(layer)
  return graphdef, state, info


def check_layer_fits(info: dict, name: str, d_model: int, vocab_size: int) -> None:
  """Refuse a layer trained on top of a network of another width or vocabulary (a one-line ValueError)."""
  cfg = info["model_config"]
  if (cfg["d_model"], cfg["vocab_size"]) != (d_model, vocab_size):
    raise ValueError(f"head={name!r} was trained for a network with d_model={cfg['d_model']} and "
                     f"vocab_size={cfg['vocab_size']} (model {info.get('model')!r}); this one has "
                     f"d_model={d_model}, vocab_size={vocab_size}: train a layer for it (dlm train-head joint)")


# -- the training objective ------------------------------------------------------------------------------------

def _log_softmax_banned(logits, mask_id: int):
  """log-softmax over the vocabulary with the mask id banned, as the engine's head does.  [..., V] float32."""
  logits = jnp.where(jnp.arange(logits.shape[-1]) == mask_id, -jnp.inf, logits.astype(jnp.float32))
  return jax.nn.log_softmax(logits, axis=-1)


def kl_divergence(target_logp, logp):
  """KL(target || model) per row over the vocabulary; banned columns (-inf in both) contribute 0.  [..., V]->[...]."""
  p = jnp.exp(target_logp)
  return jnp.sum(jnp.where(p > 0, p * (target_logp - jnp.where(p > 0, logp, 0.0)), 0.0), axis=-1)


def states_at(answer, rank, j, mask_id: int):
  """Trajectory states: answer [N, G], rank [N, G] (commit order, 0 first), j [N] -> x^(j) answer [N, G]."""
  return jnp.where(rank < j[:, None], answer, mask_id)


def unroll_loss(graphdef, state, net: Transformer, prompt, valid, answer, rank, start, k, speculation: int):
  """The ADJUST objective for a batch (module docstring).  prompt, valid [N, P]; answer, rank [N, G]; start,
  k [N] (1 <= k <= speculation).  -> (mean KL at the last pass, naive KL of the x^(start) marginals, agreement of
  the top-1 tokens with the target's: layer and naive)."""
  cfg = net.cfg
  p = prompt.shape[1]
  full_valid = jnp.concatenate([valid, jnp.ones(answer.shape, bool)], axis=1)  # [N, L]
  positions = positions_from_valid(full_valid)
  canvas = lambda j: jnp.concatenate([prompt, states_at(answer, rank, j, cfg.mask_id)], axis=1)  # [N, L]

  def features(tokens):  # the frozen network: slot-aligned hidden [N, L, D] and answer log-probs [N, G, V]
    from dlm.engine.calls import block_hidden_of
    hidden, _ = net(tokens, positions, full_valid)
    hidden = jax.lax.stop_gradient(block_hidden_of(net, hidden, 0, tokens.shape[1]))
    return hidden, _log_softmax_banned(net.logits(hidden[:, p:], shift=False), cfg.mask_id)

  h, naive_logp = features(canvas(start))
  _, target_logp = features(canvas(start + k))
  layer = nnx.merge(graphdef, state)
  table = net.embed.embedding[...]
  chosen = jnp.zeros(h[:, p:].shape, jnp.float32)
  for j in range(1, speculation + 1):  # static unroll; only pass k's output is scored, so later passes get no grad
    h = layer(jnp.take(table.astype(cfg.compute_dtype), canvas(start + j), axis=0), h, positions, full_valid)
    chosen = jnp.where((k == j)[:, None, None], h[:, p:].astype(jnp.float32), chosen)
  logp = _log_softmax_banned(net.logits(chosen.astype(cfg.compute_dtype), shift=False), cfg.mask_id)  # [N, G, V]
  where = states_at(answer, rank, start + k, cfg.mask_id) == cfg.mask_id  # [N, G] still masked in x^(i+K)
  count = jnp.maximum(where.sum(), 1)
  mean = lambda x: jnp.sum(jnp.where(where, x, 0.0)) / count
  top = jnp.argmax(target_logp, -1)
  return (mean(kl_divergence(target_logp, logp)), mean(kl_divergence(target_logp, naive_logp)),
          mean(jnp.argmax(logp, -1) == top), mean(jnp.argmax(naive_logp, -1) == top))


def unroll_weights(speculation: int, decay: float) -> np.ndarray:
  """P(K = j), j = 1..S: softmax(decay^0, ..., decay^(S-1)) (the reference's `set_reweighing`)."""
  w = np.asarray([decay ** i for i in range(speculation)], np.float64)
  e = np.exp(w - w.max())
  return e / e.sum()


def sample_windows(rng: np.random.Generator, rows: int, batch: int, gen_length: int, speculation: int,
                   decay: float):
  """-> (row index [N], window start [N], K [N]): starts uniform over those whose whole window leaves a masked
  slot (i + S < G, as the reference's windows of S + 1 states inside a trajectory)."""
  if gen_length <= speculation:
    raise ValueError(f"gen_length={gen_length} must exceed speculation={speculation}")
  idx = rng.integers(0, rows, batch)
  start = rng.integers(0, gen_length - speculation, batch)
  k = 1 + rng.choice(speculation, size=batch, p=unroll_weights(speculation, decay))
  return idx, start.astype(np.int32), k.astype(np.int32)


def commit_rank(order: np.ndarray) -> np.ndarray:
  """[N, G] commit iterations (one slot per step) -> rank 0..G-1 (ties broken by slot index)."""
  return np.argsort(np.argsort(order, axis=1, kind="stable"), axis=1, kind="stable").astype(np.int32)


def collect_joint_data(model, task, out, *, n: int, batch: int, model_name: str, seed: int = 0,
                       temperature: float | None = None, progress: bool = True, stop_after: int | None = None):
  """Record one-token-per-step entropy-ordered trajectories (ADJUST with K = 1: the network's own joint) of `n`
  prompts of `task` into a RecordStore at `out` (resumes).  temperature: default the task's (hmm: 1).
  stop_after: process at most this many batches in this call (tests use it to interrupt)."""
  from dlm.engine.generate import generate
  from dlm.heads.store import RecordStore, pending_batches
  from dlm.samplers.adjust import JointSampler
  g, bk = task.gen_length, task.block_length or task.gen_length
  if temperature is None:
    temperature = float(task.sampler_defaults.get("temperature", 0.0))
  exs = task.examples(n, seed=seed)
  prompts, valid, _ = task.encode(exs)
  p = prompts.shape[1]
  meta = {"kind": "joint", "model": model_name, "task": task.name, "n": n, "batch": batch, "seed": seed,
          "gen_length": g, "block_length": bk, "temperature": temperature}
  store = RecordStore(out, {"prompt": ((p,), "int32"), "prompt_valid": ((p,), "bool"), "answer": ((g,), "int32"),
                            "order": ((g,), "int32")}, meta)
  sampler = JointSampler(tokens_per_step=1, schedule="even", temperature=temperature, use_marginals=True)
  for start, rows, pr, v in pending_batches(store, prompts, valid, n=n, batch=batch, progress=progress,
                                           desc="collect joint", stop_after=stop_after):
    out_gen = generate(model, pr, v, sampler=sampler, gen_length=g, block_length=bk,
                       key=jax.random.key(seed * 1_000_003 + start))
    store.append({"prompt": pr[:rows], "prompt_valid": v[:rows], "answer": np.asarray(out_gen.answers)[:rows],
                  "order": np.asarray(out_gen.commit_step)[:rows]}, units_done=start + rows)
  return store


def train_joint(data, out, model: Transformer, *, model_name: str, steps: int = 2000, batch: int = 64,
                lr: float = 1e-3, warmup: int = 100, speculation: int = 3, decay: float = 0.5, seed: int = 0,
                ckpt_every: int = 500, progress: bool = True) -> dict:
  """Train the layer on recorded trajectories (`data`: one store folder or a list) into `out`; resumes from
  out/ckpt.  The network stays frozen.  -> head.json as a dict."""
  import optax
  import orbax.checkpoint as ocp
  from dlm.heads.store import open_store
  from dlm.train.loop import checkpoint_manager
  from dlm.heads.filter import finished_head
  finished = finished_head(out, steps)
  if finished is not None:  # a rerun of a finished command: report the head, leave it intact
    return finished
  folders = [data] if isinstance(data, (str, Path)) else list(data)
  if steps <= 0 or ckpt_every <= 0 or batch <= 0 or speculation <= 0:
    raise ValueError(f"steps={steps}, ckpt_every={ckpt_every}, batch={batch} and speculation={speculation} must "
                     "be positive")
  stores = []
  for folder in folders:
    store = open_store(folder)
    if store.meta.get("kind") != "joint":
      raise ValueError(f"{folder} holds {store.meta.get('kind')!r} data; the ADJUST layer trains on "
                       "`dlm collect --kind joint` trajectories")
    if str(store.meta.get("model")) != str(model_name):
      raise ValueError(f"{folder} was collected with the model {store.meta.get('model')!r}, not {model_name!r}")
    if store.rows < 2:
      raise ValueError(f"{folder} has {store.rows} trajectories; collect more prompts (at least 2)")
    stores.append(store.read())
  cfg = model.cfg
  graphdef_net, net_state = nnx.split(model)
  graphdef, params = init_layer(cfg, seed)
  schedule = optax.join_schedules([optax.linear_schedule(0.0, lr, max(warmup, 1)), optax.constant_schedule(lr)],
                                  [max(warmup, 1)])
  tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(schedule, weight_decay=0.0))
  opt_state = tx.init(params)
  out = Path(out)
  manager = checkpoint_manager(out)
  first = manager.latest_step() or 0
  if first:
    target = {"params": params, "opt": opt_state}
    restored = manager.restore(first, args=ocp.args.StandardRestore(
        jax.tree.map(ocp.utils.to_shape_dtype_struct, target)))
    params, opt_state = restored["params"], restored["opt"]

  # Each store keeps its own prompt width and answer length; a step draws its batch from one store (round robin).
  data = []
  for rec in stores:
    rows = len(rec["answer"])
    held = max(rows // 10, 1)
    data.append({k: jnp.asarray(v) for k, v in rec.items() if k != "order"} | {
        "rank": jnp.asarray(commit_rank(rec["order"])), "rows": rows - held, "held": held})

  def loss_fn(params, d, idx, start, k):
    net = nnx.merge(graphdef_net, net_state)
    kl, _, _, _ = unroll_loss(graphdef, params, net, d["prompt"][idx], d["prompt_valid"][idx], d["answer"][idx],
                              d["rank"][idx], start, k, speculation)
    return kl

  @jax.jit
  def train_step(params, opt_state, d, idx, start, k):
    loss, grads = jax.value_and_grad(loss_fn)(params, d, idx, start, k)
    updates, opt_state = tx.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  @jax.jit
  def evaluate(params, d, idx, start, k):
    net = nnx.merge(graphdef_net, net_state)
    return unroll_loss(graphdef, params, net, d["prompt"][idx], d["prompt_valid"][idx], d["answer"][idx],
                       d["rank"][idx], start, k, speculation)

  arrays = lambda d: {k: v for k, v in d.items() if k not in ("rows", "held")}
  rng = np.random.default_rng(seed + first)
  t0 = time.time()
  losses = []
  from tqdm.auto import tqdm
  bar = tqdm(total=steps, initial=first, disable=not progress, desc="train-head joint")
  step = first
  while step < steps:
    d = data[step % len(data)]
    idx, start, k = sample_windows(rng, d["rows"], batch, d["answer"].shape[1], speculation, decay)
    params, opt_state, loss = train_step(params, opt_state, arrays(d), jnp.asarray(idx), jnp.asarray(start),
                                         jnp.asarray(k))
    losses.append(float(loss))
    step += 1
    bar.update(1)
    if step % 50 == 0:
      bar.set_postfix(kl=f"{np.mean(losses[-50:]):.4f}")
    if step % ckpt_every == 0 or step == steps:
      manager.save(step, args=ocp.args.StandardSave({"params": params, "opt": opt_state}))
  manager.wait_until_finished()
  bar.close()

  # Held-out trajectories (the last 10% of each store): KL and top-1 agreement at every unroll depth, against
  # the naive prediction (the x^(i) marginals the plain parallel sampler would use).
  eval_rng = np.random.default_rng(10_000 + seed)
  per_k = {}
  for j in range(1, speculation + 1):
    sums = np.zeros(4)
    for d in data:
      gl = d["answer"].shape[1]
      idx = d["rows"] + eval_rng.integers(0, d["held"], 256)
      start = eval_rng.integers(0, gl - speculation, 256).astype(np.int32)
      out_k = evaluate(params, arrays(d), jnp.asarray(idx), jnp.asarray(start), jnp.full((256,), j, jnp.int32))
      sums += np.asarray([float(x) for x in out_k])
    kl, naive, agree, naive_agree = sums / len(data)
    per_k[str(j)] = {"kl": kl, "naive_kl": naive, "top1_agree": agree, "naive_top1_agree": naive_agree}
  metrics = {"loss_first": float(np.mean(losses[:20])) if losses else None,
             "loss_last": float(np.mean(losses[-50:])) if losses else None, "held_out": per_k,
             "wall_s": time.time() - t0, "trajectories": int(sum(d["rows"] + d["held"] for d in data))}
  return save_joint(out, nnx.merge(graphdef, params), cfg, str(model_name), speculation=speculation, decay=decay,
                    steps=steps, batch=batch, lr=lr, data=[str(f) for f in folders], metrics=metrics)


def save_joint(out, layer: JointLayer, cfg: ModelConfig, model_name: str, **record) -> dict:
  """Write a layer folder: layer.safetensors, then head.json last (its presence marks a complete head)."""
  from dlm.io.params import atomic_write, save_params
  out = Path(out)
  info = {"kind": KIND, "model": model_name, "model_config": cfg.to_dict(), "parameters": layer_parameters(cfg),
          **record}
  save_params(layer, out / "layer.safetensors")
  atomic_write(out / "head.json", lambda tmp: Path(tmp).write_text(json.dumps(info, indent=1)))
  load_joint.cache_clear()
  return info
