"""Parallel samplers (issue 4): Fast-dLLM threshold/factor, Dream's rules, DUS dilated groups, dInfer credit and
hierarchy decoding.

Each rule is checked on hand-built logits by calling `sampler.step` directly (no network), then every sampler runs
through `dlm.engine.generate` on a tiny model.  All engine runs share one canvas shape (3 rows, gen 16, block 8)
so that each sampler costs one XLA compile.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine import BlockState, View, generate
from dlm.model.config import tiny_llada
from dlm.model.transformer import init_model
from dlm.samplers import (Credit, Dilated, DreamSampler, Factor, Hierarchy, LowConfidence, Threshold,
                          make_sampler)
from dlm.samplers.base import drive_step
from dlm.samplers.dinfer import run_best
from dlm.samplers.dream import (entropy_confidence, filter_logits, maskgit_plus_confidence,
                                topk_margin_confidence)
from dlm.schedules import dream_count_np, dream_counts_np, group_index, num_rounds, uniform_grid_np
from tests.conftest import PROMPTS, VALID

# ---------------------------------------------------------------------------------------------------------------
# hand-built blocks

V, MASK, EOS = 12, 11, 2  # a toy vocabulary for the direct `step` calls


def view_of(conf, token=None) -> View:
  """Logits whose softmax puts `conf` on `token` and spreads the rest evenly over the other non-mask tokens.

  conf [B, Bk] (each > 1/(V-1), so `token` is the argmax); token defaults to 3 + slot % 8.
  """
  conf = np.asarray(conf, np.float64)
  b, bk = conf.shape
  token = np.broadcast_to(3 + np.arange(bk) % 8, (b, bk)) if token is None else np.asarray(token)
  probs = np.repeat(((1.0 - conf) / (V - 2))[..., None], V, axis=-1)  # [B, Bk, V]
  np.put_along_axis(probs, token[..., None], conf[..., None], axis=-1)
  logits = np.log(np.maximum(probs, 1e-300))
  logits[..., MASK] = -np.inf  # as the engine hands it over
  return View(logits=jnp.asarray(logits, jnp.float32), hidden=jnp.zeros((b, bk, 1), jnp.float32))


def state_of(masked, step=0, num_blocks=1, active=None) -> BlockState:
  masked = np.asarray(masked, bool)
  active = masked.any(-1) if active is None else np.asarray(active, bool)
  return BlockState(tokens=jnp.asarray(np.where(masked, MASK, 0), jnp.int32), masked=jnp.asarray(masked),
                    active=jnp.asarray(active), entry_masked=jnp.asarray(masked.sum(-1), jnp.int32),
                    step=jnp.int32(step), block=jnp.int32(0), num_blocks=num_blocks, block_length=masked.shape[1],
                    mask_id=MASK, end_ids=(EOS,))


_jit_step = jax.jit(lambda view, state, carry, key, sampler: drive_step(sampler, view, state, carry, key),
                    static_argnames="sampler")


def run_step(sampler, view, state, carry=None, seed=0):
  """One compiled sampler step -> (tokens, commit, carry) as NumPy (carry untouched)."""
  if carry is None:
    carry = sampler.init(*state.masked.shape)
  tokens, commit, carry = _jit_step(view, state, carry, jax.random.key(seed), sampler=sampler)
  return np.asarray(tokens), np.asarray(commit), carry


def slots(commit_row) -> list[int]:
  return np.flatnonzero(commit_row).tolist()


# ---------------------------------------------------------------------------------------------------------------
# Fast-dLLM threshold and factor rules


def test_threshold_rule_by_hand():
  conf = [[0.95, 0.5, 0.92, 0.3], [0.5, 0.6, 0.97, 0.2]]
  masked = [[1, 1, 1, 1], [1, 1, 0, 1]]  # row 1's most confident slot is already committed
  tokens, commit, _ = run_step(Threshold(tau=0.9), view_of(conf), state_of(masked))
  assert [slots(r) for r in commit] == [[0, 2], [1]]  # row 1: nothing >= tau, so only its top-1 masked slot
  np.testing.assert_array_equal(tokens, np.broadcast_to(3 + np.arange(4), (2, 4)))
  _, commit, _ = run_step(Threshold(tau=0.45), view_of(conf), state_of(masked))
  assert [slots(r) for r in commit] == [[0, 1, 2], [0, 1]]
  _, commit, _ = run_step(Threshold(tau=1.5), view_of(conf), state_of(masked))  # tau > 1: one per step
  assert [slots(r) for r in commit] == [[0], [1]]


def test_factor_rule_by_hand():
  # f = 1: the n-th most confident slot passes when (n + 1)(1 - c_(n)) < 1.
  conf = [[0.9, 0.99, 0.55, 0.7],  # sorted .99 .9 .7 .55: n=2 3*.1=.3 ok, n=3 4*.3=1.2 no -> 2
          [0.9, 0.6, 0.99, 0.99],  # masked .9 .6: n=2 3*.4=1.2 no -> 1 (Fast-dLLM's code quirk would commit 2)
          [0.99, 0.98, 0.97, 0.96],  # n=4: 5*.04=.2 ok -> all 4
          [0.3, 0.2, 0.25, 0.4]]  # n=1: 2*.6=1.2 no -> still the top-1
  masked = [[1, 1, 1, 1], [1, 1, 0, 0], [1, 1, 1, 1], [1, 1, 1, 1]]
  _, commit, _ = run_step(Factor(f=1.0, rule="paper"), view_of(conf), state_of(masked))
  assert [slots(r) for r in commit] == [[0, 1], [0], [0, 1, 2, 3], [3]]
  _, commit, _ = run_step(Factor(f=2.0, rule="paper"), view_of(conf), state_of(masked))
  # f = 2, row 0: n=3 4*.3=1.2 < 2 ok, n=4 5*.45=2.25 no -> 3;  row 1: n=2 1.2 < 2 -> both;  row 3: 2*.6 < 2,
  # 3*.7=2.1 no -> 1.
  assert [slots(r) for r in commit] == [[0, 1, 3], [0, 1], [0, 1, 2, 3], [3]]


def fast_dllm_factor_np(conf_masked, f):
  """NVlabs/Fast-dLLM get_transfer_index_dynamic's count, re-derived as a plain loop over one row's masked confs."""
  c = sorted(conf_masked, reverse=True)
  thresholds = [-1.0] + [1 - f / (n + 1) for n in range(2, len(c) + 1)]
  top_i = 0
  for top_i in range(len(c)):
    if c[top_i] < thresholds[top_i]:
      break
  if top_i == 0 or top_i == len(c) - 1:
    top_i += 1
  return top_i


def test_factor_reference_rule_each_branch():
  """Fast-dLLM's code: first failure in the middle -> the passes; at the last slot or none -> all m; m = 1 -> 1."""
  conf = [[0.99, 0.9, 0.7, 0.55, 0.5],  # f=1 thresholds 2/3, 3/4, 4/5, 5/6: .9 ok, .7 fails at index 2 -> 2
          [0.99, 0.98, 0.97, 0.96, 0.1],  # only the last fails -> the quirk commits all 5
          [0.99, 0.98, 0.97, 0.96, 0.95],  # none fails -> 5
          [0.3, 0.2, 0.25, 0.4, 0.35],  # index 1 fails -> top_i 1 -> 1
          [0.3, 0.2, 0.25, 0.4, 0.35]]  # two masks left (.3, .2): fail at m - 1 -> both, the paper takes 1
  masked = [[1] * 5, [1] * 5, [1] * 5, [1] * 5, [1, 1, 0, 0, 0]]
  _, commit, _ = run_step(Factor(f=1.0), view_of(conf), state_of(masked))
  assert [slots(r) for r in commit] == [[0, 1], [0, 1, 2, 3, 4], [0, 1, 2, 3, 4], [3], [0, 1]]
  _, commit, _ = run_step(Factor(f=1.0, rule="paper"), view_of(conf), state_of(masked))
  assert [slots(r) for r in commit] == [[0, 1], [0, 1, 2, 3], [0, 1, 2, 3, 4], [3], [0]]
  one = [[0.2, 0.9, 0.9, 0.9, 0.9]]  # m = 1 (the code's top_i == 0 branch)
  _, commit, _ = run_step(Factor(), view_of(one), state_of([[1, 0, 0, 0, 0]]))
  assert slots(commit[0]) == [0]


