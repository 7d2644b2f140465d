"""Network configurations: one frozen dataclass covers LLaDA, Dream, SDAR, Fast-dLLM v2 and the tiny presets."""

from __future__ import annotations

import dataclasses
from typing import Any

import jax.numpy as jnp

ARCHS = ("llada", "dream", "sdar", "fast_dllm_v2", "llada2", "llada_moe", "sdar_moe")
# How a mixture-of-experts block picks and weights its experts (dlm/model/moe.py):
#   "softmax": softmax over all experts in float32 (+ expert bias if any), top-k of that, the same values as
#              weights (Qwen3-MoE / SDAR-MoE, LLaDA-MoE), renormalised over the k if `norm_topk_prob`;
#   "sigmoid_groups": sigmoid scores; the bias is added for the choice only; the choice is limited to the
#              `topk_groups` best of `n_groups` expert groups (a group's score: the sum of its two best); the
#              weights are the chosen unbiased scores over their sum (k > 1) times `routed_scale` (LLaDA2.x).
ROUTERS = ("softmax", "sigmoid_groups")
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
  rotary_dim: int | None = None  # None: RoPE over all of head_dim; LLaDA2.x: half of it (partial_rotary_factor)
  # Mixture of experts (dlm/model/moe.py); n_experts == 0 is a dense network.  The first `first_dense_layers`
  # layers keep the dense SwiGLU of width mlp_hidden (LLaDA2.x's first_k_dense_replace); the others route every
  # token to `experts_per_token` of `n_experts` SwiGLU experts of width `expert_hidden`, plus a shared expert of
  # width `shared_expert_hidden` that every token passes through (0: none).
  n_experts: int = 0
  experts_per_token: int = 0
  expert_hidden: int = 0
  shared_expert_hidden: int = 0
  first_dense_layers: int = 0
  router: str = "softmax"  # one of ROUTERS
  router_bias: bool = False  # a per-expert bias (LLaDA2.x's and LLaDA-MoE's expert_bias buffer)
  norm_topk_prob: bool = False  # softmax router: renormalise the k chosen weights to sum to 1
  routed_scale: float = 1.0  # sigmoid_groups: the weights' factor (routed_scaling_factor)
  n_groups: int = 1  # sigmoid_groups: expert groups (n_group)
  topk_groups: int = 1  # sigmoid_groups: groups a token may choose from (topk_group)
  router_float32: bool = True  # the router's matmul in float32 (LLaDA2.x) or the compute dtype (Qwen3-MoE)

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
    if self.rotary_dim is not None and not (0 < self.rotary_dim <= self.dim_per_head and self.rotary_dim % 2 == 0):
      raise ValueError(f"{self.rotary_dim=} must be an even int in (0, head_dim={self.dim_per_head}]")
    self._check_experts()

  def _check_experts(self):
    if self.router not in ROUTERS:
      raise ValueError(f"{self.router=}; expected one of {ROUTERS}")
    for name in ("n_experts", "experts_per_token", "expert_hidden", "shared_expert_hidden", "first_dense_layers"):
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"ModelConfig.{name} must be an int >= 0, got {value!r}")
    if not self.n_experts:
      if self.experts_per_token or self.first_dense_layers or self.shared_expert_hidden:
        raise ValueError("experts_per_token / first_dense_layers / shared_expert_hidden need n_experts > 0")
      return
    if not 0 < self.experts_per_token <= self.n_experts:
      raise ValueError(f"{self.experts_per_token=} must lie in [1, n_experts={self.n_experts}]")
    if self.expert_hidden <= 0:
      raise ValueError(f"{self.expert_hidden=} must be positive when n_experts > 0")
    if self.first_dense_layers >= self.n_layers:
      raise ValueError(f"{self.first_dense_layers=} must be below n_layers={self.n_layers} (some layer is MoE)")
    if self.n_experts % self.n_groups or not 0 < self.topk_groups <= self.n_groups:
      raise ValueError(f"n_groups={self.n_groups} must divide n_experts={self.n_experts} and topk_groups="
                       f"{self.topk_groups} lie in [1, n_groups]")
    if self.router == "sigmoid_groups":
      per_group = self.n_experts // self.n_groups
      if per_group < 2 or self.topk_groups * per_group < self.experts_per_token:
        raise ValueError(f"sigmoid_groups routing needs >= 2 experts a group and topk_groups * experts a group "
                         f">= experts_per_token; got {self.n_groups=} {self.topk_groups=} {self.n_experts=}")

  @property
  def moe(self) -> bool:
    return self.n_experts > 0

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


def llada2_mini(**overrides) -> ModelConfig:
  """LLaDA2.0/2.1-mini (16B total, ~1.4B active; Ling-2.0 body): 20 layers, the first dense, then 256 experts of
  width 512 (8 a token, one shared, sigmoid scores limited to 4 of 8 groups, weights x 2.5), GQA 16/4, head_dim
  128 with RoPE on its first half, q/k norm, untied head, block-causal in blocks of 32."""
  cfg = ModelConfig(
      vocab_size=157_184, d_model=2048, n_layers=20, n_heads=16, n_kv_heads=4, head_dim=128, rotary_dim=64,
      mlp_hidden=5120, max_len=32_768, mask_id=156_895, eos_id=156_892, pad_id=156_892, rope_theta=600_000.0,
      norm_eps=1e-6, qk_norm=True, attention_layout="block_causal", block_size=32, n_experts=256,
      experts_per_token=8, expert_hidden=512, shared_expert_hidden=512, first_dense_layers=1,
      router="sigmoid_groups", router_bias=True, norm_topk_prob=True, routed_scale=2.5, n_groups=8, topk_groups=4,
      dtype="bfloat16", param_dtype="bfloat16", arch="llada2")
  return cfg.replace(**overrides)


