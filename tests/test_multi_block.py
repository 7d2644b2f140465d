"""Several blocks in flight (d3LLM's `generate_multi_block`, issue 25): against a plain loop written from the
reference code's steps (its block-state dictionary, one row at a time), with both block thresholds at 1 equal to
blockwise entropy-threshold decoding, a row alone equal to the row in a batch."""

from __future__ import annotations

import numpy as np
import pytest

from dlm.engine import generate
from dlm.model.config import tiny_llada
from dlm.model.transformer import init_model
from dlm.samplers.registry import make_sampler
from tests.conftest import PROMPTS, VALID
from tests.reference_loops import OneRow, assert_rows_match, softmax

GEN, BLOCK = 24, 8


def d3llm_reference(model, prompt, valid, *, gen_length, block_length, threshold, add, activate,
                    early_stop=False):
  """generate_multi_block (no cache), one row: block states in a dict as the reference keeps them, and its
  `handle_early_stop` at the top of each iteration.  -> (tokens, forwards run; the reference's own counter adds
  one when early stop leaves no mask, a forward that never runs)."""
  row = OneRow(model, prompt, valid, gen_length)
  x, m_id, p = row.x, row.mask_id, row.prompt_length
  eos = model.cfg.end_ids[0]
  nb = gen_length // block_length
  states = {0: dict(start=0, end=p, left=0, total=p, on=True)}
  states[1] = dict(start=p, end=p + block_length, left=block_length, total=block_length, on=1.0 >= activate)
  nxt, forwards = 2, 0
  progress = lambda s: 1 - s["left"] / s["total"]
  while not ((x[0, p:] != m_id).all() and nxt > nb):
    has_eos = False
    if early_stop and (x[0, p:] == eos).any():
      has_eos, first = True, p + int(np.argmax(x[0, p:] == eos))
      x[0, first + 1:] = eos
      for bid, st in states.items():
        if bid > 0 and st["start"] > first:
          st.update(left=0, on=True)
        elif bid > 0 and st["start"] <= first < st["end"]:
          st["left"] = int((x[0, st["start"]:first + 1] == m_id).sum())
      while nxt <= nb and p + (nxt - 1) * block_length > first:
        start = p + (nxt - 1) * block_length
        states[nxt] = dict(start=start, end=start + block_length, left=0, total=block_length, on=True)
        nxt += 1
      if not (x[0, p:] == m_id).any():
        break
    forwards += 1
    for bid in sorted(states):
      if bid > 0 and not states[bid]["on"] and progress(states[bid - 1]) >= activate:
        states[bid]["on"] = True
    last = states[max(states)]
    if nxt <= nb and not has_eos and (progress(last) >= add or last["left"] == 0):
      start = p + (nxt - 1) * block_length
      left = int((x[0, start:start + block_length] == m_id).sum())
      states[nxt] = dict(start=start, end=start + block_length, left=left, total=block_length,
                         on=progress(states[nxt - 1]) >= activate)
      nxt += 1
    end = max(s["end"] for b, s in states.items() if s["on"] or s["left"] > 0)
    logits = row.logits(0, x.shape[1])
    probs = softmax(logits)
    entropy = -np.sum(probs * np.log(probs + 1e-12), axis=-1)
    masked = np.flatnonzero(x[0, :end] == m_id)
    order = masked[np.argsort(entropy[masked], kind="stable")]
    take = [order[0]] + [i for i in order[1:] if entropy[i] <= threshold]
    first = next((b for b in sorted(states) if b > 0 and states[b]["on"] and states[b]["left"] > 0), None)
    if first is not None:
      s, e = states[first]["start"], states[first]["end"]
      if not any(s <= i < e for i in take):
        inside = [i for i in order if s <= i < e]
        take.append(inside[0] if inside else None)
    take = np.asarray([i for i in take if i is not None])
    x[0, take] = logits.argmax(-1)[take]
    for b, st in states.items():
      if b > 0:
        st["left"] = int((x[0, st["start"]:st["end"]] == m_id).sum())
  return x[0], forwards


