"""The fused decode head as a Pallas kernel: logits tile by tile, reduced on chip, never written to memory.

Two variants of one tile update (`_tile_update`, written with max / min / sum / where only, so it lowers on both
Mosaic and Triton; the same formulas as kernels/head.py, whose `head_reference` is the reference):

  backend="tpu"  grid (N / block_n, V / block_v), the vocabulary axis innermost and "arbitrary": the running
                 statistics live in the output blocks, which stay resident across the vocabulary axis (the
                 accumulator pattern of Pallas TPU matmuls); weight tiles stream HBM -> VMEM by BlockSpec.
  backend="gpu"  grid (N / block_n,): each program loops over the vocabulary tiles itself (Triton programs run
                 in parallel, so they cannot accumulate across a grid axis), loading weight tiles with pl.ds.

`interpret=True` runs either variant through the Pallas interpreter (the CPU tests).  Whole tiles only: the kernel
covers the first floor(V / block_v) tiles and the remainder (< block_v ids) is reduced by the chunked XLA code and
merged, so the weights are never padded or copied.  Rows are padded to a multiple of block_n (cheap: [N, D]).

Status: verified in interpret mode on CPU against the reference (tests/test_head.py).  It has not been compiled for
a TPU or GPU in this repository (no device was available); `generate(head="pallas")` is opt-in for that reason.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax.experimental import pallas as pl

from dlm.kernels import head as _head
from dlm.kernels.head import HeadBlocks, HeadRequest, HeadStats
from dlm.kernels.noise import gumbel_scores

_BIG_ID = 2**31 - 1


def _argmax_low(score, ids):
  """Max of score [n, t] per row and the lowest id attaining it -> ([n, 1], [n, 1])."""
  best = jnp.max(score, axis=-1, keepdims=True)
  idx = jnp.min(jnp.where(score == best, ids, _BIG_ID), axis=-1, keepdims=True)
  return best, idx


def _pick(values, ids, idx):
  """values at the id `idx` [n, 1] of each row -> [n, 1] (-inf when absent)."""
  return jnp.max(jnp.where(ids == idx, values, -jnp.inf), axis=-1, keepdims=True)


def _tile_stats(logits, ids, rows, request: HeadRequest, seed, tokens):
  """One tile's statistics, [n, 1] columns (top: [n, k]).  logits [n, t] float32 with banned ids at -inf."""
  m = jnp.max(logits, axis=-1, keepdims=True)
  safe = jnp.where(jnp.isfinite(m), m, 0.0)
  z = logits - safe
  e = jnp.exp(z)
  out = dict(max=m, sum=jnp.sum(e, axis=-1, keepdims=True))
  if request.entropy:
    out["u"] = jnp.sum(jnp.where(e > 0, e * z, 0.0), axis=-1, keepdims=True)
  if request.top:
    vals, idx, rest = [], [], logits
    for _ in range(request.top):  # k small: repeated max, lowest id first on ties
      v, i = _argmax_low(rest, ids)
      vals.append(v)
      idx.append(i)
      rest = jnp.where(ids == i, -jnp.inf, rest)
    out["top_logits"], out["top_ids"] = jnp.concatenate(vals, -1), jnp.concatenate(idx, -1)
  if request.sample:
    score = logits if request.temperature == 0 else gumbel_scores(logits, seed, rows, ids, request.temperature)
    best, idx = _argmax_low(score, ids)
    out["sample_score"], out["sample"], out["sample_logit"] = best, idx, _pick(logits, ids, idx)
  if request.token_prob:
    out["token_logit"] = _pick(logits, ids, tokens)
  return out


def _merge_columns(acc, new, request: HeadRequest):
  """`head._merge` on [n, 1] columns, with the top-k merge written without lax.top_k."""
  flat = {k: v for k, v in acc.items() if k not in ("top_logits", "top_ids")}
  flat_new = {k: v for k, v in new.items() if k not in ("top_logits", "top_ids")}
  out = _head._merge(flat, flat_new, dataclasses.replace(request, top=0))
  if request.top:
    vals = jnp.concatenate([acc["top_logits"], new["top_logits"]], -1)
    ids = jnp.concatenate([acc["top_ids"], new["top_ids"]], -1)
    picked_v, picked_i, rest = [], [], vals
    for _ in range(request.top):
      v, i = _argmax_low(rest, ids)
      picked_v.append(v)
      picked_i.append(i)
      rest = jnp.where(ids == i, -jnp.inf, rest)
    out["top_logits"], out["top_ids"] = jnp.concatenate(picked_v, -1), jnp.concatenate(picked_i, -1)
  return out


