"""Hugging Face folders of the mixture-of-experts dLLMs: LLaDA2.x (`llada2_moe`), LLaDA-MoE (`lladamoe`) and
SDAR-MoE (`sdar_moe`, a Qwen3-MoE body): config.json -> ModelConfig, and checkpoint names -> dlm parameters.

Every key is read as each release's modelling code reads it (docs/moe.md lists the differences); a feature dlm
does not implement (another score function, biases on the attention output, q/k/v clipping, rope scaling, MoE
layers interleaved with dense ones other than a dense prefix) is refused in one line rather than loaded wrongly.

Two layouts need more than a rename, and both are expressed as *pieces* of stored tensors so the streaming,
sharded reader of dlm.io.hf handles them unchanged:
* LLaDA2's fused `attention.query_key_value.weight` [(H + 2 Hkv) * Dh, D] is three row bands, read as three
  tensors (`…query_key_value.weight:q|k|v`), each contiguous on disk;
* every expert is its own tensor (`mlp.experts.{e}.gate_proj.weight`) and fills slot e of dlm's [E, D, F]
  parameter: its dlm path carries the expert index as `[e]` (`layers.3.moe.gate_proj[5]`).
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Mapping
from typing import Any

from dlm.model.config import ModelConfig
from dlm.model.transformer import DENSE_STACK, STACKED

MOE_ARCHS = ("llada2", "llada_moe", "sdar_moe")
# <|mask|> and <|endoftext|> of the LLaDA2 / LLaDA-MoE tokenizer (their generate()'s defaults); SDAR-MoE shares
# SDAR's Qwen3 ids.
LLADA2_IDS = {"mask_id": 156_895, "eos_id": 156_892, "eot_id": None}
LLADA_MOE_IDS = {"mask_id": 156_895, "eos_id": 156_892, "eot_id": None}
SDAR_MOE_IDS = {"mask_id": 151_669, "eos_id": 151_643, "eot_id": 151_645}
DEFAULT_BLOCK = {"llada2": 32, "sdar_moe": 4}
_QKV = re.compile(r"^(.*)\.query_key_value\.(weight|bias):(q|k|v)$")
_EXPERT = re.compile(r"^(.*)\[(\d+)\]$")


def detect_moe_arch(archs: list[str], model_type: str) -> str | None:
  if "LLaDA2MoeModelLM" in archs or model_type == "llada2_moe":
    return "llada2"
  if "LLaDAMoEModelLM" in archs or "LLaDAMoEModel" in archs or model_type == "lladamoe":
    return "llada_moe"
  if "SDARMoeForCausalLM" in archs or model_type == "sdar_moe":
    return "sdar_moe"
  return None


def rope_theta(hf_cfg, default: float) -> float:
  """rope_theta at the top level (the releases) or in transformers 5's rope_parameters."""
  from dlm.io.hf import _check  # here, not at the top: dlm.io.hf imports this module
  params = hf_cfg.get("rope_parameters") or {}
  scaling = hf_cfg.get("rope_scaling") or {}
  kind = params.get("rope_type", params.get("type", "default"))
  _check(not scaling and kind == "default", f"rope_scaling={scaling or params} is not supported (plain RoPE only)")
  return float(hf_cfg.get("rope_theta") or params.get("rope_theta") or default)


def _rotary_dim(hf_cfg, head_dim: int) -> int | None:
  from dlm.io.hf import _check
  factor = hf_cfg.get("partial_rotary_factor")
  if factor in (None, -1, 1, 1.0):
    return None
  rd = int(head_dim * float(factor))
  _check(0 < rd <= head_dim and rd % 2 == 0, f"partial_rotary_factor={factor} gives an unusable rotary dim {rd}")
  return None if rd == head_dim else rd


