"""Block-causal models in the engine: prompts placed on the block grid (the prompt's partial last block decoded
first, as SDAR and Fast-dLLM v2 do), SDAR's decoding rules against a plain loop written from SDAR's generate.py /
huggingface_bd3.py (prefill of the full prompt blocks, each block decoded against the cache, one store forward per
finished block), caches exact, a row alone equal to the row in a batch."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine.generate import generate
from dlm.model.config import tiny_fast_dllm_v2, tiny_sdar
from dlm.model.transformer import KVCache, init_model
from dlm.samplers.registry import make_sampler

LENGTHS = (7, 4, 10)  # prompt tails of 3, 0 and 2 slots in blocks of 4


@pytest.fixture(scope="module")
def sdar_net():
  return init_model(tiny_sdar(dtype="float32"), seed=1)


def batch(cfg, lengths=LENGTHS, seed=0):
  rng = np.random.default_rng(seed)
  p = max(lengths)
  prompts = np.full((len(lengths), p), cfg.eos_id, np.int32)
  valid = np.zeros((len(lengths), p), bool)
  for r, n in enumerate(lengths):
    prompts[r, p - n:] = rng.integers(3, cfg.vocab_size, n)
    valid[r, p - n:] = True
  return prompts, valid


@functools.partial(jax.jit, static_argnums=0)
def _window_forward(net, tokens, start, cache, valid):
  """One call of SDAR's model on a window at `start` against the cache -> (hidden, cache with the window's keys
  written).  Jitted only to keep the loop fast; the loop itself stays plain Python."""
  pos = start + jnp.arange(tokens.shape[1])[None]
  return net(tokens, pos, valid, cache=cache, window_start=start)


def sdar_reference(net, prompt, gen_length, block, steps, rule, threshold, stop_ids=()):
  """SDAR's block_diffusion_generate for one prompt (batch 1, as the reference), greedy (top_k=1 with the
  evaluation sampler's unfiltered confidence).  -> (canvas, nfe).  The network's cached call writes the window's
  keys into the returned cache; a denoising forward (store_kv=False) throws that cache away."""
  cfg = net.cfg
  p = len(prompt)
  num_blocks = -(-(p + gen_length) // block)
  total = num_blocks * block
  x = np.concatenate([prompt, np.full(total - p, cfg.mask_id)]).astype(np.int32)
  valid = jnp.ones((1, total), bool)
  shape = (cfg.n_layers, 1, total, cfg.num_kv_heads, cfg.dim_per_head)
  cache = KVCache(keys=jnp.zeros(shape), values=jnp.zeros(shape))
  nfe = 0

  def forward(start, tokens, cache):
    return _window_forward(net, jnp.asarray(tokens)[None], jnp.int32(start), cache, valid)

  if p // block:  # prefill: the full prompt blocks, stored
    _, cache = forward(0, x[:p // block * block], cache)
    nfe += 1
  for b in range(p // block, num_blocks):
    cur = x[b * block:(b + 1) * block].copy()
    for step in range(steps + 1):
      masked = cur == cfg.mask_id
      if not masked.any():  # the finished block's keys and values, written by one more forward
        _, cache = forward(b * block, cur, cache)
        nfe += 1
        break
      hidden, _ = forward(b * block, cur, cache)
      nfe += 1
      logits = np.array(net.logits(hidden))[0]  # [B, V]
      # dlm's head bans the mask id for every sampler (a trained SDAR gives it ~zero mass; this random network
      # does not, and SDAR's code would then "commit" a mask and run out of steps with the block unfinished).
      logits[:, cfg.mask_id] = -np.inf
      probs = np.exp(logits - logits.max(-1, keepdims=True))
      probs /= probs.sum(-1, keepdims=True)
      x0 = logits.argmax(-1)
      conf = np.where(masked, probs[np.arange(block), x0], -np.inf)
      k = block // steps + (1 if step < block % steps else 0)
      if rule == "sequential":
        transfer = np.zeros(block, bool)
        transfer[np.flatnonzero(masked)[:k]] = True
      else:
        transfer = np.zeros(block, bool)
        transfer[np.argsort(-conf, kind="stable")[:k]] = True
        transfer &= masked  # huggingface_bd3's where(mask_index, x0, cur_x)
        if rule == "dynamic" and (conf > threshold).sum() >= k:
          transfer = conf > threshold
      cur[transfer] = x0[transfer]
    x[b * block:(b + 1) * block] = cur
    if any(t in x[p:] for t in stop_ids):
      break
  return x, nfe


@pytest.mark.parametrize("rule,steps,threshold,cache", [("dynamic", 4, 0.3, "block"), ("static", 2, 0.9, "none"),
                                                        ("sequential", 4, 0.9, "block")])
def test_sdar_rules_match_the_reference_loop(sdar_net, rule, steps, threshold, cache):
  cfg = sdar_net.cfg
  prompts, valid = batch(cfg)
  sampler = make_sampler("sdar", steps=steps, rule=rule, threshold=threshold)
  gen = generate(sdar_net, prompts, valid, sampler=sampler, gen_length=10, block_length=4, cache=cache)
  answers = np.asarray(gen.answers)
  assert gen.tokens.shape == (3, prompts.shape[1] + 10)
  np.testing.assert_array_equal(np.asarray(gen.tokens)[:, :prompts.shape[1]], prompts)
  for r, n in enumerate(LENGTHS):
    want, ref_nfe = sdar_reference(sdar_net, prompts[r, -n:], 10, 4, steps, rule, threshold)
    np.testing.assert_array_equal(answers[r], want[n:n + 10], err_msg=f"row {r}")
    # The exact cache runs the reference's prefill and store forwards, but not the store after the last block
    # (nothing reads it); without a cache only the denoising forwards run.
    stores = (n >= 4) + -(-(n + 10) // 4) - n // 4
    assert int(gen.nfe[r]) == (ref_nfe - 1 if cache == "block" else ref_nfe - stores)
  assert np.all(np.asarray(gen.commit_step) >= 0) and bool(np.all(gen.finished))


def test_caches_are_exact_for_block_causal_models(sdar_net):
  """Earlier blocks never see later ones, so the prefix and dual caches hold exactly what a full forward computes:
  the same tokens under every policy (for a bidirectional model they are approximations)."""
  prompts, valid = batch(sdar_net.cfg)
  s = make_sampler("threshold", tau=0.5)
  runs = {c: generate(sdar_net, prompts, valid, sampler=s, gen_length=12, block_length=4, cache=c)
          for c in ("none", "prefix", "dual", "block")}
  for c in ("prefix", "dual", "block"):
    np.testing.assert_array_equal(np.asarray(runs[c].tokens), np.asarray(runs["none"].tokens), err_msg=c)
  np.testing.assert_array_equal(np.asarray(runs["dual"].nfe), np.asarray(runs["none"].nfe))
  # The exact cache adds a store forward per block after the first and the prefill (every row's prompt has a
  # full block here), and recomputes one block per step instead of the canvas.
  blocks = np.asarray([4, 3, 4])  # each row's own blocks: ceil((tail + 12) / 4)
  np.testing.assert_array_equal(np.asarray(runs["block"].nfe), np.asarray(runs["none"].nfe) + blocks)
  assert np.all(np.asarray(runs["block"].tokens_computed) < np.asarray(runs["dual"].tokens_computed))


def test_a_row_alone_equals_the_row_in_a_batch_of_other_lengths(sdar_net):
  prompts, valid = batch(sdar_net.cfg)
  s = make_sampler("threshold", tau=0.5)
  together = generate(sdar_net, prompts, valid, sampler=s, gen_length=12, block_length=2)
  for r, n in enumerate(LENGTHS):
    alone = generate(sdar_net, prompts[r:r + 1, -n:], sampler=s, gen_length=12, block_length=2)
    np.testing.assert_array_equal(np.asarray(alone.answers)[0], np.asarray(together.answers)[r])


def test_stop_at_eos_ignores_end_ids_in_the_prompt_tail(sdar_net):
  """A chat prompt's tail often holds an end id (<|im_end|> before the assistant turn): it is prompt, not
  answer, so the row does not stop on it."""
  cfg = sdar_net.cfg
  prompts, valid = batch(cfg)
  prompts[0, -1] = cfg.eos_id  # row 0's tail: 3 tokens, the last an end id
  s = make_sampler("sdar", steps=4)
  gen = generate(sdar_net, prompts, valid, sampler=s, gen_length=8, block_length=4, stop_at_eos=True)
  plain = generate(sdar_net, prompts, valid, sampler=s, gen_length=8, block_length=4)
  np.testing.assert_array_equal(np.asarray(gen.answers)[0], np.asarray(plain.answers)[0])
  assert int(gen.nfe[0]) == int(plain.nfe[0]) > 0


def test_block_length_must_divide_the_models_block():
  net = init_model(tiny_fast_dllm_v2(dtype="float32"), seed=0)
  prompts, valid = batch(net.cfg)
  with pytest.raises(ValueError, match="must divide the model's block_size=8") as err:
    generate(net, prompts, valid, sampler=make_sampler("threshold"), gen_length=12, block_length=3)
  assert "\n" not in str(err.value)
  # Sub-blocks of the model's block (Fast-dLLM v2 decodes 32-token blocks in sub-blocks of 8): allowed, and the
  # exact cache (the whole model block forwarded at each sub-block step, shifted logits) gives the same tokens.
  s = make_sampler("threshold", tau=0.5)
  plain = generate(net, prompts, valid, sampler=s, gen_length=8, block_length=4)
  cached = generate(net, prompts, valid, sampler=s, gen_length=8, block_length=4, cache="block")
  assert bool(np.all(plain.finished))
  np.testing.assert_array_equal(np.asarray(cached.tokens), np.asarray(plain.tokens))
  with pytest.raises(ValueError, match="block-causal model") as err:
    generate(init_model(tiny_sdar(), seed=0).__class__(tiny_sdar(attention_layout="bidirectional", block_size=None),
                                                       rngs=__import__("flax").nnx.Rngs(0)),
             prompts, valid, sampler=s, gen_length=8, block_length=4, cache="block")
  assert "\n" not in str(err.value)


def fast_dllm_v2_reference(net, prompt, gen_length, block, sub_block, threshold):
  """Fast-dLLM v2's batch_sample for one prompt (use_block_cache=False, greedy, no stop token).  -> (canvas, nfe).
  The prefill needs a prompt longer than one block, as there; the test avoids a prompt of exactly one block."""
  cfg = net.cfg
  p = len(prompt)
  num_blocks = gen_length // block + p // block
  total = num_blocks * block + 1  # the AR token after the last block
  valid = jnp.ones((1, total), bool)
  shape = (cfg.n_layers, 1, total, cfg.num_kv_heads, cfg.dim_per_head)
  cache = KVCache(keys=jnp.zeros(shape), values=jnp.zeros(shape))
  x = list(prompt)
  nfe = 0

  def logits_of(hidden):
    out = np.array(net.logits(hidden, shift=False))[0]  # [W, V]
    out[:, cfg.mask_id] = -np.inf  # dlm's head bans the mask id (see sdar_reference)
    return out

  if p > block:
    hidden, cache = _window_forward(net, jnp.asarray(x[:p // block * block])[None], jnp.int32(0), cache, valid)
    nfe += 1
    if p % block == 0:
      x.append(int(logits_of(hidden)[-1].argmax()))
  for b in range(p // block, num_blocks):
    cur = np.asarray(x[b * block:] + [cfg.mask_id] * ((b + 1) * block - len(x)), np.int32)
    x = x[:b * block]
    while True:
      masked = cur == cfg.mask_id
      if not masked.any():  # the clean block: stored, and its last output gives the next block's first token
        hidden, cache = _window_forward(net, jnp.asarray(cur)[None], jnp.int32(b * block), cache, valid)
        nfe += 1
        x += list(cur) + [int(logits_of(hidden)[-1].argmax())]
        break
      for s in range(block // sub_block):
        lo, hi = s * sub_block, (s + 1) * sub_block
        while (cur[lo:hi] == cfg.mask_id).any():
          hidden, _ = _window_forward(net, jnp.asarray(cur)[None], jnp.int32(b * block), cache, valid)
          nfe += 1
          logits = logits_of(hidden)
          logits = np.concatenate([logits[:1], logits[:-1]])[lo:hi]  # the sampler's shift within the block
          probs = np.exp(logits - logits.max(-1, keepdims=True))
          probs /= probs.sum(-1, keepdims=True)
          x1 = probs.argmax(-1)
          conf = np.where(cur[lo:hi] == cfg.mask_id, probs[np.arange(sub_block), x1], -np.inf)
          take = (conf > threshold) | (np.arange(sub_block) == conf.argmax())
          take &= cur[lo:hi] == cfg.mask_id
          cur[lo:hi] = np.where(take, x1, cur[lo:hi])
  return np.asarray(x), nfe


def test_fast_dllm_v2_rule_matches_the_reference_loop():
  net = init_model(tiny_fast_dllm_v2(dtype="float32"), seed=2)
  cfg = net.cfg
  lengths = (13, 16, 20)  # tails 5, 0 (a prompt of two blocks: prefill + left-to-right token), 4
  prompts, valid = batch(cfg, lengths, seed=3)
  sampler = make_sampler("fast_dllm_v2", threshold=0.3)
  gen = generate(net, prompts, valid, sampler=sampler, gen_length=16, block_length=4, cache="block")
  answers = np.asarray(gen.answers)
  for r, n in enumerate(lengths):
    want, ref_nfe = fast_dllm_v2_reference(net, prompts[r, -n:], 16, 8, 4, 0.3)
    new = (n // 8 + 2) * 8 - n  # the reference's new tokens before its trailing AR token: G - tail
    np.testing.assert_array_equal(answers[r, :new], want[n:n + new], err_msg=f"row {r}")
    if n % 8 == 0:  # the same blocks: the reference's NFE less its last store forward
      assert int(gen.nfe[r]) == ref_nfe - 1
  with pytest.raises(ValueError, match="cache='block'"):
    generate(net, prompts, valid, sampler=sampler, gen_length=16, block_length=4)