def test_factor_reference_rule_matches_loop():
  rng = np.random.default_rng(3)
  conf = 0.1 + 0.9 * rng.random((64, 8)) ** 0.3  # [B, N], > 1/(V-1) so the proposal is the argmax
  masked = rng.random((64, 8)) < 0.7
  masked[:, 0] = True
  for f in (0.5, 1.0, 2.0):
    _, commit, _ = run_step(Factor(f=f), view_of(conf), state_of(masked))
    want = [fast_dllm_factor_np(conf[i][masked[i]].tolist(), f) for i in range(64)]
    np.testing.assert_array_equal(commit.sum(-1), want)


# ---------------------------------------------------------------------------------------------------------------
# Dream


def test_dream_filters_and_confidences_by_hand():
  p = np.array([0.5, 0.3, 0.2, 0.0])
  logits = jnp.asarray(np.log(np.maximum(p, 1e-300)), jnp.float32)[None]  # [1, 4]; token 3 plays the mask id

  def probs(**kw):
    args = dict(temperature=0.0, top_p=None, top_k=None) | kw
    return np.asarray(jax.nn.softmax(filter_logits(logits, **args), -1))[0]

  np.testing.assert_allclose(probs(), p, atol=1e-6)
  np.testing.assert_allclose(probs(top_p=0.7), [0.625, 0.375, 0, 0], atol=1e-6)  # keeps the token crossing 0.7
  np.testing.assert_allclose(probs(top_p=0.4), [1, 0, 0, 0], atol=1e-6)
  np.testing.assert_allclose(probs(top_k=2), [0.625, 0.375, 0, 0], atol=1e-6)
  np.testing.assert_allclose(probs(temperature=2.0), np.sqrt(p) / np.sqrt(p).sum(), atol=1e-6)

  q, x0 = jnp.asarray(p, jnp.float32)[None], jnp.array([0])
  assert float(maskgit_plus_confidence(q, x0)[0]) == pytest.approx(0.5)
  assert float(maskgit_plus_confidence(q, jnp.array([2]))[0]) == pytest.approx(0.2)  # a sampled proposal
  assert float(topk_margin_confidence(q, x0)[0]) == pytest.approx(0.2)
  neg_entropy = sum(v * math.log(v) for v in (0.5, 0.3, 0.2))
  assert float(entropy_confidence(q, x0)[0]) == pytest.approx(neg_entropy, abs=1e-6)


