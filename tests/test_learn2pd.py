"""Learn2PD (issue 7, first part): the record store, the EGP replay collection (killed and resumed), filter
training, the sampler's limits, EoTP truncation."""

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine.generate import generate
from dlm.engine.state import BlockState, View, as_decision
from dlm.heads.filter import collect_filter_data, load_filter, train_filter
from dlm.heads.store import RecordStore, open_store
from dlm.io.params import load_model
from dlm.samplers import LowConfidence, Threshold
from dlm.samplers.base import drive_step
from dlm.samplers.learn2pd import EgpReplay, Learn2PD, init_filter
from dlm.tasks import get_task
from tests.conftest import PROMPTS, VALID

BUNDLED = Path(__file__).resolve().parent.parent / "dlm" / "assets" / "bundled"


def test_store_round_trip_overwrites_rows_past_the_marker(tmp_path):
  fields = {"x": ((3,), "float32"), "unit": ((), "int32")}
  store = RecordStore(tmp_path, fields, {"model": "m"})
  store.append({"x": np.ones((2, 3)), "unit": np.array([0, 0])}, units_done=1)
  # A killed run: rows written past the marker, progress.json untouched.
  store.arrays["x"] = store.arrays["x"].resize(exclusive_max=[5, 3], expand_only=True).result()
  store.arrays["x"][2:5].write(np.full((3, 3), 9.0, np.float32)).result()
  again = RecordStore(tmp_path, fields, {"model": "m"})
  assert again.rows == 2 and again.units_done == 1 and open_store(tmp_path).read()["x"].shape == (2, 3)
  again.append({"x": np.full((1, 3), 2.0), "unit": np.array([1])}, units_done=2)
  data = open_store(tmp_path).read()
  np.testing.assert_array_equal(data["x"][:, 0], [1, 1, 2])
  np.testing.assert_array_equal(data["unit"], [0, 0, 1])
  assert sorted(len(b["unit"]) for b in again.batches(2)) == [1, 2]
  with pytest.raises(ValueError, match="holds a dataset made with other settings"):
    RecordStore(tmp_path, fields, {"model": "other"})
  with pytest.raises(FileNotFoundError, match="not a dlm dataset"):
    open_store(tmp_path / "none")


def test_egp_replay_reproduces_the_reference_and_labels_by_hand(model):
  y = generate(model, PROMPTS, VALID, sampler=LowConfidence(steps=8), gen_length=8, block_length=4).answers
  out = generate(model, PROMPTS, VALID, sampler=EgpReplay(max_steps=8), gen_length=8, block_length=4,
                 sampler_params=y)
  np.testing.assert_array_equal(np.asarray(out.answers), np.asarray(y))  # only y's tokens are ever committed
  rec = jax.tree.map(np.asarray, out.extras)
  assert (rec["steps"] == np.asarray(out.nfe)).all() and (rec["steps"] <= 8).all()
  first = rec["masked"][:, 0]
  assert first.all()  # the first record of each row: its whole first block masked
  # By hand: a block whose predictions match y nowhere is filled from y in one step.
  logits = np.zeros((1, 4, 6), np.float32)
  logits[0, :, 3] = 5.0  # predicts 3 everywhere
  view = View(logits=jnp.asarray(logits), hidden=jnp.zeros((1, 4, 1)), params=jnp.asarray([[4, 3, 5, 3]]))
  state = BlockState(tokens=jnp.full((1, 4), 1, jnp.int32), masked=jnp.asarray([[True, True, True, False]]),
                     active=jnp.ones(1, bool), entry_masked=jnp.full(1, 3, jnp.int32), step=jnp.int32(0),
                     block=jnp.int32(0), num_blocks=1, block_length=4, mask_id=1, end_ids=(2,))
  decision, carry = as_decision(drive_step(EgpReplay(max_steps=4), view, state, EgpReplay(max_steps=4).init(1, 4),
                                           jax.random.key(0)))
  assert np.asarray(decision.commit)[0].tolist() == [False, True, False, False]  # label 1 and masked
  assert np.asarray(carry["label"])[0, 0].tolist() == [False, True, False, True]
  stuck = view.replace(params=jnp.asarray([[4, 4, 5, 3]]))
  decision, _ = as_decision(drive_step(EgpReplay(max_steps=4), stuck, state, EgpReplay(max_steps=4).init(1, 4),
                                       jax.random.key(0)))
  assert np.asarray(decision.commit)[0].tolist() == [True, True, True, False]
  assert np.asarray(decision.tokens)[0, :3].tolist() == [4, 4, 5]


