"""LLaDA2.x decoding and LLaDA2.1's token editing (issue 24) against a plain loop of the reference `generate`."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine import generate
from dlm.model.config import tiny_llada2
from dlm.model.transformer import init_model, positions_from_valid
from dlm.samplers import LLaDA2Sampler, make_sampler

from tests.reference_loops import softmax


def llada2_reference(net, logits, prompt, *, gen_length, block_length, threshold, editing_threshold,
                     max_post_steps, num_to_transfer=1):
  """modeling_llada2_moe.py's generate() for one row (greedy): blocks from position 0, each forward over the
  canvas up to the block's end, masked slots by the strict threshold (or the num_to_transfer most confident),
  edits of earlier non-prompt slots of the block, post steps while they edit; without an editing threshold a block
  ends with its masks.  -> (answer [G], NFE)."""
  m = net.cfg.mask_id
  p = len(prompt)
  num_blocks = -(-(p + gen_length) // block_length)
  x = np.full(num_blocks * block_length, m, np.int32)
  x[:p] = prompt
  nfe = 0
  for nb in range(p // block_length, num_blocks):
    start, end = nb * block_length, (nb + 1) * block_length
    post = 0
    while True:
      old = x[start:end].copy()
      active = old == m
      if not active.any() and editing_threshold is None:
        break  # without editing a block ends with its masks (no post step)
      if not active.any():
        post += 1
      if post > max_post_steps:
        break
      probs = softmax(np.asarray(logits(jnp.asarray(x[:end])[None]), np.float64)[0, start:end])
      nfe += 1
      x0 = probs.argmax(-1)
      p0 = probs[np.arange(block_length), x0]
      transfer = np.zeros(block_length, bool)
      if active.any():
        conf = np.where(active, p0, -np.inf)
        high = (conf > threshold) & active
        if high.sum() >= num_to_transfer:
          transfer = high
        else:
          transfer[np.argsort(-conf, kind="stable")[:min(num_to_transfer, active.sum())]] = True
      edit = np.zeros(block_length, bool)
      if editing_threshold is not None:
        editable = ~active & (np.arange(start, end) >= p)
        edit = editable & (p0 > editing_threshold) & (x0 != old)
      x[start:end] = np.where(transfer | edit, x0, old)
      if not active.any() and not edit.any():
        break
  return x[p:p + gen_length], nfe


@pytest.fixture(scope="module")
def net():
  model = init_model(tiny_llada2(block_size=8), seed=7)
  model.head.kernel[...] = model.head.kernel[...] * 6.0  # confident enough that thresholds and edits both act
  return model


@pytest.fixture(scope="module")
def net_logits(net):
  @jax.jit
  def logits(tokens):  # [1, L] -> [1, L, V]: the whole canvas up to a block's end, as the reference runs it
    valid = jnp.ones(tokens.shape, bool)
    hidden, _ = net(tokens, positions_from_valid(valid), valid)
    return net.logits(hidden)
  return logits


@pytest.mark.parametrize("settings", [
    dict(threshold=0.9, editing_threshold=0.05, max_post_steps=3),
    dict(threshold=0.95, editing_threshold=0.05, max_post_steps=1, num_to_transfer=2),
    dict(threshold=0.6, editing_threshold=None, max_post_steps=16),
], ids=["edit", "edit_two_a_step", "llada2.0"])
def test_llada2_decoding_matches_the_reference_loop(net, net_logits, settings):
  """Batched and compiled, each row gives the reference loop's tokens and NFE (prompt tails of every length in
  the first block, edits that rewrite earlier commits, post steps bounded by max_post_steps)."""
  rng = np.random.default_rng(0)
  lengths = [3, 8, 11, 5]
  prompts = np.zeros((len(lengths), max(lengths)), np.int32)
  for r, n in enumerate(lengths):
    prompts[r, -n:] = rng.integers(3, net.cfg.vocab_size, n)
  out = generate(net, prompts, prompts != 0, sampler=LLaDA2Sampler(**settings), gen_length=16, block_length=8,
                 cache="none")
  for r, n in enumerate(lengths):
    want, nfe = llada2_reference(net, net_logits, prompts[r, -n:], gen_length=16, block_length=8, **settings)
    np.testing.assert_array_equal(np.asarray(out.tokens)[r, -16:], want)
    assert int(out.nfe[r]) == nfe, (r, int(out.nfe[r]), nfe)
  if settings["editing_threshold"] is not None:
    assert int(np.asarray(out.extras["edits"]).sum()) > 0  # the case does exercise editing


def test_without_editing_llada2_is_threshold_decoding(net):
  """Without editing, one token minimum, the rule is Fast-dLLM's threshold rule (strict vs >= aside), token for
  token and forward for forward."""
  prompts = np.array([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 9]], np.int32)
  for cache in ("none",):
    a = generate(net, prompts, prompts != 0, sampler=make_sampler("llada2", threshold=0.7), gen_length=16,
                 block_length=8, cache=cache)
    b = generate(net, prompts, prompts != 0, sampler=make_sampler("threshold", tau=0.7), gen_length=16,
                 block_length=8, cache=cache)
    np.testing.assert_array_equal(np.asarray(a.tokens), np.asarray(b.tokens))
    np.testing.assert_array_equal(np.asarray(a.nfe), np.asarray(b.nfe))


def test_editing_with_the_block_cache_rewrites_the_cached_block(net):
  """With the exact block cache the edited block's keys are written once, after its last edit: the tokens equal
  the no-cache run's, and the cache costs one store forward per block on top."""
  prompts = np.array([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 9]], np.int32)
  sampler = LLaDA2Sampler(threshold=0.9, editing_threshold=0.05, max_post_steps=3)
  plain = generate(net, prompts, prompts != 0, sampler=sampler, gen_length=16, block_length=8, cache="none")
  cached = generate(net, prompts, prompts != 0, sampler=sampler, gen_length=16, block_length=8, cache="block")
  np.testing.assert_array_equal(np.asarray(plain.tokens), np.asarray(cached.tokens))
  assert np.all(np.asarray(cached.nfe) >= np.asarray(plain.nfe))


def test_llada2_sampler_settings_are_checked():
  with pytest.raises(ValueError, match="max_post_steps"):
    LLaDA2Sampler(max_post_steps=-1)
  with pytest.raises(ValueError, match="num_to_transfer"):
    LLaDA2Sampler(num_to_transfer=0)
  with pytest.raises(ValueError, match="editing_threshold"):
    LLaDA2Sampler(editing_threshold=-0.5)
