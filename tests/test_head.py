"""The statistics view and the fused decode head (issue 9).

Every implementation (chunked XLA scan, Pallas in interpret mode with both grid variants) against the plain-jnp
reference on random inputs: float32 and bfloat16, ragged N and V, both weight layouts, forced ties, banned ids,
CFG; samples identical across implementations and tilings; a chi-square test that samples follow softmax(l / T);
the counter noise against jax's Threefry; and every sampler through `generate` with each head, token for token
against the generations recorded before the statistics view existed (tests/golden_cases.py).
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from jax.extend.random import threefry_2x32

from dlm.engine import View, generate
from dlm.engine.calls import head_key
from dlm.kernels.head import HeadBlocks, HeadRequest, head_statistics, stats_from_logits
from dlm.kernels.head_pallas import head_pallas
from dlm.kernels.noise import seed_words, threefry2x32
from dlm.samplers import LowConfidence, Threshold
from dlm.samplers.base import gumbel_argmax
from tests import golden_cases

FULL = HeadRequest(sample=True, temperature=0.8, top=3, entropy=True, token_prob=True, banned=(7,))
FIELDS = ("max", "log_sum", "top_logits", "entropy", "sample_logit", "token_logit")
IDS = ("top_ids", "sample")


def _inputs(n, d, vocab, dtype, v_axis=1, seed=0, scale=1.0):
  rng = np.random.default_rng(seed)
  hidden = jnp.asarray(rng.normal(size=(n, d)), dtype)
  shape = (d, vocab) if v_axis == 1 else (vocab, d)
  weight = jnp.asarray(rng.normal(size=shape) * scale, dtype)
  tokens = jnp.asarray(rng.integers(0, vocab, n), jnp.int32)
  return hidden, weight, tokens


def _run(impl, hidden, weight, request, *, v_axis=1, dtype=jnp.float32, tokens=None, uncond=None, cfg_scale=0.0,
         blocks=HeadBlocks(block_v=64, block_n=16), backend=None, key=1):
  kw = dict(mask_id=5, seed=seed_words(jax.random.key(key)), tokens=tokens, v_axis=v_axis, dtype=dtype,
            uncond=uncond, cfg_scale=cfg_scale)
  if impl == "pallas":
    return head_pallas(hidden, weight, request, blocks=blocks, interpret=True, backend=backend, **kw)
  return head_statistics(hidden, weight, request, impl=impl, blocks=blocks, **kw)


def _assert_same(ref, got, atol):
  for name in FIELDS:
    if getattr(ref, name) is None:
      continue
    np.testing.assert_allclose(np.asarray(getattr(got, name)), np.asarray(getattr(ref, name)), atol=atol,
                               rtol=atol, err_msg=name)
  for name in IDS:
    if getattr(ref, name) is None:
      continue
    np.testing.assert_array_equal(np.asarray(getattr(got, name)), np.asarray(getattr(ref, name)), err_msg=name)


IMPLS = [("chunked", None), ("pallas", "tpu"), ("pallas", "gpu")]


@pytest.mark.parametrize("impl,backend", IMPLS)
@pytest.mark.parametrize("n,vocab,v_axis", [(37, 300, 1), (16, 256, 0), (5, 70, 1)])
def test_fused_heads_match_reference_float32(impl, backend, n, vocab, v_axis):
  # 300 and 70 are not multiples of the 64-id tile; 37 and 5 rows are not multiples of the 16-row tile.
  hidden, weight, tokens = _inputs(n, 16, vocab, jnp.float32, v_axis)
  ref = _run("ref", hidden, weight, FULL, v_axis=v_axis, tokens=tokens)
  got = _run(impl, hidden, weight, FULL, v_axis=v_axis, tokens=tokens, backend=backend)
  _assert_same(ref, got, atol=2e-5)


@pytest.mark.parametrize("impl,backend", IMPLS)
def test_fused_heads_match_reference_bfloat16_with_cfg(impl, backend):
  hidden, weight, tokens = _inputs(24, 32, 200, jnp.bfloat16)
  uncond, _, _ = _inputs(24, 32, 200, jnp.bfloat16, seed=1)
  kw = dict(tokens=tokens, dtype=jnp.bfloat16, uncond=uncond, cfg_scale=1.5)
  ref = _run("ref", hidden, weight, FULL, **kw)
  got = _run(impl, hidden, weight, FULL, backend=backend, **kw)
  _assert_same(ref, got, atol=1e-4)


@pytest.mark.parametrize("impl,backend", IMPLS)
def test_ties_go_to_the_lower_id_in_every_tile(impl, backend):
  # Duplicate weight columns 10 / 70 / 130 (three different tiles) and 11 / 12 (one tile): exact logit ties.
  hidden, weight, _ = _inputs(8, 8, 192, jnp.float32, scale=0.01)
  e0, e1 = jnp.eye(8)[0], jnp.eye(8)[1]
  weight = weight.at[:, [10, 70, 130]].set(e0[:, None]).at[:, [11, 12]].set(e1[:, None])
  hidden = hidden.at[:4].set(5.0 * e0).at[4:].set(5.0 * e1)  # rows that favour 10 (70, 130) or 11 (12)
  request = HeadRequest(sample=True, top=3)
  ref = _run("ref", hidden, weight, request)
  got = _run(impl, hidden, weight, request, backend=backend)
  assert np.asarray(ref.sample)[:4].tolist() == [10] * 4
  assert np.asarray(ref.top_ids)[0].tolist() == [10, 70, 130]
  assert np.asarray(ref.top_ids)[4, :2].tolist() == [11, 12]
  _assert_same(ref, got, atol=1e-5)


@pytest.mark.parametrize("impl,backend", IMPLS)
def test_banned_and_minus_inf_columns_carry_no_mass(impl, backend):
  hidden, weight, tokens = _inputs(12, 8, 130, jnp.float32)
  hidden = hidden.at[:6].set(20.0 * weight[:, 5])  # rows whose best token is the (banned) mask id 5
  request = HeadRequest(sample=True, temperature=1.0, top=2, entropy=True, banned=(7, 129))
  ref = _run("ref", hidden, weight, request)
  got = _run(impl, hidden, weight, request, backend=backend)
  _assert_same(ref, got, atol=2e-5)
  for stats in (ref, got):
    assert not np.isin(np.asarray(stats.sample), [5, 7, 129]).any()
    assert not np.isin(np.asarray(stats.top_ids), [5, 7, 129]).any()
  logits = np.asarray(hidden) @ np.asarray(weight)
  logits[:, [5, 7, 129]] = -np.inf
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p /= p.sum(-1, keepdims=True)
  entropy = -np.where(p > 0, p * np.log(np.where(p > 0, p, 1.0)), 0.0).sum(-1)
  np.testing.assert_allclose(np.asarray(ref.entropy), entropy, atol=1e-5)


# 16 and 100 are slow-marked: 48 (several full tiles and a ragged last one) and 1000 (one tile) cover both paths.
@pytest.mark.parametrize("block_v", [pytest.param(16, marks=pytest.mark.slow), 48,
                                     pytest.param(100, marks=pytest.mark.slow), 1000])
def test_samples_do_not_depend_on_the_tiling(block_v):
  hidden, weight, _ = _inputs(40, 16, 333, jnp.float32)
  request = HeadRequest(sample=True, temperature=1.3)
  ref = _run("ref", hidden, weight, request)
  for impl, backend in IMPLS:
    got = _run(impl, hidden, weight, request, blocks=HeadBlocks(block_v=block_v, block_n=8), backend=backend)
    np.testing.assert_array_equal(np.asarray(got.sample), np.asarray(ref.sample))


def test_samples_follow_the_tempered_softmax():
  """Chi-square over 20,000 draws of one row (a fresh key per draw) at T = 0.7, pooled small cells."""
  vocab, temperature, draws = 12, 0.7, 20_000
  logits = jnp.asarray(np.random.default_rng(3).normal(size=vocab) * 1.5, jnp.float32)
  request = HeadRequest(sample=True, temperature=temperature)

  def draw(key):
    return stats_from_logits(logits[None], request, mask_id=vocab + 1, seed=seed_words(key)).sample[0]

  samples = np.asarray(jax.vmap(draw)(jax.random.split(jax.random.key(0), draws)))
  expected = np.asarray(jax.nn.softmax(logits / temperature)) * draws
  observed = np.bincount(samples, minlength=vocab)
  chi2 = float(((observed - expected) ** 2 / expected).sum())
  assert chi2 < 31.3, (chi2, observed, expected)  # the 0.999 quantile of chi-square with 11 degrees of freedom


def test_counter_noise_is_threefry():
  key = jnp.asarray([0x13198A2E, 0x03707344], jnp.uint32)
  x0, x1 = jnp.arange(64, dtype=jnp.uint32), jnp.arange(64, dtype=jnp.uint32) * 7 + 3
  y0, y1 = threefry2x32(key[0], key[1], x0, x1)
  ref = np.asarray(threefry_2x32(key, jnp.concatenate([x0, x1])))
  np.testing.assert_array_equal(np.asarray(y0), ref[:64])
  np.testing.assert_array_equal(np.asarray(y1), ref[64:])


def test_logits_path_draws_the_statistics_sample():
  """A sampler that reads full logits and calls gumbel_argmax(head_key(key)) gets the head's sample."""
  logits = jnp.asarray(np.random.default_rng(0).normal(size=(3, 5, 50)), jnp.float32)
  key = jax.random.key(9)
  stats = stats_from_logits(logits, HeadRequest(sample=True, temperature=0.9), mask_id=49,
                            seed=seed_words(head_key(key)))
  banned = logits.at[..., 49].set(-jnp.inf)
  np.testing.assert_array_equal(np.asarray(gumbel_argmax(head_key(key), banned, 0.9)), np.asarray(stats.sample))