@pytest.mark.parametrize("threshold,add,activate", [(0.5, 0.1, 0.95), (0.3, 0.5, 0.5)])
def test_matches_the_reference_loop(sharp_model, threshold, add, activate):
  sampler = make_sampler("multi_block", threshold=threshold, block_add_threshold=add,
                         decoded_token_threshold=activate)
  out = generate(sharp_model, PROMPTS, VALID, sampler=sampler, gen_length=GEN, block_length=BLOCK)
  assert_rows_match(out, d3llm_reference, sharp_model, PROMPTS, VALID, gen_length=GEN, block_length=BLOCK,
                    threshold=threshold, add=add, activate=activate)
  alone = generate(sharp_model, PROMPTS[2:3], VALID[2:3], sampler=sampler, gen_length=GEN, block_length=BLOCK)
  np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(out.tokens)[2])
  # some slot of a later block was committed while an earlier block still had masks
  commit = np.asarray(out.commit_step).reshape(len(PROMPTS), GEN // BLOCK, BLOCK)
  assert (commit[:, 1].min(-1) < commit[:, 0].max(-1)).any()


def test_early_stop_matches_the_reference_loop():
  """early_stop: after the first committed EOS every later slot is EOS, no block is added; on the bundled model,
  whose `add` answers end early, so the cut falls inside blocks and before masks."""
  from pathlib import Path
  from dlm.io.params import load_model
  from dlm.tasks import get_task
  model = load_model(Path(__file__).resolve().parent.parent / "dlm" / "assets" / "bundled")
  task = get_task("add")
  p, v, _ = task.encode(task.examples(6, seed=1))
  kw = dict(gen_length=16, block_length=4)
  settings = dict(threshold=0.3, block_add_threshold=0.25, decoded_token_threshold=0.5)
  out = generate(model, p, v, sampler=make_sampler("multi_block", early_stop=True, **settings), **kw)
  assert_rows_match(out, d3llm_reference, model, np.asarray(p), np.asarray(v), threshold=0.3, add=0.25,
                    activate=0.5, early_stop=True, **kw)
  plain = generate(model, p, v, sampler=make_sampler("multi_block", **settings), **kw)
  assert (np.asarray(out.nfe) <= np.asarray(plain.nfe)).all() and np.asarray(out.nfe).sum() < np.asarray(plain.nfe).sum()


def test_sequential_thresholds_equal_blockwise_entropy_threshold(sharp_model):
  kw = dict(gen_length=GEN, block_length=BLOCK)
  sequential = make_sampler("multi_block", threshold=1.0, block_add_threshold=1.0, decoded_token_threshold=1.0)
  out = generate(sharp_model, PROMPTS, VALID, sampler=sequential, **kw)
  blockwise = generate(sharp_model, PROMPTS, VALID, sampler=make_sampler("entropy_threshold", tau=1.0), **kw)
  np.testing.assert_array_equal(np.asarray(out.tokens), np.asarray(blockwise.tokens))
  np.testing.assert_array_equal(np.asarray(out.nfe), np.asarray(blockwise.nfe))


def test_settings_and_cache():
  with pytest.raises(ValueError, match="block_add_threshold=1.5"):
    make_sampler("multi_block", block_add_threshold=1.5)
  net = init_model(tiny_llada(), seed=3)
  with pytest.raises(ValueError, match="cache='dual'"):
    generate(net, PROMPTS, VALID, sampler=make_sampler("multi_block"), gen_length=GEN, block_length=BLOCK,
             cache="dual")


def test_runs_on_a_block_causal_model():
  """Block-causal models (D2F's setting): later blocks see earlier ones only through the network's mask; the
  prompt tail placed in the first block counts as decoded.  A row alone equals the row in a batch."""
  from dlm.model.config import tiny_sdar
  from tests.test_block_diffusion_engine import batch
  net = init_model(tiny_sdar(dtype="float32"), seed=1)
  prompts, valid = batch(net.cfg)
  kw = dict(sampler=make_sampler("multi_block", threshold=2.0), gen_length=12, block_length=4)
  out = generate(net, prompts, valid, **kw)
  alone = generate(net, prompts[1:2], valid[1:2], **kw)
  assert np.asarray(out.finished).all() and (np.asarray(out.nfe) < 12).all()
  np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(out.tokens)[1])
