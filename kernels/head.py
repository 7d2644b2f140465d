"""The decode head: from hidden states [N, D] and the vocabulary weights to the few numbers a sampler reads.

A sampler declares what it reads with a `HeadRequest` (top-1 / top-k ids and logits, the clean-softmax
normaliser, entropy, a temperature-T sample, the logit of given tokens, or the full logits).  `head_statistics` is
the one dispatch point; it has three implementations that return the same `HeadStats`:

  "ref"      materialises the [N, V] float32 logits and reduces them (the plain-jnp reference; the only one that
             can return the logits themselves).
  "chunked"  an XLA `lax.scan` over vocabulary tiles with online max / sum / entropy / top-k / Gumbel-max: it
             never holds more than [N, block_v] logits (the default).
  "pallas"   the same online reduction as a Pallas kernel (kernels/head_pallas.py), TPU (Mosaic) and GPU (Triton)
             variants, with an `interpret` switch for CPU.

All three use one set of formulas (below), so they differ only in floating-point summation order:
  m = max_v l_v,  s = sum_v exp(l_v - m),  u = sum_v exp(l_v - m) (l_v - m)
  log-softmax(l)_v = (l_v - m) - log s;  entropy = log s - u / s  (nats; 0 log 0 = 0)
Banned columns (the mask id, and any `banned` ids) are -inf before everything: they are never sampled, never in
the top-k, and carry no probability mass.  Ties go to the lower token id everywhere (argmax, top-k, sample).

Sampling at temperature T is Gumbel-max, argmax_v (l_v - T log E_v), with E_v from the counter-based noise of
kernels/noise.py keyed by (seed, row, token), so every implementation and every tiling draws the same sample; the
sample's *clean* logit comes with it (LLaDA's confidence is the clean softmax at the sample).

Weight layout: `weight` is the head's matrix either [V, D] (`v_axis=0`, a tied embedding table) or [D, V]
(`v_axis=1`, a Linear kernel); the logits are computed in `dtype` (the model's compute dtype) and cast to float32,
as the network's own head does, so the reference reproduces `Transformer.logits` exactly.
"""

from __future__ import annotations

import dataclasses
import math

import flax.struct
import jax
import jax.numpy as jnp

from dlm.kernels.noise import gumbel_scores

IMPLEMENTATIONS = ("ref", "chunked", "pallas")


@dataclasses.dataclass(frozen=True)
class HeadRequest:
  """What a sampler reads from the head (static: part of the compiled program).

  sample: a Gumbel-max sample at `temperature` (greedy argmax at 0) and its clean logit.
  top: k of the top-k ids and logits (1: top-1 and its probability; 2 adds the runner-up, e.g. a margin).
  entropy: the entropy of the clean softmax (nats).
  token_prob: the clean logit of tokens the caller supplies (one per row), e.g. WINO's verification.
  logits: the full [N, V] float32 logits (only the reference implementation provides them; the engine then uses
    it for the whole head).  Samplers that filter the distribution (top-p, Dream's confidences, KLASS's history,
    ReMDM's nucleus) ask for these.
  banned: token ids set to -inf besides the mask id.
  ban_eos: also ban the model's end-of-text id (LLaDA's `logits_eos_inf`; the engine resolves it per model).
  """

  sample: bool = False
  temperature: float = 0.0
  top: int = 0
  entropy: bool = False
  token_prob: bool = False
  logits: bool = False
  banned: tuple[int, ...] = ()
  ban_eos: bool = False

  def __post_init__(self):
    if not isinstance(self.top, int) or isinstance(self.top, bool) or self.top < 0:
      raise ValueError(f"HeadRequest.top={self.top!r} must be an int >= 0")
    if not isinstance(self.temperature, (int, float)) or self.temperature < 0:
      raise ValueError(f"HeadRequest.temperature={self.temperature!r} must be a number >= 0")
    object.__setattr__(self, "banned", tuple(int(i) for i in self.banned))


LOGITS = HeadRequest(logits=True)


@dataclasses.dataclass(frozen=True)
class HeadBlocks:
  """Tile sizes of the fused implementations.  block_v: vocabulary tile; block_n: rows per kernel program."""

  block_v: int = 2048
  block_n: int = 256

  def __post_init__(self):
    for name in ("block_v", "block_n"):
      value = getattr(self, name)
      if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"HeadBlocks.{name}={value!r} must be a positive int")


