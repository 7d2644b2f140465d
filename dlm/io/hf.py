"""Hugging Face model folders <-> dlm networks: LLaDA (OLMo-style names), Dream, SDAR and Fast-dLLM v2 (Qwen-style
names), and the mixture-of-experts LLaDA2.x, LLaDA-MoE and SDAR-MoE (dlm/io/hf_moe.py; load only).

    model, tokenizer = load_hf("path/to/LLaDA-8B-Instruct")        # or a hub id (downloaded once, then cached)
    export_hf(model, "out/my-llada", tokenizer_dir="path/to/LLaDA-8B-Instruct")

Loading reads `config.json`, recognises the architecture, checks every tensor's name and shape against the
network before reading any data, then reads the checkpoint tensor by tensor (single file or shards listed in
`model.safetensors.index.json`): each tensor is cast to the parameter dtype, transposed to dlm's [in, out]
layout and placed on its device (or sharding) before the next one is read, into a network built abstractly with
`nnx.eval_shape`. Host memory stays at about one copy of the parameters plus one tensor.

Export writes the same layout back (sharded above `max_shard_bytes`) into a temporary folder that is renamed
into place only when complete.
"""

from __future__ import annotations

import gc
import json
import os
import re
import shutil
import tempfile
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import jax
import numpy as np
from flax import nnx

from dlm.io import safetensors_stream as st
from dlm.io.hf_moe import (MOE_ARCHS, config_from_hf_moe, detect_moe_arch, expert_index, moe_weight_names,
                           piece_of, split_fused)
from dlm.io.hub import HUB_ID, hub_cache_dir
from dlm.io.tokenizer import TOKENIZER_FILES, HFTokenizer
from dlm.model.config import ModelConfig
from dlm.model.transformer import Transformer, layer_path, per_layer_shapes

LLADA_IDS = {"mask_id": 126_336, "eos_id": 126_081, "eot_id": 126_348}  # <|mdm_mask|>, <|endoftext|>, <|eot_id|>
DREAM_IDS = {"mask_id": 151_666, "eos_id": 151_643, "eot_id": 151_645}  # <|mask|>, <|endoftext|>, <|im_end|>
# SDAR: <|MASK|> (SDAR's generate.py reads it from the tokenizer's mask_token; the folder's tokenizer wins, see
# load_hf), <|endoftext|>, <|im_end|>.
SDAR_IDS = {"mask_id": 151_669, "eos_id": 151_643, "eot_id": 151_645}
# Fast-dLLM v2: config.json names no mask id; 151665 is the default of its generation code (batch_sample,
# generate).  Its eos_token_id is <|im_end|> (151645, the stop token of v2/eval.py); <|endoftext|> is the second.
FAST_DLLM_V2_IDS = {"mask_id": 151_665, "eos_id": 151_645, "eot_id": 151_643}
DEFAULT_BLOCK = {"sdar": 4, "fast_dllm_v2": 32}  # when config.json has no block size (SDAR README, bd_size)
_QWEN_STYLE = ("dream", "sdar", "fast_dllm_v2")  # model.layers.{i}.self_attn.* / mlp.* names
INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"
_IGNORED = re.compile(r".*rotary_emb\.inv_freq$")  # non-persistent buffers some exporters still write


class CheckpointError(ValueError):
  """A model folder that cannot be loaded (or a network that cannot be exported) as asked."""


def _listing(names, limit: int = 12) -> str:
  names = sorted(names)
  more = f" ... and {len(names) - limit} more" if len(names) > limit else ""
  return ", ".join(names[:limit]) + more


# -- locating a model ----------------------------------------------------------------------------------------------


def resolve_model_path(path_or_hub_id: str | os.PathLike, *, revision: str | None = None,
                       token: str | bool | None = None, local_files_only: bool = False) -> Path:
  """A local folder as is; a hub id `org/name[@revision]`: a complete snapshot already in the local Hugging Face
  cache (no network), else downloaded into it with huggingface_hub (dlm.io.hub.hub_snapshot: only the files a
  model needs; HF_HUB_OFFLINE / local_files_only read the cache only)."""
  text = os.fspath(path_or_hub_id)
  local = Path(text).expanduser()
  if local.exists():
    if not local.is_dir():
      raise CheckpointError(f"{local} is a file; pass the model folder that holds config.json")
    return local
  if not HUB_ID.match(text):
    raise FileNotFoundError(f"{local} does not exist (and is not a hub id org/name)")
  from dlm.io.hub import hub_snapshot, missing_weights
  repo, _, at = text.partition("@")
  revision = revision or at or None
  cached = _cached_snapshot(repo, revision)
  if cached is not None and not missing_weights(cached):
    return cached
  return hub_snapshot(repo, revision=revision, token=token, local_files_only=local_files_only)


