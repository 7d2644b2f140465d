"""Network configurations: one frozen dataclass covers LLaDA, Dream, SDAR, Fast-dLLM v2 and the tiny presets."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

ARCHS = ("llada", "dream", "sdar", "fast_dllm_v2")
ATTENTION_LAYOUTS = ("bidirectional", "block_causal")
_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16, "float16": jnp.float16}


@dataclasses.dataclass(frozen=True)
class ModelConfig:
  """Architecture of a transformer denoiser (bidirectional, or block-causal for block-diffusion models).

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
  arch: str = "llada"  # naming of weights and config keys in Hugging Face layouts: one of ARCHS
  causal: bool = False  # a left-to-right (autoregressive) network: position i attends to positions <= i only
  # "bidirectional" (LLaDA, Dream) or "block_causal" (SDAR, Fast-dLLM v2): a query at rotary position p sees the
  # keys at positions q with q // block_size <= p // block_size, i.e. its own block both ways and every earlier
  # block.  Blocks are counted from each row's first token (position 0), prompt included, as both references do.
  attention_layout: str = "bidirectional"
  block_size: int | None = None  # the block of the block-causal layout (SDAR 4, Fast-dLLM v2 32)
  qk_norm: bool = False  # Qwen3 (SDAR): per-head RMSNorm of q and k over head_dim, before RoPE

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
    if self.arch not in ARCHS:
      raise ValueError(f"{self.arch=}; expected one of {ARCHS}")
    if self.attention_layout not in ATTENTION_LAYOUTS:
      raise ValueError(f"{self.attention_layout=}; expected one of {ATTENTION_LAYOUTS}")
    if self.attention_layout == "block_causal":
      if not isinstance(self.block_size, int) or isinstance(self.block_size, bool) or self.block_size <= 0:
        raise ValueError(f"{self.block_size=} must be a positive int for attention_layout='block_causal'")
      if self.causal:
        raise ValueError("causal=True and attention_layout='block_causal' exclude each other")
    elif self.block_size is not None:
      raise ValueError(f"{self.block_size=} is only meaningful with attention_layout='block_causal'")

  @property
  def block_causal(self) -> bool:
    return self.attention_layout == "block_causal"

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


def _qwen3_sdar(d_model, n_layers, n_heads, mlp_hidden, tie, overrides) -> ModelConfig:
  cfg = ModelConfig(
      vocab_size=151_936, d_model=d_model, n_layers=n_layers, n_heads=n_heads, n_kv_heads=8,
      head_dim=None if d_model // n_heads == 128 else 128,
      mlp_hidden=mlp_hidden, max_len=32_768, mask_id=151_669, eos_id=151_643, eot_id=151_645, pad_id=151_643,
      rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True, tie_embeddings=tie, attention_layout="block_causal",
      block_size=4, dtype="bfloat16", param_dtype="bfloat16", arch="sdar")
  return cfg.replace(**overrides)


def sdar_1_7b(**overrides) -> ModelConfig:
  """SDAR-1.7B-Chat (Qwen3-1.7B body): GQA 16/8, head_dim 128, q/k norm, tied head, block-causal in blocks of 4."""
  return _qwen3_sdar(2048, 28, 16, 6144, True, overrides)


def sdar_8b(**overrides) -> ModelConfig:
  """SDAR-8B-Chat (Qwen3-8B body): GQA 32/8, head_dim 128, q/k norm, untied head, blocks of 4."""
  return _qwen3_sdar(4096, 36, 32, 12_288, False, overrides)


def fast_dllm_v2_1_5b(**overrides) -> ModelConfig:
  """Fast-dLLM v2 1.5B (Qwen2.5-1.5B body): GQA 12/2, qkv bias, tied head, shifted logits, blocks of 32.  Its
  config.json names no mask id; 151665 is its generation code's default."""
  cfg = ModelConfig(
      vocab_size=151_936, d_model=1536, n_layers=28, n_heads=12, n_kv_heads=2, mlp_hidden=8960, max_len=32_768,
      mask_id=151_665, eos_id=151_645, eot_id=151_643, pad_id=151_645, rope_theta=1_000_000.0, norm_eps=1e-6,
      qkv_bias=True, logit_shift=True, tie_embeddings=True, attention_layout="block_causal", block_size=32,
      dtype="bfloat16", param_dtype="bfloat16", arch="fast_dllm_v2")
  return cfg.replace(**overrides)


def fast_dllm_v2_7b(**overrides) -> ModelConfig:
  """Fast-dLLM v2 7B (Qwen2.5-7B body): GQA 28/4, qkv bias, untied head, shifted logits, blocks of 32."""
  return fast_dllm_v2_1_5b(vocab_size=152_064, d_model=3584, n_heads=28, n_kv_heads=4, mlp_hidden=18_944,
                           tie_embeddings=False).replace(**overrides)


def tiny_sdar(**overrides) -> ModelConfig:
  """A tiny SDAR-shaped network (Qwen3: GQA, q/k norm, explicit head_dim; block-causal, blocks of 4)."""
  cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, head_dim=16, mlp_hidden=64,
                    max_len=96, mask_id=1, eos_id=2, rope_theta=1_000_000.0, norm_eps=1e-6, qk_norm=True,
                    attention_layout="block_causal", block_size=4, arch="sdar")
  return cfg.replace(**overrides)


def tiny_fast_dllm_v2(**overrides) -> ModelConfig:
  """A tiny Fast-dLLM-v2-shaped network (Qwen2: GQA, qkv bias, shifted logits, tied head; blocks of 8)."""
  cfg = ModelConfig(vocab_size=40, d_model=32, n_layers=2, n_heads=4, n_kv_heads=2, mlp_hidden=64, max_len=96,
                    mask_id=1, eos_id=2, qkv_bias=True, logit_shift=True, tie_embeddings=True,
                    rope_theta=1_000_000.0, norm_eps=1e-6, attention_layout="block_causal", block_size=8,
                    arch="fast_dllm_v2")
  return cfg.replace(**overrides)


PRESETS = {"llada-8b": llada_8b, "dream-7b": dream_7b, "tiny-llada": tiny_llada, "tiny-dream": tiny_dream,
           "sdar-1.7b": sdar_1_7b, "sdar-8b": sdar_8b, "fast-dllm-v2-1.5b": fast_dllm_v2_1_5b,
           "fast-dllm-v2-7b": fast_dllm_v2_7b, "tiny-sdar": tiny_sdar, "tiny-fast-dllm-v2": tiny_fast_dllm_v2}
