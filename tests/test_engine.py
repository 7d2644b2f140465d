"""The compiled engine against plain Python loops, its invariants, and its argument checks."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dlm.engine import generate
from dlm.samplers import Ancestral, LowConfidence, RandomRemasking, make_sampler
from tests.conftest import PROMPTS, VALID
from tests.reference_loops import ancestral_reference, llada_reference


@pytest.mark.parametrize("sampler", [
    LowConfidence(steps=8),
    LowConfidence(steps=8, temperature=0.8),
    RandomRemasking(steps=8, temperature=1.0),
    LowConfidence(steps=4, cfg_scale=1.5),
], ids=["greedy", "stochastic", "random", "cfg"])
def test_llada_loop_matches_python_reference(model, sampler):
  key = jax.random.key(7)
  out = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=8, block_length=4, key=key)
  ref = llada_reference(model, PROMPTS, VALID, steps=sampler.steps, gen_length=8, block_length=4,
                        temperature=sampler.temperature, cfg_scale=sampler.cfg_scale,
                        remasking="random" if isinstance(sampler, RandomRemasking) else "low_confidence", key=key)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  forwards = 2 if sampler.cfg_scale else 1
  np.testing.assert_array_equal(np.asarray(out.nfe), sampler.steps * forwards)
  assert bool(out.finished.all())


def test_dream_shift_uses_previous_position(dream_model):
  """With a shifted-logit model, slot i must be predicted from the hidden state at i - 1."""
  out = generate(dream_model, PROMPTS, VALID, sampler=LowConfidence(steps=8), gen_length=8, block_length=8)
  ref = llada_reference(dream_model, PROMPTS, VALID, steps=8, gen_length=8, block_length=8, key=jax.random.key(0))
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)


def test_row_alone_equals_row_in_padded_batch(model):
  sampler = LowConfidence(steps=8)
  batch = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=8, block_length=4)
  for i in range(len(PROMPTS)):
    n = int(VALID[i].sum())
    alone = generate(model, PROMPTS[i:i + 1, -n:], sampler=sampler, gen_length=8, block_length=4)
    np.testing.assert_array_equal(np.asarray(alone.answers[0]), np.asarray(batch.answers[i]))


@settings(max_examples=6, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**31 - 1), temperature=st.sampled_from([0.0, 1.0]), budget=st.integers(1, 8),
       prompt=st.lists(st.integers(3, 39), min_size=6, max_size=6))
def test_invariants(model, seed, temperature, budget, prompt):
  prompts = np.array([prompt, PROMPTS[0]], np.int32)
  valid = prompts != 0
  sampler = LowConfidence(steps=8, temperature=temperature)
  out = generate(model, prompts, valid, sampler=sampler, gen_length=8, block_length=4, max_nfe=budget,
                 key=jax.random.key(seed), record=True)
  tokens = np.asarray(out.tokens)
  np.testing.assert_array_equal(tokens[:, :6], prompts)  # prompt tokens unchanged
  assert (np.asarray(out.nfe) <= budget).all()  # NFE within budget
  history = np.asarray(out.history)[:budget]
  masked_counts = (history == model.cfg.mask_id).sum(-1)  # [T, B]
  assert (np.diff(masked_counts, axis=0) <= 0).all()  # masked count never increases
  if budget == 8:
    assert (tokens[:, 6:] != model.cfg.mask_id).all()  # all slots filled when the budget allows
    assert bool(out.finished.all())
  again = generate(model, prompts, valid, sampler=sampler, gen_length=8, block_length=4, max_nfe=budget,
                   key=jax.random.key(seed), record=True)
  np.testing.assert_array_equal(np.asarray(again.tokens), tokens)  # same seed -> same output


def test_ancestral_matches_python_reference(model):
  key = jax.random.key(5)
  sampler = Ancestral(steps=6, temperature=1.0, cache_predictions=False)
  out = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=8, key=key)
  ref = ancestral_reference(model, PROMPTS, VALID, steps=6, gen_length=8, temperature=1.0, key=key)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  assert bool(out.finished.all())


def test_ancestral_caching_skips_unchanged_steps(model):
  """With many more steps than slots most steps reveal nothing; those must not cost an NFE, and the output
  must equal the uncached run's (the network is time-independent)."""
  key = jax.random.key(11)
  cached = generate(model, PROMPTS, VALID, sampler=Ancestral(steps=32), gen_length=8, key=key)
  plain = generate(model, PROMPTS, VALID, sampler=Ancestral(steps=32, cache_predictions=False), gen_length=8,
                   key=key)
  np.testing.assert_array_equal(np.asarray(cached.tokens), np.asarray(plain.tokens))
  np.testing.assert_array_equal(np.asarray(plain.nfe), np.asarray(plain.steps))  # a row stops once resolved
  assert (np.asarray(cached.nfe) < np.asarray(plain.nfe)).all() and (np.asarray(cached.nfe) >= 1).all()
  assert bool(cached.finished.all())
  # Each charged forward follows a step that changed the row (or is the first one).
  changes = np.asarray(cached.commit_step)
  for row in range(len(PROMPTS)):
    assert np.asarray(cached.nfe)[row] == len(set(changes[row].tolist()))


def test_stop_at_eos_ends_row_and_fills_padding(model):
  eos = model.cfg.eos_id
  # Bias the head so that end-of-text wins at every slot: the first step commits it, the row stops at once.
  biased = jax.tree.map(lambda x: x, model)
  kernel = biased.head.kernel[...]
  biased.head.kernel[...] = kernel.at[:, eos].add(100.0)
  out = generate(biased, PROMPTS, VALID, sampler=LowConfidence(steps=8), gen_length=8, block_length=8,
                 stop_at_eos=True)
  assert (np.asarray(out.answers) == eos).all()
  assert (np.asarray(out.nfe) == 1).all()
  assert (np.asarray(out.gen_tokens) == 1).all()
  assert bool(out.finished.all())


@pytest.mark.parametrize("kwargs, match", [
    (dict(gen_length=8, block_length=3), "block_length"),
    (dict(gen_length=8, block_length=2, sampler=LowConfidence(steps=2)), "multiple of the number of blocks"),
    (dict(gen_length=200, block_length=8), "max_len"),
    (dict(gen_length=8, block_length=8, cache="bogus"), "cache"),
    (dict(gen_length=8, block_length=8, max_nfe=0), "max_nfe"),
])
def test_bad_arguments(model, kwargs, match):
  kwargs.setdefault("sampler", LowConfidence(steps=8))
  with pytest.raises(ValueError, match=match):
    generate(model, PROMPTS, VALID, **kwargs)


def test_bad_prompt_dtype_and_unknown_sampler(model):
  with pytest.raises(ValueError, match="prompts.dtype"):
    generate(model, PROMPTS.astype(np.float32), sampler=LowConfidence(steps=8), gen_length=8)
  with pytest.raises(ValueError, match="unknown sampler"):
    make_sampler("no_such_sampler")
  with pytest.raises(ValueError, match="steps"):
    LowConfidence(steps=0)
