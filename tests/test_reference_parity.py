"""Reference parity (issue 13): places where dlm reproduces the reference code's behaviour, by hand-built cases.

LLaDA's `confidence_eos_eot_inf` at T = 0 and T > 0, LowConfidence with steps > gen_length, the Ancestral cosine
time grid, batch NFE, and the peers' token counts.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from dlm.engine import BlockState, View, generate
from dlm.engine.metrics import peer_token_counts
from dlm.samplers import Ancestral, LowConfidence, Threshold
from dlm.samplers.base import drive_step
from dlm.schedules import cosine_grid_np
from tests.conftest import PROMPTS, VALID

V, MASK, EOS, EOT = 12, 11, 2, 10


def _logits(probs):
  """probs [B, Bk, V] (rows sum to 1; MASK gets 0) -> float32 logits as the engine hands them over."""
  logits = np.log(np.maximum(np.asarray(probs, np.float64), 1e-300))
  logits[..., MASK] = -np.inf
  return jnp.asarray(logits, jnp.float32)


def _state(bk, b=1):
  masked = np.ones((b, bk), bool)
  return BlockState(tokens=jnp.full((b, bk), MASK, jnp.int32), masked=jnp.asarray(masked),
                    active=jnp.ones((b,), bool), entry_masked=jnp.full((b,), bk, jnp.int32), step=jnp.int32(0),
                    block=jnp.int32(0), num_blocks=1, block_length=bk, mask_id=MASK, end_ids=(EOS, EOT))


def _probs():
  """Three slots: 0 proposes 3 with p .45 beside p_EOS .44; 1 proposes 4 with p .6 (rest spread); 2 proposes EOS .7."""
  probs = np.zeros((1, 3, V))
  probs[0, 0, [3, EOS, 5]] = [0.45, 0.44, 0.11]
  probs[0, 1, [4, 5, 6, 7]] = [0.6, 0.2, 0.1, 0.1]
  probs[0, 2, [EOS, 6, EOT]] = [0.7, 0.2, 0.1]
  return probs


def _llada_confidence_np(probs, x0, banned):
  """LLaDA generate.py: softmax of the logits with the banned columns at -inf, gathered at x0 (taken before)."""
  logits = np.log(np.maximum(probs, 1e-300))
  logits[..., MASK] = -np.inf
  logits[..., banned] = -np.inf
  p = np.exp(logits - logits.max(-1, keepdims=True))
  p = p / p.sum(-1, keepdims=True)
  return np.take_along_axis(p, x0[..., None], -1)[..., 0]


def _first_commit(sampler, logits, seed=0):
  tokens, commit, _ = jax.jit(lambda v, s, k: drive_step(sampler, v, s, (), k))(
      View(logits=logits, hidden=jnp.zeros((1, 3, 1))), _state(3), jax.random.key(seed))
  return np.asarray(tokens), np.flatnonzero(np.asarray(commit)[0]).tolist()


def test_llada_eos_eot_reference_rule_at_t0():
  probs = _probs()
  x0 = probs.argmax(-1)  # [[3, 4, EOS]]
  conf = _llada_confidence_np(probs, x0, [EOS, EOT])
  np.testing.assert_allclose(conf[0], [0.45 / 0.56, 0.6, 0.0], rtol=1e-6)
  order = np.argsort(-conf[0], kind="stable")
  for steps, k in ((3, 1), (1, 3)):  # k = 3 // steps commits in one step: the top-k by the reference confidence
    sampler = LowConfidence(steps=steps, confidence_eos_eot_inf=True)
    _, committed = _first_commit(sampler, _logits(probs))
    assert committed == sorted(order[:k].tolist())
  # slot 0 (p .45, renormalised to .80) outranks slot 1 (p .6); the intent rule keeps raw p and picks slot 1.
  assert _first_commit(LowConfidence(steps=3, confidence_eos_eot_inf=True), _logits(probs))[1] == [0]
  assert _first_commit(LowConfidence(steps=3, confidence_eos_eot_inf=True, eos_rule="intent"),
                       _logits(probs))[1] == [1]
  assert _first_commit(LowConfidence(steps=3), _logits(probs))[1] == [2]  # the flag off: EOS .7 first


def test_llada_eos_eot_reference_rule_above_t0():
  """At T > 0 LLaDA's chained assignment bans only EoT in `logits` (issue #137): EOS keeps its confidence."""
  probs = np.zeros((1, 3, V))
  probs[0, 0, [3, EOT]] = [0.6, 0.4]  # conf of 3: .6 raw, 1.0 once EoT is banned
  probs[0, 1, [4, 5]] = [0.9, 0.1]
  probs[0, 2, [EOS, 6]] = [0.95, 0.05]
  sampler = LowConfidence(steps=3, temperature=1e-4, confidence_eos_eot_inf=True)  # T > 0, nearly greedy
  tokens, committed = _first_commit(sampler, _logits(probs))
  np.testing.assert_array_equal(tokens[0], [3, 4, EOS])
  conf = _llada_confidence_np(probs, tokens, [EOT])
  assert committed == [int(np.argmax(conf[0]))] == [0]
  # Banning EOS too (the T = 0 rule) would make slot 2 last; at T > 0 it still beats slot 1 (.95 > .9).
  sampler = LowConfidence(steps=1, temperature=1e-4, confidence_eos_eot_inf=True)  # k = 3: all commit
  assert _first_commit(sampler, _logits(probs))[1] == [0, 1, 2]