def _constant_filter(folder, bk, bias):
  folder.mkdir(parents=True)
  params = {k: np.asarray(v) for k, v in init_filter(jax.random.key(0), bk).items()}
  params = {k: np.zeros_like(v) for k, v in params.items()}
  params["b2"] = np.full((bk,), bias, np.float32)
  np.savez(folder / "params.npz", **params)
  (folder / "head.json").write_text(json.dumps({"kind": "learn2pd_filter", "block_length": bk, "step": 0}))
  return str(folder)


def test_filter_limits_always_yes_and_always_no(model, tmp_path):
  yes = _constant_filter(tmp_path / "yes", 4, 50.0)
  no = _constant_filter(tmp_path / "no", 4, -50.0)
  kw = dict(gen_length=8, block_length=4)
  all_in = generate(model, PROMPTS, VALID, sampler=Learn2PD(head=yes, eotp=False), **kw)
  assert np.asarray(all_in.nfe).tolist() == [2, 2, 2]  # each block in one step
  one = generate(model, PROMPTS, VALID, sampler=Learn2PD(head=no, eotp=False), **kw)
  ref = generate(model, PROMPTS, VALID, sampler=Threshold(tau=2.0), **kw)  # one most-confident slot per step
  np.testing.assert_array_equal(np.asarray(one.tokens), np.asarray(ref.tokens))
  assert np.asarray(one.nfe).tolist() == [8, 8, 8]
  # The filter's cost: 2 * its 40 parameters per step (2 * (4*4 + 4) per layer), reported for bench/compare.
  np.testing.assert_allclose(np.asarray(one.extras["aux_flops"]), 8 * 2.0 * 40)
  with pytest.raises(ValueError, match="trained for blocks of 4 slots, the run uses 8"):
    generate(model, PROMPTS, VALID, sampler=Learn2PD(head=yes), gen_length=8, block_length=8)
  with pytest.raises(FileNotFoundError, match="no Learn2PD filter"):
    generate(model, PROMPTS, VALID, sampler=Learn2PD(head=str(tmp_path / "none")), **kw)


