"""APD (samplers/apd.py): the AR model inside the compiled loop with its own KV cache, against a NumPy loop that
recomputes it in full; the R = 1 and perfect-draft limits; cost accounting; errors."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine.generate import generate
from dlm.engine.state import BlockState, View, as_decision
from dlm.io.params import save_model
from dlm.model.config import tiny_dream, tiny_llada
from dlm.model.transformer import init_model, positions_from_valid
from dlm.samplers import AdaptiveParallel, make_sampler
from dlm.samplers.apd import load_ar
from dlm.samplers.dream import filter_logits
from dlm.samplers.base import drive_step
from tests.conftest import PROMPTS, VALID
from tests.reference_loops import apd_reference


@pytest.fixture(scope="module")
def ar_folder(tmp_path_factory):
  folder = tmp_path_factory.mktemp("ar") / "model"
  save_model(init_model(dataclasses.replace(tiny_llada(), causal=True, n_layers=1), seed=5), folder)
  return str(folder)


def _ar(folder):
  graphdef, state, _ = load_ar(folder)
  from flax import nnx
  return nnx.merge(graphdef, state)


@pytest.mark.parametrize("R,M", [(0.7, 4), (0.0, 3), (0.5, 16), (1.0, 3)])
def test_apd_matches_the_numpy_loop(model, ar_folder, R, M):
  sampler = AdaptiveParallel(R=R, M=M, ar_model=ar_folder)
  out = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=12, block_length=12)
  ref, nfe = apd_reference(model, _ar(ar_folder), PROMPTS, VALID, gen_length=12, R=R, M=M)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  np.testing.assert_array_equal(np.asarray(out.nfe), nfe)
  if R == 1.0:  # the dLLM alone: every draft slot agrees, M per forward (fewer forwards if EOS comes first)
    assert (np.asarray(out.nfe) <= 12 // M).all() and np.asarray(out.finished).all()


# (1, 4) is slow-marked: (2, 3) runs the same per-row window path against the same loop (suite time).
# W=40 covers the whole canvas (the window program at full width; (2, 3) runs a real window): slow-marked.
@pytest.mark.parametrize("W,M", [(2, 3), pytest.param(1, 4, marks=pytest.mark.slow),
                                 pytest.param(40, 3, marks=pytest.mark.slow)])
def test_apd_dllm_cache_window_matches_the_numpy_loop(model, ar_folder, W, M):
  sampler = AdaptiveParallel(R=0.7, M=M, W=W, ar_model=ar_folder)
  out = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=12, block_length=12)
  ref, nfe = apd_reference(model, _ar(ar_folder), PROMPTS, VALID, gen_length=12, R=0.7, M=M, W=W)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  np.testing.assert_array_equal(np.asarray(out.nfe), nfe)
  width = min(W + 2 * M - 1, PROMPTS.shape[1] + 12)  # the first forward is full, the others one window each
  np.testing.assert_array_equal(np.asarray(out.tokens_computed), 18 + (nfe - 1) * width)
  if W >= 18:  # a window as wide as the canvas recomputes everything: the exact decode
    full = generate(model, PROMPTS, VALID, sampler=AdaptiveParallel(R=0.7, M=M, ar_model=ar_folder),
                    gen_length=12, block_length=12)
    np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(full.tokens))


@pytest.mark.parametrize("stop", ["eos", "any"])
def test_apd_stops_on_the_eos_id_only_unless_told(ar_folder, stop):
  """apd_sample stops on eos_token_id only: a second end id (Dream's <|im_end|>, LLaDA's <|eot_id|>) is decoded
  past.  The second end id here is the token the dLLM drafts first in row 0, so it is certainly committed."""
  base = init_model(tiny_llada(), seed=3)  # the `model` fixture's network
  sampler = AdaptiveParallel(R=0.7, M=3, ar_model=ar_folder, stop=stop)
  first = int(np.asarray(generate(base, PROMPTS, VALID, sampler=sampler, gen_length=12,
                                  block_length=12).tokens)[0, PROMPTS.shape[1]])
  assert first not in (base.cfg.eos_id, base.cfg.mask_id)
  model = init_model(dataclasses.replace(tiny_llada(), eot_id=first), seed=3)
  out = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=12, block_length=12)
  ref, nfe = apd_reference(model, _ar(ar_folder), PROMPTS, VALID, gen_length=12, R=0.7, M=3, stop=stop)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  np.testing.assert_array_equal(np.asarray(out.nfe), nfe)
  rest = ref[0, PROMPTS.shape[1] + 1:]
  if stop == "any":
    assert (rest == model.cfg.eos_id).all()  # the row ended at its first token
  else:
    assert (rest != model.cfg.eos_id).any()  # decoded on past the second end id


@pytest.mark.parametrize("W", [None, 2])
def test_apd_on_a_dream_layout_dllm(dream_model, tmp_path, W):
  """Dream's logit shift on the dLLM side (slot j read at position j - 1, the input cut at t + M)."""
  folder = str(tmp_path / "ar")
  save_model(init_model(dataclasses.replace(tiny_dream(), causal=True, logit_shift=False, n_layers=1), seed=6), folder)
  out = generate(dream_model, PROMPTS, VALID, sampler=AdaptiveParallel(R=0.6, M=5, W=W, ar_model=folder),
                 gen_length=10, block_length=10)
  ref, nfe = apd_reference(dream_model, _ar(folder), PROMPTS, VALID, gen_length=10, R=0.6, M=5, W=W)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  np.testing.assert_array_equal(np.asarray(out.nfe), nfe)


