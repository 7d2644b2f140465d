"""Attention backends behind one dispatch point, `attend`.

The network's attention is bidirectional with two kinds of masks: key padding (left-padded prompts; `allowed`
[B, 1, L]) and, for extra query rows such as WINO's shadow rows, a per-query mask (`allowed` [B, W, L]).  With a
KV cache the queries are a window of W positions against all L cached keys.

  "xla"          the reference: einsum scores in float32, masked softmax, einsum with the values (grouped-query
                 heads without repeating the keys).  Runs everywhere; the engine's default.
  "dot_product"  `jax.nn.dot_product_attention(implementation="xla")`: XLA's own fused attention pattern.
  "cudnn"        `jax.nn.dot_product_attention(implementation="cudnn")`: cuDNN flash attention (NVIDIA GPU, fp16/
                 bf16 inputs), the mask given as a boolean mask.
  "splash"       the TPU Pallas splash-attention kernel (jax.experimental.pallas.ops.tpu.splash_attention), key
                 padding expressed as segment ids; a per-query mask is not expressible and raises.

Only "xla" and "dot_product" run on the CPU this project is tested on (tests/test_attention.py checks them
against each other with padding, windows and per-query masks); "cudnn" and "splash" have not been run in this
repository (no device was available) and are opt-in.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

ATTENTION_IMPLS = ("xla", "dot_product", "cudnn", "splash")


def check_attention(impl: str) -> None:
  if impl not in ATTENTION_IMPLS:
    raise ValueError(f"attention={impl!r}; expected one of {ATTENTION_IMPLS}")


def attention_reference(q, k, v, allowed):
  """q [B, W, H, Dh], k/v [B, L, Hkv, Dh], allowed [B, 1|W, L] bool -> [B, W, H, Dh]."""
  b, w, h, dh = q.shape
  hkv = k.shape[2]
  qg = q.reshape(b, w, hkv, h // hkv, dh)
  scores = jnp.einsum("bqkgd,bskd->bkgqs", qg, k, preferred_element_type=jnp.float32) / jnp.sqrt(
      jnp.float32(dh))  # [B, Hkv, G, W, L]
  scores = jnp.where(allowed[:, None, None, :, :], scores, jnp.finfo(jnp.float32).min)
  probs = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  return jnp.einsum("bkgqs,bskd->bqkgd", probs, v).reshape(b, w, h, dh)


def _fused(q, k, v, allowed, implementation: str):
  mask = jnp.broadcast_to(allowed[:, None], (q.shape[0], 1, q.shape[1], k.shape[1]))  # [B, 1, W, L]
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation=implementation)


def _splash(q, k, v, allowed):
  if allowed.shape[1] != 1:
    raise ValueError("attention='splash' supports key padding only, not a per-query mask (WINO's shadow rows); "
                     "use attention='xla'")
  if jax.default_backend() != "tpu":
    raise ValueError(f"attention='splash' needs a TPU; this backend is {jax.default_backend()!r}")
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel as sk
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask as sm
  b, w, h, dh = q.shape
  length, hkv = k.shape[1], k.shape[2]
  mask = sm.MultiHeadMask([sm.FullMask((w, length)) for _ in range(h)])
  kernel = sk.make_splash_mha(mask=mask, head_shards=1, q_seq_shards=1)
  scale = 1.0 / jnp.sqrt(jnp.float32(dh))
  # Splash takes [H, T, Dh] per example; grouped-query keys are repeated to H heads.
  qh = jnp.swapaxes(q * scale.astype(q.dtype), 1, 2)  # [B, H, W, Dh]
  kh = jnp.repeat(jnp.swapaxes(k, 1, 2), h // hkv, axis=1)  # [B, H, L, Dh]
  vh = jnp.repeat(jnp.swapaxes(v, 1, 2), h // hkv, axis=1)
  seg = sk.SegmentIds(q=jnp.ones((b, w), jnp.int32), kv=allowed[:, 0].astype(jnp.int32))
  out = jax.vmap(kernel)(qh, kh, vh, segment_ids=seg)  # [B, H, W, Dh]
  return jnp.swapaxes(out, 1, 2)


def attend(q, k, v, allowed, impl: str = "xla"):
  """The dispatch point: q [B, W, H, Dh], k/v [B, L, Hkv, Dh], allowed [B, 1|W, L] bool -> [B, W, H, Dh]."""
  if impl == "xla":
    return attention_reference(q, k, v, allowed)
  if impl == "dot_product":
    return _fused(q, k, v, allowed, "xla").astype(v.dtype)
  if impl == "cudnn":
    if jax.default_backend() not in ("gpu", "cuda"):
      raise ValueError(f"attention='cudnn' needs an NVIDIA GPU; this backend is {jax.default_backend()!r}")
    return _fused(q, k, v, allowed, "cudnn").astype(v.dtype)
  if impl == "splash":
    return _splash(q, k, v, allowed).astype(v.dtype)
  check_attention(impl)
  raise AssertionError(impl)