@flax.struct.dataclass
class HeadStats:
  """The head's outputs for N rows; a field is None unless the request asked for it.

  max, log_sum: [N] float32, m and log s of the module docstring (always present): log p_v = (l_v - max) - log_sum.
  top_ids [N, k] int32, top_logits [N, k] float32: the k best tokens in descending order (ties: lower id first).
  entropy: [N] float32 nats.
  sample [N] int32, sample_logit [N] float32: the Gumbel-max sample and its clean logit.
  token_logit: [N] float32 clean logit of the supplied tokens.
  logits: [N, V] float32 (banned columns -inf).
  """

  max: jax.Array
  log_sum: jax.Array
  top_ids: jax.Array | None = None
  top_logits: jax.Array | None = None
  entropy: jax.Array | None = None
  sample: jax.Array | None = None
  sample_logit: jax.Array | None = None
  token_logit: jax.Array | None = None
  logits: jax.Array | None = None

  def prob(self, logit: jax.Array) -> jax.Array:
    """Clean softmax probability of logits of the same rows: [*lead] or [*lead, k] -> same shape."""
    extra = (1,) * (logit.ndim - self.max.ndim)
    m, log_sum = self.max.reshape(self.max.shape + extra), self.log_sum.reshape(self.max.shape + extra)
    return jnp.exp((logit - m) - log_sum)

  def reshape(self, *lead) -> "HeadStats":
    """[N, ...] fields -> [*lead, ...] (e.g. back to [B, Bv])."""
    return jax.tree.map(lambda x: x.reshape(*lead, *x.shape[1:]), self)


def _tile_logits(hidden, weight, start, size: int, v_axis: int, dtype):
  """Logits of vocabulary ids [start, start + size): [N, D] x weight -> [N, size] float32."""
  w = jax.lax.dynamic_slice_in_dim(weight, start, size, axis=v_axis).astype(dtype)
  contract = ((1,), (1,)) if v_axis == 0 else ((1,), (0,))
  # Accumulate in float32, then round to the compute dtype as the network's own bf16 head does; explicit, so XLA
  # cannot fold the rounding away in one implementation and keep it in another.
  out = jax.lax.dot_general(hidden.astype(dtype), w, (contract, ((), ())), preferred_element_type=jnp.float32)
  return out.astype(dtype).astype(jnp.float32)


def _guided_tile_logits(hidden, uncond, weight, start, size: int, v_axis: int, dtype, cfg_scale: float):
  """A tile's logits, with classifier-free guidance un + (s + 1)(cond - un) on the logits when `uncond` is given
  (as LLaDA combines them; the head is linear, but combining logits keeps the reference's rounding)."""
  logits = _tile_logits(hidden, weight, start, size, v_axis, dtype)
  if uncond is None:
    return logits
  un = _tile_logits(uncond, weight, start, size, v_axis, dtype)
  return un + (cfg_scale + 1.0) * (logits - un)


def _ban(logits, ids, mask_id: int, banned: tuple[int, ...]):
  """-inf at the mask id, the banned ids, and ids < 0 (a tile's overlap with the previous one)."""
  bad = (ids == mask_id) | (ids < 0)
  for b in banned:
    bad = bad | (ids == b)
  return jnp.where(bad, -jnp.inf, logits)


def _reduce_tile(logits, ids, rows, request: HeadRequest, seed, tokens):
  """Statistics of one tile: logits [N, T] (banned -> -inf), ids [N, T] or [T] token ids, rows [N] -> dict."""
  ids = jnp.broadcast_to(ids, logits.shape)
  m = jnp.max(logits, axis=-1)  # [N]; a row whose tile is all -inf gets -inf
  safe_m = jnp.where(jnp.isfinite(m), m, 0.0)
  z = logits - safe_m[:, None]
  e = jnp.exp(z)  # 0 at banned ids
  out = dict(max=m, sum=jnp.sum(e, axis=-1))
  if request.entropy:
    out["u"] = jnp.sum(jnp.where(e > 0, e * z, 0.0), axis=-1)
  if request.top:
    k = min(request.top, logits.shape[-1])
    vals, pos = jax.lax.top_k(logits, k)
    out["top_logits"], out["top_ids"] = vals, jnp.take_along_axis(ids, pos, axis=-1)
  if request.sample:
    if request.temperature == 0:
      score = logits
    else:
      score = gumbel_scores(logits, seed, rows[:, None], ids, request.temperature)
    pos = jnp.argmax(score, axis=-1)[:, None]
    out["sample_score"] = jnp.take_along_axis(score, pos, axis=-1)[:, 0]
    out["sample"] = jnp.take_along_axis(ids, pos, axis=-1)[:, 0]
    out["sample_logit"] = jnp.take_along_axis(logits, pos, axis=-1)[:, 0]
  if request.token_prob:
    hit = ids == tokens[:, None]
    out["token_logit"] = jnp.max(jnp.where(hit, logits, -jnp.inf), axis=-1)
  return out


