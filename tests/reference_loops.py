"""Plain Python/NumPy re-implementations of the samplers, written from the papers' pseudo-code.

They share nothing with the engine but the network forward and the random draws (same key splits), so the
compiled loop can be compared with them token for token.
"""

from __future__ import annotations

import jax
import numpy as np

from dlm.model.transformer import positions_from_valid
from dlm.kernels.noise import counter_exponential, seed_words


def exponential_noise(key, shape):
  """The engine's Exp(1) noise for logits of `shape` [..., V]: counter noise keyed by (row, token), rows the
  flattened leading index (kernels/noise.py)."""
  lead, vocab = shape[:-1], shape[-1]
  rows = np.arange(int(np.prod(lead)), dtype=np.int32).reshape(*lead, 1)
  tokens = np.arange(vocab, dtype=np.int32)
  return counter_exponential(seed_words(key), jax.numpy.asarray(rows), jax.numpy.asarray(tokens))


def make_forward(model):
  @jax.jit
  def fwd(tokens, valid):
    hidden, _ = model(tokens, positions_from_valid(valid), valid)
    return model.logits(hidden)

  return lambda tokens, valid: np.asarray(fwd(tokens, valid), np.float64)


def softmax(x):
  x = x - x.max(-1, keepdims=True)
  e = np.exp(x)
  return e / e.sum(-1, keepdims=True)


def llada_reference(model, prompts, valid, *, steps, gen_length, block_length, temperature=0.0,
                    remasking="low_confidence", cfg_scale=0.0, key):
  """ML-GSAI/LLaDA generate() as in the notes, one row at a time for the top-k."""
  fwd = make_forward(model)
  m_id = model.cfg.mask_id
  b, p = prompts.shape
  x = np.concatenate([np.asarray(prompts), np.full((b, gen_length), m_id)], 1).astype(np.int32)
  full_valid = np.concatenate([np.asarray(valid), np.ones((b, gen_length), bool)], 1)
  nb = gen_length // block_length
  spb = steps // nb
  for blk in range(nb):
    s, e = p + blk * block_length, p + (blk + 1) * block_length
    m = (x[:, s:e] == m_id).sum(1)
    counts = np.stack([m // spb + (i < m % spb) for i in range(spb)], 1)
    for i in range(spb):
      key, k_step = jax.random.split(key)
      k_sample, k_score = jax.random.split(k_step)
      logits = fwd(x, full_valid)
      if cfg_scale > 0:
        un = x.copy()
        un[:, :p] = m_id
        un_logits = fwd(un, full_valid)
        logits = un_logits + (cfg_scale + 1) * (logits - un_logits)
      logits = logits[:, s:e]
      logits[..., m_id] = -np.inf
      if temperature == 0:
        x0 = logits.argmax(-1)
      else:
        noise = np.asarray(exponential_noise(k_sample, logits.shape), np.float64)
        x0 = (logits - temperature * np.log(noise)).argmax(-1)
      if remasking == "low_confidence":
        conf = np.take_along_axis(softmax(logits), x0[..., None], -1)[..., 0]
      else:
        conf = np.asarray(jax.random.uniform(k_score, x0.shape), np.float64)
      mask = x[:, s:e] == m_id
      for row in range(b):
        cand = np.where(mask[row], conf[row], -np.inf)
        chosen = np.argsort(-cand, kind="stable")[:counts[row, i]]
        chosen = chosen[mask[row, chosen]]
        x[row, s + chosen] = x0[row, chosen]
  return x


def ancestral_reference(model, prompts, valid, *, steps, gen_length, temperature, key):
  """MDLM/MD4 ancestral sampling over one block with the loglinear schedule, written from the notes:
  a masked slot is revealed with probability (alpha_s - alpha_t) / (1 - alpha_t) = 1 - s/t (all at the last
  step) and takes a token drawn from the model's prediction (mask id excluded)."""
  fwd = make_forward(model)
  m_id = model.cfg.mask_id
  b, p = prompts.shape
  x = np.concatenate([np.asarray(prompts), np.full((b, gen_length), m_id)], 1).astype(np.int32)
  full_valid = np.concatenate([np.asarray(valid), np.ones((b, gen_length), bool)], 1)
  for i in range(steps):
    if not (x[:, p:] == m_id).any():
      break
    key, k_step = jax.random.split(key)
    k_tok, k_reveal = jax.random.split(k_step)
    logits = fwd(x, full_valid)[:, p:]
    logits[..., m_id] = -np.inf
    noise = np.asarray(exponential_noise(k_tok, logits.shape), np.float64)
    x0 = (logits - temperature * np.log(noise)).argmax(-1)
    t, s = 1 - i / steps, 1 - (i + 1) / steps
    prob = 1.0 if i == steps - 1 else (t - s) / t
    reveal = np.asarray(jax.random.uniform(k_reveal, x0.shape)) < prob
    masked = x[:, p:] == m_id
    x[:, p:] = np.where(reveal & masked, x0, x[:, p:])
  return x