def test_eotp_truncation_by_hand_batched(tmp_path):
  no = _constant_filter(tmp_path / "no", 4, -50.0)
  yes = _constant_filter(tmp_path / "yes", 4, 50.0)
  eos, mask = 2, 1
  probs = np.full((3, 4, 6), 0.02, np.float32)
  tok = np.array([[3, 4, eos, 5], [3, eos, 4, eos], [3, 4, 5, 3]])
  conf = np.array([[0.9, 0.8, 0.7, 0.6], [0.95, 0.5, 0.6, 0.7], [0.9, 0.8, 0.7, 0.6]])
  np.put_along_axis(probs, tok[..., None], conf[..., None], -1)
  logits = np.log(probs)
  logits[..., mask] = -np.inf
  state = BlockState(tokens=jnp.full((3, 4), mask, jnp.int32), masked=jnp.ones((3, 4), bool), active=jnp.ones(3, bool),
                     entry_masked=jnp.full(3, 4, jnp.int32), step=jnp.int32(0), block=jnp.int32(1), num_blocks=3,
                     block_length=4, mask_id=mask, end_ids=(eos,))

  def run(head, lg=logits, st=state, span="block"):
    sampler = Learn2PD(head=head, span=span)
    view = View(logits=jnp.asarray(lg), hidden=jnp.zeros((3, lg.shape[1], 1)), params=load_filter(head)[0])
    decision, carry = as_decision(drive_step(sampler, view, st, sampler.init(3, 4), jax.random.key(0)))
    return np.asarray(decision.truncate), np.asarray(decision.commit), np.asarray(carry["horizon"])

  # Filter says yes: row 0 commits EOS at slot 2 -> the answer ends after 4 + 2; row 1's first accepted EOS is
  # slot 1; row 2 has none.  Later forwards see answer slots up to the cut only.
  cut, commit, horizon = run(yes)
  assert cut[:2].tolist() == [6, 5] and cut[2] > 1000 and commit.all()
  assert horizon[:2].tolist() == [7, 6] and horizon[2] == 2 ** 30
  # Filter says no (only the top-1 commits, never EOS here): rows 0 and 1 predict EOS at masked slots; the answer
  # ends after the one with the highest EOS probability (row 1: slot 3, 0.7 > 0.5).
  cut, commit, _ = run(no)
  assert cut[:2].tolist() == [6, 7] and cut[2] > 1000 and commit.sum(-1).tolist() == [1, 1, 1]
  # An EOS committed only as the forced top-1 is not the filter's (rule 1); it is still a slot that was masked
  # before the step, so rule 2 finds it with the other predicted EOS (row 2: slot 0 at 0.9 against slot 3 at 0.8).
  forced = logits.copy()
  forced[2] = np.log(np.full((4, 6), 0.02))
  for slot, (t, c) in enumerate([(eos, 0.9), (4, 0.5), (5, 0.6), (eos, 0.8)]):
    forced[2, slot, t] = np.log(c)
  forced[2, :, mask] = -np.inf
  cut, commit, _ = run(no, forced)
  assert cut[2] == 4 and commit[2].tolist() == [True, False, False, False]
  # The whole answer in view (span 'answer', the reference): an EOS predicted in a later block ends the answer
  # there; the block span does not see it.  Answer of 3 blocks, block 1 active, EOS predicted at slot 10.
  wide = np.log(np.full((3, 12, 6), 0.02, np.float32))
  wide[:, :, 3] = np.log(0.6)
  wide[:, 10, 3], wide[:, 10, eos] = np.log(0.02), np.log(0.97)
  wide[..., mask] = -np.inf
  tokens = np.full((3, 12), mask, np.int32)
  tokens[:, :4] = 3
  in_block = jnp.asarray((np.arange(12) >= 4) & (np.arange(12) < 8))
  answer_state = state.replace(tokens=jnp.asarray(tokens), masked=jnp.asarray(tokens == mask), in_block=in_block)
  cut, commit, horizon = run(no, wide, answer_state, span="answer")
  assert cut.tolist() == [10, 10, 10] and horizon.tolist() == [11, 11, 11]
  assert commit.sum(-1).tolist() == [1, 1, 1] and commit[:, 4:8].sum(-1).tolist() == [1, 1, 1]


def test_eotp_in_the_engine_ends_rows_early_on_the_bundled_model(tmp_path):
  model = load_model(BUNDLED)
  task = get_task("add")
  p, v, _ = task.encode(task.examples(16, seed=0))
  no = _constant_filter(tmp_path / "no", 8, -50.0)
  plain = generate(model, p, v, sampler=Learn2PD(head=no, eotp=False), gen_length=8, block_length=8)
  ended = generate(model, p, v, sampler=Learn2PD(head=no, eotp=True), gen_length=8, block_length=8)
  assert (np.asarray(ended.nfe) <= np.asarray(plain.nfe)).all() and np.asarray(ended.nfe).sum() < 16 * 8
  answers = np.asarray(ended.answers)
  eos = model.cfg.eos_id
  for row in answers:  # after the first EOS, only EOS
    first = np.flatnonzero(row == eos)
    if len(first):
      assert (row[first[0]:] == eos).all()


