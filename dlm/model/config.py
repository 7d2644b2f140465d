"""Network configurations: one frozen dataclass covers LLaDA, Dream and the tiny presets."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a bidirectional transformer denoiser.

  Field names follow the Hugging Face Llama/Qwen2 vocabulary where one exists so that converters read plainly.
  """

  vocab_size: int
  d_model: int
  n_layers: int
  n_heads: int
  mlp_hidden: int
  max_len: int
  mask_id: int
  eos_id: int
  n_kv_heads: int | None = None  # None -> MHA (n_heads); fewer -> GQA (Dream).
  head_dim: int | None = None  # None -> d_model // n_heads.
  rope_theta: float = 10_000.0
  norm_eps: float = 1e-5
  qkv_bias: bool = False  # Dream (Qwen2) has q/k/v biases; LLaDA does not.
  tie_embeddings: bool = False  # LLaDA-8B and Dream-7B have an untied head.
  logit_shift: bool = False  # Dream: the output at position i predicts the token at i + 1.
  eot_id: int | None = None  # A second end-of-text id (LLaDA's <|eot_id|>); None if the model has one only.
  pad_id: int | None = None
  dtype: str = "float32"  # compute dtype of activations.
  param_dtype: str = "float32"
  arch: str = "llada"  # "llada" or "dream": naming of weights in Hugging Face layouts.
  causal: bool = False  # a left-to-right (autoregressive) network: position i attends to positions <= i only

  def __post_init__(self):
    for name in ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "max_len"):
      value = getattr(self, name)
      if not isinstance(value, int) or value <= 0:
        raise ValueError(f"ModelConfig.{name} must be a positive int, got {value!r}")
    if self.d_model % self.n_heads and self.head_dim is None:
      raise ValueError(f"{self.d_model=} must be divisible by {self.n_heads=} (or set head_dim)")
    if self.num_kv_heads <= 0 or self.n_heads % self.num_kv_heads:
      raise ValueError(f"{self.n_heads=} must be a multiple of n_kv_heads={self.num_kv_heads}")
    if self.dim_per_head % 2:
      raise ValueError(f"head_dim={self.dim_per_head} must be even for rotary embeddings")
    for name in ("mask_id", "eos_id"):
      value = getattr(self, name)
      if not 0 <= value < self.vocab_size:
        raise ValueError(f"ModelConfig.{name}={value} must lie in [0, {self.vocab_size=})")
    for name in ("dtype", "param_dtype"):
      if getattr(self, name) not in _DTYPES:
        raise ValueError(f"ModelConfig.{name}={getattr(self, name)!r}; expected one of {sorted(_DTYPES)}")
    if self.arch not in ("llada", "dream"):
      raise ValueError(f"{self.arch=}; expected 'llada' or 'dream'")

  @property
  def num_kv_heads(self) -> int:
    return self.n_kv_heads or self.n_heads

  @property
  def dim_per_head(self) -> int:
    return self.head_dim or self.d_model // self.n_heads

  @property
  def end_ids(self) -> tuple[int, ...]:
    """Token ids that end a generation."""
    return (self.eos_id,) if self.eot_id is None else (self.eos_id, self.eot_id)

  @property
  def compute_dtype(self) -> Any:
    return _DTYPES[self.dtype]

  @property
  def params_dtype(self) -> Any:
    return _DTYPES[self.param_dtype]

  def replace(self, **changes) -> "ModelConfig":
    return dataclasses.replace(self, **changes)

  def to_dict(self) -> dict:
    return dataclasses.asdict(self)

  @classmethod
  def from_dict(cls, d: dict) -> "ModelConfig":
    known = {f.name for f in dataclasses.fields(cls)}
    unknown = set(d) - known
    if unknown:
      raise ValueError(f"unknown ModelConfig fields {sorted(unknown)}")
    return cls(**d)


def llada_8b(**overrides) -> ModelConfig:
  """LLaDA-8B (Base/Instruct, also LLaDA-1.5): MHA, RMSNorm, SwiGLU, RoPE, untied head."""
  cfg = ModelConfig(
      vocab_size=126_464, d_model=4096, n_layers=32, n_heads=32, mlp_hidden=12_288, max_len=4096,
      mask_id=126_336, eos_id=126_081, eot_id=126_348, pad_id=126_081, rope_theta=500_000.0, norm_eps=1e-5,
      dtype="bfloat16", param_dtype="bfloat16", arch="llada")
  return cfg.replace(**overrides)


def dream_7b(**overrides) -> ModelConfig:
  """Dream-v0-7B (Qwen2.5-7B body): GQA 28/4, qkv bias, RoPE theta 1e6, shifted logits."""
  cfg = ModelConfig(
      vocab_size=152_064, d_model=3584, n_layers=28, n_heads=28, n_kv_heads=4, mlp_hidden=18_944, max_len=2048,
      mask_id=151_666, eos_id=151_643, eot_id=151_645, pad_id=151_643, rope_theta=1_000_000.0, norm_eps=1e-6,
      qkv_bias=True, logit_shift=True, dtype="bfloat16", param_dtype="bfloat16", arch="dream")
  return cfg.replace(**overrides)


def tiny_llada(**overrides) -> ModelConfig:
  """A few-thousand-parameter LLaDA-shaped network for tests."""
  cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, mlp_hidden=64, max_len=96, mask_id=1,
                    eos_id=2, arch="llada")
  return cfg.replace(**overrides)


def tiny_dream(**overrides) -> ModelConfig:
  """A tiny Dream-shaped network (GQA, qkv bias, shifted logits) for tests."""
  cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64, max_len=96,
                    mask_id=1, eos_id=2, qkv_bias=True, logit_shift=True, rope_theta=1_000_000.0, norm_eps=1e-6,
                    arch="dream")
  return cfg.replace(**overrides)


PRESETS = {"llada-8b": llada_8b, "dream-7b": dream_7b, "tiny-llada": tiny_llada, "tiny-dream": tiny_dream}