def test_dream_confidence_uses_the_filtered_distribution():
  # maskgit_plus after top-k = 1 is 1 everywhere: the count rule (not the threshold of a clean softmax) decides.
  conf = [[0.3, 0.9, 0.5, 0.6]]
  _, commit, _ = run_step(DreamSampler(steps=4, alg="maskgit_plus"), view_of(conf), state_of([[1, 1, 1, 1]], step=2))
  n = dream_count_np(4.0, 2, 4)
  assert slots(commit[0]) == sorted(np.argsort(-np.asarray(conf[0]), kind="stable")[:n].tolist())
  _, commit, _ = run_step(DreamSampler(steps=4, alg="maskgit_plus", top_k=1), view_of(conf),
                          state_of([[1, 1, 1, 1]], step=2))
  assert slots(commit[0]) == list(range(n))  # all confidences tie at 1: lowest slots first


@pytest.mark.parametrize("alg, alg_temp", [("maskgit_plus", None), ("entropy", None), ("topk_margin", 1.0)])
def test_dream_count_rule_matches_schedules(alg, alg_temp):
  """Replaying a block step by step, each row commits dream_count_np(mean masked, step, steps) slots."""
  bk, steps = 8, 8
  rng = np.random.default_rng(0)
  sampler = DreamSampler(steps=steps, alg=alg, alg_temp=alg_temp)
  masked = np.ones((2, bk), bool)
  for i in range(steps):
    conf = rng.uniform(0.2, 0.95, (2, bk))
    _, commit, _ = run_step(sampler, view_of(conf), state_of(masked, step=i), seed=i)
    expect = dream_count_np(float(masked.sum(-1).mean()), i, steps) if i < steps - 1 else int(masked.sum(-1)[0])
    np.testing.assert_array_equal(commit.sum(-1), expect)
    assert not (commit & ~masked).any()
    if alg_temp is None:  # deterministic order: the most confident masked slots
      for row in range(2):
        order = np.argsort(-np.where(masked[row], conf[row], -np.inf), kind="stable")[:expect]
        assert slots(commit[row]) == sorted(order.tolist())
    masked &= ~commit
  assert not masked.any()
  assert dream_counts_np(bk, steps).tolist() == [0, 1, 1, 1, 1, 1, 1, 2]  # the wasted first step Dream has