def test_view_names_a_statistic_that_was_not_requested():
  stats = stats_from_logits(jnp.zeros((1, 2, 6)), HeadRequest(sample=True), mask_id=1)
  view = View(logits=None, hidden=None, stats=stats)
  assert view.sample.shape == (1, 2)
  with pytest.raises(ValueError, match="View.entropy was not computed"):
    _ = view.entropy


@pytest.mark.parametrize("bad,match", [(dict(top=-1), "top"), (dict(temperature=-0.5), "temperature"),
                                       (dict(top=True), "top")])
def test_head_request_rejects_bad_values(bad, match):
  with pytest.raises(ValueError, match=match):
    HeadRequest(**bad)


def test_fused_heads_refuse_full_logits():
  hidden, weight, _ = _inputs(4, 8, 32, jnp.float32)
  with pytest.raises(ValueError, match="cannot return full logits"):
    _run("pallas", hidden, weight, HeadRequest(logits=True), backend="tpu")
  # The dispatch point sends a logits request to the reference whatever the implementation asked for.
  stats = _run("chunked", hidden, weight, HeadRequest(logits=True))
  assert stats.logits.shape == (4, 32)


# ---------------------------------------------------------------------------------------------------------------
# Through the engine


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(golden_cases.GOLDEN))


@pytest.fixture(scope="module")
def bundled():
  return golden_cases.bundled_model()


