"""Soft inputs through the engine (docs/design.md §1, item 2) and the belief-state samplers: LRD and dInfer's
iteration smoothing, each against a plain NumPy loop (tests/reference_loops.py)."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine.generate import generate
from dlm.engine.state import BlockState, Decision, View, as_decision
from dlm.model.transformer import positions_from_valid
from dlm.samplers import IterationSmoothing, LatentRefinement, LowConfidence, Threshold, Wino, make_sampler
from dlm.samplers.base import drive_step
from dlm.samplers.lrd import mean_kl, nucleus
from tests.conftest import PROMPTS, VALID
from tests.reference_loops import lrd_reference, smoothing_reference


def test_one_hot_mixture_gives_exactly_the_token_embeddings_and_logits(model, dream_model):
  for net in (model, dream_model):
    tokens = jnp.asarray(PROMPTS)
    valid = jnp.asarray(VALID)
    one_hot = jax.nn.one_hot(tokens, net.cfg.vocab_size)
    np.testing.assert_array_equal(np.asarray(net.embed_mixture(one_hot)), np.asarray(net.embed_tokens(tokens)))
    pos = positions_from_valid(valid)
    hard, _ = net(tokens, pos, valid)
    soft, _ = net(net.embed_mixture(one_hot), pos, valid)
    np.testing.assert_array_equal(np.asarray(net.logits(soft)), np.asarray(net.logits(hard)))


@dataclasses.dataclass(frozen=True)
class HardLRD(LatentRefinement):
  """The same rule fed hard masks: the engine never sees a belief."""

  soft_inputs = False

  def step(self, view, block, carry, key):
    decision, carry = as_decision(super().step(view, block, carry, key))
    return decision.replace(soft=None), carry


@pytest.mark.parametrize("cache", ["none", "dual", "prefix"])
def test_lrd_with_r_f_zero_equals_its_hard_input_counterpart(model, cache):
  settings = dict(r_f=0.0, refine_steps=3, tau_refine=1e-4, tau_decode=1e-3)
  kw = dict(gen_length=8, block_length=4, cache=cache)
  soft = generate(model, PROMPTS, VALID, sampler=LatentRefinement(**settings), **kw)
  hard = generate(model, PROMPTS, VALID, sampler=HardLRD(**settings), **kw)
  np.testing.assert_array_equal(np.asarray(soft.tokens), np.asarray(hard.tokens))
  np.testing.assert_array_equal(np.asarray(soft.nfe), np.asarray(hard.nfe))
  assert bool(soft.finished.all())


@pytest.mark.parametrize("settings", [
    dict(r_f=0.5, top_p=0.9, refine_steps=4, tau_refine=1e-3, tau_decode=1e-3),
    dict(r_f=0.2, top_p=0.5, refine_steps=2, tau_refine=1.0, tau_decode=0.0, per_step=2),
    dict(r_f=0.15, top_p=1.0, refine_steps=0, tau_refine=0.1, tau_decode=0.05),
])
def test_lrd_matches_the_numpy_loop_row_by_row(model, settings):
  out = generate(model, PROMPTS, VALID, sampler=LatentRefinement(**settings), gen_length=8, block_length=4)
  ref, nfe, refines, stops = lrd_reference(model, PROMPTS, VALID, gen_length=8, block_length=4, **settings)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)  # the reference decodes each row alone
  np.testing.assert_array_equal(np.asarray(out.nfe), nfe)
  if settings["refine_steps"]:
    assert refines.min() >= 2  # both phases ran in every block
  assert (np.asarray(out.nfe) <= LatentRefinement(**settings).max_nfe(8, 4)).all()


def test_lrd_soft_inputs_change_the_decode(model):
  """r_f > 0 must reach the network: some row's tokens or NFE differ from the hard-input run."""
  settings = dict(r_f=0.9, refine_steps=4, tau_refine=0.0, tau_decode=0.0)
  soft = generate(model, PROMPTS, VALID, sampler=LatentRefinement(**settings), gen_length=8, block_length=8)
  hard = generate(model, PROMPTS, VALID, sampler=HardLRD(**settings), gen_length=8, block_length=8)
  assert not np.array_equal(np.asarray(soft.tokens), np.asarray(hard.tokens))


def _view(logits):
  logits = np.asarray(logits, np.float32)
  return View(logits=jnp.asarray(logits), hidden=jnp.zeros(logits.shape[:2] + (1,), jnp.float32))


def _state(masked, step):
  masked = np.asarray(masked, bool)
  return BlockState(tokens=jnp.asarray(np.where(masked, 1, 0), jnp.int32), masked=jnp.asarray(masked),
                    active=jnp.asarray(masked.any(-1)), entry_masked=jnp.asarray(masked.sum(-1), jnp.int32),
                    step=jnp.int32(step), block=jnp.int32(0), num_blocks=1, block_length=masked.shape[1], mask_id=1,
                    end_ids=(2,))


