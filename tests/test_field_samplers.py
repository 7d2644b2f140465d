"""The field's newer training-free rules (issue 12): EB-Sampler, KLASS, Prophet, WINO, ReMDM, and the protocol
they need (remasking, holding a block open, the answer-wide view, verification rows).

Each rule against hand-built cases or a plain NumPy re-derivation on fixed logits, then every rule batched
through `generate` on a tiny model.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine import View, generate
from dlm.engine.calls import NetworkCalls
from dlm.engine.state import Decision
from dlm.samplers import Ancestral, EntropyBounded, Klass, LowConfidence, Prophet, ReMDM, Wino
from dlm.samplers.base import AdaptiveSampler
from dlm.samplers.wino import wino_draft, wino_revoke
from dlm.schedules import LogLinear
from tests.conftest import PROMPTS, VALID
from tests.test_parallel_samplers import MASK, V, run_step, slots, state_of

GEN, BLOCK = 16, 8


def _logits_with_entropy(entropies, rng):
  """Logits [B, N, V] whose softmax has (roughly) the given entropy per slot: 0 means one-hot (-inf elsewhere)."""
  b, n = np.shape(entropies)
  out = np.full((b, n, V), -np.inf)
  for i in range(b):
    for j in range(n):
      h = entropies[i][j]
      if h == 0:
        out[i, j, 3 + j % 5] = 0.0
      else:
        out[i, j, :MASK] = rng.normal(0, 1.0 / max(h, 1e-3), MASK)
  return out


def _entropy_np(logits):
  z = logits - logits.max(-1, keepdims=True)
  p = np.exp(z)
  p /= p.sum(-1, keepdims=True)
  with np.errstate(divide="ignore", invalid="ignore"):
    return -np.where(p > 0, p * np.log(p), 0.0).sum(-1)


def _view(logits):
  logits = np.asarray(logits, np.float64)
  return View(logits=jnp.asarray(logits, jnp.float32), hidden=jnp.zeros(logits.shape[:2] + (1,)))


# ---------------------------------------------------------------------------------------------------------------
# EB-Sampler


def eb_count_np(entropy, score, masked, gamma):
  """The paper's bound, as a plain loop: grow U along the ranking while sum(H) - max(H) <= gamma."""
  idx = [i for i in sorted(range(len(score)), key=lambda i: (-score[i], i)) if masked[i]]
  chosen = []
  for i in idx:
    trial = chosen + [i]
    h = [entropy[j] for j in trial]
    if sum(h) - max(h) <= gamma:
      chosen = trial
    else:
      break
  return sorted(chosen)


def test_eb_gamma_zero_commits_first_plus_zero_entropy():
  rng = np.random.default_rng(0)
  ent = [[0, 0.7, 0, 1.2, 0.3, 0], [0.5, 0.9, 1.1, 0.4, 0.8, 0.6]]
  logits = _logits_with_entropy(ent, rng)
  h = _entropy_np(logits)
  masked = np.ones((2, 6), bool)
  masked[0, 5] = False
  _, commit, _ = run_step(EntropyBounded(gamma=0.0), _view(logits), state_of(masked))
  # Row 0: the zero-entropy masked slots 0 and 2, then the lowest positive entropy (slot 4, whose own entropy is
  # excluded from the bound); row 1: only its lowest-entropy slot.
  assert slots(commit[0]) == sorted([0, 2, int(np.argmin(np.where(h[0] > 0, h[0], np.inf)))])
  assert slots(commit[1]) == [int(np.argmin(h[1]))]


@pytest.mark.parametrize("proxy", ["entropy", "confidence"])
@pytest.mark.parametrize("gamma", [0.0, 0.05, 0.5, 2.0])
def test_eb_matches_loop(proxy, gamma):
  rng = np.random.default_rng(1)
  logits = rng.normal(0, 1, (16, 8, V)) * rng.choice([0.5, 3.0, 8.0], (16, 8, 1))
  logits[..., MASK] = -np.inf
  masked = rng.random((16, 8)) < 0.8
  masked[:, 0] = True
  tokens, commit, _ = run_step(EntropyBounded(gamma=gamma, proxy=proxy), _view(logits), state_of(masked))
  h = _entropy_np(logits)
  z = np.exp(logits - logits.max(-1, keepdims=True))
  conf = (z / z.sum(-1, keepdims=True)).max(-1)
  for i in range(16):
    score = -h[i] if proxy == "entropy" else conf[i]
    assert slots(commit[i]) == eb_count_np(h[i], score, masked[i], gamma), i
  np.testing.assert_array_equal(tokens, logits.argmax(-1))


