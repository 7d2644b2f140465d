"""Mixture-of-experts feed-forward block: a router, dropless dispatch to SwiGLU experts, an optional shared expert.

Routing follows each reference's modelling code exactly (the table in docs/moe.md):

* ``router="softmax"`` (Qwen3-MoE, so SDAR-30B-A3B; LLaDA-MoE-7B-A1B): ``p = softmax(x @ Wg)`` over all experts in
  float32; with an expert bias (LLaDA-MoE's ``expert_bias`` buffer) ``p += bias``, and the biased values are both
  the choice and the weights; the top-k of ``p``; renormalised to sum to 1 over the k when ``norm_topk_prob``.
* ``router="sigmoid_groups"`` (LLaDA2.x's Ling-2.0 body): ``s = sigmoid(x @ Wg)`` in float32; the choice reads
  ``s + bias`` limited to the ``topk_groups`` best of ``n_groups`` equal groups of experts (a group scores the sum
  of its two best biased scores); the weights are the chosen *unbiased* scores over their sum (+1e-20; k > 1) times
  ``routed_scale``.

Dispatch is dropless: every (token, expert) pair is computed, none is dropped for capacity.  The pairs are sorted
by expert and run as one grouped matmul (`jax.lax.ragged_dot`) per projection, so the FLOPs are k tokens' worth,
not E ("grouped", the default on GPU / TPU); XLA:CPU lowers ragged_dot to a dense product over every expert, so
on CPU ("tiled") each expert's pairs are padded to whole row tiles and a loop over the experts runs each
one's tiles through its weights.  ``dispatch_dense`` (every expert on every token, combined by the routing weights) is the reference the
tests hold both to.  Under a mesh with an ``expert`` axis (dlm/parallel) each device runs only its
own experts: the tokens are gathered to every expert shard, each shard computes the pairs routed to its experts
and the partial outputs are summed over the axis (`shard_map`), so expert weights never move.

Shapes: x [T, D]; router logits [T, E]; choices and weights [T, k]; expert weights gate/up [E, D, F], down
[E, F, D].  The weights combine the expert outputs in float32 (as LLaDA2's moe_infer does) and the sum is cast
back to the compute dtype.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from dlm.model.config import ModelConfig
from dlm.model.layers import SwiGLU, linear

EXPERT_AXIS = "expert"


def route(logits: jax.Array, bias: jax.Array | None, cfg: ModelConfig) -> tuple[jax.Array, jax.Array]:
  """Router logits [T, E] (float32) -> (chosen experts [T, k] int32, their weights [T, k] float32)."""
  k = cfg.experts_per_token
  logits = logits.astype(jnp.float32)
  if cfg.router == "softmax":
    scores = jax.nn.softmax(logits, axis=-1)
    if bias is not None:
      scores = scores + bias.astype(jnp.float32)
    weights, chosen = jax.lax.top_k(scores, k)
    if cfg.norm_topk_prob:
      weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
    return chosen.astype(jnp.int32), weights
  scores = jax.nn.sigmoid(logits)  # [T, E]
  biased = scores if bias is None else scores + bias.astype(jnp.float32)
  t, e = biased.shape
  grouped = biased.reshape(t, cfg.n_groups, e // cfg.n_groups)
  group_scores = jnp.sum(jax.lax.top_k(grouped, 2)[0], axis=-1)  # [T, G]
  _, groups = jax.lax.top_k(group_scores, cfg.topk_groups)  # [T, topk_groups]
  allowed = jnp.zeros((t, cfg.n_groups), bool).at[jnp.arange(t)[:, None], groups].set(True)
  allowed = jnp.repeat(allowed, e // cfg.n_groups, axis=1)  # [T, E]
  _, chosen = jax.lax.top_k(jnp.where(allowed, biased, -jnp.inf), k)
  weights = jnp.take_along_axis(scores, chosen, axis=-1)
  if k > 1:
    weights = weights / (jnp.sum(weights, axis=-1, keepdims=True) + 1e-20)
  return chosen.astype(jnp.int32), weights * cfg.routed_scale


def _swiglu_grouped(xs, gate, up, down, group_sizes):
  """Rows of xs sorted by expert -> each row through its expert's SwiGLU (rows past the groups come out 0)."""
  h = jax.nn.silu(jax.lax.ragged_dot(xs, gate, group_sizes)) * jax.lax.ragged_dot(xs, up, group_sizes)
  return jax.lax.ragged_dot(h.astype(xs.dtype), down, group_sizes)


def _pairs_by_expert(chosen, first_expert, local):
  """The T*k (token, expert) pairs sorted by expert, for the experts [first_expert, first_expert + local) held
  here; pairs routed elsewhere sort last, into no group.  -> (mine [N] bool in pair order, order [N] pair
  indexes in sorted order, sorted_key [N] local expert or `local`, sizes [E] pairs per local expert)."""
  expert = chosen.reshape(-1) - first_expert  # [N]
  mine = (expert >= 0) & (expert < local)
  key = jnp.where(mine, expert, local)
  order = jnp.argsort(key, stable=True)
  return mine, order, key[order], jnp.bincount(key, length=local + 1)[:local]