def _ar_greedy(ar, prompt, n):
  """The AR model's own greedy continuation of one prompt (mask id banned)."""
  seq = list(prompt)
  for _ in range(n):
    tokens = jnp.asarray([seq])
    valid = jnp.ones_like(tokens, bool)
    hidden, _ = ar(tokens, positions_from_valid(valid), valid)
    logits = np.array(ar.logits(hidden, shift=False))[0, -1]
    logits[ar.cfg.mask_id] = -np.inf
    seq.append(int(logits.argmax()))
  return seq[len(prompt):]


@pytest.mark.parametrize("R", [0.0, 0.5])
def test_a_perfect_draft_is_accepted_whole_and_a_wrong_slot_cuts_it(ar_folder, R):
  ar = _ar(ar_folder)
  cfg = ar.cfg
  prompt = [5, 6, 7, 8]
  g, m = 8, 6
  want = _ar_greedy(ar, prompt, g)
  assume_no_end = [w for w in want if w in (cfg.eos_id,)]
  if assume_no_end:
    pytest.skip("the random AR model ends early")
  sampler = AdaptiveParallel(R=R, M=m, ar_model=ar_folder)

  def run(draft):
    # The dLLM barely prefers its draft (by 1e-3), so wherever the AR model disagrees it decides the mixture.
    logits = np.zeros((1, g, cfg.vocab_size), np.float32)
    logits[0, np.arange(g), draft] = 1e-3
    logits[..., cfg.mask_id] = -np.inf
    view = View(logits=jnp.asarray(logits), hidden=jnp.zeros((1, g, 1)), params=load_ar(ar_folder)[1])
    state = BlockState(tokens=jnp.full((1, g), cfg.mask_id, jnp.int32), masked=jnp.ones((1, g), bool),
                       active=jnp.ones(1, bool), entry_masked=jnp.full(1, g, jnp.int32), step=jnp.int32(0),
                       block=jnp.int32(0), num_blocks=1, block_length=g, mask_id=cfg.mask_id, end_ids=(cfg.eos_id,),
                       prompt=jnp.asarray([prompt], jnp.int32), prompt_valid=jnp.ones((1, 4), bool))
    decision, carry = as_decision(drive_step(sampler, view, state, sampler.init(1, g, cfg.vocab_size),
                                             jax.random.key(0)))
    return np.asarray(decision.commit)[0], np.asarray(decision.tokens)[0], carry

  commit, tokens, carry = run(np.asarray(want))
  assert commit.tolist() == [True] * m + [False] * (g - m)
  np.testing.assert_array_equal(tokens[:m], want[:m])
  assert int(carry["horizon"][0]) == m + m and int(carry["ar_tokens"][0]) == 4 + g
  wrong = np.asarray(want).copy()
  wrong[2] = (wrong[2] + 1) % cfg.vocab_size if (wrong[2] + 1) % cfg.vocab_size != cfg.mask_id else 3
  commit, _, _ = run(wrong)
  assert commit.tolist() == [True, True] + [False] * (g - 2)