def _tile_logits(h, w, u, v_axis: int, dtype, cfg_scale: float):
  contract = ((1,), (1,)) if v_axis == 0 else ((1,), (0,))

  def dot(x):
    out = jax.lax.dot_general(x.astype(dtype), w.astype(dtype), (contract, ((), ())),
                              preferred_element_type=jnp.float32)
    return out.astype(dtype).astype(jnp.float32)  # the reference rounds its logits to the compute dtype

  logits = dot(h)
  if u is not None:
    un = dot(u)
    logits = un + (cfg_scale + 1.0) * (logits - un)
  return logits


def _tile_update(acc, h, w, u, seed, tokens, j, i, *, request, mask_id, v_axis, dtype, cfg_scale, bn, bv):
  logits = _tile_logits(h, w, u, v_axis, dtype, cfg_scale)  # [bn, bv]
  ids = j * bv + jax.lax.broadcasted_iota(jnp.int32, (bn, bv), 1)
  rows = i * bn + jax.lax.broadcasted_iota(jnp.int32, (bn, 1), 0)
  logits = _head._ban(logits, ids, mask_id, request.banned)
  new = _tile_stats(logits, ids, rows, request, seed, tokens)
  return new if acc is None else _merge_columns(acc, new, request)


def _fields(request: HeadRequest) -> list[tuple[str, int, object]]:
  """(name, columns, dtype) of the kernel's outputs."""
  out = [("max", 1, jnp.float32), ("sum", 1, jnp.float32)]
  if request.entropy:
    out.append(("u", 1, jnp.float32))
  if request.top:
    out += [("top_logits", request.top, jnp.float32), ("top_ids", request.top, jnp.int32)]
  if request.sample:
    out += [("sample_score", 1, jnp.float32), ("sample", 1, jnp.int32), ("sample_logit", 1, jnp.float32)]
  if request.token_prob:
    out.append(("token_logit", 1, jnp.float32))
  return out


def _kernel(*refs, request, fields, has_uncond, has_seed, has_tokens, backend, num_tiles, static):
  it = iter(refs)
  h_ref, w_ref = next(it), next(it)
  u_ref = next(it) if has_uncond else None
  seed_ref = next(it) if has_seed else None
  tok_ref = next(it) if has_tokens else None
  out_refs = dict(zip([f[0] for f in fields], it))
  i = pl.program_id(0)
  seed = None if seed_ref is None else seed_ref[...].astype(jnp.uint32)[0]
  tokens = None if tok_ref is None else tok_ref[...]
  h = h_ref[...]
  u = None if u_ref is None else u_ref[...]
  update = functools.partial(_tile_update, request=request, i=i, **static)
  bv, v_axis = static["bv"], static["v_axis"]

  if backend == "tpu":
    j = pl.program_id(1)
    new = update(None, h, w_ref[...], u, seed, tokens, j)

    @pl.when(j == 0)
    def _():
      for name, ref in out_refs.items():
        ref[...] = new[name].astype(ref.dtype)

    @pl.when(j > 0)
    def _():
      acc = {name: ref[...] for name, ref in out_refs.items()}
      merged = _merge_columns(acc, new, request)
      for name, ref in out_refs.items():
        ref[...] = merged[name].astype(ref.dtype)
  else:
    def load(j):
      tile = pl.ds(pl.multiple_of(j * bv, bv), bv)
      return w_ref[tile, :] if v_axis == 0 else w_ref[:, tile]

    first = update(None, h, load(0), u, seed, tokens, 0)

    def body(j, acc):
      return update(acc, h, load(j), u, seed, tokens, j)

    acc = jax.lax.fori_loop(1, num_tiles, body, first)
    for name, ref in out_refs.items():
      ref[...] = acc[name].astype(ref.dtype)


def _default_backend() -> str:
  platform = jax.default_backend()
  return "gpu" if platform in ("gpu", "cuda", "rocm") else "tpu"


