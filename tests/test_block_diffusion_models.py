"""Block-diffusion models (SDAR, Fast-dLLM v2): tiny random checkpoints written in each release's Hugging Face
layout, logits parity with transformers' own Qwen3 / Qwen2 run with the same 4D block-causal mask, round trips,
the block-causal mask's invariants, and an exact block cache: a block computed against the cached keys of the
blocks before it equals the whole-sequence forward."""

from __future__ import annotations

import json
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from safetensors.numpy import save_file

from dlm.io import hf
from dlm.io.hf import CheckpointError, export_hf, load_hf
from dlm.model.config import ModelConfig, fast_dllm_v2_1_5b, sdar_1_7b, tiny_fast_dllm_v2, tiny_sdar
from dlm.model.transformer import KVCache, block_causal_mask, init_model, positions_from_valid

V, D, F, LAYERS, HEADS, KV, HEAD_DIM = 64, 32, 48, 2, 4, 2, 16


def sdar_config(**kw) -> dict:
  """The keys of SDAR-4B-Chat's config.json (a Qwen3 config plus SDAR's names), at tiny sizes."""
  cfg = {
      "architectures": ["SDARForCausalLM"], "attention_bias": False, "attention_dropout": 0.0,
      "auto_map": {"AutoConfig": "configuration_sdar.SDARConfig", "AutoModel": "modeling_sdar.SDARModel",
                   "AutoModelForCausalLM": "modeling_sdar.SDARForCausalLM"},
      "block_size": 4, "bos_token_id": V - 5, "eos_token_id": V - 5, "head_dim": HEAD_DIM, "hidden_act": "silu",
      "hidden_size": D, "initializer_range": 0.02, "intermediate_size": F, "max_position_embeddings": 64,
      "max_window_layers": 28, "model_type": "sdar", "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
      "num_key_value_heads": KV, "rms_norm_eps": 1e-6, "rope_scaling": None, "rope_theta": 1000000.0,
      "sliding_window": None, "tie_word_embeddings": False, "torch_dtype": "bfloat16", "use_cache": True,
      "use_sliding_window": False, "vocab_size": V, "mask_token_id": V - 1}
  cfg.update(kw)
  return cfg


def fast_config(**kw) -> dict:
  """The keys of Fast_dLLM_v2_1.5B's config.json (no mask id, tied head, bd_size), at tiny sizes."""
  cfg = {
      "architectures": ["Fast_dLLM_QwenForCausalLM"], "attention_dropout": 0.0,
      "auto_map": {"AutoConfig": "configuration.Fast_dLLM_QwenConfig", "AutoModel": "modeling.Fast_dLLM_QwenModel",
                   "AutoModelForCausalLM": "modeling.Fast_dLLM_QwenForCausalLM"},
      "bd_size": 8, "bos_token_id": V - 5, "eos_token_id": V - 4, "hidden_act": "silu", "hidden_size": D,
      "initializer_range": 0.02, "intermediate_size": F, "max_position_embeddings": 64, "max_window_layers": 21,
      "model_type": "Fast_dLLM_Qwen", "num_attention_heads": HEADS, "num_hidden_layers": LAYERS,
      "num_key_value_heads": KV, "pad_token_id": V - 4, "rms_norm_eps": 1e-6, "rope_scaling": None,
      "rope_theta": 1000000.0, "sliding_window": None, "tie_word_embeddings": True, "torch_dtype": "bfloat16",
      "use_cache": True, "use_sliding_window": False, "vocab_size": 151_936}
  cfg.update(kw)
  return cfg


def random_tensors(arch: str, cfg: dict, seed: int = 0) -> dict[str, np.ndarray]:
  """Weights under the release's own names, PyTorch [out, in]; O(1) logits."""
  rng = np.random.default_rng(seed)
  vocab = cfg["vocab_size"]
  dh = cfg.get("head_dim") or D // HEADS
  lin = lambda o, i: rng.normal(0, i ** -0.5, (o, i)).astype(np.float32)  # noqa: E731
  norm = lambda n=D: (1 + 0.1 * rng.normal(size=(n,))).astype(np.float32)  # noqa: E731
  t = {"model.embed_tokens.weight": rng.normal(0, 1, (vocab, D)).astype(np.float32)}
  for i in range(cfg["num_hidden_layers"]):
    p = f"model.layers.{i}."
    for n, o in (("q", HEADS * dh), ("k", KV * dh), ("v", KV * dh)):
      t[f"{p}self_attn.{n}_proj.weight"] = lin(o, D)
      if arch == "fast_dllm_v2":
        t[f"{p}self_attn.{n}_proj.bias"] = rng.normal(0, 0.3, (o,)).astype(np.float32)
    if arch == "sdar":
      t[f"{p}self_attn.q_norm.weight"] = norm(dh)
      t[f"{p}self_attn.k_norm.weight"] = norm(dh)
    t |= {p + "self_attn.o_proj.weight": lin(D, HEADS * dh), p + "mlp.gate_proj.weight": lin(F, D),
          p + "mlp.up_proj.weight": lin(F, D), p + "mlp.down_proj.weight": lin(D, F),
          p + "input_layernorm.weight": norm(), p + "post_attention_layernorm.weight": norm()}
  t["model.norm.weight"] = norm()
  if not cfg["tie_word_embeddings"]:
    t["lm_head.weight"] = lin(vocab, D)
  return t