def _merge(acc, new, request: HeadRequest):
  """Combine the running statistics `acc` with a later tile's `new` (both dicts of [N, ...])."""
  m = jnp.maximum(acc["max"], new["max"])
  safe = jnp.where(jnp.isfinite(m), m, 0.0)

  def rescale(old_m):  # exp(old_m - m), 0 where the old part was empty
    return jnp.where(jnp.isfinite(old_m), jnp.exp(old_m - safe), 0.0)

  ca, cn = rescale(acc["max"]), rescale(new["max"])
  out = dict(max=m, sum=acc["sum"] * ca + new["sum"] * cn)
  if request.entropy:
    # u is sum e^(l - m)(l - m): moving the reference point from m_old to m gives c (u + (m_old - m) s).
    da = jnp.where(jnp.isfinite(acc["max"]), acc["max"] - safe, 0.0)
    dn = jnp.where(jnp.isfinite(new["max"]), new["max"] - safe, 0.0)
    out["u"] = ca * (acc["u"] + da * acc["sum"]) + cn * (new["u"] + dn * new["sum"])
  if request.top:
    vals = jnp.concatenate([acc["top_logits"], new["top_logits"]], axis=-1)
    ids = jnp.concatenate([acc["top_ids"], new["top_ids"]], axis=-1)
    vals, pos = jax.lax.top_k(vals, request.top)  # earlier tiles hold lower ids, so ties keep them
    out["top_logits"], out["top_ids"] = vals, jnp.take_along_axis(ids, pos, axis=-1)
  if request.sample:
    take = new["sample_score"] > acc["sample_score"]  # strict: ties keep the lower id
    for name in ("sample_score", "sample", "sample_logit"):
      out[name] = jnp.where(take, new[name], acc[name])
  if request.token_prob:
    out["token_logit"] = jnp.maximum(acc["token_logit"], new["token_logit"])
  return out


def _finish(acc, request: HeadRequest, n: int, vocab: int) -> HeadStats:
  log_sum = jnp.log(acc["sum"])
  stats = HeadStats(max=acc["max"], log_sum=log_sum)
  if request.entropy:
    stats = stats.replace(entropy=jnp.maximum(log_sum - acc["u"] / acc["sum"], 0.0))
  if request.top:
    k = request.top
    vals, ids = acc["top_logits"], acc["top_ids"].astype(jnp.int32)
    if vals.shape[-1] < k:  # a vocabulary smaller than k: pad with -inf
      pad = k - vals.shape[-1]
      vals = jnp.concatenate([vals, jnp.full((n, pad), -jnp.inf, vals.dtype)], axis=-1)
      ids = jnp.concatenate([ids, jnp.full((n, pad), vocab, jnp.int32)], axis=-1)
    stats = stats.replace(top_ids=ids, top_logits=vals)
  if request.sample:
    stats = stats.replace(sample=acc["sample"].astype(jnp.int32), sample_logit=acc["sample_logit"])
  if request.token_prob:
    stats = stats.replace(token_logit=acc["token_logit"])
  return stats


def head_reference(hidden, weight, request: HeadRequest, *, mask_id: int, seed=None, tokens=None, v_axis: int = 1,
                   dtype=jnp.float32, uncond=None, cfg_scale: float = 0.0) -> HeadStats:
  """The plain-jnp reference: every logit materialised.  hidden [N, D] -> HeadStats of N rows."""
  n, vocab = hidden.shape[0], weight.shape[v_axis]
  ids = jnp.arange(vocab, dtype=jnp.int32)
  logits = _guided_tile_logits(hidden, uncond, weight, 0, vocab, v_axis, dtype, cfg_scale)
  logits = _ban(logits, ids[None], mask_id, request.banned)
  rows = jnp.arange(n, dtype=jnp.int32)
  stats = _finish(_reduce_tile(logits, ids, rows, request, seed, tokens), request, n, vocab)
  return stats.replace(logits=logits) if request.logits else stats


