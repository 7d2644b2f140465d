"""Masked-diffusion training loss (MDLM/LLaDA form)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from dlm.model.transformer import Transformer, positions_from_valid


def mask_answer(key, answers, mask_id: int, eps: float = 1e-3):
  """Forward process on the answer slots only.

  answers [B, G] -> (noisy [B, G], masked [B, G] bool, p_mask [B]).  t is stratified over the batch
  (one uniform shift, B evenly spaced points) which lowers the variance of the 1/t-weighted loss.
  """
  b = answers.shape[0]
  k_t, k_m = jax.random.split(key)
  t = (jax.random.uniform(k_t, ()) + jnp.arange(b) / b) % 1.0
  p_mask = (1.0 - eps) * t + eps  # LLaDA: p_mask = (1 - eps) t + eps
  masked = jax.random.uniform(k_m, answers.shape) < p_mask[:, None]
  return jnp.where(masked, mask_id, answers), masked, p_mask


def masked_diffusion_loss(net: Transformer, key, prompts, prompt_valid, answers):
  """E_t [ (1/t) * sum_masked CE ] / G, the ELBO-weighted loss used by LLaDA (answer-only masking for SFT).

  prompts [B, P], prompt_valid [B, P], answers [B, G] -> (scalar loss, metrics).
  """
  noisy, masked, p_mask = mask_answer(key, answers, net.cfg.mask_id)
  tokens = jnp.concatenate([prompts, noisy], axis=1)
  valid = jnp.concatenate([prompt_valid, jnp.ones_like(noisy, bool)], axis=1)
  hidden, _ = net(tokens, positions_from_valid(valid), valid)
  return _masked_elbo(net.logits(hidden[:, prompts.shape[1]:]), answers, masked, p_mask)


def _masked_elbo(logits, answers, masked, p_mask):
  """logits [B, G, V], answers [B, G], masked [B, G], p_mask [B] -> (mean over rows of the 1/t-weighted masked CE
  divided by G, {"ce": CE per masked token})."""
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), answers[..., None], axis=-1)[..., 0]  # [B, G]
  weighted = jnp.sum(jnp.where(masked, ce, 0.0), axis=1) / p_mask / answers.shape[1]
  n_masked = jnp.maximum(masked.sum(), 1)
  token_ce = jnp.sum(jnp.where(masked, ce, 0.0)) / n_masked
  return jnp.mean(weighted), {"ce": token_ce}


def autoregressive_loss(net: Transformer, key, prompts, prompt_valid, answers):
  """Next-token cross-entropy of the answer given the prompt, for a causal network (`ModelConfig.causal`): the
  output at position i predicts token i + 1, so answers[j] is read at position P + j - 1.  The same
  (key, prompts, prompt_valid, answers) signature as `masked_diffusion_loss`; the key is unused.
  prompts [B, P], prompt_valid [B, P], answers [B, G] -> (mean CE over answer tokens, metrics)."""
  del key
  if not net.cfg.causal:
    raise ValueError("autoregressive_loss needs a causal network (ModelConfig.causal=True)")
  tokens = jnp.concatenate([prompts, answers], axis=1)
  valid = jnp.concatenate([prompt_valid, jnp.ones_like(answers, bool)], axis=1)
  hidden, _ = net(tokens, positions_from_valid(valid), valid)
  p, g = prompts.shape[1], answers.shape[1]
  logits = net.logits(hidden[:, p - 1:p + g - 1], shift=False)  # [B, G, V]
  ce = -jnp.take_along_axis(jax.nn.log_softmax(logits), answers[..., None], axis=-1)[..., 0]  # [B, G]
  return jnp.mean(ce), {"ce": jnp.mean(ce)}


def block_diffusion_attention(seq_valid, block_size: int):
  """The block-diffusion training mask over [clean sequence (N) | noisy sequence (N)], [B, 2N, 2N], and the
  positions [B, 2N] (both copies at the same rotary positions).  seq_valid [B, N]: prompt + answer validity.

  Blocks are counted by rotary position (`positions_from_valid`, as the block-causal network and the engine's
  placement count them), so a prompt's tail shares the first answer block.  Clean copy: a query sees the valid
  clean keys of its own block and every earlier one, exactly the block-causal inference mask.  Noisy copy: a query
  sees the valid noisy keys of its own block and the clean keys of earlier blocks (BD3-LM's x_t/x_0 mask, the
  pattern SDAR trains).  The noisy copy holds the prompt too, because a prompt tail in the first answer block reads
  that block's noisy answer slots at inference.  Only the noisy answer is scored, so one pass trains every block.
  """
  pos = positions_from_valid(seq_valid)  # [B, N]
  blk = pos // block_size
  same = blk[:, None, :] == blk[:, :, None]  # [B, N(query), N(key)]
  earlier = blk[:, None, :] < blk[:, :, None]
  key_ok = seq_valid[:, None, :]
  clean_rows = jnp.concatenate([key_ok & (same | earlier), jnp.zeros_like(same)], axis=2)
  noisy_rows = jnp.concatenate([key_ok & earlier, key_ok & same], axis=2)
  return jnp.concatenate([clean_rows, noisy_rows], axis=1), jnp.concatenate([pos, pos], axis=1)


def block_diffusion_loss(net: Transformer, key, prompts, prompt_valid, answers):
  """The masked-diffusion loss of a block-causal network (`ModelConfig.attention_layout='block_causal'`), every
  block in one pass: the network reads the clean sequence and a noisy copy side by side
  (`block_diffusion_attention`) and the noisy copy's masked answer slots are scored, weighted 1/t as
  `masked_diffusion_loss` (one t per sequence, the answer-only masking of SFT).  Same signature and metrics as
  `masked_diffusion_loss`."""
  if not net.cfg.block_causal:
    raise ValueError("block_diffusion_loss needs a block-causal network (ModelConfig.attention_layout='block_causal')")
  noisy, masked, p_mask = mask_answer(key, answers, net.cfg.mask_id)
  g = answers.shape[1]
  seq_valid = jnp.concatenate([prompt_valid, jnp.ones_like(answers, bool)], axis=1)  # [B, P+G]
  mask, positions = block_diffusion_attention(seq_valid, net.cfg.block_size)
  tokens = jnp.concatenate([prompts, answers, prompts, noisy], axis=1)  # [B, 2(P+G)]
  hidden, _ = net(tokens, positions, mask)
  return _masked_elbo(net.logits(hidden[:, -g:]), answers, masked, p_mask)  # the noisy copy's answer slots
