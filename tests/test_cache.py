"""KV-cache policies: exact where they must be, close where they approximate, and their accounting.

Every generate call with a new shape or policy compiles a program (seconds on a loaded CPU), so the cases share
two canvases: one block of 8 answer slots, and two blocks of 4.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine import generate
from dlm.engine.cache import block_slots, full_forward, plan_cache, window_forward
from dlm.engine.divergence import divergence_report
from dlm.eval.bench import bench
from dlm.model.transformer import positions_from_valid
from dlm.samplers import Ancestral, LowConfidence

from tests.conftest import PROMPTS, VALID
P = PROMPTS.shape[1]


def _run(model, sampler, gen_length, block_length, cache, **kw):
  return generate(model, PROMPTS, VALID, sampler=sampler, gen_length=gen_length, block_length=block_length,
                  cache=cache, key=jax.random.key(5), **kw).to_numpy()


# LowConfidence(steps=num_blocks) commits each block's every mask at its first step: every step is a block-entry
# refresh, i.e. a full forward, so any cache policy must reproduce 'none' token for token.
@pytest.mark.parametrize("which, cache, gen_length, block_length", [
    ("llada", "prefix", 8, 8), ("llada", "dual", 8, 8),  # the block is the whole answer
    ("llada", "prefix", 8, 4), ("llada", "dual", 8, 4),
    ("dream", "prefix", 8, 4), ("dream", "dual", 8, 4),
])
def test_one_step_per_block_equals_none(model, dream_model, which, cache, gen_length, block_length):
  net = model if which == "llada" else dream_model
  sampler = LowConfidence(steps=gen_length // block_length, temperature=0.5)
  ref = _run(net, sampler, gen_length, block_length, "none")
  out = _run(net, sampler, gen_length, block_length, cache, window=1)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.nfe, ref.nfe)
  np.testing.assert_array_equal(out.tokens_computed, ref.tokens_computed)  # only refreshes ran
  assert (ref.nfe == sampler.steps).all()


def test_cfg_with_cache_one_step_per_block_equals_none(model):
  sampler = LowConfidence(steps=2, cfg_scale=1.5)
  ref = _run(model, sampler, 8, 4, "none")
  out = _run(model, sampler, 8, 4, "dual")
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.nfe, 2 * 2)  # two forwards per step, as without a cache


@pytest.mark.parametrize("which", ["llada", "dream"])
def test_window_covering_the_canvas_is_exact(model, dream_model, which):
  """A vicinity window wider than the canvas recomputes every slot at every step: exactly the 'none' run, also
  with several steps per block (this exercises the cached-step branch, its offsets and the Dream shift)."""
  net = model if which == "llada" else dream_model
  sampler = LowConfidence(steps=8)
  ref = _run(net, sampler, 8, 4, "none")
  out = _run(net, sampler, 8, 4, "window", window=64)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.tokens_computed, ref.tokens_computed)


def test_tokens_computed_accounting(model):
  """L per refresh, the window width per cached step; NFE is the same as without a cache."""
  sampler = LowConfidence(steps=8)  # 2 blocks x 4 steps: 1 refresh + 3 cached steps per block
  length, bk = P + 8, 4
  ref = _run(model, sampler, 8, bk, "none")
  assert (ref.tokens_computed == 8 * length).all()
  expected = {"dual": 2 * length + 6 * bk,
              "prefix": 2 * length + 3 * (length - P) + 3 * (length - P - bk),
              "window": 2 * length + 3 * (bk + 2) + 3 * (bk + 2)}  # w=1; the last window slides left inside L
  for cache, count in expected.items():
    out = _run(model, sampler, 8, bk, cache, window=1)
    np.testing.assert_array_equal(out.nfe, ref.nfe)
    assert (out.tokens_computed == count).all(), (cache, out.tokens_computed, count)
    assert out.finished.all()


@pytest.mark.parametrize("policy", ["prefix", "dual", "window"])
@pytest.mark.parametrize("shift", [False, True])
def test_plan_covers_block_inside_canvas(policy, shift):
  for p, g, bk, w in [(6, 8, 4, 1), (0, 8, 8, 3), (0, 8, 4, 0), (3, 12, 4, 16)]:
    plan = plan_cache(policy, prompt_length=p, gen_length=g, block_length=bk, shift=shift, window=w)
    for b, (start, width) in enumerate(zip(plan.starts, plan.widths)):
      s = p + b * bk
      assert 0 <= start and start + width <= p + g
      assert start <= max(s - shift, 0) and s + bk <= start + width
      if policy == "prefix":
        assert start == max(s - shift, 0) and start + width == p + g


def _canvas(net, block_start):
  """A canvas with the prompt, a resolved first answer block, and masks from `block_start` on."""
  cfg = net.cfg
  rng = np.random.default_rng(0)
  answer = rng.integers(3, cfg.vocab_size, size=(len(PROMPTS), 8)).astype(np.int32)
  tokens = np.concatenate([PROMPTS, answer], 1)
  tokens[:, block_start:] = cfg.mask_id
  valid = np.concatenate([VALID, np.ones((len(PROMPTS), 8), bool)], 1)
  return jnp.asarray(tokens), jnp.asarray(valid), positions_from_valid(jnp.asarray(valid))


@pytest.mark.parametrize("which", ["llada", "dream"])
def test_dual_window_logits_against_full_forward(model, dream_model, which):
  """The dual-cache window forward reproduces the full forward's block logits on the canvas the cache was
  refreshed from (nothing outside the window is stale yet; for Dream this needs slot s - 1 in the window), and
  drifts slightly once the block has changed: the cached prefix/suffix keys were computed with the old block."""
  net = model if which == "llada" else dream_model
  s, bk = P + 4, 4  # the second block of two
  tokens, valid, positions = _canvas(net, s)
  plan = plan_cache("dual", prompt_length=P, gen_length=8, block_length=bk, shift=net.cfg.logit_shift)
  start, width = plan.starts[1], plan.widths[1]
  assert start == s - net.cfg.logit_shift
  slots = block_slots(s, bk, net.cfg.logit_shift)

  def full_logits(tokens):
    hidden, kv = full_forward(net, tokens, positions, valid)
    return net.logits(hidden[:, slots], shift=False), kv

  def window_logits(tokens, kv):
    hidden, _ = window_forward(net, tokens, positions, valid, kv, jnp.int32(start), width)
    return net.logits(hidden[:, slots - start], shift=False)

  full, kv = full_logits(tokens)
  np.testing.assert_allclose(window_logits(tokens, kv), full, atol=1e-5, rtol=0)

  changed = tokens.at[:, s + 1].set(7).at[:, s + 3].set(9)  # a step committed two slots of the block
  full_changed, _ = full_logits(changed)
  gap = float(jnp.abs(window_logits(changed, kv) - full_changed).max())
  assert 1e-6 < gap < 0.1 * float(jnp.abs(full_changed).max()), gap


def test_dream_prefix_multi_step(dream_model):
  """Dream's prefix window starts at s - 1 and runs to the end: one slot more than LLaDA's per cached step."""
  out = _run(dream_model, LowConfidence(steps=8), 8, 4, "prefix")
  assert out.finished.all()
  np.testing.assert_array_equal(out.tokens[:, :P], PROMPTS)
  length = P + 8
  assert (out.tokens_computed == 2 * length + 3 * (length - P + 1) + 3 * (length - P - 4 + 1)).all()


def test_reuse_sampler_with_cache(model):
  """Ancestral's no-change reuse stays on with cache='none' and is switched off under a KV cache."""
  sampler = Ancestral(steps=16)
  plain = _run(model, sampler, 8, 8, "none")
  cached = _run(model, sampler, 8, 8, "dual")
  assert (plain.nfe < plain.steps).all()  # reuse skipped unchanged steps
  np.testing.assert_array_equal(cached.nfe, cached.steps)  # every step ran (a window forward)
  assert cached.finished.all()