def _cached_snapshot(repo: str, revision: str | None) -> Path | None:
  """The snapshot of `repo` at `revision` (default: main, else the newest) in the local cache, or None."""
  repo_dir = hub_cache_dir() / f"models--{repo.replace('/', '--')}"
  snapshots = repo_dir / "snapshots"
  ref = repo_dir / "refs" / (revision or "main")
  candidates = []
  if ref.is_file():
    candidates.append(snapshots / ref.read_text().strip())
  if revision:
    candidates.append(snapshots / revision)
  elif snapshots.is_dir():
    candidates += sorted(snapshots.iterdir(), key=lambda p: p.stat().st_mtime, reverse=True)
  return next((snap for snap in candidates if (snap / "config.json").is_file()), None)


# -- config.json <-> ModelConfig --------------------------------------------------------------------------------


def detect_arch(hf_cfg: Mapping[str, Any]) -> str:
  archs = [str(a) for a in hf_cfg.get("architectures") or []]
  model_type = str(hf_cfg.get("model_type", "")).lower()
  moe = detect_moe_arch(archs, model_type)
  if moe is not None:
    return moe
  if "LLaDAModelLM" in archs or model_type == "llada":  # LLaDA-8B Base/Instruct, LLaDA-1.5 (not the MoE ones)
    return "llada"
  if "DreamModel" in archs or model_type == "dream":
    return "dream"
  if "SDARForCausalLM" in archs or model_type == "sdar":
    return "sdar"
  if "Fast_dLLM_QwenForCausalLM" in archs or model_type == "fast_dllm_qwen":
    return "fast_dllm_v2"
  if "arch" in hf_cfg and "architectures" not in hf_cfg:
    raise CheckpointError("this config.json was written by dlm.io.params.save_model; load that folder with "
                          "dlm.io.params.load_model (or `dlm convert --to-hf` it first)")
  raise CheckpointError(f"unsupported architecture: architectures={hf_cfg.get('architectures')} "
                        f"model_type={hf_cfg.get('model_type')!r}; dlm reads LLaDA (LLaDAModelLM / 'llada'), "
                        f"Dream (DreamModel / 'Dream'), SDAR (SDARForCausalLM / 'sdar') and Fast-dLLM v2 "
                        f"(Fast_dLLM_QwenForCausalLM / 'Fast_dLLM_Qwen'), LLaDA2.x (LLaDA2MoeModelLM), LLaDA-MoE "
                        f"(LLaDAMoEModelLM / 'lladamoe') and SDAR-MoE (SDARMoeForCausalLM)")


def _need(hf_cfg, key: str, arch: str):
  if hf_cfg.get(key) is None:
    raise CheckpointError(f"config.json of this {arch} model lacks {key!r}")
  return hf_cfg[key]


def _special_ids(hf_cfg, defaults: dict, vocab: int) -> dict:
  """Ids from config.json, else the architecture's known ids (eot only where it fits the vocabulary)."""
  mask = hf_cfg.get("mask_token_id", defaults["mask_id"])
  eos = hf_cfg.get("eos_token_id", defaults["eos_id"])
  if isinstance(eos, list):  # generation-style lists: the first is the canonical end of text
    eos = eos[0]
  eot = hf_cfg["eot_token_id"] if "eot_token_id" in hf_cfg else defaults["eot_id"]
  if eot is not None and eot >= vocab:
    eot = None
  pad = hf_cfg.get("pad_token_id")
  for name, value in (("mask_token_id", mask), ("eos_token_id", eos)):
    if value is None or not 0 <= int(value) < vocab:
      raise CheckpointError(f"config.json {name}={value} does not fit the vocabulary ({vocab=}); set it in "
                            f"config.json")
  return {"mask_id": int(mask), "eos_id": int(eos), "eot_id": eot, "pad_id": pad}


def _check(cond: bool, message: str):
  if not cond:
    raise CheckpointError(message)