def test_dream_count_uses_the_mean_over_decoding_rows():
  masked = np.array([[1] * 8, [1] * 6 + [0] * 2, [1] + [0] * 7], bool)  # 8, 6 and 1 masks: mean 5
  conf = np.full((3, 8), 0.5)
  sampler = DreamSampler(steps=4)
  _, commit, _ = run_step(sampler, view_of(conf), state_of(masked, step=2))
  n = dream_count_np(5.0, 2, 4)  # one count for every row (Dream's batch mean); a row cannot exceed its masks
  assert n == 2 and commit.sum(-1).tolist() == [2, 2, 1]
  # A row that stopped (inactive) does not count towards the mean: (8 + 6) / 2 = 7.
  _, commit, _ = run_step(sampler, view_of(conf), state_of(masked, step=2, active=[True, True, False]))
  n = dream_count_np(7.0, 2, 4)
  assert n == 3 and commit[:2].sum(-1).tolist() == [n, n]


def test_dream_origin_reveals_with_probability_one_minus_s_over_t():
  b, bk, steps = 4, 256, 4
  view, masked = view_of(np.full((b, bk), 0.5)), np.ones((b, bk), bool)
  grid = uniform_grid_np(steps)
  p = 1.0 - grid[1] / grid[0]  # ~0.25 at the first step
  _, commit, _ = run_step(DreamSampler(steps=steps, alg="origin"), view, state_of(masked, step=0))
  n = b * bk
  assert abs(commit.sum() - n * p) < 5 * math.sqrt(n * p * (1 - p))
  half = masked.copy()
  half[:, ::2] = False
  _, commit, _ = run_step(DreamSampler(steps=steps, alg="origin"), view, state_of(half, step=steps - 1))
  np.testing.assert_array_equal(commit, half)  # the last step reveals everything left, nothing else


# ---------------------------------------------------------------------------------------------------------------
# DUS


def test_dilated_rounds_by_hand():
  masked = np.ones((1, 8), bool)
  conf = np.full((1, 8), 0.9)
  sampler = Dilated()
  assert sampler.max_nfe(16, 8) == 2 * 3
  done = []
  for r in range(3):
    _, commit, _ = run_step(sampler, view_of(conf), state_of(masked, step=r))
    done.append(slots(commit[0]))
    masked &= ~commit
  assert done == [[0, 4], [2, 6], [1, 3, 5, 7]]


def test_dilated_skip_defers_to_next_round():
  sampler = Dilated(skip_threshold=0.5)
  masked = np.ones((1, 8), bool)
  conf = np.array([[0.9, 0.9, 0.9, 0.9, 0.3, 0.9, 0.9, 0.9]])
  _, commit, _ = run_step(sampler, view_of(conf), state_of(masked, step=0))
  assert slots(commit[0]) == [0]  # slot 4 is unsure: it waits
  masked &= ~commit[0]
  conf = np.array([[0.9, 0.9, 0.4, 0.9, 0.6, 0.9, 0.8, 0.9]])
  _, commit, _ = run_step(sampler, view_of(conf), state_of(masked, step=1))
  assert slots(commit[0]) == [4, 6]  # the deferred slot rides with round 1; slot 2 now waits
  masked &= ~commit[0]
  conf = np.full((1, 8), 0.1)
  _, commit, _ = run_step(sampler, view_of(conf), state_of(masked, step=2))
  assert slots(commit[0]) == [1, 2, 3, 5, 7]  # the last round commits everything left, however unsure