def write_checkpoint(folder: Path, arch: str, **kw) -> tuple[dict, dict[str, np.ndarray]]:
  folder.mkdir(parents=True, exist_ok=True)
  cfg = sdar_config(**kw) if arch == "sdar" else fast_config(**kw)
  tensors = random_tensors(arch, cfg)
  (folder / "config.json").write_text(json.dumps(cfg))
  save_file(tensors, str(folder / "model.safetensors"), metadata={"format": "pt"})
  return cfg, tensors


def torch_model(arch: str, cfg: dict, tensors: dict[str, np.ndarray]):
  """transformers' Qwen3 (SDAR's body) or Qwen2 (Fast-dLLM v2's) holding the checkpoint's weights."""
  torch = pytest.importorskip("torch")
  transformers = pytest.importorskip("transformers")
  common = dict(vocab_size=cfg["vocab_size"], hidden_size=D, intermediate_size=F, num_hidden_layers=LAYERS,
                num_attention_heads=HEADS, num_key_value_heads=KV, rms_norm_eps=cfg["rms_norm_eps"],
                rope_theta=cfg["rope_theta"], max_position_embeddings=64,
                tie_word_embeddings=cfg["tie_word_embeddings"], attn_implementation="eager")
  if arch == "sdar":
    model = transformers.Qwen3ForCausalLM(transformers.Qwen3Config(head_dim=HEAD_DIM, attention_bias=False,
                                                                   **common))
  else:
    model = transformers.Qwen2ForCausalLM(transformers.Qwen2Config(**common))
  state = {k: torch.from_numpy(v) for k, v in tensors.items()}
  if cfg["tie_word_embeddings"]:
    state["lm_head.weight"] = state["model.embed_tokens.weight"]
  model.load_state_dict(state, strict=True)
  return model.eval()