def config_from_hf(hf_cfg: Mapping[str, Any], *, dtype: str = "bfloat16", param_dtype: str | None = None,
                   max_len: int | None = None) -> ModelConfig:
  """Translate a Hugging Face config.json (dict) into a ModelConfig, refusing features dlm does not implement.

  max_len (the longest prompt + answer the engine accepts) is the config's own limit (LLaDA's
  max_sequence_length, Dream's max_position_embeddings) unless `max_len` overrides it.  dlm's RoPE has no table
  sized by it, so it is only a guard and costs nothing.  Dream's 131072 is inherited from Qwen2.5's config, not
  Dream's training context (2048, the dream_7b preset): it is kept, so dlm rejects nothing the reference
  implementation accepts and an export writes the original value back; pass max_len=2048 to refuse longer
  canvases (quality beyond the trained length is not guaranteed).
  """
  if max_len is not None:
    return config_from_hf(hf_cfg, dtype=dtype, param_dtype=param_dtype).replace(max_len=max_len)
  arch = detect_arch(hf_cfg)
  common = {"dtype": dtype, "param_dtype": param_dtype or dtype, "arch": arch}
  if arch in MOE_ARCHS:
    return config_from_hf_moe(hf_cfg, arch, common)
  if arch == "llada":
    g = lambda k, d=None: hf_cfg.get(k, d)  # noqa: E731
    _check(g("block_type", "llama") in ("llama", "llada"), f"LLaDA block_type={g('block_type')!r}: only 'llama'")
    _check(g("layer_norm_type", "rms") == "rms", f"LLaDA layer_norm_type={g('layer_norm_type')!r}: only 'rms'")
    _check(g("activation_type", "silu") == "silu", f"LLaDA activation_type={g('activation_type')!r}: only silu")
    _check(g("rope", True) and not g("alibi", False), "LLaDA without RoPE (or with ALiBi) is not supported")
    _check(not g("include_bias", False), "LLaDA include_bias=true (biases on every Linear) is not supported")
    _check(not g("attention_layer_norm", False), "LLaDA attention_layer_norm (q/k norm) is not supported")
    _check(not g("scale_logits", False) and not g("input_emb_norm", False),
           "LLaDA scale_logits / input_emb_norm are not supported")
    _check(g("layer_norm_with_affine", True) and not g("bias_for_layer_norm", False),
           "LLaDA norms must have a weight and no bias")
    d_model, n_heads = _need(hf_cfg, "d_model", arch), _need(hf_cfg, "n_heads", arch)
    n_kv = 1 if g("multi_query_attention") else g("n_kv_heads")
    mlp = g("mlp_hidden_size") or int(_need(hf_cfg, "mlp_ratio", arch) * d_model)
    vocab = g("embedding_size") or _need(hf_cfg, "vocab_size", arch)
    return ModelConfig(
        vocab_size=vocab, d_model=d_model, n_layers=_need(hf_cfg, "n_layers", arch), n_heads=n_heads,
        n_kv_heads=None if n_kv in (None, n_heads) else n_kv, mlp_hidden=mlp,
        max_len=_need(hf_cfg, "max_sequence_length", arch), rope_theta=float(g("rope_theta", 10_000.0)),
        norm_eps=float(g("rms_norm_eps", 1e-5)), qkv_bias=bool(g("include_qkv_bias", False)),
        tie_embeddings=bool(g("weight_tying", False)), logit_shift=False,
        **_special_ids(hf_cfg, LLADA_IDS, vocab), **common)
  g = lambda k, d=None: hf_cfg.get(k, d)  # noqa: E731
  name = {"dream": "Dream", "sdar": "SDAR", "fast_dllm_v2": "Fast-dLLM v2"}[arch]
  _check(g("hidden_act", "silu") == "silu", f"{name} hidden_act={g('hidden_act')!r}: only silu")
  _check(not g("rope_scaling"), f"{name} rope_scaling={g('rope_scaling')} is not supported")
  _check(not g("use_sliding_window", False), f"{name} use_sliding_window=true is not supported")
  d_model, n_heads = _need(hf_cfg, "hidden_size", arch), _need(hf_cfg, "num_attention_heads", arch)
  n_kv = g("num_key_value_heads")
  head_dim = g("head_dim")
  vocab = _need(hf_cfg, "vocab_size", arch)
  layout = {}
  if arch == "sdar":
    # Qwen3: attention_bias puts a bias on q, k, v *and* o; SDAR's releases have none, and neither does dlm.
    _check(not g("attention_bias", False), "SDAR attention_bias=true (biases on q/k/v/o) is not supported")
    layout = dict(qkv_bias=False, qk_norm=True, logit_shift=False)
  else:  # Qwen2 bodies: q/k/v biases, no o bias; Dream and Fast-dLLM v2 both read position i - 1 for slot i
    layout = dict(qkv_bias=True, logit_shift=True)
  if arch in DEFAULT_BLOCK:
    block = g("block_size") or g("bd_size") or DEFAULT_BLOCK[arch]
    layout.update(attention_layout="block_causal", block_size=int(block))
  ids = {"dream": DREAM_IDS, "sdar": SDAR_IDS, "fast_dllm_v2": FAST_DLLM_V2_IDS}[arch]
  return ModelConfig(
      vocab_size=vocab, d_model=d_model, n_layers=_need(hf_cfg, "num_hidden_layers", arch), n_heads=n_heads,
      n_kv_heads=None if n_kv in (None, n_heads) else n_kv,
      head_dim=None if head_dim in (None, d_model // n_heads) else head_dim,
      mlp_hidden=_need(hf_cfg, "intermediate_size", arch), max_len=_need(hf_cfg, "max_position_embeddings", arch),
      rope_theta=float(g("rope_theta", 10_000.0)), norm_eps=float(g("rms_norm_eps", 1e-6)),
      tie_embeddings=bool(g("tie_word_embeddings", False)), **layout,
      **_special_ids(hf_cfg, ids, vocab), **common)


_TORCH_DTYPE = {"float32": "float32", "bfloat16": "bfloat16", "float16": "float16"}


def config_to_hf(cfg: ModelConfig, *, dtype: str | None = None, base: Mapping[str, Any] | None = None) -> dict:
  """The config.json for `cfg` in its architecture's own vocabulary.  Keys of `base` (an original config.json of
  the same architecture: auto_map, init settings, ...) are kept unless dlm owns them."""
  dtype = _TORCH_DTYPE[dtype or cfg.param_dtype]
  if cfg.arch in MOE_ARCHS or cfg.moe:
    raise CheckpointError(f"export of mixture-of-experts networks ({cfg.arch}) to Hugging Face folders is not "
                          f"implemented; save it with dlm.io.save_model (dlm's own format) instead")
  out = dict(base or {})
  ids = {"mask_token_id": cfg.mask_id, "eos_token_id": cfg.eos_id, "eot_token_id": cfg.eot_id,
         "pad_token_id": cfg.pad_id, "torch_dtype": dtype}
  if cfg.arch == "llada":
    if cfg.logit_shift:
      raise CheckpointError("LLaDA layout has no logit shift; this network has logit_shift=True")
    if cfg.dim_per_head * cfg.n_heads != cfg.d_model:
      raise CheckpointError(f"LLaDA layout needs head_dim * n_heads == d_model; got {cfg.head_dim=}")
    if cfg.qk_norm or cfg.block_causal:
      raise CheckpointError(f"LLaDA layout is bidirectional without q/k norm; got {cfg.attention_layout=} "
                            f"{cfg.qk_norm=}")
    out.update({
        "architectures": ["LLaDAModelLM"], "model_type": "llada", "block_type": "llama",
        "activation_type": "silu", "layer_norm_type": "rms", "rope": True, "alibi": False,
        "include_bias": False, "include_qkv_bias": cfg.qkv_bias, "weight_tying": cfg.tie_embeddings,
        "d_model": cfg.d_model, "n_layers": cfg.n_layers, "n_heads": cfg.n_heads, "n_kv_heads": cfg.num_kv_heads,
        "multi_query_attention": None, "mlp_hidden_size": cfg.mlp_hidden, "max_sequence_length": cfg.max_len,
        "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps, "embedding_size": cfg.vocab_size,
        "vocab_size": min(out.get("vocab_size") or cfg.vocab_size, cfg.vocab_size), **ids})
    return out
  qwen = {"dream": ("DreamModel", "Dream"), "sdar": ("SDARForCausalLM", "sdar"),
          "fast_dllm_v2": ("Fast_dLLM_QwenForCausalLM", "Fast_dLLM_Qwen")}[cfg.arch]
  expected = dict(dream=dict(qkv_bias=True, logit_shift=True, qk_norm=False, block_causal=False),
                  sdar=dict(qkv_bias=False, logit_shift=False, qk_norm=True, block_causal=True),
                  fast_dllm_v2=dict(qkv_bias=True, logit_shift=True, qk_norm=False, block_causal=True))[cfg.arch]
  wrong = {k: getattr(cfg, k) for k, v in expected.items() if getattr(cfg, k) != v}
  if wrong:
    raise CheckpointError(f"the {cfg.arch} layout needs {expected}; this network has {wrong}")
  out.update({
      "architectures": [qwen[0]], "model_type": qwen[1], "hidden_act": "silu", "hidden_size": cfg.d_model,
      "num_hidden_layers": cfg.n_layers, "num_attention_heads": cfg.n_heads,
      "num_key_value_heads": cfg.num_kv_heads, "intermediate_size": cfg.mlp_hidden,
      "max_position_embeddings": cfg.max_len, "rope_theta": cfg.rope_theta, "rms_norm_eps": cfg.norm_eps,
      "vocab_size": cfg.vocab_size, "tie_word_embeddings": cfg.tie_embeddings, "rope_scaling": None, **ids})
  if cfg.arch == "sdar":
    out.update(attention_bias=False, block_size=cfg.block_size)
  if cfg.arch == "fast_dllm_v2":
    out["bd_size"] = cfg.block_size
    out.pop("mask_token_id")  # as the release: its generation code takes the id as an argument (default 151665)
    if cfg.mask_id != FAST_DLLM_V2_IDS["mask_id"]:
      out["mask_token_id"] = cfg.mask_id  # a non-default id must survive the round trip
  if cfg.head_dim is not None:
    out["head_dim"] = cfg.head_dim
  return out


# -- weight names -----------------------------------------------------------------------------------------------


def weight_names(cfg: ModelConfig) -> dict[str, tuple[str, bool]]:
  """Hugging Face tensor name -> (dlm parameter path, transpose?) in file order.  Linear weights are stored
  [out, in] by PyTorch and [in, out] by dlm, hence the transpose."""
  if cfg.arch in MOE_ARCHS:
    return moe_weight_names(cfg)
  names: dict[str, tuple[str, bool]] = {}
  if cfg.arch == "llada":
    names["model.transformer.wte.weight"] = ("embed.embedding", False)
    linear = {"q_proj": "attn.q_proj", "k_proj": "attn.k_proj", "v_proj": "attn.v_proj",
              "attn_out": "attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
              "ff_out": "mlp.down_proj"}  # ff_proj is the SiLU-gated branch: ff_out(act(ff_proj(x)) * up_proj(x))
    norms = {"attn_norm": "attn_norm", "ff_norm": "mlp_norm"}
    prefix = "model.transformer.blocks.{i}."
    final = {"model.transformer.ln_f.weight": ("final_norm.scale", False)}
    head = "model.transformer.ff_out.weight"
  else:
    names["model.embed_tokens.weight"] = ("embed.embedding", False)
    linear = {f"self_attn.{p}": f"attn.{p}" for p in ("q_proj", "k_proj", "v_proj", "o_proj")}
    linear |= {f"mlp.{p}": f"mlp.{p}" for p in ("gate_proj", "up_proj", "down_proj")}
    norms = {"input_layernorm": "attn_norm", "post_attention_layernorm": "mlp_norm"}
    if cfg.qk_norm:
      norms |= {"self_attn.q_norm": "attn.q_norm", "self_attn.k_norm": "attn.k_norm"}
    prefix = "model.layers.{i}."
    final = {"model.norm.weight": ("final_norm.scale", False)}
    head = "lm_head.weight"
  biased = [n for n in linear if n.split(".")[-1] in ("q_proj", "k_proj", "v_proj")] if cfg.qkv_bias else []
  for i in range(cfg.n_layers):
    p = prefix.format(i=i)
    for hf, ours in norms.items():
      names[f"{p}{hf}.weight"] = (f"layers.{i}.{ours}.scale", False)
    for hf, ours in linear.items():
      names[f"{p}{hf}.weight"] = (f"layers.{i}.{ours}.kernel", True)
      if hf in biased:
        names[f"{p}{hf}.bias"] = (f"layers.{i}.{ours}.bias", False)
  names.update(final)
  if not cfg.tie_embeddings:
    names[head] = ("head.kernel", True)
  return names


def _head_name(cfg: ModelConfig) -> str:
  return "model.transformer.ff_out.weight" if cfg.arch == "llada" else "lm_head.weight"


def _expected_shape(expected_shapes: Mapping[str, tuple], path: str) -> tuple:
  """A parameter's per-layer shape; one expert's slice [D, F] for an expert piece `…[e]`."""
  base, expert = expert_index(path)
  shape = tuple(expected_shapes[base])
  return shape if expert is None else shape[1:]


def _read_index(path: str) -> tuple[str, tuple[int, ...]]:
  """A per-layer dlm path -> (stacked parameter path, its leading indexes: () / (layer,) / (layer, expert))."""
  base, expert = expert_index(path)
  stacked, layer = layer_path(base)
  index = () if layer is None else (layer,)
  return stacked, index + (() if expert is None else (expert,))


# -- reading --------------------------------------------------------------------------------------------------------


def read_config(folder: Path) -> dict:
  path = folder / "config.json"
  if not path.is_file():
    raise FileNotFoundError(f"{path} is missing; expected a Hugging Face model folder (config.json + "
                            f"*.safetensors)")
  try:
    hf_cfg = json.loads(path.read_text())
  except json.JSONDecodeError as e:
    raise CheckpointError(f"{path} is not valid JSON ({e})") from e
  if not isinstance(hf_cfg, dict):
    raise CheckpointError(f"{path} holds a {type(hf_cfg).__name__}, not a JSON object")
  return hf_cfg


def checkpoint_tensors(folder: Path) -> dict[str, st.TensorInfo]:
  """Every tensor of the folder's safetensors checkpoint (validated headers, no data read)."""
  index_path = folder / INDEX_FILE
  if index_path.is_file():
    try:
      weight_map = json.loads(index_path.read_text())["weight_map"]
    except (json.JSONDecodeError, KeyError, TypeError) as e:
      raise CheckpointError(f"{index_path} is not a valid index (a JSON object with 'weight_map'): {e}") from e
    by_file: dict[str, list[str]] = {}
    for name, file in weight_map.items():
      by_file.setdefault(file, []).append(name)
    missing = [f for f in by_file if not (folder / f).is_file()]
    if missing:
      raise CheckpointError(f"{folder}: shard file(s) {missing} listed in {INDEX_FILE} are missing (holding "
                            f"{_listing(n for f in missing for n in by_file[f])}); the download is incomplete")
    files = sorted(by_file)
  elif (folder / SINGLE_FILE).is_file():
    files, weight_map = [SINGLE_FILE], None
  else:
    files, weight_map = sorted(p.name for p in folder.glob("*.safetensors")), None
    if not files:
      extra = " (PyTorch .bin checkpoints are not read; save them as safetensors)" if list(
          folder.glob("*.bin")) else ""
      raise CheckpointError(f"{folder} has no *.safetensors file{extra}")
  tensors: dict[str, st.TensorInfo] = {}
  for file in files:
    header = st.read_header(folder / file)
    for name, info in header.items():
      if name in tensors:
        raise CheckpointError(f"tensor {name!r} appears in both {tensors[name].file.name} and {file}")
      if weight_map is not None and weight_map.get(name) != file:
        raise CheckpointError(f"{file} holds {name!r} but {INDEX_FILE} places it in {weight_map.get(name)}")
      tensors[name] = info
  if weight_map is not None:
    absent = set(weight_map) - set(tensors)
    if absent:
      raise CheckpointError(f"tensors listed in {INDEX_FILE} but absent from their shards: {_listing(absent)}")
  return tensors


def _plan(cfg: ModelConfig, tensors: Mapping[str, st.TensorInfo], expected_shapes: Mapping[str, tuple]):
  """Check names and shapes of the whole checkpoint before any data is read; return the reads in file order."""
  names = weight_names(cfg)
  ignorable = {n for n in tensors if _IGNORED.match(n)}
  if cfg.tie_embeddings:
    ignorable.add(_head_name(cfg))  # tied checkpoints sometimes still carry a copy of the head
  missing = {piece_of(n)[0] for n in set(names) - set(tensors)}
  unexpected = {piece_of(n)[0] for n in set(tensors) - set(names) - ignorable}
  if missing or unexpected:
    raise CheckpointError(f"{cfg.arch} checkpoint does not match its config.json: missing tensors "
                          f"[{_listing(missing)}]; unexpected tensors [{_listing(unexpected)}]")
  wrong = []
  for hf_name, (path, transpose) in names.items():
    info = tensors[hf_name]
    want = _expected_shape(expected_shapes, path)
    want = want[::-1] if transpose else want
    if info.shape != want:
      wrong.append(f"{hf_name}: checkpoint shape {info.shape} != expected {want}")
    if not info.dtype.startswith(("F", "BF")):
      wrong.append(f"{hf_name}: {info.dtype=} is not a floating-point type")
  if wrong:
    raise CheckpointError("shape/dtype mismatch between checkpoint and config.json:\n  " + "\n  ".join(wrong))
  order = sorted(names, key=lambda n: (str(tensors[n].file), tensors[n].start))
  return [(n, *names[n]) for n in order]


ShardingSpec = Mapping[str, jax.sharding.Sharding] | Callable[[str, tuple[int, ...]], Any] | None


def _sharding_for(path: str, shape, mesh, shardings: ShardingSpec):
  if callable(shardings):
    s = shardings(path, shape)
  elif shardings is not None:
    s = shardings.get(path)
  else:
    s = None
  if s is None and mesh is not None:
    s = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec())  # replicated
  return s


