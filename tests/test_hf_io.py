"""Hugging Face import/export: tiny random checkpoints in the exact LLaDA and Dream layouts, logits parity with
transformers' Llama/Qwen2 (full attention), round trips, the tokenizer and chat template, and clear failures."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path

import jax.numpy as jnp
import ml_dtypes
import numpy as np
import pytest
from flax import nnx
from safetensors.numpy import load_file, save_file

from dlm.io import convert, hf, params
from dlm.io.hf import CheckpointError, export_hf, load_hf
from dlm.io.safetensors_stream import SafetensorsFormatError
from dlm.io.tokenizer import ChatTemplateError, HFTokenizer
from dlm.model.config import dream_7b, llada_8b, tiny_dream, tiny_llada
from dlm.model.transformer import init_model, positions_from_valid

V, D, F, LAYERS, HEADS = 64, 32, 48, 2, 4
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + "
    "message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 "
    "%}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")
SPECIALS = ["<|startoftext|>", "<|endoftext|>", "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>",
            "<|mdm_mask|>"]


def llada_config(**kw) -> dict:
  """The keys of LLaDA-8B's config.json, at tiny sizes."""
  cfg = {
      "activation_type": "silu", "alibi": False, "alibi_bias_max": 8.0, "architectures": ["LLaDAModelLM"],
      "attention_dropout": 0.0, "attention_layer_norm": False, "attention_layer_norm_with_affine": True,
      "auto_map": {"AutoConfig": "configuration_llada.LLaDAConfig",
                   "AutoModel": "modeling_llada.LLaDAModelLM"},
      "bias_for_layer_norm": False, "block_group_size": 1, "block_type": "llama", "d_model": D,
      "embedding_dropout": 0.0, "embedding_size": V, "eos_token_id": V - 5, "flash_attention": False,
      "include_bias": False, "include_qkv_bias": False, "init_device": "meta", "init_fn": "mitchell",
      "init_std": 0.02, "input_emb_norm": False, "layer_norm_type": "rms", "layer_norm_with_affine": True,
      "mask_token_id": V - 1, "max_sequence_length": 64, "mlp_hidden_size": F, "mlp_ratio": 4,
      "model_type": "llada", "multi_query_attention": None, "n_heads": HEADS, "n_kv_heads": HEADS,
      "n_layers": LAYERS, "pad_token_id": V - 5, "precision": "amp_bf16", "residual_dropout": 0.0,
      "rms_norm_eps": 1e-5, "rope": True, "rope_full_precision": True, "rope_theta": 500000.0,
      "scale_logits": False, "use_cache": False, "vocab_size": V, "weight_tying": False}
  cfg.update(kw)
  return cfg


def dream_config(**kw) -> dict:
  """The keys of Dream-v0-7B's config.json, at tiny sizes."""
  cfg = {
      "architectures": ["DreamModel"], "attention_dropout": 0.0,
      "auto_map": {"AutoConfig": "configuration_dream.DreamConfig", "AutoModel": "modeling_dream.DreamModel"},
      "bos_token_id": V - 3, "eos_token_id": V - 3, "hidden_act": "silu", "hidden_size": D,
      "initializer_range": 0.02, "intermediate_size": F, "mask_token_id": V - 1, "max_position_embeddings": 64,
      "max_window_layers": 28, "model_type": "Dream", "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
      "num_key_value_heads": 2, "pad_token_id": V - 3, "rms_norm_eps": 1e-6, "rope_scaling": None,
      "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16",
      "use_cache": False, "use_sliding_window": False, "vocab_size": V}
  cfg.update(kw)
  return cfg


