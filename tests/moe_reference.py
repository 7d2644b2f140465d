"""Tiny Hugging Face folders of LLaDA2.x (`llada2_moe`) and LLaDA-MoE (`lladamoe`), and a plain NumPy forward
written from their modelling code (modeling_llada2_moe.py; LLaDA-MoE's OLMoE-derived modeling_lladamoe.py as
dInfer ships it), independent of dlm's network: the reference the MoE import and routing are tested against.

transformers has neither model; Qwen3-MoE (SDAR-MoE's body) is tested against transformers itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from safetensors.numpy import save_file

LLADA2 = dict(vocab_size=48, hidden_size=32, num_hidden_layers=3, num_attention_heads=4, num_key_value_heads=2,
              head_dim=16, partial_rotary_factor=0.5, intermediate_size=48, moe_intermediate_size=12, num_experts=8,
              num_experts_per_tok=2, num_shared_experts=1, n_group=4, topk_group=2, routed_scaling_factor=2.5,
              first_k_dense_replace=1, use_qk_norm=True, use_qkv_bias=False, use_bias=False, rope_theta=600000.0,
              rms_norm_eps=1e-6, max_position_embeddings=96, tie_word_embeddings=False, score_function="sigmoid",
              norm_topk_prob=True, block_size=8, architectures=["LLaDA2MoeModelLM"], model_type="llada2_moe",
              mask_token_id=1, eos_token_id=2, pad_token_id=2)
LLADA_MOE = dict(vocab_size=48, hidden_size=32, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=4,
                 dense_intermediate_size=48, expert_intermediate_size=12, shared_expert_intermediate_size=None,
                 num_experts=8, num_experts_per_tok=3, moe_layer_freq=[1, 1], qk_layernorm=True,
                 moe_router_enable_expert_bias=True, moe_router_score_function="softmax", norm_topk_prob=None,
                 partial_rotary_factor=1.0, rope_theta=50000.0, rms_norm_eps=1e-5, max_position_embeddings=96,
                 attention_bias=False, clip_qkv=None, tie_word_embeddings=False, architectures=["LLaDAMoEModelLM"],
                 model_type="lladamoe", mask_token_id=1, eos_token_id=2, pad_token_id=2)


def _weights(cfg: dict, seed: int) -> dict[str, np.ndarray]:
  """Random tensors under the release's names (expert biases non-zero so that they matter)."""
  rng = np.random.default_rng(seed)
  d, v = cfg["hidden_size"], cfg["vocab_size"]
  h, hkv = cfg["num_attention_heads"], cfg["num_key_value_heads"]
  dh = cfg.get("head_dim") or d // h
  e = cfg["num_experts"]
  llada2 = cfg["model_type"] == "llada2_moe"
  w = lambda *shape, s=0.2: rng.normal(0, s, shape).astype(np.float32)  # noqa: E731
  norm = lambda n: (1 + rng.normal(0, 0.1, n)).astype(np.float32)  # noqa: E731
  out = {("model.word_embeddings.weight" if llada2 else "model.embed_tokens.weight"): w(v, d, s=1.0),
         "model.norm.weight": norm(d), "lm_head.weight": w(v, d)}
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    out[p + "input_layernorm.weight"] = norm(d)
    out[p + "post_attention_layernorm.weight"] = norm(d)
    if llada2:
      out[p + "attention.query_key_value.weight"] = w((h + 2 * hkv) * dh, d)
      out[p + "attention.dense.weight"] = w(d, h * dh)
      out[p + "attention.query_layernorm.weight"] = norm(dh)
      out[p + "attention.key_layernorm.weight"] = norm(dh)
      dense = i < cfg["first_k_dense_replace"]
    else:
      for name, rows in (("q_proj", h * dh), ("k_proj", hkv * dh), ("v_proj", hkv * dh)):
        out[p + f"self_attn.{name}.weight"] = w(rows, d)
      out[p + "self_attn.o_proj.weight"] = w(d, h * dh)
      out[p + "self_attn.q_norm.weight"] = norm(dh)
      out[p + "self_attn.k_norm.weight"] = norm(dh)
      dense = cfg["moe_layer_freq"][i] == 0
    if dense:
      f = cfg["intermediate_size"] if llada2 else cfg["dense_intermediate_size"]
      out.update({p + "mlp.gate_proj.weight": w(f, d), p + "mlp.up_proj.weight": w(f, d),
                  p + "mlp.down_proj.weight": w(d, f)})
      continue
    f = cfg["moe_intermediate_size"] if llada2 else cfg["expert_intermediate_size"]
    out[p + "mlp.gate.weight"] = w(e, d, s=0.5)
    if llada2:
      out[p + "mlp.gate.expert_bias"] = w(e, s=0.05)
    elif cfg["moe_router_enable_expert_bias"]:
      out[p + "mlp.expert_bias"] = w(e, s=0.02)
    for k in range(e):
      out.update({p + f"mlp.experts.{k}.gate_proj.weight": w(f, d), p + f"mlp.experts.{k}.up_proj.weight": w(f, d),
                  p + f"mlp.experts.{k}.down_proj.weight": w(d, f)})
    shared = (cfg["num_shared_experts"] * f) if llada2 else (cfg["shared_expert_intermediate_size"] or 0)
    if shared:
      prefix = p + ("mlp.shared_experts." if llada2 else "shared_expert.")
      out.update({prefix + "gate_proj.weight": w(shared, d), prefix + "up_proj.weight": w(shared, d),
                  prefix + "down_proj.weight": w(d, shared)})
  return out


