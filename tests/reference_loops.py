"""Plain Python/NumPy re-implementations of the samplers, written from the papers' pseudo-code.

They share nothing with the engine but the network forward and the random draws (same key splits), so the
compiled loop can be compared with them token for token.
"""

from __future__ import annotations

import functools

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


def _soft_forward(model):
  """(inputs [1, L, D] float32, valid [1, L]) -> logits [L, V] float64, the network fed embeddings."""
  @jax.jit
  def fwd(inputs, valid):
    hidden, _ = model(inputs, positions_from_valid(valid), valid)
    return model.logits(hidden)[0]

  return lambda inputs, valid: np.asarray(fwd(inputs.astype(np.float32), valid), np.float64)


def _row_inputs(table, x, beliefs, m_id):
  """Embeddings of one canvas row: E[x], with the belief mixture at masked slots that have one."""
  inputs = table[x].copy()
  for slot, weights in beliefs.items():
    if x[slot] == m_id:
      inputs[slot] = weights @ table
  return inputs[None]


def lrd_reference(model, prompts, valid, *, gen_length, block_length, r_f, top_p, refine_steps, tau_refine,
                  tau_decode, per_step=1):
  """LRD written from the paper's pseudo-code (samplers/lrd.py states the choices), one row at a time.
  -> (canvas [B, P + G], forwards per row [B], refinement forwards per row [B], early stops per row [B])."""
  fwd = _soft_forward(model)
  m_id, vocab = model.cfg.mask_id, model.cfg.vocab_size
  table = np.asarray(model.embed.embedding[...], np.float64)
  b, p = prompts.shape
  out, nfes, refines, stops = [], [], [], []
  for row in range(b):
    x = np.concatenate([np.asarray(prompts[row]), np.full(gen_length, m_id)]).astype(np.int32)
    v = np.concatenate([np.asarray(valid[row]), np.ones(gen_length, bool)])[None]
    nfe = n_refine = n_stop = 0
    for blk in range(gen_length // block_length):
      s, e = p + blk * block_length, p + (blk + 1) * block_length
      phase, refined, prev, beliefs = (0 if refine_steps > 0 else 1), 0, None, {}
      while (x[s:e] == m_id).any():
        logits = fwd(_row_inputs(table, x, beliefs, m_id), v)[s:e]
        logits[:, m_id] = -np.inf
        nfe += 1
        logp = logits - logits.max(-1, keepdims=True)
        logp = logp - np.log(np.exp(logp).sum(-1, keepdims=True))
        prob = np.exp(logp)
        masked = x[s:e] == m_id
        entropy = -np.sum(np.where(prob > 0, prob * np.where(prob > 0, logp, 0), 0), -1)
        if prev is None:
          drift = np.inf
        else:
          kl = np.sum(np.where(prob > 0, prob * (np.where(prob > 0, logp, 0) - np.where(prob > 0, prev, 0)), 0), -1)
          drift = kl[masked].mean()
        if phase == 0:
          refined += 1
          n_refine += 1
          if drift < tau_refine or refined >= refine_steps:
            phase, prev = 1, None
          else:
            prev = logp
        else:
          if drift < tau_decode:
            chosen = np.flatnonzero(masked)
            n_stop += 1
          else:
            chosen = np.argsort(np.where(masked, entropy, np.inf), kind="stable")[:per_step]
            chosen = chosen[masked[chosen]]
          x[s + chosen] = logits[chosen].argmax(-1)
          prev = logp
        for i in range(block_length):
          alpha = r_f * (1 - entropy[i] / np.log(vocab))
          order = np.argsort(-prob[i], kind="stable")
          keep = np.zeros(vocab, bool)
          keep[order[(np.cumsum(prob[i][order]) - prob[i][order]) < top_p]] = True
          nucleus = np.where(keep, prob[i], 0)
          weights = alpha * nucleus / nucleus.sum()
          weights[m_id] += 1 - alpha
          beliefs[s + i] = weights
    out.append(x)
    nfes.append(nfe)
    refines.append(n_refine)
    stops.append(n_stop)
  return np.stack(out), np.array(nfes), np.array(refines), np.array(stops)


def smoothing_reference(model, prompts, valid, *, gen_length, block_length, tau, w_max=0.3, w_init=0.15,
                        w_growth=0.02, decay=0.02, maximum_unroll=4, expected_tpf=8):
  """dInfer's IterationSmooth + ThresholdParallelDecoder (no cache, greedy) under its BlockRunner (groups of
  max(min(masked // expected_tpf, maximum_unroll), 1) forwards before the block is checked), written from
  inclusionAI/dInfer `generate_uniform.py`, one row at a time with Fast-dLLM's tie rule.
  -> (canvas [B, P + G], forwards per row [B])."""
  fwd = _soft_forward(model)
  m_id = model.cfg.mask_id
  table = np.asarray(model.embed.embedding[...], np.float64)
  b, p = prompts.shape
  out, nfes = [], []
  for row in range(b):
    x = np.concatenate([np.asarray(prompts[row]), np.full(gen_length, m_id)]).astype(np.int32)
    v = np.concatenate([np.asarray(valid[row]), np.ones(gen_length, bool)])[None]
    beliefs, t = {}, 0
    for blk in range(gen_length // block_length):
      s, e = p + blk * block_length, p + (blk + 1) * block_length
      while (x[s:e] == m_id).any():
        for _ in range(max(min(int((x[s:e] == m_id).sum()) // expected_tpf, maximum_unroll), 1)):
          t = _smoothing_forward(fwd, table, x, beliefs, v, m_id, p, s, e, gen_length, t, tau, w_max, w_init,
                                 w_growth, decay)
    out.append(x)
    nfes.append(t)
  return np.stack(out), np.array(nfes)


def _smoothing_forward(fwd, table, x, beliefs, v, m_id, p, s, e, gen_length, t, tau, w_max, w_init, w_growth,
                       decay):
  """One IterationSmooth forward: decode the block [s, e) at the annealed threshold (nothing when it has no masks
  left), rebuild every answer slot's belief; x and beliefs in place -> t + 1."""
  logits = fwd(_row_inputs(table, x, beliefs, m_id), v)[p:]  # every answer slot
  logits[:, m_id] = -np.inf
  weight, tau_t = min(w_init + w_growth * t, w_max), max(1 - decay * t, tau)
  prob = softmax(logits)
  x0 = logits.argmax(-1)
  conf = prob[np.arange(gen_length), x0][s - p:e - p]
  masked = x[s:e] == m_id
  chosen = masked & (conf >= tau_t)
  if masked.any():
    chosen[np.argmax(np.where(masked, conf, -np.inf))] = True
  x[s:e] = np.where(chosen, x0[s - p:e - p], x[s:e])
  for i in range(gen_length):
    weights = weight * prob[i]
    weights[m_id] += 1.0
    beliefs[p + i] = weights
  return t + 1


def apd_reference(dllm, ar, prompts, valid, *, gen_length, R, M, W=None, stop="eos"):
  """APD at T = 0 written from the paper's loop (danielmisrael/apd `apd_sample`), one row at a time, the AR model
  recomputed in full (no cache) and the dLLM fed the canvas cut at slot t + M.  With W (kv_window) the dLLM keeps
  a KV cache: the first forward fills it over [0, t + M), later ones recompute [t - W - a + 1, t + M) against the
  cache cropped there (a: slots accepted last step).  -> (canvas [B, P + G], forwards per row [B])."""
  from dlm.engine.cache import empty_cache

  @functools.partial(jax.jit, static_argnums=(3, 4))  # compiled per window: eager scans are slow
  def cached_window(x, v, cache, left, right):
    key_valid = (v & (jax.numpy.arange(v.shape[0]) < right))[None]
    pos = positions_from_valid(v[None])
    hidden, cache = dllm(x[None, left:right], pos[:, left:right], key_valid, cache=cache, window_start=left)
    return dllm.logits(hidden, shift=False), cache

  def cached_logits(x, v, cache, left, right):
    """The dLLM on canvas slots [left, right) against `cache`, keys at or beyond `right` hidden -> logits of the
    window [right - left, V] (unshifted) and the new cache."""
    logits, cache = cached_window(jax.numpy.asarray(x), jax.numpy.asarray(v), cache, left, right)
    return np.asarray(logits, np.float64)[0], cache

  def forward(net):
    @jax.jit
    def fwd(tokens, valid):
      hidden, _ = net(tokens, positions_from_valid(valid), valid)
      return net.logits(hidden, shift=False if net.cfg.causal else None)
    return lambda tokens, valid: np.asarray(fwd(tokens, valid), np.float64)[0]

  fwd_d, fwd_ar = forward(dllm), forward(ar)
  m_id, eos = dllm.cfg.mask_id, dllm.cfg.eos_id
  ends = (eos,) if stop == "eos" else dllm.cfg.end_ids  # apd_sample stops on eos_token_id only
  b, p = prompts.shape
  out, nfes = [], []
  for row in range(b):
    x = np.concatenate([np.asarray(prompts[row]), np.full(gen_length, m_id)]).astype(np.int32)
    v = np.concatenate([np.asarray(valid[row]), np.ones(gen_length, bool)])
    t = nfe = 0
    cache, accepted = empty_cache(dllm.cfg, 1, p + gen_length), None
    while t < gen_length:
      r = min(t + M, gen_length)
      if W is None:
        logits_d = fwd_d(x[None, :p + r], v[None, :p + r])[p + t:p + r]
      else:
        left = 0 if accepted is None else max(p + t - W - accepted + 1, 0)
        window, cache = cached_logits(x, v, cache, left, p + r)
        logits_d = window[p + np.arange(t, r) - int(dllm.cfg.logit_shift) - left]
      logits_d[:, m_id] = -np.inf
      draft = logits_d.argmax(-1)
      seq = x.copy()
      seq[p + t:p + r] = draft
      logits_ar = fwd_ar(seq[None, :p + r], v[None, :p + r])[p + t - 1:p + r - 1]
      logits_ar[:, m_id] = -np.inf
      mix = (R * logits_d if R > 0 else 0) + ((1 - R) * logits_ar if R < 1 else 0)
      agree = draft == np.argmax(mix, -1)
      agree[0] = True
      a = accepted = int(np.cumprod(agree).sum())
      x[p + t:p + t + a] = draft[:a]
      nfe += 1
      end = [i for i in range(a) if draft[i] in ends]
      if end:
        x[p + t + end[0] + 1:] = eos
        break
      t += a
    out.append(x)
    nfes.append(nfe)
  return np.stack(out), np.array(nfes)


def adjust_reference(model, layer, prompts, valid, *, gen_length, tokens_per_step, use_marginals):
  """ADJUST at T = 0 as the reference's `_sample` ('fixed' strategy) runs it, one row at a time, with the
  'even' count (k per step, the rest at the last step) and one block: each step a full forward, then k commits
  of the masked slot of lowest entropy (argmax token), each followed (but the step's last) by a layer pass on
  the updated canvas that replaces every slot's hidden state and distribution.  Entropies in float64."""
  import math
  import jax.numpy as jnp
  cfg = model.cfg
  steps = math.ceil(gen_length / tokens_per_step)

  @jax.jit
  def features(tokens, valid):
    hidden, _ = model(tokens, positions_from_valid(valid), valid)
    if cfg.logit_shift:  # slot i reads position i - 1 (slot 0 its own), as the reference shifts its features
      hidden = jnp.concatenate([hidden[:, :1], hidden[:, :-1]], axis=1)
    return hidden

  @jax.jit
  def layer_pass(tokens, hidden, valid):
    return layer(model.embed_tokens(tokens), hidden, positions_from_valid(valid), valid)

  @jax.jit
  def logits_of(hidden):
    return model.logits(hidden, shift=False)

  def distributions(hidden, p):
    logits = np.asarray(logits_of(hidden), np.float64)[0, p:]  # [G, V]
    logits[:, cfg.mask_id] = -np.inf
    probs = softmax(logits)
    with np.errstate(divide="ignore", invalid="ignore"):
      entropy = -np.sum(np.where(probs > 0, probs * np.log(probs), 0.0), axis=-1)
    return entropy, probs.argmax(-1)

  out, passes = [], []
  for row in range(prompts.shape[0]):
    p = prompts.shape[1]
    x = np.concatenate([prompts[row], np.full(gen_length, cfg.mask_id)]).astype(np.int32)[None]
    v = np.concatenate([valid[row], np.ones(gen_length, bool)])[None]
    count = 0
    for step in range(steps):
      hidden = features(x, v)
      entropy, token = distributions(hidden, p)
      left = int((x[0, p:] == cfg.mask_id).sum())
      n = left if step == steps - 1 else min(tokens_per_step, left)
      for j in range(n):
        masked = x[0, p:] == cfg.mask_id
        pos = int(np.argmin(np.where(masked, entropy, np.inf)))
        x[0, p + pos] = token[pos]
        if not use_marginals and j < n - 1:
          hidden = layer_pass(x, hidden, v)
          entropy, token = distributions(hidden, p)
          count += 1
    out.append(x[0])
    passes.append(count)
  return np.stack(out), np.asarray(passes)


class OneRow:
  """One prompt's canvas for the reference loops that run a row at a time (as most reference code does):
  `x` [1, P + G] (answer masked), the network's block logits with the mask id banned (every dlm view bans it)."""

  def __init__(self, model, prompt, valid, gen_length):
    self.fwd, self.mask_id, self.prompt_length = make_forward(model), model.cfg.mask_id, prompt.shape[0]
    self.x = np.concatenate([prompt, np.full(gen_length, self.mask_id)]).astype(np.int32)[None]
    self.valid = np.concatenate([valid, np.ones(gen_length, bool)])[None]

  def block(self, blk, block_length):
    """Canvas slots [s, e) of answer block `blk`."""
    s = self.prompt_length + blk * block_length
    return s, s + block_length

  def logits(self, s, e, canvas=None):
    """[e - s, V] float64 logits of slots [s, e) for `canvas` (default: the row's own), mask id banned."""
    out = self.fwd(self.x if canvas is None else canvas, self.valid)[0, s:e].copy()
    out[:, self.mask_id] = -np.inf
    return out


def assert_rows_match(out, reference, model, prompts, valid, **settings):
  """Each row of a batched `Generation` equals `reference(model, prompt, valid, **settings)` -> (tokens,
  forwards) run on that row alone: tokens and NFE."""
  for row in range(prompts.shape[0]):
    tokens, forwards = reference(model, prompts[row], valid[row], **settings)
    np.testing.assert_array_equal(np.asarray(out.tokens)[row], tokens, err_msg=f"row {row}")
    assert int(out.nfe[row]) == forwards, (row, int(out.nfe[row]), forwards)


def learn2pd_reference(model, prompts, valid, *, gen_length, block_length, params, tau):
  """Learn2PD with EoTP written from ims-kdks/Learning-to-Parallel-Decoding `llada/generate.py::generate_l2p_eot`
  (steps = gen_length, greedy), one row at a time: the canvas really is cut (`x = x[:, :pos + 1]`) and later
  forwards run on the shorter sequence (padded on the right with invalid keys, the network's own padding, so one
  program serves every length).  -> (tokens [B, P + G] with the cut slots filled with EOS, forwards [B])."""
  m_id, eos = model.cfg.mask_id, model.cfg.end_ids[0]
  b, p = prompts.shape
  full = make_forward(model)
  w1, b1, w2, b2 = (np.asarray(params[k], np.float32) for k in ("w1", "b1", "w2", "b2"))
  out, nfes = [], []
  for row in range(b):
    x = np.concatenate([np.asarray(prompts[row]), np.full(gen_length, m_id)]).astype(np.int32)
    v = np.concatenate([np.asarray(valid[row]), np.ones(gen_length, bool)])
    forwards = 0
    for blk in range(gen_length // block_length):
      s, e = p + blk * block_length, p + (blk + 1) * block_length
      while (x[s:e] == m_id).any():
        wide, wide_valid = np.full(p + gen_length, m_id, np.int32), np.zeros(p + gen_length, bool)
        wide[:len(x)], wide_valid[:len(x)] = x, v[:len(x)]
        logits = full(wide[None], wide_valid[None])[0, :len(x)]
        logits[:, m_id] = -np.inf
        forwards += 1
        x0 = logits.argmax(-1)
        # float32, as the reference's torch softmax: EOS padding saturates to 1.0, and ties go to the first slot
        x0_p = np.take_along_axis(softmax(logits.astype(np.float32)), x0[:, None], -1)[:, 0]
        mask_index = x == m_id
        conf = x0_p[s:e]
        block = np.zeros(block_length, np.float32)
        block[:len(conf)] = conf  # a block cut short by an earlier truncation: the filter still reads Bk inputs
        accept = np.zeros(len(x), bool)
        logits_f = np.maximum(block @ w1 + b1, 0) @ w2 + b2
        accept[s:e] = (1 / (1 + np.exp(-logits_f)) > tau)[:len(conf)]
        accept &= mask_index
        filter_eot = (x0 == eos) & accept
        end_conf = np.where((x0 == eos) & mask_index, x0_p, -np.inf)
        confidence = np.where(mask_index, x0_p, -np.inf)
        confidence[e:] = -np.inf
        transfer = accept.copy()
        transfer[int(np.argmax(confidence))] = True
        x = np.where(transfer, np.where(mask_index, x0, x), x)
        if filter_eot.any():
          x = x[:int(np.argmax(filter_eot)) + 1]
        elif (end_conf > -np.inf).any():
          x = x[:int(np.argmax(end_conf)) + 1]
    out.append(np.concatenate([x, np.full(p + gen_length - len(x), eos)]))
    nfes.append(forwards)
  return np.stack(out).astype(np.int32), np.asarray(nfes)