def test_lrd_kl_early_stop_on_a_constructed_converged_case():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(2, 5, 8)) * 3
  logits[..., 1] = -np.inf  # the mask id, banned as the engine does
  masked = np.array([[1, 1, 0, 1, 1], [1, 1, 1, 1, 1]], bool)
  sampler = LatentRefinement(refine_steps=3, tau_decode=0.1)
  logp = jax.nn.log_softmax(jnp.asarray(logits, jnp.float32), -1)
  same = dict(logp=logp, phase=jnp.ones(2, jnp.int32), refined=jnp.full(2, 3, jnp.int32), has_prev=jnp.ones(2, bool))
  # Row 0's previous belief equals the current one (KL 0 < 0.1): it commits every masked slot; row 1 has no
  # previous phase-2 belief (has_prev False): it commits only its lowest-entropy slot.
  carry = dict(same, has_prev=jnp.array([True, False]))
  decision, out = as_decision(drive_step(sampler, _view(logits), _state(masked, 1), carry, jax.random.key(0)))
  commit = np.asarray(decision.commit)
  np.testing.assert_array_equal(commit[0], masked[0])
  probs = np.exp(np.asarray(logp[1], np.float64))
  entropy = -np.sum(np.where(probs > 0, probs * np.log(np.where(probs > 0, probs, 1)), 0), -1)
  np.testing.assert_array_equal(np.flatnonzero(commit[1]), [np.argmin(entropy)])
  np.testing.assert_array_equal(np.asarray(decision.tokens), logits.argmax(-1))
  # A far-away previous belief does not stop.
  moved = dict(same, logp=jnp.asarray(jax.nn.log_softmax(jnp.asarray(-logits, jnp.float32), -1)))
  moved["logp"] = jnp.where(jnp.isfinite(logp), moved["logp"], -jnp.inf)
  decision, _ = as_decision(drive_step(sampler, _view(logits), _state(masked, 1), moved, jax.random.key(0)))
  assert np.asarray(decision.commit).sum(-1).tolist() == [1, 1]
  # Phase 1: a converged refinement commits nothing and switches to phase 2 with no previous belief.
  refine = dict(same, phase=jnp.zeros(2, jnp.int32), refined=jnp.zeros(2, jnp.int32))
  decision, out = as_decision(drive_step(sampler, _view(logits), _state(masked, 1), refine, jax.random.key(0)))
  assert not np.asarray(decision.commit).any()
  assert np.asarray(out["phase"]).tolist() == [1, 1] and not np.asarray(out["has_prev"]).any()
  # The soft input: (1 - a) on the mask id plus a times the nucleus, a = r_f (1 - H / log V).
  soft = np.asarray(decision.soft, np.float64)
  alpha = 0.15 * (1 - entropy / np.log(8))
  np.testing.assert_allclose(soft[1].sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(soft[1, :, 1], 1 - alpha, rtol=1e-5)


def test_nucleus_and_kl_by_hand():
  probs = jnp.asarray([[0.5, 0.3, 0.15, 0.05], [0.25, 0.25, 0.25, 0.25]])
  np.testing.assert_allclose(nucleus(probs, 0.9)[0], [0.5 / 0.95, 0.3 / 0.95, 0.15 / 0.95, 0], rtol=1e-6)
  np.testing.assert_allclose(nucleus(probs, 0.5)[0], [1, 0, 0, 0])
  np.testing.assert_allclose(nucleus(probs, 0.5)[1], [0.5, 0.5, 0, 0])  # ties: lower ids first
  np.testing.assert_allclose(nucleus(probs, 0.6)[1], [1 / 3, 1 / 3, 1 / 3, 0], rtol=1e-6)
  np.testing.assert_allclose(nucleus(probs, 1.0), probs, rtol=1e-6)
  logp = jnp.log(jnp.asarray([[[0.5, 0.5], [0.9, 0.1]]]))
  logq = jnp.log(jnp.asarray([[[0.9, 0.1], [0.9, 0.1]]]))
  kl = 0.5 * np.log(0.5 / 0.9) + 0.5 * np.log(0.5 / 0.1)
  np.testing.assert_allclose(mean_kl(logp, logq, jnp.asarray([[True, True]])), [kl / 2], rtol=1e-5)
  np.testing.assert_allclose(mean_kl(logp, logq, jnp.asarray([[True, False]])), [kl], rtol=1e-5)
  assert np.isinf(np.asarray(mean_kl(logp, logq, jnp.asarray([[False, False]])))).all()


@pytest.mark.parametrize("tau", [0.9, 0.3])
def test_smoothing_matches_the_numpy_loop_row_by_row(model, tau):
  out = generate(model, PROMPTS, VALID, sampler=IterationSmoothing(tau=tau), gen_length=8, block_length=4)
  ref, nfe = smoothing_reference(model, PROMPTS, VALID, gen_length=8, block_length=4, tau=tau)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  np.testing.assert_array_equal(np.asarray(out.nfe), nfe)


@pytest.mark.parametrize("unroll", [dict(expected_tpf=1), dict(expected_tpf=2, maximum_unroll=3)])
def test_smoothing_runs_dinfers_forward_groups_past_the_block_end(model, unroll):
  """dInfer checks the block only after a group of forwards, so a block that completes inside the group still
  takes the group's remaining forwards (NFE, t and beliefs move on); against the loop written from BlockRunner."""
  out = generate(model, PROMPTS, VALID, sampler=IterationSmoothing(tau=0.001, decay=0.5, **unroll), gen_length=8,
                 block_length=4)
  ref, nfe = smoothing_reference(model, PROMPTS, VALID, gen_length=8, block_length=4, tau=0.001, decay=0.5,
                                 **unroll)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  np.testing.assert_array_equal(np.asarray(out.nfe), nfe)
  check = generate(model, PROMPTS, VALID, sampler=IterationSmoothing(tau=0.001, decay=0.5, maximum_unroll=1),
                   gen_length=8, block_length=4)
  assert (np.asarray(out.nfe) > np.asarray(check.nfe)).any()  # the groups ran forwards past a finished block


def test_smoothing_with_zero_weight_is_hard_threshold_decoding(model):
  """w = 0 feeds exactly the mask embedding (one-hot on the mask id), and tau > 1 keeps the annealed threshold
  above every confidence: one slot per step, as Fast-dLLM's threshold rule with tau > 1 on hard inputs."""
  zero = IterationSmoothing(tau=2.0, w_init=0.0, w_growth=0.0, w_max=0.0)
  out = generate(model, PROMPTS, VALID, sampler=zero, gen_length=8, block_length=4)
  one = generate(model, PROMPTS, VALID, sampler=Threshold(tau=2.0), gen_length=8, block_length=4)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(one.tokens))


