"""Draft-and-verify (FreeDave, issue 25): K candidate copies of the block per forward.

- against a plain loop written from the reference code's steps (cychomatica/FreeDave `generation/core.py`,
  `block_decode_with_full_attention_FreeDave`, one token per step, one row at a time as the reference runs):
  tokens and forwards;
- token for token equal to one token per step (`low_confidence`, steps = answer length) under every cache policy,
  on both layouts;
- a row alone equals the row in a batch; the positions computed follow from the forwards by formula;
- refusals in one line.
"""

from __future__ import annotations

import numpy as np
import pytest

from dlm.engine import generate
from dlm.model.config import tiny_dream, tiny_llada, tiny_sdar
from dlm.model.transformer import init_model
from dlm.samplers import LowConfidence
from dlm.samplers.registry import make_sampler
from tests.conftest import PROMPTS, VALID
from tests.reference_loops import OneRow, assert_rows_match, softmax
from tests.test_block_diffusion_engine import batch as sdar_batch

GEN, BLOCK = 16, 8


def _net(make, seed, sharpen):
  net = init_model(make(), seed=seed)
  net.head.kernel[...] = net.head.kernel[...] * sharpen  # sharper predictions: longer verified chains
  return net


@pytest.fixture(scope="module")
def llada():
  return _net(tiny_llada, 3, 8.0)


@pytest.fixture(scope="module")
def dream():
  return _net(tiny_dream, 4, 8.0)


def freedave_reference(model, prompt, valid, *, gen_length, block_length, draft_steps):
  """One row through FreeDave's static loop with a full forward per state (cache none).  -> (tokens, forwards).

  Per block: a first forward whose prediction is only drafted from; then, while the block has more than one
  mask, drafts 0..K'-1 (K' = min(K, masks)) commit the 1..K' most confident slots of that prediction, one forward
  runs all of them, one step of the rule from each draft is its target, and the longest chain in which draft j + 1
  agrees with target j is accepted with the last draft's prediction; the block's last mask is committed from
  the prediction in hand (no forward).
  """
  row = OneRow(model, prompt, valid, gen_length)
  x, m_id = row.x, row.mask_id
  forwards = 0

  def predict(canvas, s, e):
    logits = row.logits(s, e, canvas)  # [Bk, V]
    probs = softmax(logits)
    x0 = logits.argmax(-1)
    return x0, probs[np.arange(len(x0)), x0]

  def commit_top(block, x0, conf, n):
    masked = np.flatnonzero(block == m_id)
    order = masked[np.argsort(-conf[masked], kind="stable")][:n]
    out = block.copy()
    out[order] = x0[order]
    return out

  for blk in range(gen_length // block_length):
    s, e = row.block(blk, block_length)
    x0, conf = predict(x, s, e)
    forwards += 1
    while True:
      block = x[0, s:e]
      left = int((block == m_id).sum())
      k = min(draft_steps, left)
      drafts = [commit_top(block, x0, conf, j + 1) for j in range(k)]
      if left <= 1:
        x[0, s:e] = drafts[0]
        break
      preds = []
      for d in drafts:
        canvas = x.copy()
        canvas[0, s:e] = d
        preds.append(predict(canvas, s, e))
      forwards += 1
      targets = [commit_top(d, *pr, 1) for d, pr in zip(drafts, preds)]
      best = 0
      while best + 1 < k and np.array_equal(drafts[best + 1], targets[best]):
        best += 1
      x[0, s:e] = drafts[best]
      x0, conf = preds[best]
      if not (x[0, s:e] == m_id).any():
        break
  return x[0], forwards


@pytest.mark.parametrize("draft_steps", [pytest.param(2, marks=pytest.mark.slow), 4])
def test_matches_the_reference_loop(llada, draft_steps):
  sampler = make_sampler("draft_verify", draft_steps=draft_steps)
  out = generate(llada, PROMPTS, VALID, sampler=sampler, gen_length=GEN, block_length=BLOCK)
  assert_rows_match(out, freedave_reference, llada, PROMPTS, VALID, gen_length=GEN, block_length=BLOCK,
                    draft_steps=draft_steps)
  assert (np.asarray(out.nfe) < GEN).all()  # the drafts were accepted somewhere, or the test shows nothing


# prefix and window run the same windowed program as dual, another width; dream/none the llada/none program
SLOW = pytest.mark.slow


@pytest.mark.parametrize("layout,cache", [("llada", "none"), pytest.param("llada", "prefix", marks=SLOW),
                                          ("llada", "dual"), pytest.param("llada", "window", marks=SLOW),
                                          pytest.param("dream", "none", marks=SLOW), ("dream", "dual")])
def test_equals_one_token_per_step(request, layout, cache):
  net = request.getfixturevalue(layout)
  kw = dict(gen_length=GEN, block_length=BLOCK, cache=cache, window=2)
  exact = generate(net, PROMPTS, VALID, sampler=LowConfidence(steps=GEN), **kw)
  out = generate(net, PROMPTS, VALID, sampler=make_sampler("draft_verify", draft_steps=4), **kw)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(exact.tokens))
  nfe, accepted = np.asarray(out.nfe), np.asarray(out.extras["accepted_drafts"])
  # every forward advances one step plus its accepted drafts, except the block's last mask taken for free
  assert (nfe + accepted == GEN).all()
  assert (nfe < GEN).any()