# ---------------------------------------------------------------------------------------------------------------
# dInfer


def test_credit_boosts_a_stable_top1_by_hand():
  alpha, gamma, beta = 0.7, 0.2, 0.8
  # Slot 1 keeps top-1 prob 0.5 on the same token; with credit C its boosted confidence is
  # 0.5 e^b / (0.5 e^b + 0.5), b = alpha log(1 + C); C = 0.5^gamma after one step, (1 + beta) 0.5^gamma after two.
  def boosted(c):
    e = math.exp(alpha * math.log1p(c))
    return 0.5 * e / (0.5 * e + 0.5)

  first, second = boosted(0.5 ** gamma), boosted((1 + beta) * 0.5 ** gamma)
  assert 0.5 < first < second
  sampler = Credit(tau=(first + second) / 2, alpha=alpha, gamma=gamma, beta=beta)
  view, masked = view_of([[0.95, 0.5, 0.3]]), np.ones((1, 3), bool)
  _, commit, carry = run_step(sampler, view, state_of(masked, step=0))
  assert slots(commit[0]) == [0]  # only the top-1: slot 1's boosted 0.61 is below tau
  _, commit, carry = run_step(sampler, view, state_of(masked, step=1), carry)
  assert slots(commit[0]) == [0, 1]  # a second step on the same top-1 lifts it over tau
  ids, credit = (np.asarray(x) for x in carry)
  assert ids[0, 1].tolist() == [4, -1, -1] and credit[0, 1, 0] == pytest.approx((1 + beta) * 0.5 ** gamma)
  _, commit, _ = run_step(sampler, view, state_of(masked, step=0), carry)  # block entry: credit reset
  assert slots(commit[0]) == [0]


def test_credit_matches_a_dense_credit_matrix():
  """The sparse [B, Bk, Bk] credit table against dInfer's dense C [B, Bk, V], with top-1 tokens that flip."""
  alpha, gamma, beta, tau = 0.7, 0.2, 0.8, 0.6
  sampler = Credit(tau=tau, alpha=alpha, gamma=gamma, beta=beta)
  rng = np.random.default_rng(1)
  b, bk = 2, 6
  masked = np.ones((b, bk), bool)
  dense = np.zeros((b, bk, V))
  carry = sampler.init(b, bk)
  for i in range(bk):
    logits = rng.normal(0, 1.5, (b, bk, V))
    logits[..., :3] += rng.choice([0.0, 2.0], (b, bk, 3))  # a few tokens compete for top-1 across steps
    logits[..., MASK] = -np.inf
    view = View(logits=jnp.asarray(logits, jnp.float32), hidden=jnp.zeros((b, bk, 1)))
    tokens, commit, carry = run_step(sampler, view, state_of(masked, step=i), carry)
    # Dense reference, straight from the notes.
    dense *= beta if i else 0.0
    p = np.exp(logits - logits.max(-1, keepdims=True))
    p /= p.sum(-1, keepdims=True)
    top = p.argmax(-1)
    np.put_along_axis(dense, top[..., None], np.take_along_axis(dense, top[..., None], -1)
                      + (masked * p.max(-1) ** gamma)[..., None], -1)
    fused = logits + alpha * np.log1p(dense)
    x0 = fused.argmax(-1)
    q = np.exp(fused - fused.max(-1, keepdims=True))
    conf = np.where(masked, np.take_along_axis(q / q.sum(-1, keepdims=True), x0[..., None], -1)[..., 0], -np.inf)
    expect = masked & (conf >= tau)
    expect[np.arange(b), conf.argmax(-1)] |= masked.any(-1)
    np.testing.assert_array_equal(tokens[masked], x0[masked])
    np.testing.assert_array_equal(commit, expect)
    masked &= ~commit
    if not masked.any():
      break