def head_pallas(hidden, weight, request: HeadRequest, *, mask_id: int, seed=None, tokens=None, v_axis: int = 1,
                dtype=jnp.float32, uncond=None, cfg_scale: float = 0.0, blocks: HeadBlocks = HeadBlocks(),
                interpret: bool | None = None, backend: str | None = None) -> HeadStats:
  """`head_statistics` through the Pallas kernel (module docstring).  hidden [N, D] -> HeadStats of N rows.

  interpret: None -> True on CPU.  backend: "tpu" | "gpu" | None (from the default device; CPU -> "tpu").
  """
  if request.logits:
    raise ValueError("head='pallas' cannot return full logits; the request asks for them (use head='ref')")
  backend = backend or _default_backend()
  if backend not in ("tpu", "gpu"):
    raise ValueError(f"pallas head backend={backend!r}; expected 'tpu' or 'gpu'")
  if interpret is None:
    interpret = jax.default_backend() == "cpu"
  n, d = hidden.shape
  vocab = weight.shape[v_axis]
  bv = min(blocks.block_v, vocab)
  full_tiles, covered = vocab // bv, (vocab // bv) * bv
  bn = min(blocks.block_n, max(8, -(-n // 8) * 8))
  n_pad = -(-n // bn) * bn
  pad = lambda x: jnp.pad(x, ((0, n_pad - n),) + ((0, 0),) * (x.ndim - 1))  # noqa: E731
  fields = _fields(request)
  static = dict(mask_id=mask_id, v_axis=v_axis, dtype=dtype, cfg_scale=cfg_scale, bn=bn, bv=bv)

  inputs = [pad(hidden), weight]
  if backend == "tpu":
    grid = (n_pad // bn, full_tiles)
    row_spec = lambda cols: pl.BlockSpec((bn, cols), lambda i, j: (i, 0))  # noqa: E731
    w_spec = (pl.BlockSpec((bv, d), lambda i, j: (j, 0)) if v_axis == 0
              else pl.BlockSpec((d, bv), lambda i, j: (0, j)))
    whole = lambda shape: pl.BlockSpec(shape, lambda i, j: (0,) * len(shape))  # noqa: E731
  else:
    grid = (n_pad // bn,)
    row_spec = lambda cols: pl.BlockSpec((bn, cols), lambda i: (i, 0))  # noqa: E731
    w_spec = pl.BlockSpec(weight.shape, lambda i: (0, 0))
    whole = lambda shape: pl.BlockSpec(shape, lambda i: (0,) * len(shape))  # noqa: E731
  in_specs = [row_spec(d), w_spec]
  if uncond is not None:
    inputs.append(pad(uncond))
    in_specs.append(row_spec(d))
  has_seed = request.sample and request.temperature > 0
  if has_seed:
    inputs.append(seed.astype(jnp.int32).reshape(1, 2) if seed.dtype != jnp.int32 else seed.reshape(1, 2))
    in_specs.append(whole((1, 2)))
  if request.token_prob:
    inputs.append(pad(tokens.astype(jnp.int32).reshape(n, 1)))
    in_specs.append(row_spec(1))
  kernel = functools.partial(_kernel, request=request, fields=fields, has_uncond=uncond is not None,
                             has_seed=has_seed, has_tokens=request.token_prob, backend=backend,
                             num_tiles=full_tiles, static=static)
  extra = {}
  if backend == "tpu" and not interpret:
    from jax.experimental.pallas import tpu as pltpu
    # Row tiles are independent (megacore may split them); the vocabulary axis accumulates in order.
    extra["compiler_params"] = pltpu.CompilerParams(dimension_semantics=("parallel", "arbitrary"))
  outs = pl.pallas_call(
      kernel, grid=grid, in_specs=in_specs, out_specs=[row_spec(cols) for _, cols, _ in fields],
      out_shape=[jax.ShapeDtypeStruct((n_pad, cols), dt) for _, cols, dt in fields], interpret=interpret, **extra,
  )(*inputs)
  # Per-row scalars come back as [N_pad, 1] columns; the top-k fields keep their k axis even at k = 1.
  acc = {name: (out[:n] if name in ("top_logits", "top_ids") else out[:n, 0])
         for (name, _, _), out in zip(fields, outs)}
  if covered < vocab:  # the ragged remainder, reduced by the XLA code and merged
    rest = vocab - covered
    ids = covered + jnp.arange(rest, dtype=jnp.int32)
    logits = _head._guided_tile_logits(hidden, uncond, weight, covered, rest, v_axis, dtype, cfg_scale)
    logits = _head._ban(logits, ids[None], mask_id, request.banned)
    tail = _head._reduce_tile(logits, ids, jnp.arange(n, dtype=jnp.int32), request, seed,
                              None if tokens is None else tokens.astype(jnp.int32))
    acc = _head._merge(acc, tail, request)
  return _head._finish(acc, request, n, vocab)
