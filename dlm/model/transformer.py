"""Bidirectional transformer denoiser (Flax NNX) with a separate vocabulary head.

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

import flax.struct
import jax
import jax.numpy as jnp
from flax import nnx

from dlm.kernels.attention import attend, check_attention
from dlm.model.config import ModelConfig


@flax.struct.dataclass
class KVCache:
  """Per-layer keys and values, stacked on a leading layer axis: [n_layers, B, L, Hkv, Dh]."""

  keys: jax.Array
  values: jax.Array


def positions_from_valid(valid: jax.Array) -> jax.Array:
  """Rotary positions for a left-padded batch: 0 at the first valid token; pads get 0."""
  valid = valid.astype(jnp.int32)
  return jnp.maximum(jnp.cumsum(valid, axis=-1) - 1, 0) * valid


class RMSNorm(nnx.Module):

  def __init__(self, dim: int, eps: float, *, param_dtype, rngs: nnx.Rngs):
    del rngs
    self.scale = nnx.Param(jnp.ones((dim,), param_dtype))
    self.eps = eps

  def __call__(self, x):
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (normed * self.scale[...].astype(jnp.float32)).astype(x.dtype)


def _rope(x, positions, theta: float):
  """Rotary embedding, rotate-half convention (as HF Llama/Qwen2 and LLaDA).  x: [B, W, H, Dh]."""
  dh = x.shape[-1]
  inv_freq = 1.0 / (theta ** (jnp.arange(0, dh, 2, dtype=jnp.float32) / dh))  # [Dh/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [B, W, Dh/2]
  angles = jnp.concatenate([angles, angles], axis=-1)[:, :, None, :]  # [B, W, 1, Dh]
  x32 = x.astype(jnp.float32)
  rotated = jnp.concatenate([-x32[..., dh // 2:], x32[..., :dh // 2]], axis=-1)
  return (x32 * jnp.cos(angles) + rotated * jnp.sin(angles)).astype(x.dtype)


def _linear(d_in, d_out, bias, cfg: ModelConfig, rngs):
  return nnx.Linear(d_in, d_out, use_bias=bias, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


class Attention(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    h, hkv, dh = cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head
    self.q_proj = _linear(cfg.d_model, h * dh, cfg.qkv_bias, cfg, rngs)
    self.k_proj = _linear(cfg.d_model, hkv * dh, cfg.qkv_bias, cfg, rngs)
    self.v_proj = _linear(cfg.d_model, hkv * dh, cfg.qkv_bias, cfg, rngs)
    self.o_proj = _linear(h * dh, cfg.d_model, False, cfg, rngs)
    self.impl = "xla"  # attention backend (dlm.kernels.attention); static, set through Transformer.set_attention

  def __call__(self, x, positions, valid, layer_cache, window_start):
    cfg = self.cfg
    b, w, _ = x.shape
    h, hkv, dh = cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head
    q = _rope(self.q_proj(x).reshape(b, w, h, dh), positions, cfg.rope_theta)
    k = _rope(self.k_proj(x).reshape(b, w, hkv, dh), positions, cfg.rope_theta)
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
    out = attend(q, k, v, allowed, self.impl).reshape(b, w, h * dh)
    return self.o_proj(out), (k, v)


class MLP(nnx.Module):
  """SwiGLU: down(silu(gate(x)) * up(x))."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.gate_proj = _linear(cfg.d_model, cfg.mlp_hidden, False, cfg, rngs)
    self.up_proj = _linear(cfg.d_model, cfg.mlp_hidden, False, cfg, rngs)
    self.down_proj = _linear(cfg.mlp_hidden, cfg.d_model, False, cfg, rngs)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))


class Block(nnx.Module):

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.attn_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype=cfg.params_dtype, rngs=rngs)
    self.attn = Attention(cfg, rngs=rngs)
    self.mlp_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype=cfg.params_dtype, rngs=rngs)
    self.mlp = MLP(cfg, rngs=rngs)

  def __call__(self, x, positions, valid, layer_cache, window_start):
    attn_out, kv = self.attn(self.attn_norm(x), positions, valid, layer_cache, window_start)
    x = x + attn_out
    x = x + self.mlp(self.mlp_norm(x))
    return x, kv


class Transformer(nnx.Module):
  """The denoising network. The vocabulary head is a separate method (`logits`)."""

  def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
    self.cfg = cfg
    self.embed = nnx.Embed(cfg.vocab_size, cfg.d_model, dtype=cfg.compute_dtype, param_dtype=cfg.params_dtype,
                           embedding_init=nnx.initializers.normal(0.02), rngs=rngs)
    self.layers = nnx.List([Block(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
    self.final_norm = RMSNorm(cfg.d_model, cfg.norm_eps, param_dtype=cfg.params_dtype, rngs=rngs)
    if not cfg.tie_embeddings:
      self.head = _linear(cfg.d_model, cfg.vocab_size, False, cfg, rngs)

  def set_attention(self, impl: str) -> "Transformer":
    """Choose the attention backend of every layer (dlm.kernels.attention.ATTENTION_IMPLS); returns self."""
    check_attention(impl)
    for layer in self.layers:
      layer.attn.impl = impl
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
    new_k, new_v = [], []
    for i, layer in enumerate(self.layers):
      layer_cache = None if cache is None else (cache.keys[i], cache.values[i])
      x, (k, v) = layer(x, positions, valid, layer_cache, window_start)
      new_k.append(k)
      new_v.append(v)
    hidden = self.final_norm(x)
    return hidden, KVCache(keys=jnp.stack(new_k), values=jnp.stack(new_v))

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
