"""The Python driver (`generate_steps`) runs the compiled loop's own step: its last snapshot equals `generate`.

Every registered sampler and every cache policy: the golden cases (tests/golden_cases.py, `generate`'s recorded
outputs, which tests/test_head.py checks `generate` still gives) run through the driver and must give the same
tokens and NFE; the samplers and policies those cases do not cover run both ways here.  Each snapshot moves the
loop by exactly one iteration and changes the canvas only where that step committed.
"""

from __future__ import annotations

from pathlib import Path

import jax
import numpy as np
import pytest

from dlm.engine import generate, generate_steps
from dlm.engine.cache import CACHE_POLICIES
from dlm.io.params import load_model
from dlm.io.shipped import SHIPPED_MODELS
from dlm.samplers.registry import SAMPLERS, make_sampler
from dlm.tasks import get_task
from tests import golden_cases

# Registered samplers with no golden case; they run both ways on the testbed model (the learned samplers' shipped
# heads and APD's AR model are made for it).
# fast_dllm_v2 needs a block-causal model with cache='block': it runs on one below.
BLOCK_CAUSAL_ONLY = ("fast_dllm_v2",)
UNCOVERED = sorted(set(SAMPLERS) - {sampler for _, _, sampler, _, _ in golden_cases.CASES} - set(BLOCK_CAUSAL_ONLY))


@pytest.fixture(scope="module")
def bundled():
  return golden_cases.bundled_model()


@pytest.fixture(scope="module")
def testbed():
  return load_model(SHIPPED_MODELS["testbed"])


@pytest.fixture(scope="module")
def golden():
  return dict(np.load(golden_cases.GOLDEN))


def _last(snaps):
  assert snaps and snaps[-1].last and not any(s.last for s in snaps[:-1])
  assert [s.iteration for s in snaps] == list(range(1, len(snaps) + 1))
  return snaps[-1]


def _assert_same(out, snaps):
  last = _last(snaps)
  np.testing.assert_array_equal(last.tokens, np.asarray(out.tokens))
  np.testing.assert_array_equal(last.nfe, np.asarray(out.nfe))
  np.testing.assert_array_equal(last.commit_step, np.asarray(out.commit_step))
  assert last.batch_nfe == int(out.batch_nfe)
  np.testing.assert_array_equal(np.asarray(last.generation.tokens), np.asarray(out.tokens))
  np.testing.assert_array_equal(np.asarray(last.generation.gen_tokens), np.asarray(out.gen_tokens))


def _both(model, prompts, valid, **kw):
  out = generate(model, prompts, valid, key=jax.random.key(2), **kw)
  return out, list(generate_steps(model, prompts, valid, key=jax.random.key(2), **kw))


# A few golden cases stand for the rest in the default run: the plain loop, CFG's second forward, the dual cache's
# windows, WINO's shadow rows, no-change reuse (ancestral) and Dream's shift with the prefix cache; the full set is
# slow-marked (the driver runs the compiled loop's own body, so one program per forward program suffices).
FAST_GOLDEN = ("low_confidence", "low_confidence_cfg", "threshold_dual", "wino", "ancestral_t0", "threshold_shift")


@pytest.mark.parametrize("which", ["fast", pytest.param("all", marks=pytest.mark.slow)])
def test_golden_cases_through_the_driver(bundled, golden, monkeypatch, which):
  def drive(model, prompts, valid=None, **kw):
    return _last(list(generate_steps(model, prompts, valid, **kw))).generation

  def chosen(name):
    return which == "all" or name in FAST_GOLDEN

  monkeypatch.setattr(golden_cases, "generate", drive)
  for name, task, sampler, settings, options in golden_cases.CASES:
    if chosen(name):
      tokens, nfe = golden_cases.run_case(bundled, task, sampler, settings, options)
      np.testing.assert_array_equal(tokens, golden[f"{name}/tokens"], err_msg=name)
      np.testing.assert_array_equal(nfe, golden[f"{name}/nfe"], err_msg=name)
  dream = golden_cases.dream_model()
  for name, sampler, settings, options in golden_cases.DREAM_CASES:
    if chosen(name):
      tokens, nfe = golden_cases.run_dream_case(dream, sampler, settings, options)
      np.testing.assert_array_equal(tokens, golden[f"{name}/tokens"], err_msg=name)
      np.testing.assert_array_equal(nfe, golden[f"{name}/nfe"], err_msg=name)