def test_eb_units_bits_scale_gamma():
  rng = np.random.default_rng(2)
  logits = rng.normal(0, 2, (8, 8, V))
  logits[..., MASK] = -np.inf
  masked = np.ones((8, 8), bool)
  _, nats, _ = run_step(EntropyBounded(gamma=0.3 * math.log(2), units="nats"), _view(logits), state_of(masked))
  _, bits, _ = run_step(EntropyBounded(gamma=0.3, units="bits"), _view(logits), state_of(masked))
  np.testing.assert_array_equal(nats, bits)


# ---------------------------------------------------------------------------------------------------------------
# KLASS


def klass_np(logit_seq, masked0, steps_per_block, conf_thr, kl_thr, history):
  """shkim0116/KLASS stable_confident_decode (alg='klass', unmask 'all', T = 0) on one block, one row at a time,
  with a fixed logit sequence per step (the network's stand-in).  -> list of committed slot lists per step."""
  masked = masked0.copy()
  m0 = masked.sum()
  base, rem = divmod(int(m0), steps_per_block)
  counts = [base + (i < rem) for i in range(steps_per_block)]
  p_prev = np.zeros_like(logit_seq[0])
  kl_hist = np.zeros(logit_seq[0].shape[:-1] + (history,))
  out = []
  for step in range(steps_per_block):
    if not masked.any():
      break
    z = np.exp(logit_seq[step] - logit_seq[step].max(-1, keepdims=True))
    p = z / z.sum(-1, keepdims=True)
    conf = p.max(-1)
    kl = (p * (np.log(p + 1e-12) - np.log(p_prev + 1e-12))).sum(-1)
    kl_hist = np.concatenate([kl_hist[..., 1:], kl[..., None]], -1)
    p_prev = p
    stable = (kl_hist < kl_thr).all(-1) if step >= history - 1 else np.zeros_like(masked)
    ready = stable & (conf > conf_thr) & masked
    if ready.any():
      chosen = np.flatnonzero(ready)
    else:
      order = sorted(np.flatnonzero(masked), key=lambda i: (-conf[i], i))
      chosen = np.asarray(order[:counts[step]])
    if step == steps_per_block - 1:  # dlm's documented difference: the last step commits what is left
      chosen = np.flatnonzero(masked)
    out.append(sorted(int(c) for c in chosen))
    masked[chosen] = False
  return out


def test_klass_matches_reference_loop():
  rng = np.random.default_rng(4)
  bk, spb = 8, 6
  base = rng.normal(0, 3, (bk, V))
  seq = []
  for step in range(spb):  # predictions that settle: later steps move less
    seq.append(base + rng.normal(0, 2.0 / (1 + 3 * step), (bk, V)))
  for s in seq:
    s[..., MASK] = -np.inf
  sampler = Klass(steps=spb, conf_threshold=0.6, kl_threshold=0.05, history=2)
  masked = np.ones((1, bk), bool)
  carry = sampler.init(1, bk, V)
  got = []
  for step in range(spb):
    if not masked.any():
      break
    state = dataclasses.replace(state_of(masked, step=step), entry_masked=jnp.asarray([bk], jnp.int32))
    _, commit, carry = run_step(sampler, _view(seq[step][None]), state, carry)
    got.append(slots(commit[0] & masked[0]))
    masked &= ~commit
  assert got == klass_np([s for s in seq], np.ones(bk, bool), spb, 0.6, 0.05, 2)
  assert any(len(c) > 1 for c in got)  # the stable rule fired somewhere, not only the fallback


# ---------------------------------------------------------------------------------------------------------------
# Prophet