def llada2_flash(**overrides) -> ModelConfig:
  """LLaDA2.0/2.1-flash (100B total, ~6.1B active): 32 layers of width 4096, 32/4 heads, dense width 9216, 256
  experts of width 1024 (the mini's routing)."""
  return llada2_mini(d_model=4096, n_layers=32, n_heads=32, n_kv_heads=4, mlp_hidden=9216, expert_hidden=1024,
                     shared_expert_hidden=1024).replace(**overrides)


def llada_moe_7b(**overrides) -> ModelConfig:
  """LLaDA-MoE-7B-A1B (dInfer's model, OLMoE-style body): 16 layers of width 2048, MHA 16 heads, q/k norm over
  head_dim, 64 experts of width 1024, 8 a token (softmax, no renormalisation), bidirectional."""
  cfg = ModelConfig(
      vocab_size=157_184, d_model=2048, n_layers=16, n_heads=16, mlp_hidden=8192, max_len=8192, mask_id=156_895,
      eos_id=156_892, pad_id=156_892, rope_theta=50_000.0, norm_eps=1e-5, qk_norm=True, n_experts=64,
      experts_per_token=8, expert_hidden=1024, router="softmax", norm_topk_prob=False, router_float32=False,
      dtype="bfloat16", param_dtype="bfloat16", arch="llada_moe")
  return cfg.replace(**overrides)


def sdar_30b_a3b(**overrides) -> ModelConfig:
  """SDAR-30B-A3B-Chat (Qwen3-30B-A3B body): 48 layers of width 2048, GQA 32/4, head_dim 128, q/k norm, 128
  experts of width 768, 8 a token (softmax, renormalised), untied head, block-causal in blocks of 4."""
  return _qwen3_sdar(2048, 48, 32, 6144, False, dict(
      n_kv_heads=4, head_dim=128, n_experts=128, experts_per_token=8, expert_hidden=768, router="softmax",
      norm_topk_prob=True, router_float32=False, arch="sdar_moe", **overrides))


def tiny_llada2(**overrides) -> ModelConfig:
  """A tiny LLaDA2-shaped MoE network (first layer dense, 8 experts in 4 groups, shared expert, partial RoPE)."""
  cfg = ModelConfig(
      vocab_size=40, d_model=32, n_layers=3, n_heads=4, n_kv_heads=2, head_dim=16, rotary_dim=8, mlp_hidden=64,
      max_len=96, mask_id=1, eos_id=2, rope_theta=600_000.0, norm_eps=1e-6, qk_norm=True,
      attention_layout="block_causal", block_size=8, n_experts=8, experts_per_token=2, expert_hidden=16,
      shared_expert_hidden=16, first_dense_layers=1, router="sigmoid_groups", router_bias=True,
      norm_topk_prob=True, routed_scale=2.5, n_groups=4, topk_groups=2, arch="llada2")
  return cfg.replace(**overrides)


def tiny_llada_moe(**overrides) -> ModelConfig:
  """A tiny LLaDA-MoE-shaped network (bidirectional, q/k norm, 8 softmax-routed experts, 2 a token)."""
  cfg = ModelConfig(
      vocab_size=40, d_model=32, n_layers=2, n_heads=4, mlp_hidden=64, max_len=96, mask_id=1, eos_id=2,
      rope_theta=50_000.0, qk_norm=True, n_experts=8, experts_per_token=2, expert_hidden=16, router="softmax",
      router_float32=False, arch="llada_moe")
  return cfg.replace(**overrides)


def tiny_sdar_moe(**overrides) -> ModelConfig:
  """A tiny SDAR-MoE-shaped network (Qwen3-MoE body, 8 experts, 2 a token, renormalised; blocks of 4)."""
  return tiny_sdar(n_experts=8, experts_per_token=2, expert_hidden=16, router="softmax", norm_topk_prob=True,
                   router_float32=False, arch="sdar_moe").replace(**overrides)


PRESETS = {"llada-8b": llada_8b, "dream-7b": dream_7b, "tiny-llada": tiny_llada, "tiny-dream": tiny_dream,
           "sdar-1.7b": sdar_1_7b, "sdar-8b": sdar_8b, "fast-dllm-v2-1.5b": fast_dllm_v2_1_5b,
           "fast-dllm-v2-7b": fast_dllm_v2_7b, "tiny-sdar": tiny_sdar, "tiny-fast-dllm-v2": tiny_fast_dllm_v2,
           "llada2-mini": llada2_mini, "llada2-flash": llada2_flash, "llada-moe-7b": llada_moe_7b,
           "sdar-30b-a3b": sdar_30b_a3b, "tiny-llada2": tiny_llada2, "tiny-llada-moe": tiny_llada_moe,
           "tiny-sdar-moe": tiny_sdar_moe}