def test_low_confidence_accepts_steps_beyond_gen_length(model):
  """LLaDA accepts steps > gen_length: the extra steps commit nothing, and here they cost no NFE."""
  out = generate(model, PROMPTS, VALID, sampler=LowConfidence(steps=32), gen_length=16, block_length=8)
  ref = generate(model, PROMPTS, VALID, sampler=LowConfidence(steps=16), gen_length=16, block_length=8)
  np.testing.assert_array_equal(out.tokens, ref.tokens)
  np.testing.assert_array_equal(out.nfe, ref.nfe)


def test_ancestral_cosine_time_grid():
  s = Ancestral(steps=8, time_grid="cosine")
  grid = cosine_grid_np(8)
  for i in range(8):
    want = s.schedule.unmask_prob(jnp.float32(grid[i]), jnp.float32(grid[i + 1]))
    got = s.unmask_probability(jnp.int32(i), 8)
    np.testing.assert_allclose(got, 1.0 if i == 7 else want, rtol=1e-6)
  uniform = Ancestral(steps=8)
  assert float(uniform.unmask_probability(jnp.int32(0), 8)) != float(s.unmask_probability(jnp.int32(0), 8))


def test_batch_nfe_counts_forward_calls(model):
  out = generate(model, PROMPTS, VALID, sampler=Threshold(tau=0.5), gen_length=16, block_length=8)
  # Blocks advance in lockstep: the batch calls the network once per iteration until the last row is done.
  assert int(out.batch_nfe) >= int(np.asarray(out.nfe).max())
  assert int(out.batch_nfe) <= 16
  cfg = generate(model, PROMPTS, VALID, sampler=LowConfidence(steps=8, cfg_scale=1.0), gen_length=16,
                 block_length=8)
  assert int(cfg.batch_nfe) == 8  # a CFG step is one call over the doubled batch, as LLaDA runs it
  assert np.asarray(cfg.nfe).tolist() == [16] * len(PROMPTS)  # per row: two forwards a step


def test_peer_token_counts():
  answers = np.array([[5, 6, EOS, 7, EOS, EOS], [5, EOS, EOS, EOS, EOS, EOS], [5, 6, 7, 8, 9, 5]])
  counts = peer_token_counts(answers, (EOS, EOT))
  np.testing.assert_array_equal(counts["dlm"], [3, 2, 6])  # up to and including the first end token
  np.testing.assert_array_equal(counts["fast_dllm"], [3, 1, 6])  # non-end tokens anywhere
  np.testing.assert_array_equal(counts["dinfer"], [2, 1, 6])  # cut before the first end token
