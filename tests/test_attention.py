"""Attention backends (issue 9): every backend that runs on CPU against the XLA reference, with left padding,
cached windows and per-query masks; the backends that need a device say so in one line."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine import generate
from dlm.kernels.attention import attend, attention_reference
from dlm.samplers import LowConfidence, Wino
from tests.conftest import PROMPTS, VALID


def _qkv(b, w, length, h, hkv, dh, seed=0):
  rng = np.random.default_rng(seed)
  q = jnp.asarray(rng.normal(size=(b, w, h, dh)), jnp.float32)
  k = jnp.asarray(rng.normal(size=(b, length, hkv, dh)), jnp.float32)
  v = jnp.asarray(rng.normal(size=(b, length, hkv, dh)), jnp.float32)
  return q, k, v


def _numpy_attention(q, k, v, allowed):
  q, k, v, allowed = (np.asarray(x, np.float64) for x in (q, k, v, allowed))
  h, hkv = q.shape[2], k.shape[2]
  k, v = np.repeat(k, h // hkv, axis=2), np.repeat(v, h // hkv, axis=2)
  scores = np.einsum("bqhd,bshd->bhqs", q, k) / np.sqrt(q.shape[-1])
  scores = np.where(allowed[:, None] > 0, scores, -np.inf)
  p = np.exp(scores - scores.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  return np.einsum("bhqs,bshd->bqhd", p, v)


@pytest.mark.parametrize("impl", ["xla", "dot_product"])
@pytest.mark.parametrize("case", ["padding", "window", "per_query", "gqa"])
def test_backends_match_numpy(impl, case):
  b, length, dh = 3, 12, 8
  valid = np.ones((b, length), bool)
  valid[0, :3] = valid[2, :5] = False  # left padding
  h, hkv, w = 4, 4, length
  if case == "window":
    w = 4  # window queries against all cached keys
  if case == "gqa":
    hkv = 2
  q, k, v = _qkv(b, w, length, h, hkv, dh)
  allowed = valid[:, None, :]
  if case == "per_query":
    rng = np.random.default_rng(1)
    allowed = valid[:, None, :] & (rng.random((b, w, length)) < 0.7)
    allowed[..., -1] = True  # every query sees at least one key
  out = attend(q, k, v, jnp.asarray(allowed), impl)
  np.testing.assert_allclose(np.asarray(out), _numpy_attention(q, k, v, allowed), atol=2e-5)


def test_dot_product_backend_through_generate(model):
  """The same tokens from the engine with XLA's fused attention pattern as with the reference einsums."""
  for sampler, kw in [(LowConfidence(steps=8), dict(block_length=4, cache="dual")), (Wino(), {})]:
    outs = [generate(model, PROMPTS, VALID, sampler=sampler, gen_length=8, attention=a, **kw)
            for a in ("xla", "dot_product")]
    np.testing.assert_array_equal(np.asarray(outs[0].tokens), np.asarray(outs[1].tokens))


@pytest.mark.skipif(jax.default_backend() != "cpu", reason="checks the CPU error messages")
@pytest.mark.parametrize("impl,needs", [("cudnn", "NVIDIA GPU"), ("splash", "TPU")])
def test_device_backends_name_what_they_need(impl, needs):
  q, k, v = _qkv(1, 4, 4, 2, 2, 8)
  with pytest.raises(ValueError, match=needs):
    attend(q, k, v, jnp.ones((1, 1, 4), bool), impl)


def test_unknown_backend_is_a_one_line_error(model):
  with pytest.raises(ValueError, match="attention='flash'; expected one of"):
    generate(model, PROMPTS, VALID, sampler=LowConfidence(steps=8), gen_length=8, attention="flash")
  with pytest.raises(ValueError, match="head='fast'; expected one of"):
    generate(model, PROMPTS, VALID, sampler=LowConfidence(steps=8), gen_length=8, head="fast")


def test_reference_is_the_networks_attention():
  q, k, v = _qkv(2, 5, 5, 4, 2, 8)
  allowed = jnp.ones((2, 1, 5), bool)
  np.testing.assert_array_equal(np.asarray(attend(q, k, v, allowed)), np.asarray(attention_reference(q, k, v,
                                                                                                      allowed)))