def test_prophet_commits_everything_when_the_gap_passes():
  rng = np.random.default_rng(5)
  g = 8
  logits = rng.normal(0, 0.1, (2, g, V))
  logits[0, :, 3] += 8.0  # row 0: top-1/top-2 gap ~8 >= 7.5 (early phase)
  logits[1, :, 3] += 6.0  # row 1: ~6 < 7.5, so a normal LLaDA step (k = 1)
  logits[..., MASK] = -np.inf
  masked = np.ones((2, g), bool)
  in_block = jnp.arange(g) < 4
  state = dataclasses.replace(state_of(masked), in_block=in_block, num_blocks=2, block_length=4,
                              entry_masked=jnp.asarray([4, 4], jnp.int32))
  _, commit, _ = run_step(Prophet(steps=8), _view(logits), state)
  assert slots(commit[0]) == list(range(g))  # every masked answer slot, beyond the active block too
  assert len(slots(commit[1])) == 1 and slots(commit[1])[0] < 4
  late = dataclasses.replace(state, step=jnp.int32(3), block=jnp.int32(1))  # global step 8 of 8: late, 2.5
  _, commit, _ = run_step(Prophet(steps=8), _view(logits), late)
  assert slots(commit[1]) == list(range(g))
  _, commit, _ = run_step(Prophet(steps=8, anchor=6, span=2), _view(logits), state)  # gap over slots 6, 7
  assert slots(commit[0]) == list(range(g))


def test_prophet_never_triggering_equals_low_confidence(model):
  key = jax.random.key(1)
  p = generate(model, PROMPTS, VALID, sampler=Prophet(steps=GEN, thresholds=(1e9, 1e9, 1e9)), gen_length=GEN,
               block_length=BLOCK, key=key)
  q = generate(model, PROMPTS, VALID, sampler=LowConfidence(steps=GEN), gen_length=GEN, block_length=BLOCK,
               key=key)
  np.testing.assert_array_equal(np.asarray(p.tokens), np.asarray(q.tokens))
  np.testing.assert_array_equal(np.asarray(p.nfe), np.asarray(q.nfe))


# ---------------------------------------------------------------------------------------------------------------
# WINO


def test_wino_draft_and_revoke_by_hand():
  conf = jnp.asarray([[0.9, 0.7, 0.65, 0.2, 0.1, 0.3, 0.61, 0.1],
                      [0.5, 0.4, 0.3, 0.2, 0.1, 0.3, 0.2, 0.1]])
  masked = jnp.asarray([[1, 1, 1, 1, 1, 1, 1, 1], [1, 1, 1, 0, 0, 0, 0, 0]], bool)
  draft = np.asarray(wino_draft(conf, masked, 0.6))
  assert slots(draft[0]) == [0, 1, 2, 6]  # > 0.6; max_accept = min(max(int(5.6), 5), 20) = 5 is not exceeded
  assert slots(draft[1]) == [0]  # none passes: the top-1
  many = jnp.full((1, 8), 0.95)
  assert np.asarray(wino_draft(many, jnp.ones((1, 8), bool), 0.6)).sum() == 5  # capped at max_accept = 5
  back = jnp.asarray([[0.5, 0.95, 0.3, 0.8, 0.1, 0.99, 0.2, 0.85]])
  committed = jnp.asarray([[1, 1, 1, 1, 1, 1, 0, 0]], bool)
  revoke = wino_revoke(back, committed, 0.9, jnp.asarray([30]), jnp.asarray([2]))
  assert slots(np.asarray(revoke)[0]) == [0, 2, 3, 4]  # committed and < 0.9
  revoke = wino_revoke(back, committed, 0.9, jnp.asarray([3]), jnp.asarray([2]))
  assert slots(np.asarray(revoke)[0]) == [2, 4]  # 4 low >= last_accept 3: only the 2 least confident
  revoke = wino_revoke(back, committed, 0.9, jnp.asarray([30]), jnp.asarray([1]))
  assert not np.asarray(revoke).any()  # a single draft verifies nothing