def write_folder(folder: Path, cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
  folder = Path(folder)
  folder.mkdir(parents=True, exist_ok=True)
  tensors = _weights(cfg, seed)
  save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
  (folder / "config.json").write_text(json.dumps(cfg))
  return tensors


# -- the NumPy forward ---------------------------------------------------------------------------------------------


def _rms(x, w, eps):
  return w * (x / np.sqrt(np.mean(x * x, axis=-1, keepdims=True) + eps))


def _rope(x, positions, theta, rotary):
  """x [L, H, dh]; rotate-half on the first `rotary` features (HF apply_rotary_pos_emb with partial rotary)."""
  inv = 1.0 / theta ** (np.arange(0, rotary, 2, dtype=np.float64) / rotary)
  freqs = positions[:, None].astype(np.float64) * inv[None]
  emb = np.concatenate([freqs, freqs], -1)[:, None, :]
  rot, keep = x[..., :rotary], x[..., rotary:]
  half = np.concatenate([-rot[..., rotary // 2:], rot[..., :rotary // 2]], -1)
  return np.concatenate([rot * np.cos(emb) + half * np.sin(emb), keep], -1)


def _swiglu(x, gate, up, down):  # PyTorch [out, in] weights
  g = x @ gate.T
  return ((g / (1 + np.exp(-g))) * (x @ up.T)) @ down.T


def _topk(values, k):
  return np.argsort(-values, kind="stable")[:k]


def route_llada2(x, gate, bias, cfg):
  """LLaDA2MoeGate.forward for one token x [D]: (indices, weights)."""
  scores = 1 / (1 + np.exp(-(gate @ x)))
  biased = scores + bias
  groups = biased.reshape(cfg["n_group"], -1)
  group_scores = np.sort(groups, axis=-1)[:, -2:].sum(-1)
  keep = np.zeros(cfg["n_group"], bool)
  keep[_topk(group_scores, cfg["topk_group"])] = True
  masked = np.where(np.repeat(keep, groups.shape[1]), biased, -np.inf)
  idx = _topk(masked, cfg["num_experts_per_tok"])
  weights = scores[idx]
  if cfg["num_experts_per_tok"] > 1:
    weights = weights / (weights.sum() + 1e-20)
  return idx, weights * cfg["routed_scaling_factor"]


def route_llada_moe(x, gate, bias, cfg):
  """LLaDAMoESparseMoeBlock's routing for one token: softmax, + expert_bias, top-k, no renormalisation."""
  logits = gate @ x
  p = np.exp(logits - logits.max())
  p = p / p.sum()
  if bias is not None:
    p = p + bias
  idx = _topk(p, cfg["num_experts_per_tok"])
  return idx, p[idx]


def forward(tensors: dict, cfg: dict, tokens: np.ndarray) -> tuple[np.ndarray, list]:
  """Logits [L, V] of one row of tokens at positions 0..L-1 (float64), and every MoE layer's (indices, weights)."""
  t = {k: v.astype(np.float64) for k, v in tensors.items()}
  llada2 = cfg["model_type"] == "llada2_moe"
  d, h, hkv = cfg["hidden_size"], cfg["num_attention_heads"], cfg["num_key_value_heads"]
  dh = cfg.get("head_dim") or d // h
  eps = cfg["rms_norm_eps"]
  factor = cfg.get("partial_rotary_factor") or 1.0
  rotary = int(dh * (1.0 if factor in (None, -1) else factor))
  n = len(tokens)
  pos = np.arange(n)
  if llada2:  # the generate() mask: blocks of block_size counted from position 0, causal across blocks
    allowed = (pos[None, :] // cfg["block_size"]) <= (pos[:, None] // cfg["block_size"])
  else:
    allowed = np.ones((n, n), bool)
  x = t["model.word_embeddings.weight" if llada2 else "model.embed_tokens.weight"][tokens]
  routes = []
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    y = _rms(x, t[p + "input_layernorm.weight"], eps)
    if llada2:
      qkv = (y @ t[p + "attention.query_key_value.weight"].T).reshape(n, h + 2 * hkv, dh)
      q, k, v = qkv[:, :h], qkv[:, h:h + hkv], qkv[:, h + hkv:]
      q = _rms(q, t[p + "attention.query_layernorm.weight"], eps)
      k = _rms(k, t[p + "attention.key_layernorm.weight"], eps)
      o_proj = t[p + "attention.dense.weight"]
    else:
      q = (y @ t[p + "self_attn.q_proj.weight"].T)
      k = (y @ t[p + "self_attn.k_proj.weight"].T)
      v = (y @ t[p + "self_attn.v_proj.weight"].T).reshape(n, hkv, dh)
      q = _rms(q.reshape(-1, dh), t[p + "self_attn.q_norm.weight"], eps).reshape(n, h, dh)
      k = _rms(k.reshape(-1, dh), t[p + "self_attn.k_norm.weight"], eps).reshape(n, hkv, dh)
      o_proj = t[p + "self_attn.o_proj.weight"]
    q, k = _rope(q, pos, cfg["rope_theta"], rotary), _rope(k, pos, cfg["rope_theta"], rotary)
    rep = h // hkv
    k, v = np.repeat(k, rep, axis=1), np.repeat(v, rep, axis=1)
    scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(dh)
    scores = np.where(allowed[None], scores, -np.inf)
    probs = np.exp(scores - scores.max(-1, keepdims=True))
    probs = probs / probs.sum(-1, keepdims=True)
    x = x + np.einsum("hqk,khd->qhd", probs, v).reshape(n, h * dh) @ o_proj.T
    y = _rms(x, t[p + "post_attention_layernorm.weight"], eps)
    if p + "mlp.gate.weight" not in t:
      x = x + _swiglu(y, t[p + "mlp.gate_proj.weight"], t[p + "mlp.up_proj.weight"], t[p + "mlp.down_proj.weight"])
      continue
    gate = t[p + "mlp.gate.weight"]
    bias = t.get(p + ("mlp.gate.expert_bias" if llada2 else "mlp.expert_bias"))
    out, layer_routes = np.zeros_like(y), []
    for j in range(n):
      idx, weights = (route_llada2(y[j], gate, bias, cfg) if llada2 else route_llada_moe(y[j], gate, bias, cfg))
      layer_routes.append((idx, weights))
      for e, wt in zip(idx, weights):
        pe = f"{p}mlp.experts.{e}."
        out[j] += wt * _swiglu(y[j], t[pe + "gate_proj.weight"], t[pe + "up_proj.weight"], t[pe + "down_proj.weight"])
    routes.append(layer_routes)
    shared = p + ("mlp.shared_experts." if llada2 else "shared_expert.")
    if shared + "gate_proj.weight" in t:
      out = out + _swiglu(y, t[shared + "gate_proj.weight"], t[shared + "up_proj.weight"],
                          t[shared + "down_proj.weight"])
    x = x + out
  x = _rms(x, t["model.norm.weight"], eps)
  return x @ t["lm_head.weight"].T, routes
