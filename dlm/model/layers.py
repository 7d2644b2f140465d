"""The two small layers every network body shares: a Linear in dlm's init, and the SwiGLU feed-forward."""

from __future__ import annotations

import jax
from flax import nnx

from dlm.model.config import ModelConfig


def linear(d_in: int, d_out: int, cfg: ModelConfig, rngs: nnx.Rngs, *, bias: bool = False, dtype=None):
  """nnx.Linear [d_in, d_out] in the config's parameter dtype, computing in `dtype` (default the compute dtype)."""
  return nnx.Linear(d_in, d_out, use_bias=bias, dtype=dtype or cfg.compute_dtype, param_dtype=cfg.params_dtype,
                    kernel_init=nnx.initializers.normal(0.02), rngs=rngs)


class SwiGLU(nnx.Module):
  """down(silu(gate(x)) * up(x)) of width `hidden`: a dense layer's MLP, or an MoE layer's shared expert."""

  def __init__(self, cfg: ModelConfig, hidden: int, *, rngs: nnx.Rngs):
    self.gate_proj = linear(cfg.d_model, hidden, cfg, rngs)
    self.up_proj = linear(cfg.d_model, hidden, cfg, rngs)
    self.down_proj = linear(hidden, cfg.d_model, cfg, rngs)

  def __call__(self, x):
    return self.down_proj(jax.nn.silu(self.gate_proj(x)) * self.up_proj(x))