@pytest.mark.parametrize("cache", ["dual", "prefix", "window"])
def test_smoothing_block_span_runs_under_every_cache(model, cache):
  sampler = IterationSmoothing(span="block")
  out = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=8, block_length=4, cache=cache)
  assert bool(out.finished.all()) and (np.asarray(out.nfe) <= 8).all()
  with pytest.raises(ValueError, match="cache='dual'.*view_span='answer'"):
    generate(model, PROMPTS, VALID, sampler=IterationSmoothing(), gen_length=8, block_length=4, cache="dual")


@pytest.mark.parametrize("sampler", [LatentRefinement(r_f=0.3, refine_steps=2), IterationSmoothing()])
def test_belief_samplers_rows_are_independent(model, sampler):
  batch = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=8, block_length=4)
  for row in range(PROMPTS.shape[0]):
    alone = generate(model, PROMPTS[row:row + 1], VALID[row:row + 1], sampler=sampler, gen_length=8, block_length=4)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batch.tokens)[row])
    assert int(alone.nfe[0]) == int(batch.nfe[row])


def test_registry_and_bad_settings():
  assert isinstance(make_sampler("lrd", r_f=0.1), LatentRefinement)
  assert isinstance(make_sampler("smoothing", tau=0.8), IterationSmoothing)
  for bad, match in [(dict(r_f=1.5), "r_f=1.5"), (dict(top_p=0.0), "top_p=0.0"), (dict(refine_steps=-1), "refine_steps"),
                     (dict(per_step=0), "per_step")]:
    with pytest.raises(ValueError, match=match):
      LatentRefinement(**bad)
  with pytest.raises(ValueError, match="span='row'"):
    IterationSmoothing(span="row")
  with pytest.raises(ValueError, match="w_max=-0.1"):
    IterationSmoothing(w_max=-0.1)


@dataclasses.dataclass(frozen=True)
class ForgetsBelief(LatentRefinement):
  def step(self, view, block, carry, key):
    decision, carry = as_decision(super().step(view, block, carry, key))
    return decision.replace(soft=None), carry


@dataclasses.dataclass(frozen=True)
class UndeclaredBelief(LowConfidence):
  def step(self, view, block, carry, key):
    tokens, commit, carry = super().step(view, block, carry, key)
    return Decision(tokens=tokens, commit=commit, soft=jnp.zeros(tokens.shape + (4,))), carry


@dataclasses.dataclass(frozen=True)
class SoftWino(Wino):
  soft_inputs = True


def test_protocol_errors_are_one_line_and_name_the_fix(model):
  kw = dict(gen_length=8, block_length=4)
  with pytest.raises(ValueError, match=r"ForgetsBelief.soft_inputs is True, so its step must return Decision.soft"):
    generate(model, PROMPTS, VALID, sampler=ForgetsBelief(), **kw)
  with pytest.raises(ValueError, match="soft_inputs is False; set it to True"):
    generate(model, PROMPTS, VALID, sampler=UndeclaredBelief(steps=8), **kw)
  with pytest.raises(ValueError, match="soft_inputs cannot be combined with verification rows"):
    generate(model, PROMPTS, VALID, sampler=SoftWino(), **kw)