def head_chunked(hidden, weight, request: HeadRequest, *, mask_id: int, seed=None, tokens=None, v_axis: int = 1,
                 dtype=jnp.float32, uncond=None, cfg_scale: float = 0.0,
                 blocks: HeadBlocks = HeadBlocks()) -> HeadStats:
  """The online reduction over vocabulary tiles in a `lax.scan`: never more than [N, block_v] logits live."""
  if request.logits:
    raise ValueError("head='chunked' cannot return full logits; the request asks for them (use head='ref')")
  n, vocab = hidden.shape[0], weight.shape[v_axis]
  tile = min(blocks.block_v, vocab)
  num_tiles = math.ceil(vocab / tile)
  rows = jnp.arange(n, dtype=jnp.int32)

  def tile_stats(j):
    # The last tile is clamped to end at V (no padded copy of the weights); ids it shares with the previous
    # tile are marked -1 and banned, so each id counts once.
    start = jnp.minimum(j * tile, vocab - tile)
    ids = start + jnp.arange(tile, dtype=jnp.int32)
    ids = jnp.where(ids < j * tile, -1, ids)
    logits = _guided_tile_logits(hidden, uncond, weight, start, tile, v_axis, dtype, cfg_scale)
    logits = _ban(logits, ids[None], mask_id, request.banned)
    return _reduce_tile(logits, ids, rows, request, seed, tokens)

  first = tile_stats(0)
  if num_tiles == 1:
    return _finish(first, request, n, vocab)

  def body(acc, j):
    return _merge(acc, tile_stats(j), request), None

  acc, _ = jax.lax.scan(body, first, jnp.arange(1, num_tiles))
  return _finish(acc, request, n, vocab)


def head_statistics(hidden, weight, request: HeadRequest, *, mask_id: int, seed=None, tokens=None,
                    v_axis: int = 1, dtype=jnp.float32, uncond=None, cfg_scale: float = 0.0, impl: str = "chunked",
                    blocks: HeadBlocks | None = None, interpret: bool | None = None) -> HeadStats:
  """The one dispatch point (module docstring).  hidden [..., D] -> HeadStats with leading shape [...].

  seed: [2] uint32 (kernels/noise.py `seed_words`) when the request samples at temperature > 0.
  tokens: [...] int token ids when the request asks for `token_prob`.
  uncond: [..., D] hidden states of CFG's unconditional pass (with `cfg_scale`), combined tile by tile.
  impl: "ref" | "chunked" | "pallas"; a request for full logits always runs the reference.
  """
  if impl not in IMPLEMENTATIONS:
    raise ValueError(f"head impl={impl!r}; expected one of {IMPLEMENTATIONS}")
  if request.sample and request.temperature > 0 and seed is None:
    raise ValueError("a request that samples at temperature > 0 needs a seed")
  if request.token_prob and tokens is None:
    raise ValueError("a request for token_prob needs tokens")
  lead = hidden.shape[:-1]
  flat = hidden.reshape(-1, hidden.shape[-1])
  flat_tokens = None if tokens is None else tokens.reshape(-1).astype(jnp.int32)
  flat_uncond = None if uncond is None else uncond.reshape(flat.shape)
  kwargs = dict(mask_id=mask_id, seed=seed, tokens=flat_tokens, v_axis=v_axis, dtype=dtype, uncond=flat_uncond,
                cfg_scale=cfg_scale)
  if request.logits or impl == "ref":
    stats = head_reference(flat, weight, request, **kwargs)
  elif impl == "chunked":
    stats = head_chunked(flat, weight, request, blocks=blocks or HeadBlocks(), **kwargs)
  else:
    from dlm.kernels.head_pallas import head_pallas
    stats = head_pallas(flat, weight, request, blocks=blocks or HeadBlocks(), interpret=interpret, **kwargs)
  return stats.reshape(*lead)


def stats_from_logits(logits, request: HeadRequest, *, mask_id: int, seed=None, tokens=None) -> HeadStats:
  """The reference reduction of given logits [..., V] (hand-built cases, a sampler driven by hand) -> HeadStats
  with leading shape [...]; the same formulas, bans and noise as `head_statistics`."""
  lead, vocab = logits.shape[:-1], logits.shape[-1]
  flat = logits.reshape(-1, vocab).astype(jnp.float32)
  ids = jnp.arange(vocab, dtype=jnp.int32)
  flat = _ban(flat, ids[None], mask_id, request.banned)
  n = flat.shape[0]
  flat_tokens = None if tokens is None else tokens.reshape(-1).astype(jnp.int32)
  stats = _finish(_reduce_tile(flat, ids, jnp.arange(n, dtype=jnp.int32), request, seed, flat_tokens), request, n,
                  vocab)
  if request.logits:
    stats = stats.replace(logits=flat)
  return stats.reshape(*lead)