def _combine(sorted_out, weights, mine, order, t):
  """Expert outputs of the sorted pairs [N, D] -> [T, D] float32: each weighted by its routing weight (0 for a
  pair routed elsewhere) and summed into its token."""
  k = weights.shape[-1]
  w = jnp.where(mine, weights.reshape(-1), 0.0)[order]  # [N]
  contrib = sorted_out.astype(jnp.float32) * w[:, None]
  return jnp.zeros((t, sorted_out.shape[-1]), jnp.float32).at[order // k].add(contrib)


def dispatch_grouped(x, chosen, weights, gate, up, down, first_expert=0):
  """Dropless grouped dispatch over the experts [first_expert, first_expert + gate.shape[0]) held here; pairs
  routed elsewhere contribute 0 (another shard computes them).  x [T, D] -> [T, D] float32."""
  t, k = chosen.shape
  mine, order, _, sizes = _pairs_by_expert(chosen, first_expert, gate.shape[0])
  out = _swiglu_grouped(x[order // k], gate, up, down, sizes.astype(jnp.int32))  # [T*k, D]
  return _combine(out, weights, mine, order, t)


def _tile_rows(pairs: int, experts: int) -> int:
  """Rows of one tile of the tiled dispatch: about half the pairs an expert gets, a power of two in [8, 64]."""
  per_expert = max(1, pairs // max(experts, 1) // 2)
  return int(min(64, max(8, 1 << (per_expert - 1).bit_length())))


def dispatch_tiled(x, chosen, weights, gate, up, down, first_expert=0, tile=None):
  """`dispatch_grouped` without `ragged_dot`: each expert's pairs are padded to whole tiles of `tile` rows; a loop
  over the experts slices each expert's weights once and runs its tiles through them (the grouped matmul written
  out: XLA:CPU lowers `ragged_dot` to a dense product over every expert, which does not fit at LLaDA2's 256
  experts).  Dropless; the padding is at most (tile - 1) rows an expert.  x [T, D] -> [T, D] float32."""
  t, k = chosen.shape
  local, d = gate.shape[0], x.shape[-1]
  pairs = t * k
  tile = tile or _tile_rows(pairs, local)
  mine, order, sorted_key, sizes = _pairs_by_expert(chosen, first_expert, local)
  padded = -(-sizes // tile) * tile
  padded_start = jnp.cumsum(padded) - padded
  sorted_start = jnp.cumsum(sizes) - sizes
  capacity = -(-(pairs + local * (tile - 1)) // tile) * tile  # static bound on the padded rows
  group = jnp.minimum(sorted_key, local - 1)
  rank = jnp.arange(pairs) - sorted_start[group]
  slot = jnp.where(sorted_key < local, padded_start[group] + rank, capacity)  # [N] row in the padded buffer
  rows = jnp.zeros((capacity, d), x.dtype).at[slot].set(x[order // k], mode="drop")

  def per_expert(e, out):
    g, u, dn = gate[e], up[e], down[e]  # sliced once for all of this expert's tiles

    def per_tile(i, out):
      r0 = padded_start[e] + i * tile
      xt = jax.lax.dynamic_slice_in_dim(rows, r0, tile)  # [tile, D]
      yt = (jax.nn.silu(xt @ g) * (xt @ u)).astype(xt.dtype) @ dn
      return jax.lax.dynamic_update_slice_in_dim(out, yt.astype(jnp.float32), r0, 0)

    return jax.lax.fori_loop(0, padded[e] // tile, per_tile, out)

  out = jax.lax.fori_loop(0, local, per_expert, jnp.zeros((capacity, d), jnp.float32))  # [C, D]
  return _combine(out.at[slot].get(mode="fill", fill_value=0.0), weights, mine, order, t)


def dispatch_dense(x, chosen, weights, gate, up, down):
  """Reference: every expert on every token, summed with the routing weights (0 for experts not chosen)."""
  e = gate.shape[0]
  dense_w = jnp.sum(jax.nn.one_hot(chosen, e, dtype=jnp.float32) * weights[..., None], axis=1)  # [T, E]
  h = jax.nn.silu(jnp.einsum("td,edf->etf", x, gate)) * jnp.einsum("td,edf->etf", x, up)
  out = jnp.einsum("etf,efd->etd", h.astype(x.dtype), down).astype(jnp.float32)  # [E, T, D]
  return jnp.einsum("etd,te->td", out, dense_w)


DISPATCH = {"grouped": dispatch_grouped, "tiled": dispatch_tiled, "dense": dispatch_dense}
DISPATCH_CHOICES = ("auto", *DISPATCH)


def resolve_dispatch(dispatch: str) -> str:
  """"auto" -> "tiled" on CPU (XLA:CPU runs ragged_dot densely over every expert), "grouped" on GPU / TPU."""
  if dispatch == "auto":
    return "tiled" if jax.default_backend() == "cpu" else "grouped"
  return dispatch


def _expert_mesh():
  """The current mesh when it splits experts (an `expert` axis of size > 1), else None."""
  from dlm.parallel.mesh import current_mesh
  mesh = current_mesh()
  if mesh is None or EXPERT_AXIS not in mesh.axis_names or mesh.shape[EXPERT_AXIS] == 1:
    return None
  return mesh


def dispatch_sharded(mesh, x, chosen, weights, gate, up, down, grouped):
  """`grouped` (dispatch_grouped or dispatch_tiled) with the experts split over the mesh's `expert` axis (their hidden units also over
  `tensor` where the mesh has it).  x [B, W, D], chosen / weights [B, W, k] -> [B, W, D] float32.

  Where the batch divides over the mesh's batch axes (data, fsdp, expert), each device starts from its own rows:
  the rows of the expert axis are all-gathered to every expert shard, each shard runs the pairs routed to its own
  experts, and the partial outputs are summed and scattered back to their rows in one reduce-scatter.  Otherwise
  (a batch that does not divide) the tokens are replicated and the partial outputs meet in a psum."""
  from jax.sharding import PartitionSpec as P
  from dlm.parallel.mesh import batch_axes, batch_split
  tensor = "tensor" if "tensor" in mesh.axis_names and mesh.shape["tensor"] > 1 else None
  local = gate.shape[0] // mesh.shape[EXPERT_AXIS]
  split_rows = x.shape[0] % batch_split(mesh) == 0
  rows = P(batch_axes(mesh)) if split_rows else P()

  def body(x, chosen, weights, gate, up, down):
    if split_rows:  # this expert shard sees the rows of every device along the expert axis
      x, chosen, weights = (jax.lax.all_gather(a, EXPERT_AXIS, axis=0, tiled=True) for a in (x, chosen, weights))
    b, w, d = x.shape
    first = jax.lax.axis_index(EXPERT_AXIS) * local
    out = grouped(x.reshape(b * w, d), chosen.reshape(b * w, -1), weights.reshape(b * w, -1), gate, up, down,
                  first_expert=first).reshape(b, w, d)
    if tensor:
      out = jax.lax.psum(out, tensor)
    if split_rows:
      return jax.lax.psum_scatter(out, EXPERT_AXIS, scatter_dimension=0, tiled=True)
    return jax.lax.psum(out, EXPERT_AXIS)

  return jax.shard_map(
      body, mesh=mesh,
      in_specs=(rows, rows, rows, P(EXPERT_AXIS, None, tensor), P(EXPERT_AXIS, None, tensor),
                P(EXPERT_AXIS, tensor, None)),
      out_specs=rows, check_vma=False)(x, chosen, weights, gate, up, down)


class Router(nnx.Module):
  """The gate: [D] -> E logits (float32 matmul where the reference runs it in float32), plus the expert bias."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.gate = linear(cfg.d_model, cfg.n_experts, cfg, rngs, dtype=jnp.float32 if cfg.router_float32 else None)
    if cfg.router_bias:
      self.expert_bias = nnx.Param(jnp.zeros((cfg.n_experts,), jnp.float32))

  def __call__(self, x):
    x = x.astype(jnp.float32) if self.cfg.router_float32 else x
    logits = self.gate(x)  # [T, E]
    return route(logits, self.expert_bias[...] if self.cfg.router_bias else None, self.cfg)


class MoE(nnx.Module):
  """The mixture-of-experts block that replaces a dense MLP in an MoE layer.  x [B, W, D] -> [B, W, D]."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.router = Router(cfg, rngs=rngs)
    e, d, f = cfg.n_experts, cfg.d_model, cfg.expert_hidden
    init = nnx.initializers.normal(0.02)
    self.gate_proj = nnx.Param(init(rngs.params(), (e, d, f), cfg.params_dtype))
    self.up_proj = nnx.Param(init(rngs.params(), (e, d, f), cfg.params_dtype))
    self.down_proj = nnx.Param(init(rngs.params(), (e, f, d), cfg.params_dtype))
    if cfg.shared_expert_hidden:
      self.shared = SwiGLU(cfg, cfg.shared_expert_hidden, rngs=rngs)
    # static: "auto" (tiled on CPU, grouped elsewhere), "grouped" (ragged_dot), "tiled" (a scan of expert tiles),
    # each expert-sharded under a mesh with an expert axis; or "dense" (every expert on every token: the reference)
    self.dispatch = "auto"

  def __call__(self, x):
    b, w, d = x.shape
    dt = self.cfg.compute_dtype
    flat = x.reshape(b * w, d)
    chosen, weights = self.router(flat)
    gate, up, down = (p[...].astype(dt) for p in (self.gate_proj, self.up_proj, self.down_proj))
    xs = flat.astype(dt)
    mesh = None if self.dispatch == "dense" else _expert_mesh()
    grouped = DISPATCH[resolve_dispatch(self.dispatch)]
    if mesh is not None:
      k = chosen.shape[-1]
      out = dispatch_sharded(mesh, xs.reshape(b, w, d), chosen.reshape(b, w, k), weights.reshape(b, w, k), gate,
                             up, down, grouped=grouped)
    else:
      out = grouped(xs, chosen, weights, gate, up, down)
    out = out.astype(dt).reshape(b, w, d)
    if self.cfg.shared_expert_hidden:
      out = out + self.shared(x)
    return out