def test_shadow_rows_follow_winos_attention_mask(model):
  """Canvas rows equal a plain forward; shadow rows equal the network run on WINO's extended canvas with its
  attention mask built as the reference builds it (all keys but the shadow ones; shadow rows: the shadow block
  and every canvas key except their own slot)."""
  prompts, valid = jnp.asarray(PROMPTS), jnp.asarray(VALID)
  g, bk = 8, 4
  calls = NetworkCalls(model, prompts, valid, gen_length=g, block_length=bk, cfg_scale=0.0, plan=None)
  tokens = calls.initial_tokens(prompts).at[:, -g:-2].set(jnp.asarray([7, 8, 9, 10, 11, 12]))
  start = PROMPTS.shape[1] + 2
  hidden, shadow = calls.forward_with_shadow(tokens, start)
  np.testing.assert_allclose(hidden, calls.forward(tokens), atol=1e-5)
  length = tokens.shape[1]
  mask = np.ones((length + bk, length + bk), bool)
  mask[:, length:] = False
  mask[length:, length:] = True
  for i in range(bk):
    mask[length + i, start + i] = False
  rows = np.concatenate([np.asarray(tokens), np.full((3, bk), model.cfg.mask_id)], 1)
  positions = np.asarray(calls.positions)
  positions = np.concatenate([positions, positions[:, start:start + bk]], 1)
  keys = np.concatenate([VALID, np.ones((3, g + bk), bool)], 1)
  want, _ = model(jnp.asarray(rows), jnp.asarray(positions), jnp.asarray(mask[None] & keys[:, None, :]))
  np.testing.assert_allclose(shadow, want[:, length:], atol=1e-5)
  assert np.abs(np.asarray(shadow) - np.asarray(hidden[:, start:start + bk])).max() > 1e-2  # not the plain rows


# ---------------------------------------------------------------------------------------------------------------
# ReMDM and the remasking protocol


def test_remdm_rates_by_hand():
  s = ReMDM(steps=4, eta=0.3, eps=0.0)  # grid 1, .75, .5, .25, 0
  at, as_, sig = (float(x) for x in s.rates(jnp.int32(1), 4))  # t = .75 -> s = .5: alpha .25 -> .5
  assert (at, as_) == pytest.approx((0.25, 0.5)) and sig == pytest.approx(min(0.3, 0.5 / 0.25))
  s = ReMDM(steps=4, strategy="rescale", eta=0.3, eps=0.0)
  assert float(s.rates(jnp.int32(2), 4)[2]) == pytest.approx(0.3 * min(1.0, 0.25 / 0.5))  # t .5 -> s .25
  s = ReMDM(steps=10, strategy="loop", eta=0.02, t_on=0.55, t_off=0.05, alpha_on=0.9, eps=0.0)
  at, as_, sig = (float(x) for x in s.rates(jnp.int32(6), 10))  # t = .4 in the loop: alpha fixed at alpha_on
  assert (at, as_, sig) == pytest.approx((0.9, 0.9, 0.02))
  at, as_, sig = (float(x) for x in s.rates(jnp.int32(0), 10))  # t = 1 -> .9: ramp-in, MDLM step
  assert (at, as_, sig) == pytest.approx((0.0, 0.1 * 0.9 / 0.45, 0.0))


