"""Transformer denoiser (Flax NNX) with a separate vocabulary head: bidirectional (LLaDA, Dream), block-causal
(SDAR, Fast-dLLM v2: `ModelConfig.attention_layout`) or causal (the AR draft model).

Contract (DESIGN.md §2):
  hidden, cache = net(inputs, positions, valid, cache=None, window_start=None)
  logits = net.logits(hidden)

* `inputs` are token ids [B, W] or input embeddings [B, W, D] (soft inputs for latent refinement).
* `positions` [B, W] are rotary positions of the inputs. With left padding use `positions_from_valid`, so a
  padded row sees exactly what the unpadded row sees.
* `valid` [B, L] marks keys that may be attended (False on left padding). Without a cache W == L.  A per-query
  mask [B, W, L] is accepted too (extra query rows with their own attention pattern, e.g. WINO's shadow rows).
* With `cache` (full-length per-layer keys/values [B, L, Hkv, Dh], as returned by an earlier call) the
  inputs are a window starting at `window_start` (a traced scalar): their keys/values are written into the cache
  at that offset and the window's queries attend over all L keys. Keys are stored after RoPE, so a cached key
  needs no position bookkeeping.
"""

from __future__ import annotations

import re

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from dlm.kernels.attention import attend, check_attention
from dlm.model.config import ModelConfig
from dlm.model.layers import SwiGLU, linear
from dlm.model.moe import MoE


@flax.struct.dataclass
class KVCache:
  """Per-layer keys and values, stacked on a leading layer axis: [n_layers, B, L, Hkv, Dh]."""

  keys: jax.Array
  values: jax.Array


STACKED = "layers"  # the Transformer attribute whose parameters carry a leading [n_layers] axis
# An MoE network whose first layers are dense (LLaDA2.x) keeps those in a second stack, run first; every stack's
# parameters carry a leading [layers of that stack] axis, and checkpoints name them `dense_layers.{i}.…`.
DENSE_STACK = "dense_layers"
STACKS = (DENSE_STACK, STACKED)
_STACK_PREFIX = re.compile(rf"^({'|'.join(STACKS)})\.")
_LAYER_NAME = re.compile(rf"^({'|'.join(STACKS)})\.(\d+)\.(.+)$")  # a per-layer name: stack, layer, the rest


def stack_blocks(blocks: list[nnx.Module]) -> nnx.Module:
  """Modules of one graph (the network's layers) -> one module of that graph whose every array has a leading
  [n_layers] axis, so the forward pass runs them with one `lax.scan` (compile time independent of depth).
  Built from per-layer modules so that initialisation draws exactly what an unstacked network would."""
  graphdef = nnx.graphdef(blocks[0])
  states = [nnx.state(b) for b in blocks]
  return nnx.merge(graphdef, jax.tree.map(lambda *xs: jnp.stack(xs), *states))


def stacked_prefix(name: str) -> str | None:
  """The stack a parameter path belongs to (`layers` or `dense_layers`), or None."""
  m = _STACK_PREFIX.match(name)
  return m.group(1) if m else None


def per_layer_names(flat: dict) -> dict:
  """{'layers.attn.q_proj.kernel': [n, ...]} -> {'layers.0.attn.q_proj.kernel': [...], ...}: the per-layer
  names of the bundled-model format (and of every checkpoint written before the layers were stacked).  Each
  stack's length is its arrays' leading axis."""
  out = {}
  for name, value in flat.items():
    stack = stacked_prefix(name)
    if stack is not None:
      rest = name[len(stack) + 1:]
      for i in range(len(value)):
        out[f"{stack}.{i}.{rest}"] = value[i]
    else:
      out[name] = value
  return out


def flat_params(module: nnx.Module) -> dict:
  """Parameter path joined by dots (`layers.attn.q_proj.kernel`) -> its array, for any nnx module."""
  return {".".join(map(str, p)): v.get_value() for p, v in nnx.to_flat_state(nnx.state(module, nnx.Param))}


def per_layer_shapes(model: nnx.Module) -> dict[str, tuple[int, ...]]:
  """Parameter name -> shape, under the per-layer names checkpoints use (`layers.{i}.attn.q_proj.kernel`)."""
  flat = {k: tuple(v.shape) for k, v in flat_params(model).items()}
  return per_layer_names({k: [s[1:]] * s[0] if stacked_prefix(k) else s for k, s in flat.items()})