def config_from_hf_moe(hf_cfg: Mapping[str, Any], arch: str, common: dict) -> ModelConfig:
  """The ModelConfig of an LLaDA2 / LLaDA-MoE / SDAR-MoE config.json (dlm.io.hf.config_from_hf's MoE branch;
  an unsupported feature is its one-line CheckpointError)."""
  from dlm.io.hf import _check, _need, _special_ids
  g = lambda k, d=None: hf_cfg.get(k, d)  # noqa: E731
  _check(g("hidden_act", "silu") == "silu", f"{arch} hidden_act={g('hidden_act')!r}: only silu")
  d_model, n_heads = _need(hf_cfg, "hidden_size", arch), _need(hf_cfg, "num_attention_heads", arch)
  n_layers, vocab = _need(hf_cfg, "num_hidden_layers", arch), _need(hf_cfg, "vocab_size", arch)
  n_kv = g("num_key_value_heads")
  head_dim = g("head_dim") or d_model // n_heads
  n_experts = g("num_experts") or g("num_local_experts")
  _check(bool(n_experts), f"config.json of this {arch} model names no experts (num_experts)")
  shape = dict(vocab_size=vocab, d_model=d_model, n_layers=n_layers, n_heads=n_heads,
               n_kv_heads=None if n_kv in (None, n_heads) else n_kv,
               head_dim=None if head_dim == d_model // n_heads else head_dim,
               max_len=_need(hf_cfg, "max_position_embeddings", arch), rotary_dim=_rotary_dim(hf_cfg, head_dim),
               tie_embeddings=bool(g("tie_word_embeddings", False)), n_experts=int(n_experts),
               experts_per_token=int(_need(hf_cfg, "num_experts_per_tok", arch)), logit_shift=False)
  if arch == "llada2":
    _check(g("score_function", "sigmoid") == "sigmoid", f"LLaDA2 score_function={g('score_function')!r}: only "
           f"'sigmoid' (its gate's rule)")
    _check(not g("use_bias", False), "LLaDA2 use_bias=true (a bias on the attention output) is not supported")
    _check(not g("use_linear_attention", False), "LLaDA2 use_linear_attention is not supported")
    expert = int(_need(hf_cfg, "moe_intermediate_size", arch))
    shared = int(g("num_shared_experts") or 0)
    block = g("block_size") or DEFAULT_BLOCK[arch]
    routing = dict(expert_hidden=expert, shared_expert_hidden=expert * shared,
                   first_dense_layers=int(g("first_k_dense_replace", 0) or 0), router="sigmoid_groups",
                   router_bias=True, norm_topk_prob=True, routed_scale=float(g("routed_scaling_factor", 1.0)),
                   n_groups=int(g("n_group") or 1), topk_groups=int(g("topk_group") or 1), router_float32=True)
    layout = dict(qkv_bias=bool(g("use_qkv_bias", False)), qk_norm=bool(g("use_qk_norm", False)),
                  attention_layout="block_causal", block_size=int(block),
                  mlp_hidden=int(_need(hf_cfg, "intermediate_size", arch)), norm_eps=float(g("rms_norm_eps", 1e-6)),
                  rope_theta=rope_theta(hf_cfg, 600_000.0))
    ids = LLADA2_IDS
  elif arch == "llada_moe":
    _check(not g("attention_bias", False), "LLaDA-MoE attention_bias=true is not supported")
    _check(g("clip_qkv") is None, f"LLaDA-MoE clip_qkv={g('clip_qkv')} is not supported")
    score = g("moe_router_score_function") or "softmax"
    _check(score == "softmax", f"LLaDA-MoE moe_router_score_function={score!r}: only 'softmax' (its block's rule)")
    freq = list(g("moe_layer_freq") or [1] * n_layers)
    dense = next((i for i, f in enumerate(freq) if f), len(freq))
    _check(len(freq) == n_layers and all(freq[dense:]),
           f"LLaDA-MoE moe_layer_freq={freq}: only dense layers first, then MoE layers, are supported")
    shared = g("shared_expert_intermediate_size")
    routing = dict(expert_hidden=int(_need(hf_cfg, "expert_intermediate_size", arch)),
                   shared_expert_hidden=int(shared) if shared is not None and shared > 0 else 0,
                   first_dense_layers=dense, router="softmax",
                   router_bias=bool(g("moe_router_enable_expert_bias", False)),
                   norm_topk_prob=False,  # its block hard-codes False whatever config.json says
                   router_float32=False)
    dense_hidden = g("dense_intermediate_size")
    layout = dict(qkv_bias=False, qk_norm=bool(g("qk_layernorm", False)),
                  mlp_hidden=int(dense_hidden) if dense_hidden and dense_hidden > 0 else routing["expert_hidden"],
                  norm_eps=float(g("rms_norm_eps", 1e-5)), rope_theta=rope_theta(hf_cfg, 10_000.0))
    ids = LLADA_MOE_IDS
  else:  # sdar_moe: Qwen3-MoE
    _check(not g("attention_bias", False), "SDAR-MoE attention_bias=true (biases on q/k/v/o) is not supported")
    _check(not g("use_sliding_window", False), "SDAR-MoE use_sliding_window=true is not supported")
    _check(int(g("decoder_sparse_step", 1)) == 1 and not g("mlp_only_layers"),
           f"SDAR-MoE decoder_sparse_step={g('decoder_sparse_step')} mlp_only_layers={g('mlp_only_layers')}: only "
           f"every layer MoE is supported")
    block = g("block_size") or DEFAULT_BLOCK[arch]
    routing = dict(expert_hidden=int(_need(hf_cfg, "moe_intermediate_size", arch)), router="softmax",
                   norm_topk_prob=bool(g("norm_topk_prob", False)), router_float32=False)
    layout = dict(qkv_bias=False, qk_norm=True, attention_layout="block_causal", block_size=int(block),
                  mlp_hidden=int(g("intermediate_size") or routing["expert_hidden"]),
                  norm_eps=float(g("rms_norm_eps", 1e-6)), rope_theta=rope_theta(hf_cfg, 10_000.0))
    ids = SDAR_MOE_IDS
  return ModelConfig(**shape, **routing, **layout, **_special_ids(hf_cfg, ids, vocab), **common)


def _layer_names(cfg: ModelConfig, i: int) -> str:
  """dlm's per-layer prefix of network layer i (dense prefix layers live in their own stack)."""
  dense = cfg.first_dense_layers
  return f"{DENSE_STACK}.{i}." if i < dense else f"{STACKED}.{i - dense}."