@pytest.mark.parametrize("blocks", [1, 2])
def test_remdm_without_remasking_is_ancestral(model, blocks):
  """eta = 0 remasks nothing: token for token MDLM's ancestral sampler on alpha(t) = 1 - t."""
  key = jax.random.key(7)
  kw = dict(gen_length=GEN, block_length=GEN // blocks, key=key)
  r = generate(model, PROMPTS, VALID, sampler=ReMDM(steps=8, eta=0.0, top_p=1.0, eps=0.0), **kw)
  a = generate(model, PROMPTS, VALID, sampler=Ancestral(steps=8, schedule=LogLinear(eps=0.0)), **kw)
  np.testing.assert_array_equal(np.asarray(r.tokens), np.asarray(a.tokens))
  np.testing.assert_array_equal(np.asarray(r.nfe), np.asarray(a.nfe))
  assert not np.asarray(r.remasked).any()


def test_remdm_holds_each_block_for_its_steps(model):
  out = generate(model, PROMPTS, VALID, sampler=ReMDM(steps=8, eta=0.5, cache_predictions=False),
                 gen_length=GEN, block_length=BLOCK, key=jax.random.key(2))
  np.testing.assert_array_equal(np.asarray(out.nfe), 8)  # 4 steps per block, even after the masks are gone
  assert np.asarray(out.remasked).sum() > 0
  assert np.asarray(out.finished).all()
  np.testing.assert_array_equal(np.asarray(out.tokens)[:, :PROMPTS.shape[1]], PROMPTS)


@dataclasses.dataclass(frozen=True)
class _RemaskEverything(AdaptiveSampler):
  """A rogue sampler: commits the top-1 slot and asks to remask every slot of the view, every step."""

  def step(self, view, block, carry, key):
    x0 = jnp.argmax(view.logits, -1).astype(jnp.int32)
    first = jnp.arange(x0.shape[1])[None] == jnp.argmax(block.masked, -1)[:, None]
    return Decision(tokens=x0, commit=first & block.masked, remask=jnp.ones_like(block.masked)), carry


def test_remask_protocol_guards(model):
  """Remasks touch only earlier commits inside the answer: prompts stay, a slot committed now stays, commit_step
  goes back to -1 for remasked slots, and the per-row count adds up."""
  out = generate(model, PROMPTS, VALID, sampler=_RemaskEverything(), gen_length=8, block_length=8, max_nfe=5)
  tokens, steps = np.asarray(out.tokens), np.asarray(out.commit_step)
  np.testing.assert_array_equal(tokens[:, :PROMPTS.shape[1]], PROMPTS)
  answer = tokens[:, PROMPTS.shape[1]:]
  assert ((answer != model.cfg.mask_id).sum(-1) == 1).all()  # only the last step's commit survives
  assert ((steps >= 0) == (answer != model.cfg.mask_id)).all() and (steps[steps >= 0] == 4).all()
  np.testing.assert_array_equal(np.asarray(out.remasked), 4)  # one revoked per step after the first
  assert not np.asarray(out.finished).any()


# ---------------------------------------------------------------------------------------------------------------
# every rule through the engine, batched


RULES = {
    "eb": EntropyBounded(gamma=0.5),
    "eb_confidence": EntropyBounded(gamma=0.5, proxy="confidence", temperature=1.0),
    "klass": Klass(steps=GEN, conf_threshold=0.5, kl_threshold=0.5),
    "prophet": Prophet(steps=GEN, thresholds=(3.0, 2.0, 1.0)),
    "wino": Wino(),
    "remdm_cap": ReMDM(steps=8, eta=0.2),
    "remdm_conf": ReMDM(steps=8, strategy="conf"),
    "remdm_loop": ReMDM(steps=10, strategy="loop", eta=0.2),
}


@pytest.mark.parametrize("sampler", RULES.values(), ids=RULES.keys())
def test_rules_batched_under_jit(sharp_model, sampler):
  kw = dict(sampler=sampler, gen_length=GEN, block_length=BLOCK, key=jax.random.key(3))
  out = generate(sharp_model, PROMPTS, VALID, **kw)
  tokens = np.asarray(out.tokens)
  np.testing.assert_array_equal(tokens[:, :PROMPTS.shape[1]], PROMPTS)
  assert np.asarray(out.finished).all()
  assert (np.asarray(out.nfe) <= sampler.max_nfe(GEN, BLOCK)).all()
  if isinstance(sampler, (EntropyBounded, Wino, Klass, Prophet)) and sampler.temperature == 0:
    # deterministic rules: a row alone equals the same row in the batch
    alone = generate(sharp_model, PROMPTS[1:2], VALID[1:2], **kw)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], tokens[1])
    np.testing.assert_array_equal(np.asarray(alone.nfe)[0], np.asarray(out.nfe)[1])


def test_answer_view_and_shadow_rows_need_cache_none(model):
  for sampler in (Prophet(steps=GEN), Wino()):
    with pytest.raises(ValueError, match="cache='none'"):
      generate(model, PROMPTS, VALID, sampler=sampler, gen_length=GEN, block_length=BLOCK, cache="dual")
