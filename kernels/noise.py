"""Counter-based Gumbel noise: the noise of token v at view row n is a pure function of (seed, n, v).

Every head implementation (the reference that materialises [N, V] logits, the chunked XLA scan, the Pallas
kernels) and every tiling of the vocabulary therefore draws the same sample.  The bits come from Threefry-2x32
with 20 rounds (Salmon et al. 2011, the generator behind `jax.random`'s default keys), keyed by two 32-bit words
drawn from the step's JAX key and fed the counter (n, v).  It is written with plain uint32 adds, xors and shifts so
that it lowers inside a Pallas kernel as well as in XLA.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

_ROTATIONS = ((13, 15, 26, 6), (17, 29, 16, 24))
_PARITY = 0x1BD11BDA


def _rotl(x, r: int):
  return (x << jnp.uint32(r)) | (x >> jnp.uint32(32 - r))


def threefry2x32(k0, k1, x0, x1):
  """Threefry-2x32, 20 rounds, on uint32 arrays (broadcast together) -> two uint32 words."""
  k0, k1, x0, x1 = (jnp.asarray(a, jnp.uint32) for a in (k0, k1, x0, x1))
  ks = (k0, k1, k0 ^ k1 ^ jnp.uint32(_PARITY))
  x0, x1 = x0 + ks[0], x1 + ks[1]
  for i in range(5):
    for r in _ROTATIONS[i % 2]:
      x0 = x0 + x1
      x1 = _rotl(x1, r) ^ x0
    x0 = x0 + ks[(i + 1) % 3]
    x1 = x1 + ks[(i + 2) % 3] + jnp.uint32(i + 1)
  return x0, x1


def seed_words(key: jax.Array) -> jax.Array:
  """Two uint32 words of a JAX key (any PRNG implementation) -> [2] uint32: the seed of the counter noise."""
  return jax.random.bits(key, (2,), jnp.uint32)


def _to_float(x):
  """uint32 -> float32, rounded once as a direct conversion would be, through two exact int32 halves (Mosaic has
  no unsigned-to-float conversion)."""
  hi = (x >> jnp.uint32(16)).astype(jnp.int32).astype(jnp.float32)
  lo = (x & jnp.uint32(0xFFFF)).astype(jnp.int32).astype(jnp.float32)
  return hi * 65536.0 + lo


def exponential_from_words(b1, b2):
  """Exp(1) draws from two uint32 words with the upper Gumbel tail resolved to 2^-64 (see
  `dlm.samplers.base.exponential_hires` for why float32 uniforms are not enough)."""
  w = (_to_float(b1) + (_to_float(b2) + 1.0) * 2.0**-32) * 2.0**-32  # (0, 1]
  w = jnp.minimum(w, 1.0 - 2.0**-24)
  return -jnp.log1p(-w)


def counter_exponential(seed, rows, tokens):
  """Exp(1) noise of (row, token) pairs: seed [2] uint32; rows, tokens int arrays broadcast together."""
  b1, b2 = threefry2x32(seed[0], seed[1], rows.astype(jnp.uint32), tokens.astype(jnp.uint32))
  return exponential_from_words(b1, b2)


def gumbel_scores(logits, seed, rows, tokens, temperature: float):
  """logits - T log E: the Gumbel-max scores of a sample at temperature T (argmax of them is the sample)."""
  return logits - temperature * jnp.log(counter_exponential(seed, rows, tokens))