def moe_weight_names(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
  """Hugging Face tensor name (or piece, see the module docstring) -> (dlm per-layer path, transpose?)."""
  names: dict[str, tuple[str, bool]] = {}
  llada2 = cfg.arch == "llada2"
  names["model.word_embeddings.weight" if llada2 else "model.embed_tokens.weight"] = ("embed.embedding", False)
  for i in range(cfg.n_layers):
    hf, ours = f"model.layers.{i}.", _layer_names(cfg, i)
    names[f"{hf}input_layernorm.weight"] = (f"{ours}attn_norm.scale", False)
    names[f"{hf}post_attention_layernorm.weight"] = (f"{ours}mlp_norm.scale", False)
    if llada2:
      for part in "qkv":
        names[f"{hf}attention.query_key_value.weight:{part}"] = (f"{ours}attn.{part}_proj.kernel", True)
        if cfg.qkv_bias:
          names[f"{hf}attention.query_key_value.bias:{part}"] = (f"{ours}attn.{part}_proj.bias", False)
      names[f"{hf}attention.dense.weight"] = (f"{ours}attn.o_proj.kernel", True)
      if cfg.qk_norm:
        names[f"{hf}attention.query_layernorm.weight"] = (f"{ours}attn.q_norm.scale", False)
        names[f"{hf}attention.key_layernorm.weight"] = (f"{ours}attn.k_norm.scale", False)
    else:
      for p in ("q_proj", "k_proj", "v_proj", "o_proj"):
        names[f"{hf}self_attn.{p}.weight"] = (f"{ours}attn.{p}.kernel", True)
      if cfg.qk_norm:
        names[f"{hf}self_attn.q_norm.weight"] = (f"{ours}attn.q_norm.scale", False)
        names[f"{hf}self_attn.k_norm.weight"] = (f"{ours}attn.k_norm.scale", False)
    if i < cfg.first_dense_layers:
      for p in ("gate_proj", "up_proj", "down_proj"):
        names[f"{hf}mlp.{p}.weight"] = (f"{ours}mlp.{p}.kernel", True)
      continue
    names[f"{hf}mlp.gate.weight"] = (f"{ours}moe.router.gate.kernel", True)
    if cfg.router_bias:
      names[f"{hf}mlp.gate.expert_bias" if llada2 else f"{hf}mlp.expert_bias"] = (
          f"{ours}moe.router.expert_bias", False)
    for e in range(cfg.n_experts):
      for p in ("gate_proj", "up_proj", "down_proj"):
        names[f"{hf}mlp.experts.{e}.{p}.weight"] = (f"{ours}moe.{p}[{e}]", True)
    if cfg.shared_expert_hidden:
      shared = f"{hf}mlp.shared_experts." if llada2 else f"{hf}shared_expert."
      for p in ("gate_proj", "up_proj", "down_proj"):
        names[f"{shared}{p}.weight"] = (f"{ours}moe.shared.{p}.kernel", True)
  names["model.norm.weight"] = ("final_norm.scale", False)
  if not cfg.tie_embeddings:
    names["lm_head.weight"] = ("head.kernel", True)
  return names


def split_fused(cfg: ModelConfig, tensors: Mapping[str, Any]) -> dict[str, Any]:
  """LLaDA2's fused q/k/v tensors -> three row-band pieces each (`name:q|k|v`); other tensors as they are."""
  if cfg.arch != "llada2":
    return dict(tensors)
  h, hkv, dh = cfg.n_heads, cfg.num_kv_heads, cfg.dim_per_head
  bands = {"q": (0, h * dh), "k": (h * dh, (h + hkv) * dh), "v": ((h + hkv) * dh, (h + 2 * hkv) * dh)}
  out = {}
  for name, info in tensors.items():
    if not re.search(r"\.query_key_value\.(weight|bias)$", name):
      out[name] = info
      continue
    if not info.shape or info.shape[0] != (h + 2 * hkv) * dh:
      out[name] = info  # wrong shape: left whole, so the shape check names it
      continue
    row_bytes = info.nbytes // info.shape[0]
    for part, (r0, r1) in bands.items():
      out[f"{name}:{part}"] = dataclasses.replace(info, name=f"{name}:{part}", shape=(r1 - r0, *info.shape[1:]),
                                                  start=info.start + r0 * row_bytes,
                                                  end=info.start + r1 * row_bytes)
  return out


def expert_index(path: str) -> tuple[str, int | None]:
  """`layers.3.moe.gate_proj[5]` -> (`layers.3.moe.gate_proj`, 5); other paths -> (path, None)."""
  m = _EXPERT.match(path)
  return (m.group(1), int(m.group(2))) if m else (path, None)


def piece_of(name: str) -> tuple[str, str | None]:
  """`…query_key_value.weight:q` -> (`…query_key_value.weight`, 'q'); other names -> (name, None)."""
  m = _QKV.match(name)
  return (f"{m.group(1)}.query_key_value.{m.group(2)}", m.group(3)) if m else (name, None)