def test_row_alone_equals_row_in_batch_and_cost_by_formula(llada):
  k = 3
  kw = dict(sampler=make_sampler("draft_verify", draft_steps=k), gen_length=GEN, block_length=BLOCK)
  out = generate(llada, PROMPTS, VALID, **kw)
  alone = generate(llada, PROMPTS[2:3], VALID[2:3], **kw)
  np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(out.tokens)[2])
  assert int(alone.nfe[0]) == int(out.nfe[2])
  # cache none: a block's first forward runs the canvas alone (L positions), every later one K copies of it
  length, blocks = PROMPTS.shape[1] + GEN, GEN // BLOCK
  nfe = np.asarray(out.nfe)
  np.testing.assert_array_equal(np.asarray(out.tokens_computed), length * (blocks + k * (nfe - blocks)))


def test_refusals(llada):
  with pytest.raises(ValueError, match="draft_steps=1 must be >= 2"):
    make_sampler("draft_verify", draft_steps=1)
  with pytest.raises(ValueError, match="temperature=0.5 must be 0"):
    make_sampler("draft_verify", temperature=0.5)


@pytest.mark.parametrize("cache", [pytest.param("none", marks=pytest.mark.slow), "block"])
def test_block_causal_model_equals_one_token_per_step(cache):
  """On a block-causal model (prompt tails placed in the first answer block) the copies are of the view inside
  the model's block, also against its exact cache (the prefill and store forwards stay on the B rows); one token
  per step is the threshold rule with tau > 1."""
  sdar = _net(lambda: tiny_sdar(dtype="float32"), 1, 8.0)
  prompts, valid = sdar_batch(sdar.cfg)
  kw = dict(gen_length=12, block_length=4, cache=cache)
  exact = generate(sdar, prompts, valid, sampler=make_sampler("threshold", tau=2.0), **kw)
  out = generate(sdar, prompts, valid, sampler=make_sampler("draft_verify", draft_steps=3), **kw)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(exact.tokens))
  nfe, accepted = np.asarray(out.nfe), np.asarray(out.extras["accepted_drafts"])
  np.testing.assert_array_equal(nfe + accepted, np.asarray(exact.nfe))  # each accepted draft saves one forward
  assert accepted.sum() > 0


def test_bench_runs_without_a_replay_and_the_probe_refuses(llada):
  from dlm.engine.divergence import divergence_report
  from dlm.eval.bench import bench
  sampler = make_sampler("draft_verify", draft_steps=2)
  result = bench(llada, PROMPTS, VALID, sampler=sampler, gen_length=GEN, block_length=BLOCK, cache="dual",
                 repeats=1)
  assert result["replay_s"] is None and result["nfe_mean"] < GEN and result["accepted_drafts_mean"] > 0
  with pytest.raises(ValueError, match="divergence probe does not run under candidate copies"):
    divergence_report(llada, PROMPTS, VALID, sampler=sampler, gen_length=GEN, block_length=BLOCK, cache="dual")