def test_hierarchy_rule_by_hand():
  masked = [[1, 1, 0, 1, 1, 1, 0, 1],
            [1, 1, 1, 1, 1, 1, 1, 1],
            [1, 1, 1, 1, 0, 1, 1, 1]]
  conf = [[0.5, 0.7, 0.99, 0.45, 0.3, 0.95, 0.99, 0.2],  # runs {0,1} {3,4,5} {7}: bests 1, 5; 7 is below low
          [0.3, 0.2, 0.25, 0.35, 0.15, 0.2, 0.3, 0.25],  # everything below low: only the global top-1
          [0.95, 0.93, 0.5, 0.5, 0.99, 0.5, 0.6, 0.5]]  # runs {0..3} {5,6,7}: bests 0, 6; slot 1 is above tau
  _, commit, _ = run_step(Hierarchy(tau=0.9, low_threshold=0.4), view_of(conf), state_of(masked))
  assert [slots(r) for r in commit] == [[1, 5], [3], [0, 1, 6]]
  _, commit, _ = run_step(Hierarchy(tau=None, low_threshold=0.4), view_of(conf), state_of(masked))
  assert [slots(r) for r in commit] == [[1, 5], [3], [0, 6]]  # at most one per run
  best = np.asarray(run_best(jnp.array([[0.5, 0.5, 0.1, 0.7]]), jnp.array([[True, True, False, True]])))
  assert slots(best[0]) == [0, 3]  # ties go to the lower slot


# ---------------------------------------------------------------------------------------------------------------
# through the engine

GEN, BLOCK = 16, 8


@pytest.fixture(scope="module")
def sharp_model():
  """The tiny model with its head scaled by 32: top-1 probabilities ~0.84 on an all-mask answer, so rules with
  thresholds below that (or credit, or the factor rule) commit several slots in one step."""
  net = init_model(tiny_llada(), seed=3)
  net.head.kernel[...] = net.head.kernel[...] * 32.0
  return net


@pytest.mark.parametrize("temperature", [0.0, 1.0])
def test_threshold_above_one_equals_low_confidence_one_token_per_step(model, temperature):
  key = jax.random.key(5)
  thr = generate(model, PROMPTS, VALID, sampler=Threshold(tau=1.5, temperature=temperature), gen_length=GEN,
                 block_length=BLOCK, key=key)
  low = generate(model, PROMPTS, VALID, sampler=LowConfidence(steps=GEN, temperature=temperature),
                 gen_length=GEN, block_length=BLOCK, key=key)
  np.testing.assert_array_equal(np.asarray(thr.tokens), np.asarray(low.tokens))
  np.testing.assert_array_equal(np.asarray(thr.nfe), GEN)
  for row in np.asarray(thr.commit_step):  # one slot per step
    assert sorted(row.tolist()) == list(range(GEN))


SAMPLERS = {
    "threshold": Threshold(tau=0.7),
    "factor": Factor(),
    "dream_entropy": DreamSampler(steps=8, alg="entropy"),
    "dream_margin_sampled": DreamSampler(steps=8, alg="topk_margin", temperature=0.5, top_p=0.9, top_k=5,
                                         alg_temp=0.5),
    "dream_origin": DreamSampler(steps=8, alg="origin", temperature=1.0),
    "dilated": Dilated(),
    "dilated_skip": Dilated(skip_threshold=0.9, temperature=1.0),
    "credit": Credit(),
    "hierarchy": Hierarchy(),
}


