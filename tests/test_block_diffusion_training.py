"""The block-diffusion training objective (dlm/train/loss.py): its mask against a plain loop, its noisy-copy outputs
against the block-causal network's own forward, and the recipe's checks."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.model.config import ModelConfig
from dlm.model.transformer import init_model, positions_from_valid
from dlm.train.loop import TrainConfig
from dlm.train.loss import block_diffusion_attention, block_diffusion_loss, mask_answer

CFG = ModelConfig(vocab_size=24, d_model=32, n_layers=2, n_heads=4, mlp_hidden=64, max_len=64, mask_id=1, eos_id=2,
                  attention_layout="block_causal", block_size=4, dtype="float32", param_dtype="float32")


def _mask_loop(seq_valid, bs):
  """The BD3-LM/SDAR mask written slot by slot: [clean sequence | noisy sequence]."""
  b, n = seq_valid.shape
  out = np.zeros((b, 2 * n, 2 * n), bool)
  for r in range(b):
    pos, k = [], 0
    for j in range(n):
      pos.append(k if seq_valid[r, j] else 0)
      k += bool(seq_valid[r, j])
    for q in range(2 * n):
      qb = pos[q % n] // bs
      for key in range(2 * n):
        kb = pos[key % n] // bs
        if not seq_valid[r, key % n]:
          continue
        if q < n:
          out[r, q, key] = key < n and kb <= qb
        else:
          out[r, q, key] = kb < qb if key < n else kb == qb
  return out


def test_mask_equals_a_slot_by_slot_loop():
  rng = np.random.default_rng(0)
  for p, g, bs in [(5, 7, 4), (3, 8, 2), (6, 5, 3)]:
    valid = np.ones((3, p + g), bool)
    valid[1, :2] = False
    valid[2, :rng.integers(0, p)] = False
    mask, _ = block_diffusion_attention(jnp.asarray(valid), bs)
    np.testing.assert_array_equal(np.asarray(mask), _mask_loop(valid, bs))


def test_noisy_copy_equals_the_block_causal_forward_of_each_block():
  """The training pass scores block k exactly as inference sees it: the clean prompt and earlier blocks, block k
  noisy, later blocks anything (the block-causal network cannot see them)."""
  net = init_model(CFG, seed=1)
  rng = np.random.default_rng(2)
  b, p, g = 2, 5, 10
  prompts = jnp.asarray(rng.integers(3, 24, (b, p)), jnp.int32)
  valid = jnp.asarray(np.array([[True] * p, [False, False] + [True] * (p - 2)]))
  answers = jnp.asarray(rng.integers(3, 24, (b, g)), jnp.int32)
  noisy, masked, _ = mask_answer(jax.random.key(3), answers, CFG.mask_id)
  seq_valid = jnp.concatenate([valid, jnp.ones((b, g), bool)], axis=1)
  mask, positions = block_diffusion_attention(seq_valid, CFG.block_size)
  hidden, _ = net(jnp.concatenate([prompts, answers, prompts, noisy], axis=1), positions, mask)
  train_logits = np.asarray(net.logits(hidden[:, -g:]))  # [B, G, V]
  pos = positions_from_valid(seq_valid)
  answer_block = np.asarray(pos[:, p:] // CFG.block_size)  # [B, G]
  for r in range(b):
    for blk in np.unique(answer_block[r]):
      in_blk = answer_block[r] == blk
      canvas = np.where(answer_block[r] < blk, answers[r], np.where(in_blk, noisy[r], CFG.mask_id))
      tokens = jnp.concatenate([prompts[r:r + 1], jnp.asarray(canvas)[None]], axis=1)
      h, _ = net(tokens, pos[r:r + 1], seq_valid[r:r + 1])
      ref = np.asarray(net.logits(h))[0, p:]
      np.testing.assert_allclose(train_logits[r, in_blk], ref[in_blk], atol=2e-5, rtol=1e-5)


def test_loss_is_finite_and_refuses_a_bidirectional_network():
  net = init_model(CFG, seed=0)
  prompts = jnp.full((2, 3), 5, jnp.int32)
  loss, metrics = block_diffusion_loss(net, jax.random.key(0), prompts, jnp.ones((2, 3), bool),
                                       jnp.full((2, 6), 7, jnp.int32))
  assert np.isfinite(float(loss)) and np.isfinite(float(metrics["ce"]))
  with pytest.raises(ValueError, match="block-causal network"):
    block_diffusion_loss(init_model(dataclasses.replace(CFG, attention_layout="bidirectional", block_size=None)),
                         jax.random.key(0), prompts, jnp.ones((2, 3), bool), jnp.full((2, 6), 7, jnp.int32))


def test_recipe_checks_objective_layout_and_init_from():
  base = dict(model=dict(d_model=32, n_layers=1, n_heads=2, mlp_hidden=32, max_len=64), tasks={"add": {}})
  with pytest.raises(ValueError, match="attention_layout=block_causal"):
    TrainConfig(**base, objective="block_diffusion")
  with pytest.raises(ValueError, match="attention_layout=bidirectional"):
    TrainConfig(**{**base, "model": {**base["model"], "attention_layout": "block_causal", "block_size": 4}})
  with pytest.raises(ValueError, match="init_from='/no/such/folder'"):
    TrainConfig(**base, init_from="/no/such/folder")
  TrainConfig.from_yaml("configs/testbed_bd.yaml")  # the shipped recipe is valid