def test_eotp_equals_the_reference_loop_that_really_cuts_the_canvas(tmp_path):
  """Issue 28, item 13: Learn2PD with EoTP against a plain loop of the reference code (`generate_l2p_eot`), whose
  canvas is cut and whose later forwards run on the shorter sequence: tokens and forwards per row.  A random
  filter at tau 0.5 accepts some slots; the bundled model ends its `add` answers early, inside blocks too."""
  from tests.reference_loops import learn2pd_reference
  model = load_model(BUNDLED)
  task = get_task("add")
  p, v, _ = task.encode(task.examples(8, seed=3))
  params = {k: np.asarray(x) * 3 for k, x in init_filter(jax.random.key(5), 4).items()}
  folder = tmp_path / "random"
  folder.mkdir()
  np.savez(folder / "params.npz", **params)
  (folder / "head.json").write_text(json.dumps({"kind": "learn2pd_filter", "block_length": 4, "step": 0}))
  out = generate(model, p, v, sampler=Learn2PD(head=str(folder), tau=0.5), gen_length=16, block_length=4)
  tokens, forwards = learn2pd_reference(model, p, v, gen_length=16, block_length=4, params=params, tau=0.5)
  np.testing.assert_array_equal(np.asarray(out.tokens), tokens)
  np.testing.assert_array_equal(np.asarray(out.nfe), forwards)
  assert (forwards < 16).sum() >= 2  # EoTP saved forwards on several rows
  with pytest.raises(ValueError, match="view_span='answer'"):
    generate(model, p, v, sampler=Learn2PD(head=str(folder)), gen_length=16, block_length=4, cache="dual")
  blockwise = generate(model, p, v, sampler=Learn2PD(head=str(folder), tau=0.5, span="block"), gen_length=16,
                       block_length=4, cache="dual")
  assert np.asarray(blockwise.nfe).max() <= 16


def test_collect_killed_mid_run_resumes_without_duplicates_and_trains(tmp_path):
  out = tmp_path / "data"
  cmd = [sys.executable, "-m", "dlm.cli", "collect", "--task", "add", "--model", "bundled", "--n", "240",
         "--batch", "4", "--out", str(out)]
  env = dict(os.environ, PYTHONPATH=str(Path(__file__).resolve().parent.parent))
  proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
  deadline, killed = time.time() + 240, False
  while time.time() < deadline and proc.poll() is None:
    progress = out / "progress.json"
    if progress.is_file() and json.loads(progress.read_text())["units_done"] >= 8:
      proc.send_signal(signal.SIGKILL)
      killed = True
      break
    time.sleep(0.02)
  proc.wait()
  assert killed, "the collection finished before it could be interrupted"
  partial = json.loads((out / "progress.json").read_text())["units_done"]
  assert 8 <= partial < 240
  model, task = load_model(BUNDLED), get_task("add")
  resumed = collect_filter_data(model, task, out, n=240, batch=4, model_name="bundled", progress=False)
  whole = collect_filter_data(model, task, tmp_path / "whole", n=240, batch=4, model_name="bundled", progress=False)
  a, b = resumed.read(), whole.read()
  assert resumed.units_done == 240 and sorted(set(a["prompt"].tolist())) == list(range(240))
  for name in a:
    np.testing.assert_array_equal(a[name], b[name])
  info = train_filter(out, tmp_path / "head", steps=200, ckpt_every=100, progress=False)
  assert info["metrics"]["loss_last"] < info["metrics"]["loss_first"]
  params, _ = load_filter(str(tmp_path / "head"), block_length=8)
  assert params["w1"].shape == (8, 8)
  again = train_filter(out, tmp_path / "head", steps=300, ckpt_every=100, progress=False)  # resumes at 200
  assert again["step"] == 300