def test_apd_rows_independent_cost_and_params_as_data(model, ar_folder):
  sampler = AdaptiveParallel(R=0.7, M=4, ar_model=ar_folder)
  batch = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=12, block_length=12)
  for row in range(3):
    alone = generate(model, PROMPTS[row:row + 1], VALID[row:row + 1], sampler=sampler, gen_length=12,
                     block_length=12)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batch.tokens)[row])
  extras = jax.tree.map(np.asarray, batch.extras)
  forwards, ar_tokens = extras["ar_forwards"], extras["ar_tokens"]
  np.testing.assert_array_equal(forwards, np.asarray(batch.nfe))  # one AR pass per dLLM forward
  np.testing.assert_array_equal(ar_tokens, PROMPTS.shape[1] + 12 + (forwards - 1) * 4)  # prefill, then M each
  n_params = sum(x.size for x in jax.tree.leaves(load_ar(ar_folder)[1]))
  np.testing.assert_allclose(extras["aux_flops"], 2.0 * n_params * ar_tokens, rtol=1e-6)
  # New AR weights are data: the same compiled program, a different decode.
  other = jax.tree.map(lambda x: x * 3.0, load_ar(ar_folder)[1])
  swapped = generate(model, PROMPTS, VALID, sampler=sampler, gen_length=12, block_length=12, sampler_params=other)
  assert swapped.tokens.shape == batch.tokens.shape


def test_top_p_filter_by_hand():
  """APD's draft filter (Dream's rule, as APD's generation_utils copies Dream's)."""
  z = jnp.log(jnp.asarray([[0.5, 0.3, 0.15, 0.05]]))
  kept = np.isfinite(np.asarray(filter_logits(z, 0.0, 0.7, None)))[0]
  assert kept.tolist() == [True, True, False, False]
  assert np.isfinite(np.asarray(filter_logits(z, 0.0, 1.0, None))).all()


def test_apd_errors(model, ar_folder, tmp_path):
  blocks = generate(model, PROMPTS, VALID, sampler=AdaptiveParallel(M=3, ar_model=ar_folder), gen_length=12,
                    block_length=4)  # blocks do not constrain APD: the same decode as one block
  whole = generate(model, PROMPTS, VALID, sampler=AdaptiveParallel(M=3, ar_model=ar_folder), gen_length=12,
                   block_length=12)
  np.testing.assert_array_equal(np.asarray(blocks.tokens), np.asarray(whole.tokens))
  np.testing.assert_array_equal(np.asarray(blocks.nfe), np.asarray(whole.nfe))
  with pytest.raises(ValueError, match="cache='dual'.*only cache='none'"):
    generate(model, PROMPTS, VALID, sampler=AdaptiveParallel(ar_model=ar_folder), gen_length=8, cache="dual")
  with pytest.raises(ValueError, match="R=1.5"):
    AdaptiveParallel(R=1.5)
  with pytest.raises(ValueError, match="rule='x'"):
    make_sampler("apd", rule="x")
  bidirectional = tmp_path / "bi"
  save_model(init_model(tiny_llada(), seed=1), bidirectional)
  with pytest.raises(ValueError, match="is not a causal"):
    load_ar(str(bidirectional))
  with pytest.raises(FileNotFoundError, match="no AR model at"):
    load_ar(str(tmp_path / "missing"))