def test_divergence_report(model):
  report = divergence_report(model, PROMPTS, VALID, sampler=LowConfidence(steps=8), gen_length=8, block_length=4,
                             cache="dual", key=jax.random.key(5))
  assert 0.0 <= report["rows_equal_frac"] <= 1.0 and 0.0 <= report["token_agree_frac"] <= 1.0
  assert report["cached_steps"] == 6 and report["refresh_max_logit_diff"] < 1e-5
  assert 0.0 < report["max_logit_diff"] < 1.0
  assert report["max_logit_diff_first_cached"] <= report["max_logit_diff"]
  assert report["nfe_mean"] == report["nfe_mean_none"] == 8
  assert len(report["row_max_logit_diff"]) == len(PROMPTS)


def test_bench_smoke(model):
  out = bench(model, PROMPTS, VALID, sampler=LowConfidence(steps=8), gen_length=8, block_length=4, cache="dual",
              repeats=1)
  assert out["nfe_mean"] == 8 and out["iterations"] == 8 and out["block_iterations"] == [4, 4]
  assert out["wall_s"] > 0 and out["replay_s"] > 0 and out["overhead_ratio"] == out["wall_s"] / out["replay_s"]
  assert out["batch_nfe"] == out["calls_made"] == 8
  assert 0 < out["tokens"] <= 8 * len(PROMPTS) and out["tps"] > 0 and out["tpf"] == out["tokens"] / (8 * 3)


@pytest.mark.parametrize("kwargs, match", [
    (dict(cache="bogus"), "cache"),
    (dict(cache="window", window=-1), "window"),
    (dict(cache="window", window=2.5), "window"),
])
def test_bad_cache_arguments(model, kwargs, match):
  with pytest.raises(ValueError, match=match):
    generate(model, PROMPTS, VALID, sampler=LowConfidence(steps=8), gen_length=8, block_length=4, **kwargs)