def random_tensors(arch: str, cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Weights under the checkpoint's own names, PyTorch [out, in] layout; O(1) logits."""
  rng = np.random.default_rng(seed)
  lin = lambda o, i: rng.normal(0, i ** -0.5, (o, i)).astype(np.float32)  # noqa: E731
  norm = lambda: (1 + 0.1 * rng.normal(size=(D,))).astype(np.float32)  # noqa: E731
  t = {}
  if arch == "llada":
    kv = cfg["n_kv_heads"] * (D // HEADS)
    t["model.transformer.wte.weight"] = rng.normal(0, 1, (V, D)).astype(np.float32)
    for i in range(cfg["n_layers"]):
      p = f"model.transformer.blocks.{i}."
      t |= {p + "q_proj.weight": lin(D, D), p + "k_proj.weight": lin(kv, D), p + "v_proj.weight": lin(kv, D),
            p + "attn_out.weight": lin(D, D), p + "ff_proj.weight": lin(F, D), p + "up_proj.weight": lin(F, D),
            p + "ff_out.weight": lin(D, F), p + "attn_norm.weight": norm(), p + "ff_norm.weight": norm()}
    t["model.transformer.ln_f.weight"] = norm()
    t["model.transformer.ff_out.weight"] = lin(V, D)
  else:
    kv = cfg["num_key_value_heads"] * (D // HEADS)
    t["model.embed_tokens.weight"] = rng.normal(0, 1, (V, D)).astype(np.float32)
    for i in range(cfg["num_hidden_layers"]):
      p = f"model.layers.{i}."
      for n, o in (("q", D), ("k", kv), ("v", kv)):
        t[f"{p}self_attn.{n}_proj.weight"] = lin(o, D)
        t[f"{p}self_attn.{n}_proj.bias"] = rng.normal(0, 0.3, (o,)).astype(np.float32)
      t |= {p + "self_attn.o_proj.weight": lin(D, D), p + "mlp.gate_proj.weight": lin(F, D),
            p + "mlp.up_proj.weight": lin(F, D), p + "mlp.down_proj.weight": lin(D, F),
            p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm()}
    t["model.norm.weight"] = norm()
    t["lm_head.weight"] = lin(V, D)
  return t


def write_tokenizer(folder: Path) -> None:
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = ["<unk>", *SPECIALS, "system", "user", "assistant", "hello", "world", "what", "is", "2+2", "?"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(SPECIALS)
  tok.save(str(folder / "tokenizer.json"))
  (folder / "tokenizer_config.json").write_text(json.dumps({
      "tokenizer_class": "PreTrainedTokenizerFast", "bos_token": "<|startoftext|>",
      "eos_token": {"content": "<|endoftext|>", "special": True, "__type": "AddedToken"},
      "pad_token": "<|endoftext|>", "unk_token": "<unk>", "chat_template": LLAMA3_TEMPLATE}))


def write_checkpoint(folder: Path, arch: str, *, shards: int = 1, dtype=np.float32, seed: int = 0,
                     tokenizer: bool = False, **cfg_kw) -> dict[str, np.ndarray]:
  folder.mkdir(parents=True, exist_ok=True)
  cfg = llada_config(**cfg_kw) if arch == "llada" else dream_config(**cfg_kw)
  tensors = {k: v.astype(dtype) for k, v in random_tensors(arch, cfg, seed).items()}
  (folder / "config.json").write_text(json.dumps(cfg))
  names = list(tensors)
  if shards == 1:
    save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
  else:
    weight_map = {}
    for k, part in enumerate(np.array_split(np.arange(len(names)), shards)):
      file = f"model-{k + 1:05d}-of-{shards:05d}.safetensors"
      save_file({names[j]: tensors[names[j]] for j in part}, str(folder / file), metadata={"format": "pt"})
      weight_map |= {names[j]: file for j in part}
    (folder / "model.safetensors.index.json").write_text(json.dumps({"metadata": {}, "weight_map": weight_map}))
  if tokenizer:
    write_tokenizer(folder)
  return tensors


def padded_batch(seed: int = 1, b: int = 3, length: int = 10, pads=(0, 3, 6)):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, V, (b, length)).astype(np.int32)
  valid = np.arange(length)[None, :] >= np.array(pads)[:, None]  # [B, L] left padding
  ids[~valid] = V - 5
  return ids, valid, np.array(positions_from_valid(jnp.asarray(valid)))


def dlm_logits(folder: Path, ids, valid, positions) -> np.ndarray:
  model, _ = load_hf(folder, dtype="float32")
  hidden, _ = model(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(valid))
  return np.asarray(model.logits(hidden))  # [B, L, V]


def torch_model(arch: str, cfg: dict, tensors: dict[str, np.ndarray]):
  """transformers' Llama (for LLaDA) or Qwen2 (for Dream) holding the checkpoint's weights, in eval mode.

  Run it with a full (bidirectional) additive attention mask over the valid keys: see torch_reference."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  if arch == "llada":  # LLaDA is a bidirectional Llama under OLMo names
    ref_cfg = transformers.LlamaConfig(
        vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=cfg["n_layers"],
        num_attention_heads=HEADS, num_key_value_heads=cfg["n_kv_heads"], rms_norm_eps=cfg["rms_norm_eps"],
        rope_theta=cfg["rope_theta"], max_position_embeddings=64, tie_word_embeddings=False,
        attn_implementation="eager")
    model = transformers.LlamaForCausalLM(ref_cfg)
    names = {"model.transformer.wte.weight": "model.embed_tokens.weight",
             "model.transformer.ln_f.weight": "model.norm.weight",
             "model.transformer.ff_out.weight": "lm_head.weight"}
    per_layer = {"q_proj": "self_attn.q_proj", "k_proj": "self_attn.k_proj", "v_proj": "self_attn.v_proj",
                 "attn_out": "self_attn.o_proj", "ff_proj": "mlp.gate_proj", "up_proj": "mlp.up_proj",
                 "ff_out": "mlp.down_proj", "attn_norm": "input_layernorm", "ff_norm": "post_attention_layernorm"}
    for i in range(cfg["n_layers"]):
      names |= {f"model.transformer.blocks.{i}.{a}.weight": f"model.layers.{i}.{b}.weight"
                for a, b in per_layer.items()}
  else:  # Dream's names are Qwen2's
    ref_cfg = transformers.Qwen2Config(
        vocab_size=V, hidden_size=D, intermediate_size=F, num_hidden_layers=cfg["num_hidden_layers"],
        num_attention_heads=HEADS, num_key_value_heads=cfg["num_key_value_heads"],
        rms_norm_eps=cfg["rms_norm_eps"], rope_theta=cfg["rope_theta"], max_position_embeddings=64,
        tie_word_embeddings=False, attn_implementation="eager")
    model = transformers.Qwen2ForCausalLM(ref_cfg)
    names = {k: k for k in tensors}
  model.load_state_dict({names[k]: torch.from_numpy(v) for k, v in tensors.items()}, strict=True)
  return model.eval()


def torch_reference(arch: str, cfg: dict, tensors: dict[str, np.ndarray]):
  torch = pytest.importorskip("torch")
  model = torch_model(arch, cfg, tensors)

  def run(ids, valid, positions):
    bias = torch.zeros(ids.shape[0], 1, ids.shape[1], ids.shape[1])  # [B, 1, Lq, Lk]: full attention over keys
    bias.masked_fill_(~torch.from_numpy(valid)[:, None, None, :], float("-inf"))
    with torch.no_grad():
      out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=bias,
                  position_ids=torch.from_numpy(positions).long()).logits.numpy()
    if arch == "dream":  # Dream's generation code: slot i takes output i-1, slot 0 keeps its own
      out = np.concatenate([out[:, :1], out[:, :-1]], axis=1)
    return out

  return run


@pytest.mark.parametrize("arch,shards", [("llada", 3), ("dream", 1)])
def test_logits_match_transformers(tmp_path, arch, shards):
  tensors = write_checkpoint(tmp_path, arch, shards=shards)
  cfg = json.loads((tmp_path / "config.json").read_text())
  ref = torch_reference(arch, cfg, tensors)
  ids, valid, positions = padded_batch()
  want = ref(ids, valid, positions)
  got = dlm_logits(tmp_path, ids, valid, positions)
  assert got.shape == want.shape == (*ids.shape, V)
  assert np.abs(want).max() > 1.0  # non-trivial logits
  delta = np.abs(got - want)[valid].max()
  assert delta <= 1e-4, f"{arch}: max |dlogit| = {delta}"
  # The reference is bidirectional: changing the last token moves the first valid position's logits.
  ids2 = ids.copy()
  ids2[:, -1] = (ids2[:, -1] + 1) % V
  assert np.abs(ref(ids2, valid, positions)[0, 1] - want[0, 1]).max() > 1e-3
  # Left padding is invisible: the padded row equals the same tokens unpadded.
  solo = dlm_logits(tmp_path, ids[2:, 6:], valid[2:, 6:], positions[2:, 6:])
  assert np.abs(solo[0, 1:] - got[2, 7:]).max() <= 1e-4


def test_bf16_default_and_export_roundtrip(tmp_path):
  src = tmp_path / "src"
  tensors = write_checkpoint(src, "dream", dtype=ml_dtypes.bfloat16, tokenizer=True)
  (src / "modeling_dream.py").write_text("# remote code stand-in\n")
  model, tok = load_hf(src)
  assert model.cfg.dtype == model.cfg.param_dtype == "bfloat16"
  assert model.layers.attn.q_proj.kernel[...][0].dtype == jnp.bfloat16
  np.testing.assert_array_equal(np.asarray(model.layers.attn.q_proj.kernel[...][0]),
                                tensors["model.layers.0.self_attn.q_proj.weight"].T)
  assert tok is not None and model.cfg.mask_id == V - 1 and model.cfg.eos_id == V - 3
  out = export_hf(model, tmp_path / "out", tokenizer_dir=src)
  back = load_file(str(out / "model.safetensors"))
  assert back.keys() == tensors.keys()
  for k, v in tensors.items():
    assert back[k].dtype == v.dtype and np.array_equal(back[k], v), k
  written = json.loads((out / "config.json").read_text())
  assert written["auto_map"] == dream_config()["auto_map"] and written["architectures"] == ["DreamModel"]
  for name in ("tokenizer.json", "tokenizer_config.json", "modeling_dream.py"):
    assert (out / name).is_file()
  assert load_hf(out)[0].cfg == model.cfg


@pytest.mark.parametrize("preset", [tiny_llada, tiny_dream])
def test_trained_here_exports_and_reloads_sharded(tmp_path, preset):
  model = init_model(preset(), seed=3)
  out = export_hf(model, tmp_path / "hf", max_shard_bytes=20_000)
  assert (out / "model.safetensors.index.json").is_file() and len(list(out.glob("*.safetensors"))) > 1
  again, tok = load_hf(out, dtype="float32")
  assert tok is None and again.cfg == model.cfg
  a = nnx.to_flat_state(nnx.state(model, nnx.Param))
  b = dict(nnx.to_flat_state(nnx.state(again, nnx.Param)))
  for path, var in a:
    np.testing.assert_array_equal(np.asarray(var[...]), np.asarray(b[path][...]))


def test_sharded_equals_single_file(tmp_path):
  write_checkpoint(tmp_path / "one", "llada")
  write_checkpoint(tmp_path / "many", "llada", shards=4)
  ids, valid, positions = padded_batch()
  np.testing.assert_array_equal(dlm_logits(tmp_path / "one", ids, valid, positions),
                                dlm_logits(tmp_path / "many", ids, valid, positions))


def test_tokenizer_and_chat_template(tmp_path):
  write_tokenizer(tmp_path)
  tok = HFTokenizer.from_folder(tmp_path)
  assert tok.bos_id == 1 and tok.eos_id == 2 and tok.pad_id == 2
  assert tok.decode(tok.encode("hello world")) == "hello world"
  messages = [{"role": "system", "content": "hello"}, {"role": "user", "content": " what is 2+2 ? "}]
  text = tok.apply_chat_template(messages, tokenize=False)
  assert text == ("<|startoftext|><|start_header_id|>system<|end_header_id|>\n\nhello<|eot_id|>"
                  "<|start_header_id|>user<|end_header_id|>\n\nwhat is 2+2 ?<|eot_id|>"
                  "<|start_header_id|>assistant<|end_header_id|>\n\n")
  ids = tok.apply_chat_template(messages)
  assert ids[0] == tok.bos_id and tok.token_to_id("<unk>") not in ids
  with pytest.raises(ChatTemplateError, match="roles must alternate"):
    tok.render_chat(messages, chat_template="{% if messages[0].role != 'user' %}"
                    "{{ raise_exception('roles must alternate') }}{% endif %}")
  transformers = pytest.importorskip("transformers")
  ref = transformers.AutoTokenizer.from_pretrained(str(tmp_path))
  assert ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=False) == text
  ref_ids = ref.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
  assert list(getattr(ref_ids, "input_ids", ref_ids)) == ids


def test_convert_cli_both_ways(tmp_path):
  src = tmp_path / "hf"
  tensors = write_checkpoint(src, "llada", tokenizer=True)
  parser = argparse.ArgumentParser()
  convert.add_arguments(parser)
  convert.run(parser.parse_args([str(src), str(tmp_path / "ours"), "--dtype", "float32"]))
  ours = params.load_model(tmp_path / "ours")
  assert ours.cfg.arch == "llada" and (tmp_path / "ours" / "tokenizer.json").is_file()
  convert.main([str(tmp_path / "ours"), str(tmp_path / "back"), "--to-hf", "--dtype", "float32"])
  back = load_file(str(tmp_path / "back" / "model.safetensors"))
  assert back.keys() == tensors.keys() and all(np.array_equal(back[k], v) for k, v in tensors.items())


def test_dlm_load_dispatches_on_folder_kind(tmp_path):
  import dlm
  write_checkpoint(tmp_path / "hf", "dream", tokenizer=True)
  convert.main([str(tmp_path / "hf"), str(tmp_path / "ours"), "--dtype", "float32"])
  from_hf, tok_hf = dlm.load(tmp_path / "hf", dtype="float32", max_len=32)
  ours, tok_ours = dlm.load(str(tmp_path / "ours"))
  assert from_hf.cfg.max_len == 32 and ours.cfg == from_hf.cfg.replace(max_len=64)
  assert tok_hf.encode("hello world") == tok_ours.encode("hello world")
  np.testing.assert_array_equal(np.asarray(ours.layers.mlp.up_proj.kernel[...][1]),
                                np.asarray(from_hf.layers.mlp.up_proj.kernel[...][1]))
  params.save_model(init_model(tiny_llada()), tmp_path / "bare")  # what `dlm train` writes: no tokenizer
  bare, tok = dlm.load(tmp_path / "bare", dtype="bfloat16")
  assert tok is None and bare.cfg.dtype == "bfloat16"
  with pytest.raises(FileNotFoundError, match="does not exist"):
    dlm.load(tmp_path / "nowhere")


def test_imports_stay_light():
  code = ("import sys, dlm, dlm.io, dlm.io.tokenizer, dlm.io.safetensors_stream\n"
          "assert 'jax' not in sys.modules, 'jax imported too early'\n"
          "from dlm.io import HFTokenizer, load_hf, load_model, save_model, export_hf, convert\n"
          "assert 'jax' in sys.modules and callable(load_hf) and callable(convert.main)\n"
          "import dlm.io as io; assert set(io.__all__) <= set(dir(io))\n"
          "print('ok')")
  out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-3000:]


def test_hub_id_resolves_through_cache_and_fails_fast(tmp_path, monkeypatch):
  monkeypatch.setenv("HF_HOME", str(tmp_path / "hf_home"))
  monkeypatch.setenv("HF_HUB_OFFLINE", "1")  # downloads: tests/test_hub.py, against a loopback hub
  for var in ("HF_HUB_CACHE", "HUGGINGFACE_HUB_CACHE"):
    monkeypatch.delenv(var, raising=False)
  with pytest.raises(FileNotFoundError, match="HF_HUB_OFFLINE is set.*hf download GSAI-ML/LLaDA-8B-Instruct"):
    load_hf("GSAI-ML/LLaDA-8B-Instruct")
  repo = tmp_path / "hf_home" / "hub" / "models--GSAI-ML--LLaDA-8B-Instruct"
  write_checkpoint(repo / "snapshots" / "abc123", "llada")
  (repo / "refs").mkdir()
  (repo / "refs" / "main").write_text("abc123")
  assert hf.resolve_model_path("GSAI-ML/LLaDA-8B-Instruct") == repo / "snapshots" / "abc123"
  assert load_hf("GSAI-ML/LLaDA-8B-Instruct", dtype="float32")[0].cfg.mask_id == V - 1


def test_real_configs_match_presets():
  """config.json of LLaDA-8B (ids absent from it come from the known defaults) and of Dream-v0-7B."""
  llada = llada_config(d_model=4096, n_heads=32, n_kv_heads=32, n_layers=32, mlp_hidden_size=12288,
                       embedding_size=126464, vocab_size=126464, max_sequence_length=4096, eos_token_id=126081,
                       pad_token_id=126081)
  del llada["mask_token_id"]
  assert hf.config_from_hf(llada) == llada_8b()
  dream = dream_config(hidden_size=3584, num_attention_heads=28, num_key_value_heads=4, num_hidden_layers=28,
                       intermediate_size=18944, vocab_size=152064, max_position_embeddings=131072,
                       bos_token_id=151643, eos_token_id=151643, pad_token_id=151643, mask_token_id=151666)
  assert hf.config_from_hf(dream) == dream_7b(max_len=131072)  # Qwen2.5's limit, kept (see config_from_hf)
  assert hf.config_from_hf(dream, max_len=2048) == dream_7b()  # Dream's training context, on request
  for cfg in (llada_8b(), dream_7b()):
    assert hf.config_from_hf(hf.config_to_hf(cfg)) == cfg


def _no_leftovers(parent: Path, *allowed: str):
  assert sorted(os.listdir(parent)) == sorted(allowed)


def test_truncated_and_corrupt_files(tmp_path):
  write_checkpoint(tmp_path / "ckpt", "dream")
  path = tmp_path / "ckpt" / "model.safetensors"
  data = path.read_bytes()
  path.write_bytes(data[:-100])
  with pytest.raises(SafetensorsFormatError, match="truncated or corrupt"):
    load_hf(tmp_path / "ckpt")
  path.write_bytes(data[:8] + b"\x00garbage" + data[16:])
  with pytest.raises(SafetensorsFormatError, match="model.safetensors"):
    load_hf(tmp_path / "ckpt")
  # A failed conversion leaves no output behind.
  with pytest.raises(SafetensorsFormatError):
    convert.main([str(tmp_path / "ckpt"), str(tmp_path / "out")])
  _no_leftovers(tmp_path, "ckpt")


def test_missing_shard(tmp_path):
  write_checkpoint(tmp_path, "llada", shards=3)
  (tmp_path / "model-00002-of-00003.safetensors").unlink()
  with pytest.raises(CheckpointError, match=r"model-00002-of-00003.safetensors.*missing"):
    load_hf(tmp_path)


@pytest.mark.parametrize("change,message", [
    ({"n_layers": 3}, r"missing tensors \[model.transformer.blocks.2.attn_norm.weight"),
    ({"mlp_hidden_size": F + 8}, r"ff_proj.weight: checkpoint shape \(48, 32\) != expected \(56, 32\)"),
    ({"architectures": ["GPT2LMHeadModel"], "model_type": "gpt2"}, "unsupported architecture"),
    ({"d_model": None}, "lacks 'd_model'"),
    ({"layer_norm_type": "default"}, "only 'rms'"),
    ({"mask_token_id": 126336}, r"mask_token_id=126336 does not fit the vocabulary"),
])
def test_wrong_config(tmp_path, change, message):
  write_checkpoint(tmp_path, "llada")
  cfg = json.loads((tmp_path / "config.json").read_text())
  (tmp_path / "config.json").write_text(json.dumps({**cfg, **change}))
  with pytest.raises(CheckpointError, match=message):
    load_hf(tmp_path)


def test_tied_config_ignores_a_head_copy(tmp_path):
  write_checkpoint(tmp_path, "llada", weight_tying=True)
  model, _ = load_hf(tmp_path, dtype="float32")
  assert model.cfg.tie_embeddings and not hasattr(model, "head")


def test_unexpected_tensor_and_bad_json(tmp_path):
  tensors = write_checkpoint(tmp_path, "dream")
  save_file({**tensors, "model.layers.0.mlp.extra.weight": np.zeros((2, 2), np.float32)},
            str(tmp_path / "model.safetensors"))
  with pytest.raises(CheckpointError, match=r"unexpected tensors \[model.layers.0.mlp.extra.weight\]"):
    load_hf(tmp_path)
  (tmp_path / "config.json").write_text("{not json")
  with pytest.raises(CheckpointError, match="not valid JSON"):
    load_hf(tmp_path)


def test_failed_export_leaves_nothing(tmp_path, monkeypatch):
  model = init_model(tiny_llada())
  real = hf.st.write_file

  def failing(path, entries, metadata=None):
    real(path, entries, metadata)
    raise OSError("disk full")

  monkeypatch.setattr(hf.st, "write_file", failing)
  with pytest.raises(OSError, match="disk full"):
    export_hf(model, tmp_path / "out")
  _no_leftovers(tmp_path)
  with pytest.raises(FileExistsError):
    export_hf(model, tmp_path)


_SHARDED_LOAD = """
import sys, jax, numpy as np, jax.numpy as jnp
from jax.sharding import NamedSharding, PartitionSpec as P
from dlm.io.hf import load_hf
from dlm.model.transformer import positions_from_valid
assert jax.device_count() == 2, jax.devices()
mesh = jax.make_mesh((2,), ("tensor",), axis_types=(jax.sharding.AxisType.Auto,))
rule = lambda path, shape: (NamedSharding(mesh, P(None, None, "tensor")) if path.startswith("layers.")  # [n, in, out]
                           and path.endswith("kernel") else NamedSharding(mesh, P("tensor")) if path == "head.kernel"
                           else None)
sharded, _ = load_hf(sys.argv[1], dtype="float32", mesh=mesh, shardings=rule)
plain, _ = load_hf(sys.argv[1], dtype="float32")
q = sharded.layers.attn.q_proj.kernel[...]
assert q.sharding.spec == P(None, None, "tensor") and len(q.addressable_shards) == 2, q.sharding
assert sharded.head.kernel[...].sharding.spec == P("tensor")  # row bands of a transposed tensor
assert sharded.final_norm.scale[...].sharding.spec == P(), "unlisted parameters are replicated over the mesh"
ids = jnp.arange(12, dtype=jnp.int32).reshape(2, 6)
valid = jnp.ones((2, 6), bool)
outs = [np.asarray(m.logits(m(ids, positions_from_valid(valid), valid)[0])) for m in (sharded, plain)]
assert np.abs(outs[0] - outs[1]).max() < 1e-5
print("ok")
"""


def test_load_onto_a_mesh(tmp_path):
  write_checkpoint(tmp_path, "dream")
  env = dict(os.environ, JAX_PLATFORMS="cpu", XLA_FLAGS="--xla_force_host_platform_device_count=2")
  out = subprocess.run([sys.executable, "-c", _SHARDED_LOAD, str(tmp_path)], env=env, capture_output=True,
                       text=True, timeout=120)
  assert out.returncode == 0 and out.stdout.strip().endswith("ok"), out.stderr[-3000:]