@pytest.mark.parametrize("sampler", SAMPLERS.values(), ids=SAMPLERS.keys())
def test_batched_generation(sharp_model, sampler):
  out = generate(sharp_model, PROMPTS, VALID, sampler=sampler, gen_length=GEN, block_length=BLOCK,
                 key=jax.random.key(3))
  tokens, nfe, steps = np.asarray(out.tokens), np.asarray(out.nfe), np.asarray(out.commit_step)
  np.testing.assert_array_equal(tokens[:, :PROMPTS.shape[1]], PROMPTS)
  assert (tokens[:, PROMPTS.shape[1]:] != sharp_model.cfg.mask_id).all() and bool(out.finished.all())
  bound = sampler.max_nfe(GEN, BLOCK)
  assert ((nfe >= 1) & (nfe <= bound)).all(), (nfe, bound)
  if isinstance(sampler, (Threshold, Factor, Credit, Hierarchy)):
    assert (nfe < GEN).any()  # the sharp model lets every parallel rule commit several slots in some step
  if isinstance(sampler, Dilated):
    rounds = num_rounds(BLOCK)
    np.testing.assert_array_equal(nfe, (GEN // BLOCK) * rounds)  # exactly num_rounds passes per block
    if sampler.skip_threshold is None:  # slot o of block k is committed in pass k * rounds + group_index[o]
      expect = (np.arange(GEN) // BLOCK) * rounds + np.tile(group_index(BLOCK), GEN // BLOCK)
      np.testing.assert_array_equal(steps, np.broadcast_to(expect, steps.shape))
  if isinstance(sampler, DreamSampler) and sampler.alg != "origin":
    spb = sampler.steps // (GEN // BLOCK)
    counts = dream_counts_np(BLOCK, spb)
    for k in range(GEN // BLOCK):  # every block: the Dream counts, iteration by iteration
      per_iter = [(steps[:, k * BLOCK:(k + 1) * BLOCK] == k * spb + i).sum(-1) for i in range(spb)]
      np.testing.assert_array_equal(np.stack(per_iter, -1), np.broadcast_to(counts, (3, spb)))


def test_stop_at_eos_with_parallel_decoding(sharp_model):
  """stop_at_eos: a row stops once an end-of-text is committed with all before it resolved; what it kept equals
  the same run without stopping (no slot is ever un-committed), and it spends fewer forward passes."""
  net = init_model(tiny_llada(), seed=3)
  # Head scaled by 8 and end-of-text favoured: the rows end 1-2 slots in, at different steps, mid-block.
  net.head.kernel[...] = (sharp_model.head.kernel[...] / 4.0).at[:, EOS].add(0.5)
  kw = dict(sampler=Threshold(), gen_length=GEN, block_length=BLOCK)
  full = generate(net, PROMPTS, VALID, **kw)
  stop = generate(net, PROMPTS, VALID, stop_at_eos=True, **kw)
  eos = net.cfg.eos_id
  assert bool(stop.finished.all())
  ends = []
  for row in range(len(PROMPTS)):
    answer = np.asarray(stop.answers[row])
    end = int(np.argmax(answer == eos))
    ends.append(end)
    assert answer[end] == eos and (answer[end + 1:] == eos).all()
    np.testing.assert_array_equal(answer[:end + 1], np.asarray(full.answers[row])[:end + 1])
    assert int(stop.gen_tokens[row]) == end + 1
  assert min(ends) > 0  # not the trivial case: the rows resolved tokens before their end-of-text
  assert (np.asarray(stop.nfe) < np.asarray(full.nfe)).all() and len(set(np.asarray(stop.nfe).tolist())) > 1


# ---------------------------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize("name, settings", [
    ("threshold", dict(tau=0.0)), ("threshold", dict(temperature=-1.0)), ("factor", dict(f=0.0)),
    ("dream", dict(alg="margin")), ("dream", dict(top_p=0.0)), ("dream", dict(top_k=0)),
    ("dream", dict(eps=0.0)), ("dilated", dict(base=0)), ("dilated", dict(skip_threshold=1.5)),
    ("credit", dict(beta=1.5)), ("hierarchy", dict(tau=0.3, low_threshold=0.4)),
    ("hierarchy", dict(low_threshold=-0.1)),
])
def test_bad_settings(name, settings):
  with pytest.raises(ValueError):
    make_sampler(name, **settings)


def test_registry_and_steps_check(model):
  for name in ("threshold", "factor", "dream", "dilated", "credit", "hierarchy"):
    assert make_sampler(name).family
  assert make_sampler("dream", alg="entropy").family == "dream_entropy"
  with pytest.raises(ValueError, match="multiple of the number of blocks"):
    generate(model, PROMPTS, VALID, sampler=DreamSampler(steps=3), gen_length=GEN, block_length=BLOCK)