# apd (per-row windows) and lrd (soft inputs, which smoothing also feeds) are slow-marked for suite time.
SLOW_UNCOVERED = ("apd", "lrd")


@pytest.mark.parametrize("name", [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_UNCOVERED else n
                                  for n in UNCOVERED])
def test_samplers_without_golden_cases_equal_generate(testbed, name):
  task = get_task("sudoku6")
  prompts, valid, _ = task.encode(task.examples(3, seed=11))
  out, snaps = _both(testbed, prompts, valid, sampler=make_sampler(name), gen_length=task.gen_length,
                     block_length=task.block_length)
  _assert_same(out, snaps)


# golden: none, dual; prefix is slow-marked (the same windowed program as window and dual, another width)
@pytest.mark.parametrize("cache", [pytest.param(c, marks=pytest.mark.slow) if c == "prefix" else c
                                   for c in CACHE_POLICIES if c not in ("none", "dual", "block")])
def test_other_cache_policies_equal_generate(bundled, cache):
  task = get_task("sudoku4_hard")
  prompts, valid, _ = task.encode(task.examples(4, seed=11))
  out, snaps = _both(bundled, prompts, valid, sampler=make_sampler("threshold", tau=0.7),
                     gen_length=task.gen_length, block_length=task.gen_length // 2, cache=cache, window=2)
  _assert_same(out, snaps)
  assert [s.block for s in snaps] == sorted(s.block for s in snaps) and snaps[-1].block == 2


def test_block_causal_model_with_its_exact_cache_equals_generate():
  """A block-causal model (placed prompts of different lengths, the store forwards, Fast-dLLM v2's left-to-right
  block start) through the driver: the last snapshot's generation is generate's."""
  from dlm.model.config import tiny_fast_dllm_v2
  from dlm.model.transformer import init_model
  net = init_model(tiny_fast_dllm_v2(dtype="float32"), seed=2)
  prompts = np.full((2, 13), net.cfg.eos_id, np.int32)
  prompts[0, 3:] = np.arange(3, 13)
  prompts[1] = np.arange(5, 18)
  valid = np.ones(prompts.shape, bool)
  valid[0, :3] = False
  out, snaps = _both(net, prompts, valid, sampler=make_sampler("fast_dllm_v2", threshold=0.3), gen_length=16,
                     block_length=4, cache="block")
  _assert_same(out, snaps)


def test_snapshots_grow_the_canvas_one_iteration_at_a_time(bundled):
  task = get_task("sudoku4_hard")
  prompts, valid, _ = task.encode(task.examples(4, seed=3))
  out, snaps = _both(bundled, prompts, valid, sampler=make_sampler("low_confidence", steps=8, cfg_scale=0.5),
                     gen_length=task.gen_length, block_length=task.gen_length // 2)
  _assert_same(out, snaps)
  mask = bundled.cfg.mask_id
  previous = np.full_like(snaps[0].answers, mask)
  for snap in snaps:
    committed = snap.commit_step == snap.iteration - 1  # slots this iteration committed
    np.testing.assert_array_equal(snap.answers[~committed], previous[~committed])
    assert (previous[committed] == mask).all()
    previous = snap.answers
  assert (np.diff(np.stack([s.nfe for s in snaps]), axis=0) >= 0).all()


def test_design_doc_prints_the_current_capability_table():
  from dlm.engine.capabilities import markdown_table
  doc = (Path(__file__).resolve().parents[1] / "docs" / "design.md").read_text()
  assert markdown_table() in doc, "docs/design.md §0: paste dlm.engine.capabilities.markdown_table() again"


def test_capability_table_is_symmetric_and_names_known_capabilities():
  from dlm.engine.capabilities import RULES, TABLE
  names = [rule.capability for rule in TABLE]
  for i, rule in enumerate(TABLE):
    for other in rule.excludes:
      assert other in RULES and names.index(other) > i, (rule.capability, other)  # each pair written once
      assert rule.capability not in RULES[other].excludes
    assert all(n in RULES for n in rule.needs)