def load_hf(path_or_hub_id: str | os.PathLike, *, dtype: str = "bfloat16", param_dtype: str | None = None,
            mesh: jax.sharding.Mesh | None = None, shardings: ShardingSpec = None, max_len: int | None = None,
            revision: str | None = None, token: str | bool | None = None, local_files_only: bool = False
            ) -> tuple[Transformer, HFTokenizer | None]:
  """Load a LLaDA, Dream, SDAR or Fast-dLLM v2 Hugging Face folder or hub id as (network, tokenizer or None).

  The mask id is config.json's `mask_token_id`, else the folder tokenizer's mask_token (as SDAR's generate.py
  reads it), else the architecture's known id (Fast-dLLM v2: 151665, its generation code's default).

  A hub id `org/name[@revision]` is read from the local Hugging Face cache, or downloaded into it first
  (dlm.io.hub: only the files a model needs, with progress bars; revision / token / local_files_only as
  huggingface_hub takes them, and HF_HUB_OFFLINE=1 reads the cache only).

  dtype: compute dtype; param_dtype: storage dtype of the parameters (defaults to dtype).
  max_len: override the config's length limit (see config_from_hf: Dream declares 131072 but was trained on
  2048-token sequences).
  mesh: place every parameter on this mesh as it is read, by dlm's sharding rules (dlm/parallel/rules.py); each
  process reads only the stored rows of the shards its devices hold.
  shardings: instead of the rules, {parameter path: Sharding} (stacked paths as `layers.attn.q_proj.kernel`,
  shape [n_layers, ...]) or a function (path, shape) -> Sharding | None; parameters without one are replicated
  over `mesh` when a mesh is given, else placed on the default device.
  """
  folder = resolve_model_path(path_or_hub_id, revision=revision, token=token, local_files_only=local_files_only)
  hf_cfg = read_config(folder)
  tokenizer = HFTokenizer.from_folder(folder)
  if "mask_token_id" not in hf_cfg and tokenizer is not None and tokenizer.mask_id is not None:
    hf_cfg = {**hf_cfg, "mask_token_id": tokenizer.mask_id}  # SDAR's generate.py: the tokenizer's mask_token
  cfg = config_from_hf(hf_cfg, dtype=dtype, param_dtype=param_dtype, max_len=max_len)
  if mesh is not None and shardings is None:
    from dlm.parallel.rules import loading_rule
    shardings = loading_rule(mesh, cfg)
  tensors = split_fused(cfg, checkpoint_tensors(folder))
  abstract = nnx.eval_shape(lambda: Transformer(cfg, rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  flat = {".".join(map(str, p)): (p, v) for p, v in nnx.to_flat_state(state)}
  plan = _plan(cfg, tensors, per_layer_shapes(abstract))
  reads: dict[str, list[tuple[tuple[int, ...], str, bool]]] = {}  # stacked path -> (index, tensor, transpose)
  for hf_name, path, transpose in plan:
    stacked, index = _read_index(path)
    reads.setdefault(stacked, []).append((index, hf_name, transpose))
  if set(flat) != set(reads):
    raise CheckpointError(f"internal: network parameters {_listing(set(flat) - set(reads))} have no checkpoint "
                          f"tensor")
  leaves = []
  for path, parts in reads.items():  # in the file order of each parameter's first tensor
    key, var = flat[path]
    target = np.dtype(var.get_value().dtype)
    shape = tuple(var.get_value().shape)
    sharding = _sharding_for(path, shape, mesh, shardings)
    value = _read_parameter(tensors, parts, shape, target, sharding)
    value.block_until_ready()
    if value.nbytes > st.CHUNK_BYTES:
      gc.collect(0)  # a copying device_put leaves the host buffer in a young reference cycle: free it now
    leaves.append((key, var.replace(value)))
  model = nnx.merge(graphdef, nnx.from_flat_state(leaves))
  return model, tokenizer


def _read_parameter(tensors, parts, shape, dtype, sharding) -> jax.Array:
  """One network parameter from its checkpoint tensors: parts = [(index, hf name, transpose)], index () for a
  plain parameter, (layer,) for a stacked one and (layer, expert) for an MoE layer's experts.  With a sharding,
  each device's piece is read on its own host and only the stored rows it covers
  (`jax.make_array_from_callback`), so no host reads a shard it does not hold."""
  lead = len(parts[0][0])  # leading stack axes filled one stored tensor at a time
  by_index = {index: (hf_name, transpose) for index, hf_name, transpose in parts}
  if sharding is None:
    if not lead:
      _, hf_name, transpose = parts[0]
      return jax.device_put(st.read_tensor(tensors[hf_name], dtype=dtype, transpose=transpose))
    host = st.aligned_empty(shape, dtype)
    for index, (hf_name, transpose) in by_index.items():
      host[index] = st.read_tensor(tensors[hf_name], dtype=dtype, transpose=transpose)
    return jax.device_put(host)
  cache: dict = {}
  inner_shape = shape[lead:]  # one stored tensor's shape (transposed as dlm holds it)

  def piece(index: tuple[slice, ...]) -> np.ndarray:
    index = tuple(index) + (slice(None),) * (len(shape) - len(index))
    outer = [range(*index[a].indices(shape[a])) for a in range(lead)]
    inner = index[lead:]
    out = np.empty([len(r) for r in outer] + [len(range(*s.indices(n))) for s, n in zip(inner, inner_shape)],
                   dtype)
    for pos in np.ndindex(*[len(r) for r in outer]):
      hf_name, transpose = by_index[tuple(r[p] for r, p in zip(outer, pos))]
      row_axis = len(inner_shape) - 1 if transpose else 0  # the dlm axis that runs along the stored rows
      r0, r1, _ = inner[row_axis].indices(inner_shape[row_axis]) if inner_shape else (0, 0, 1)
      k = (hf_name, r0, r1)
      if k not in cache:
        cache[k] = st.read_tensor(tensors[hf_name], dtype=dtype, transpose=transpose,
                                  rows=(r0, r1) if inner_shape else None)
      block = cache[k]
      rest = tuple(slice(None) if a == row_axis else s for a, s in enumerate(inner))
      out[pos] = block[rest] if inner_shape else block
    return out

  return jax.make_array_from_callback(shape, sharding, piece)


# -- writing --------------------------------------------------------------------------------------------------------


def move_into_place(tmp: Path, folder: Path) -> None:
  """Rename the finished folder `tmp` to `folder`; an existing `folder` is moved aside first, then deleted."""
  if folder.exists():
    old = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".old"))
    os.rmdir(old)
    os.rename(folder, old)
    os.rename(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
  else:
    os.rename(tmp, folder)


def _copy_source_files(src: Path, dst: Path) -> None:
  """Tokenizer files, generation config and remote modelling code (*.py) of the original folder."""
  for name in (*TOKENIZER_FILES, "generation_config.json"):
    if (src / name).is_file():
      shutil.copy2(src / name, dst / name)
  for py in src.glob("*.py"):
    shutil.copy2(py, dst / py.name)


def export_hf(model: Transformer, folder: str | os.PathLike, *, tokenizer_dir: str | os.PathLike | None = None,
              dtype: str | None = None, max_shard_bytes: int = 5 * 1024**3, overwrite: bool = False) -> Path:
  """Write `model` as a Hugging Face folder of its architecture (config.json + safetensors, sharded with an index
  above max_shard_bytes).  `tokenizer_dir`, typically the original model folder, contributes its tokenizer
  files, generation_config.json, modelling code (*.py) and the extra keys of its config.json (auto_map, ...).
  The folder appears complete or not at all."""
  cfg = model.cfg
  folder = Path(folder)
  if folder.exists() and not overwrite:
    raise FileExistsError(f"{folder} exists; pass overwrite=True (or choose a new folder)")
  src = Path(tokenizer_dir) if tokenizer_dir is not None else None
  base = None
  if src is not None and (src / "config.json").is_file():
    candidate = read_config(src)
    try:
      base = candidate if detect_arch(candidate) == cfg.arch else None
    except CheckpointError:
      base = None
  out_dtype = np.dtype(cfg.params_dtype if dtype is None else dtype)
  hf_config = config_to_hf(cfg, dtype=np.dtype(out_dtype).name, base=base)
  values = {".".join(map(str, p)): v for p, v in nnx.to_flat_state(nnx.state(model, nnx.Param))}
  shapes = per_layer_shapes(model)
  st_dtype = st.dtype_name(out_dtype)
  entries = []
  for hf_name, (path, transpose) in weight_names(cfg).items():
    shape = shapes[path]
    shape = shape[::-1] if transpose else shape

    def produce(path=path, transpose=transpose):
      stacked, layer = layer_path(path)
      value = values[stacked].get_value()
      host = np.asarray(jax.device_get(value if layer is None else value[layer])).astype(out_dtype)
      return host.T if transpose else host

    entries.append((hf_name, st_dtype, shape, produce))
  shards, current, size = [], [], 0
  for e in entries:
    nbytes = int(np.prod(e[2])) * out_dtype.itemsize
    if current and size + nbytes > max_shard_bytes:
      shards.append(current)
      current, size = [], 0
    current.append(e)
    size += nbytes
  shards.append(current)

  folder.parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(tempfile.mkdtemp(dir=folder.parent, prefix=f".{folder.name}.", suffix=".tmp"))
  try:
    weight_map, total = {}, 0
    for k, shard in enumerate(shards):
      name = SINGLE_FILE if len(shards) == 1 else f"model-{k + 1:05d}-of-{len(shards):05d}.safetensors"
      total += st.write_file(tmp / name, shard, {"format": "pt"})
      weight_map.update({e[0]: name for e in shard})
    if len(shards) > 1:
      (tmp / INDEX_FILE).write_text(json.dumps({"metadata": {"total_size": total}, "weight_map": weight_map},
                                               indent=2))
    if src is not None:
      _copy_source_files(src, tmp)
    (tmp / "config.json").write_text(json.dumps(hf_config, indent=2))
    move_into_place(tmp, folder)
  except BaseException:
    shutil.rmtree(tmp, ignore_errors=True)
    raise
  return folder