def reference_logits(model, ids, valid, positions, block: int, shift: bool) -> np.ndarray:
  """The 4D block-causal mask both references build (query block >= key block, by absolute position), over the
  valid keys; Fast-dLLM v2's sampler then shifts: slot i takes output i - 1, slot 0 its own."""
  torch = pytest.importorskip("torch")
  allowed = (positions[:, None, :] // block <= positions[:, :, None] // block) & valid[:, None, :]  # [B, L, L]
  bias = torch.zeros(allowed.shape, dtype=torch.float32)
  bias.masked_fill_(~torch.from_numpy(allowed), float("-inf"))
  with torch.no_grad():
    out = model(input_ids=torch.from_numpy(ids).long(), attention_mask=bias[:, None],
                position_ids=torch.from_numpy(positions).long()).logits.numpy()
  return np.concatenate([out[:, :1], out[:, :-1]], axis=1) if shift else out


def padded_batch(vocab: int, seed: int = 1, length: int = 19, pads=(0, 3, 6)):
  rng = np.random.default_rng(seed)
  ids = rng.integers(0, V, (len(pads), length)).astype(np.int32)
  valid = np.arange(length)[None, :] >= np.array(pads)[:, None]  # [B, L] left padding
  ids[~valid] = V - 5
  return ids, valid, np.array(positions_from_valid(jnp.asarray(valid)))


def dlm_logits(model, ids, valid, positions) -> np.ndarray:
  hidden, _ = model(jnp.asarray(ids), jnp.asarray(positions), jnp.asarray(valid))
  return np.asarray(model.logits(hidden))


@pytest.mark.parametrize("arch", ["sdar", "fast_dllm_v2"])
def test_logits_match_transformers_with_the_block_causal_mask(tmp_path, arch):
  cfg, tensors = write_checkpoint(tmp_path, arch)
  model, _ = load_hf(tmp_path, dtype="float32")
  block = 4 if arch == "sdar" else 8
  assert model.cfg.attention_layout == "block_causal" and model.cfg.block_size == block
  assert model.cfg.arch == arch and model.cfg.qk_norm == (arch == "sdar")
  assert model.cfg.logit_shift == (arch == "fast_dllm_v2") and model.cfg.tie_embeddings == (arch != "sdar")
  ref = torch_model(arch, cfg, tensors)
  ids, valid, positions = padded_batch(cfg["vocab_size"])
  want = reference_logits(ref, ids, valid, positions, block, shift=model.cfg.logit_shift)
  got = dlm_logits(model, ids, valid, positions)
  assert np.abs(want).max() > 1.0
  delta = np.abs(got - want)[valid].max()
  assert delta <= 1e-4, f"{arch}: max |dlogit| = {delta}"
  # Block-causal: a change in the row's last block leaves every earlier block's outputs alone and moves its own.
  ids2 = ids.copy()
  ids2[:, -1] = (ids2[:, -1] + 1) % V
  changed = dlm_logits(model, ids2, valid, positions)
  last_block = positions[0, -1] // block * block
  first_of_last = int(np.argmax(positions[0] >= last_block))
  unshifted = first_of_last + int(model.cfg.logit_shift)  # Fast-dLLM's shift moves each block's reads one right
  assert np.abs(changed[0, :unshifted] - got[0, :unshifted]).max() == 0.0
  assert np.abs(changed[0, unshifted:-1] - got[0, unshifted:-1]).max() > 1e-3
  # Left padding is invisible: blocks count from each row's first token.
  solo = dlm_logits(model, ids[2:, 6:], valid[2:, 6:], positions[2:, 6:])
  assert np.abs(solo[0, 1:] - got[2, 7:]).max() <= 1e-4


@pytest.mark.parametrize("arch", ["sdar", "fast_dllm_v2"])
def test_export_round_trip_keeps_layout_ids_and_logits(tmp_path, arch):
  cfg, _ = write_checkpoint(tmp_path / "src", arch)
  model, _ = load_hf(tmp_path / "src", dtype="float32")
  out = export_hf(model, tmp_path / "out", tokenizer_dir=tmp_path / "src", dtype="float32")
  written = json.loads((out / "config.json").read_text())
  assert written["architectures"] == cfg["architectures"] and written["model_type"] == cfg["model_type"]
  assert written["auto_map"] == cfg["auto_map"]
  if arch == "sdar":
    assert written["block_size"] == 4 and written["mask_token_id"] == V - 1
  else:  # the release names no mask id; the default stays implicit, as there
    assert written["bd_size"] == 8 and "mask_token_id" not in written
  again, _ = load_hf(out, dtype="float32")
  assert again.cfg == model.cfg
  ids, valid, positions = padded_batch(cfg["vocab_size"], seed=3)
  np.testing.assert_array_equal(dlm_logits(again, ids, valid, positions), dlm_logits(model, ids, valid, positions))


def test_convert_both_ways_keeps_every_tensor(tmp_path):
  from safetensors.numpy import load_file
  from dlm.io import convert, params
  _, tensors = write_checkpoint(tmp_path / "hf", "sdar")
  convert.main([str(tmp_path / "hf"), str(tmp_path / "ours"), "--dtype", "float32"])
  ours = params.load_model(tmp_path / "ours")
  assert ours.cfg.arch == "sdar" and ours.cfg.block_causal and ours.cfg.qk_norm
  convert.main([str(tmp_path / "ours"), str(tmp_path / "back"), "--to-hf", "--dtype", "float32"])
  back = load_file(str(tmp_path / "back" / "model.safetensors"))
  assert back.keys() == tensors.keys() and all(np.array_equal(back[k], v) for k, v in tensors.items())


def test_special_ids_follow_each_release(tmp_path):
  cfg, _ = write_checkpoint(tmp_path / "fast", "fast_dllm_v2")
  fast, _ = load_hf(tmp_path / "fast", dtype="float32")
  assert (fast.cfg.mask_id, fast.cfg.eos_id, fast.cfg.eot_id) == (151_665, V - 4, 151_643)
  # SDAR without mask_token_id in config.json: the tokenizer's mask_token, as SDAR's generate.py reads it.
  sdar_dir = tmp_path / "sdar"
  write_checkpoint(sdar_dir, "sdar")
  raw = json.loads((sdar_dir / "config.json").read_text())
  del raw["mask_token_id"]
  (sdar_dir / "config.json").write_text(json.dumps(raw))
  from tokenizers import Tokenizer, models, pre_tokenizers
  words = ["<unk>", "hello", "<|endoftext|>", "<|MASK|>"]
  tok = Tokenizer(models.WordLevel({w: i for i, w in enumerate(words)}, unk_token="<unk>"))
  tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
  tok.add_special_tokens(words[2:])
  tok.save(str(sdar_dir / "tokenizer.json"))
  (sdar_dir / "tokenizer_config.json").write_text(json.dumps({"eos_token": "<|endoftext|>",
                                                                 "mask_token": "<|MASK|>"}))
  sdar, tokenizer = load_hf(sdar_dir, dtype="float32")
  assert sdar.cfg.mask_id == 3 == tokenizer.mask_id
  del raw["block_size"]  # SDAR's README default when the config names none
  assert hf.config_from_hf({**raw, "mask_token_id": 3}).block_size == 4


@pytest.mark.parametrize("change,message", [
    (dict(attention_bias=True), "attention_bias"),
    (dict(use_sliding_window=True), "use_sliding_window"),
    (dict(rope_scaling={"type": "yarn"}), "rope_scaling"),
])
def test_unsupported_sdar_configs_fail_in_one_line(change, message):
  with pytest.raises(CheckpointError, match=message) as err:
    hf.config_from_hf(sdar_config(**change))
  assert "\n" not in str(err.value)


def test_config_checks_and_presets():
  with pytest.raises(ValueError, match="block_size"):
    tiny_sdar(block_size=0)
  with pytest.raises(ValueError, match="attention_layout"):
    tiny_sdar(attention_layout="sliding")
  with pytest.raises(ValueError, match="block_size"):
    ModelConfig.from_dict({**tiny_sdar().to_dict(), "attention_layout": "bidirectional"})
  with pytest.raises(ValueError, match="exclude"):
    tiny_sdar(causal=True)
  with pytest.raises(CheckpointError, match="needs"):
    hf.config_to_hf(tiny_sdar(qk_norm=False))
  with pytest.raises(CheckpointError, match="bidirectional"):
    hf.config_to_hf(tiny_sdar(arch="llada", qk_norm=False, head_dim=None))
  # The release shapes read back from the config.json each writes.
  for preset in (sdar_1_7b(), fast_dllm_v2_1_5b()):
    assert hf.config_from_hf(hf.config_to_hf(preset)) == preset


def test_block_causal_mask_counts_blocks_from_each_rows_first_token():
  valid = jnp.asarray([[True] * 8, [False, False] + [True] * 6])
  positions = positions_from_valid(valid)
  mask = np.asarray(block_causal_mask(positions, valid, cached=False, block_size=4))  # [B, L, L]
  want0 = np.arange(8)[None, :] // 4 <= np.arange(8)[:, None] // 4
  np.testing.assert_array_equal(mask[0], want0)
  np.testing.assert_array_equal(mask[1][2:, 2:], want0[:6, :6])
  # The cached form reads the keys' positions from their validity: the same pattern.
  np.testing.assert_array_equal(np.asarray(block_causal_mask(positions, valid, cached=True, block_size=4)), mask)


@pytest.mark.parametrize("preset", [tiny_sdar, tiny_fast_dllm_v2])
def test_a_block_against_the_cache_of_earlier_blocks_equals_the_full_forward(preset):
  """The exact block cache: the keys/values of finished blocks, computed once, give the later blocks exactly what
  a forward over the whole sequence gives them (no approximation, unlike a bidirectional model's cache)."""
  cfg = preset(dtype="float32")
  net = init_model(cfg, seed=3)
  bs, length = cfg.block_size, 3 * cfg.block_size + 2  # the last block is partial (a prompt tail)
  ids = jax.random.randint(jax.random.key(0), (2, length), 3, cfg.vocab_size)
  valid = jnp.ones((2, length), bool).at[1, :bs].set(False)  # row 1: one block of left padding
  positions = positions_from_valid(valid)
  full, kv = net(ids, positions, valid)
  # Write the first blocks' keys in one forward (a prefill), then run the rest against them.
  start = 2 * bs  # a block boundary of both rows
  empty = KVCache(keys=jnp.zeros_like(kv.keys), values=jnp.zeros_like(kv.values))
  _, cache = net(ids[:, :start], positions[:, :start], valid, cache=empty, window_start=0)
  window, _ = net(ids[:, start:], positions[:, start:], valid, cache=cache, window_start=start)
  np.testing.assert_allclose(np.asarray(window), np.asarray(full[:, start:]), atol=2e-5)