def layer_path(name: str) -> tuple[str, int | None]:
  """A per-layer parameter name -> (stacked parameter path, layer index); other names -> (name, None)."""
  m = _LAYER_NAME.match(name)
  return (f"{m.group(1)}.{m.group(3)}", int(m.group(2))) if m else (name, None)


def stack_sizes(cfg: ModelConfig) -> dict[str, int]:
  """{stack attribute: its number of layers} in the order the forward pass runs them."""
  dense = cfg.first_dense_layers if cfg.moe else 0
  return {**({DENSE_STACK: dense} if dense else {}), STACKED: cfg.n_layers - dense}



def positions_from_valid(valid: jax.Array) -> jax.Array:
  """Rotary positions for a left-padded batch: 0 at the first valid token; pads get 0."""
  valid = valid.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0) * valid


def block_causal_mask(positions, valid, cached: bool, block_size: int):
  """[B, W, L] bool: query i (rotary position positions[b, i]) may see key j iff key j's block is not later than
  the query's.  Without a cache the keys are the inputs, at `positions`; with one they are the L canvas slots, at
  the positions a left-padded canvas gives them (`positions_from_valid` of the keys' validity), which is what
  every cached caller of the network passes."""
  if cached:
    key_valid = valid if valid.ndim == 2 else valid.any(axis=1)  # [B, L]
    key_positions = positions_from_valid(key_valid)
  else:
    key_positions = positions  # [B, L] (W == L)
  return (key_positions[:, None, :] // block_size) <= (positions[:, :, None] // block_size)


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
    del rngs
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def _rope(x, positions, theta: float, rotary_dim: int | None = None):
  """Rotary embedding, rotate-half convention (as HF Llama/Qwen2 and LLaDA).  x: [B, W, H, Dh].  With
  `rotary_dim` < Dh only the first rotary_dim features turn (frequencies over rotary_dim, as HF's partial
  rotary factor); the rest pass through (LLaDA2.x)."""
  dh = x.shape[-1]
  rd = rotary_dim or dh
  inv_freq = 1.0 / (theta ** (jnp.arange(0, rd, 2, dtype=jnp.float32) / rd))  # [rd/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, W, rd/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, W, 1, rd]
  x32 = x.astype(jnp.float32)
  turn, rest = x32[..., :rd], x32[..., rd:]
  rotated = jnp.concatenate([-turn[..., rd // 2:], turn[..., :rd // 2]], axis=-1)
  out = turn * jnp.cos(angles) + rotated * jnp.sin(angles)
  return (out if rd == dh else jnp.concatenate([out, rest], axis=-1)).astype(x.dtype)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    h, hkv, dh = cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head
    self.q_proj = linear(cfg.d_model, h * dh, cfg, rngs, bias=cfg.qkv_bias)
    self.k_proj = linear(cfg.d_model, hkv * dh, cfg, rngs, bias=cfg.qkv_bias)
    self.v_proj = linear(cfg.d_model, hkv * dh, cfg, rngs, bias=cfg.qkv_bias)
    self.o_proj = linear(h * dh, cfg.d_model, cfg, rngs)
    if cfg.qk_norm:  # Qwen3: one RMSNorm over head_dim shared by every head, applied before RoPE
      self.q_norm = RMSNorm(dh, cfg.norm_eps, param_dtype=cfg.params_dtype, rngs=rngs)
      self.k_norm = RMSNorm(dh, cfg.norm_eps, param_dtype=cfg.params_dtype, rngs=rngs)
    self.impl = "xla"  # attention backend (dlm.kernels.attention); static, set through Transformer.set_attention

  def __call__(self, x, positions, valid, layer_cache, window_start):
    cfg = self.cfg
    b, w, _ = x.shape
    h, hkv, dh = cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head
    q = self.q_proj(x).reshape(b, w, h, dh)
    q = _rope(self.q_norm(q) if cfg.qk_norm else q, positions, cfg.rope_theta, cfg.rotary_dim)
    k = self.k_proj(x).reshape(b, w, hkv, dh)
    k = _rope(self.k_norm(k) if cfg.qk_norm else k, positions, cfg.rope_theta, cfg.rotary_dim)
    v = self.v_proj(x).reshape(b, w, hkv, dh)
    if layer_cache is not None:
      cache_k, cache_v = layer_cache
      start = (0, window_start, 0, 0)
      k = jax.lax.dynamic_update_slice(cache_k, k.astype(cache_k.dtype), start)  # [B, L, Hkv, Dh]
      v = jax.lax.dynamic_update_slice(cache_v, v.astype(cache_v.dtype), start)
    allowed = valid[:, None, :] if valid.ndim == 2 else valid  # [B, 1|W, L]
    if cfg.causal:  # query i of the window sits at canvas index window_start + i; it sees keys <= it
      query_index = window_start + jnp.arange(w)  # [W]
      allowed = allowed & (jnp.arange(allowed.shape[-1])[None, None, :] <= query_index[None, :, None])
    if cfg.block_causal:
      allowed = allowed & block_causal_mask(positions, valid, layer_cache is not None, cfg.block_size)
    out = attend(q, k, v, allowed, self.impl).reshape(b, w, h * dh)
    return self.o_proj(out), (k, v)


class MLP(SwiGLU):
  """A dense layer's SwiGLU, of width `mlp_hidden`."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    super().__init__(cfg, cfg.mlp_hidden, rngs=rngs)


class Block(nnx.Module):
  """One layer: attention, then a dense SwiGLU (`mlp`) or, in an MoE layer, a mixture of experts (`moe`)."""

  def __init__(self, cfg: ModelConfig, *, moe: bool = False, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype=cfg.params_dtype, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype=cfg.params_dtype, rngs=rngs)
    if moe:
      self.moe = MoE(cfg, rngs=rngs)
    else:
      self.mlp = MLP(cfg, rngs=rngs)
    self.is_moe = moe

  def __call__(self, x, positions, valid, layer_cache, window_start):
    attn_out, kv = self.attn(self.attn_norm(x), positions, valid, layer_cache, window_start)
    x = x + attn_out
    ffn = self.moe if self.is_moe else self.mlp
    x = x + ffn(self.mlp_norm(x))
    return x, kv


class Transformer(nnx.Module):
  """The denoising network. The vocabulary head is a separate method (`logits`)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                           embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    # One Block whose parameters are stacked on a leading [n_layers] axis (see `stack_blocks`); the
    # per-layer names of checkpoints map onto it through `layer_path` / `per_layer_names`.  An MoE network with
    # dense first layers holds those in `dense_layers`, run before `layers` (its MoE layers).
    sizes = stack_sizes(cfg)
    if DENSE_STACK in sizes:
      self.dense_layers = stack_blocks([Block(cfg, rngs=rngs) for _ in range(sizes[DENSE_STACK])])
    self.layers = stack_blocks([Block(cfg, moe=cfg.moe, rngs=rngs) for _ in range(sizes[STACKED])])
    self.scan_layers = True  # static: False runs the same stacked layers as an unrolled Python loop (reference)
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype=cfg.params_dtype, rngs=rngs)
    if not cfg.tie_embeddings:
      self.head = linear(cfg.d_model, cfg.vocab_size, cfg, rngs)

  def set_attention(self, impl: str) -> "Transformer":
    """Choose the attention backend of every layer (dlm.kernels.attention.ATTENTION_IMPLS); returns self."""
    check_attention(impl)
    for stack in self.stacks():
      stack.attn.impl = impl
    return self

  def stacks(self) -> list[nnx.Module]:
    """The stacked layer modules in the order the forward pass runs them."""
    return [getattr(self, name) for name in stack_sizes(self.cfg)]

  def set_moe_dispatch(self, dispatch: str) -> "Transformer":
    """"auto" (default: "tiled" on CPU, "grouped" elsewhere), "grouped" (ragged_dot), "tiled" (a scan over
    expert tiles) -- each expert-sharded under a mesh with an `expert` axis -- or "dense" (every expert on every
    token: the reference); returns self."""
    from dlm.model.moe import DISPATCH_CHOICES
    if dispatch not in DISPATCH_CHOICES:
      raise ValueError(f"{dispatch=}; expected one of {DISPATCH_CHOICES}")
    if not self.cfg.moe:
      raise ValueError("set_moe_dispatch: this network has no experts (n_experts=0)")
    self.layers.moe.dispatch = dispatch
    return self

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    """[B, W] int -> [B, W, D]; also the table that soft inputs mix."""
    return self.embed(tokens)

  def embed_mixture(self, weights: jax.Array) -> jax.Array:
    """Soft inputs: [..., V] mixture weights -> [..., D] = sum_v weights[v] * E[v] (E: the input embeddings).

    Accumulated in float32 at HIGHEST precision (TPUs otherwise run f32 matmuls in bf16 passes) and rounded to
    the compute dtype like an embedding lookup, so a one-hot row gives exactly `embed_tokens` of its token.
    """
    table = self.embed.embedding[...].astype(jnp.float32)  # [V, D]
    mixed = jnp.einsum("...v,vd->...d", weights.astype(jnp.float32), table, precision=jax.lax.Precision.HIGHEST)
    return mixed.astype(self.cfg.compute_dtype)

  def __call__(self, inputs: jax.Array, positions: jax.Array, valid: jax.Array,
               cache: KVCache | None = None, window_start: jax.Array | int | None = None):
    cfg = self.cfg
    x = self.embed_tokens(inputs) if jnp.issubdtype(inputs.dtype, jnp.integer) else inputs.astype(cfg.compute_dtype)
    b, w = x.shape[:2]
    if positions.shape != (b, w):
      raise ValueError(f"{positions.shape=} must equal inputs' [B, W]=({b}, {w})")
    if cache is None:
      if valid.shape not in ((b, w), (b, w, w)):
        raise ValueError(f"{valid.shape=} must equal inputs' [B, L]=({b}, {w}) (or [B, L, L]) when no cache is "
                         "given")
      window_start = 0
    elif window_start is None:
      raise ValueError("window_start is required when a cache is given")
    if valid.shape[-1] > cfg.max_len:
      raise ValueError(f"sequence length {valid.shape[-1]} exceeds the model's {cfg.max_len=}")
    all_keys, all_values, first = [], [], 0
    for module, depth in zip(self.stacks(), stack_sizes(cfg).values()):
      part = None if cache is None else (cache.keys[first:first + depth], cache.values[first:first + depth])
      x, (keys, values) = self._run_stack(module, depth, x, positions, valid, part, window_start)
      all_keys.append(keys)
      all_values.append(values)
      first += depth
    if len(all_keys) > 1:
      keys, values = jnp.concatenate(all_keys), jnp.concatenate(all_values)
    hidden = self.final_norm(x)
    return hidden, KVCache(keys=keys, values=values)

  def _run_stack(self, module, depth, x, positions, valid, cache, window_start):
    """One stack of layers over x: a scan (or the unrolled reference loop); its keys/values [depth, ...]."""
    graphdef, stacked = nnx.split(module)  # arrays [depth, ...]

    def run_layer(x, layer_state, layer_cache):
      return nnx.merge(graphdef, layer_state)(x, positions, valid, layer_cache, window_start)

    caches = () if cache is None else cache  # [depth, B, L, Hkv, Dh] each
    if self.scan_layers:
      def body(x, xs):
        layer_state, *layer_cache = xs
        return run_layer(x, layer_state, tuple(layer_cache) or None)

      return jax.lax.scan(body, x, (stacked, *caches))
    new_k, new_v = [], []
    for i in range(depth):
      layer_state = jax.tree.map(lambda a: a[i], stacked)
      x, (k, v) = run_layer(x, layer_state, tuple(c[i] for c in caches) or None)
      new_k.append(k)
      new_v.append(v)
    return x, (jnp.stack(new_k), jnp.stack(new_v))

  def head_weight(self) -> tuple[jax.Array, int]:
    """The vocabulary head's matrix and its vocabulary axis: ([D, V], 1) for a Linear head, ([V, D], 0) tied.
    The fused decode head (dlm.kernels.head) reads it in place, without a transposed copy."""
    if self.cfg.tie_embeddings:
      return self.embed.embedding[...], 0
    return self.head.kernel[...], 1

  def logits(self, hidden: jax.Array, *, shift: bool | None = None) -> jax.Array:
    """[B, W, D] -> [B, W, V] float32.

    With `shift` (default: the config's `logit_shift`, Dream) slot i takes the output of position i-1 and slot 0
    keeps its own, as Dream's generation code does.  A caller that slices a window out of `hidden` must do the
    shift itself (take hidden[i-1]) and pass shift=False: inside a window the first slot has no left neighbour.
    """
    if self.cfg.tie_embeddings:
      out = self.embed.attend(hidden)
    else:
      out = self.head(hidden)
    out = out.astype(jnp.float32)
    if self.cfg.logit_shift if shift is None else shift:
      out = jnp.concatenate([out[:, :1], out[:, :-1]], axis=1)
    return out


def init_model(cfg: ModelConfig, seed: int = 0) -> Transformer:
  return Transformer(cfg, rngs=nnx.Rngs(seed))