# The materialised head's run is slow-marked: the chunked head (the default) is checked against the recordings
# here, and against the materialised head case by case in the fused-head tests above.
@pytest.mark.parametrize("head", ["chunked", pytest.param("ref", marks=pytest.mark.slow)])
def test_every_sampler_unchanged_token_for_token(head, golden, bundled, monkeypatch):
  """Each recorded case (every registered sampler at T = 0, plus CFG, caches, eos options and Dream's shift)
  gives the same tokens and NFE with either head as before the statistics view existed."""
  monkeypatch.setattr(golden_cases, "generate", lambda *a, **k: generate(*a, head=head, **k))
  dream = golden_cases.dream_model()
  for name, task, sampler, settings, options in golden_cases.CASES:
    tokens, nfe = golden_cases.run_case(bundled, task, sampler, settings, options)
    np.testing.assert_array_equal(tokens, golden[f"{name}/tokens"], err_msg=name)
    np.testing.assert_array_equal(nfe, golden[f"{name}/nfe"], err_msg=name)
  for name, sampler, settings, options in golden_cases.DREAM_CASES:
    tokens, nfe = golden_cases.run_dream_case(dream, sampler, settings, options)
    np.testing.assert_array_equal(tokens, golden[f"{name}/tokens"], err_msg=name)


@pytest.mark.parametrize("sampler", [LowConfidence(steps=8, temperature=1.0), Threshold(tau=0.7, temperature=0.7)],
                         ids=["low_confidence_t1", "threshold_t07"])
def test_heads_agree_at_temperature(sampler, bundled):
  task = golden_cases.get_task("add")
  prompts, valid, _ = task.encode(task.examples(6, seed=1))
  outs = {}
  for head in ("ref", "chunked", "pallas"):
    blocks = HeadBlocks(block_v=16, block_n=8)  # several vocabulary tiles on the 48-token bundled model
    outs[head] = generate(bundled, prompts, valid, sampler=sampler, gen_length=task.gen_length,
                          key=jax.random.key(2), head=head, head_blocks=blocks)
  for head in ("chunked", "pallas"):
    np.testing.assert_array_equal(np.asarray(outs[head].tokens), np.asarray(outs["ref"].tokens), err_msg=head)


def test_samplers_that_read_statistics_never_ask_for_logits():
  from dlm.samplers.registry import SAMPLERS
  statistics_only = {"low_confidence", "random", "ancestral", "threshold", "factor", "dilated", "hierarchy", "eb",
                     "wino", "prophet", "learn2pd", "adjust", "sdar", "fast_dllm_v2", "draft_verify",
                     "entropy_threshold", "pc_sampler", "fastdllm_pp", "multi_block", "llada2"}
  for name in statistics_only:
    assert not SAMPLERS[name]().head_request.logits, name
  # ADJUST's entropy is of the reshaped distribution once temperature or top-p reshape it: then full logits.
  assert SAMPLERS["adjust"](temperature=0.7).head_request.logits
  assert SAMPLERS["adjust"](top_p=0.9).head_request.logits
  for name in set(SAMPLERS) - statistics_only:  # top-p / filtered / boosted / history: full logits
    assert SAMPLERS[name]().head_request.logits, name
  assert dataclasses.replace(LowConfidence(), confidence_eos_eot_inf=True).head_request.logits  # reference rule


@pytest.mark.parametrize("impl,backend", IMPLS)
def test_top1_keeps_its_k_axis(impl, backend):
  """A request for the top-1 alone (EB, KLASS, confidence rules) gets top_ids / top_logits of shape [N, 1] from
  every implementation (the Pallas kernel once dropped the axis at k = 1; the device check found it)."""
  hidden, weight, _ = _inputs(12, 16, 200, jnp.bfloat16)
  request = HeadRequest(sample=True, top=1, entropy=True)
  ref = _run("ref", hidden, weight, request, dtype=jnp.bfloat16)
  got = _run(impl, hidden, weight, request, dtype=jnp.bfloat16, backend=backend)
  assert got.top_ids.shape == got.top_logits.shape == (12, 1)
  _assert_same(ref, got, atol=1e-4)
