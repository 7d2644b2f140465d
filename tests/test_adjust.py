"""ADJUST (samplers/adjust.py, dlm/heads/joint.py): the compiled sampler against a plain loop that runs the
network and the layer by hand (LLaDA and Dream layouts); K = 1 is the network's entropy-ordered one-token step;
the layer's weights are data; cost accounting; trajectory collection (resume); training lowers the KL; a layer
for another network is refused."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dlm.engine.generate import generate
from dlm.heads.joint import (JointLayer, collect_joint_data, commit_rank, layer_parameters, load_joint, save_joint,
                             states_at, train_joint, unroll_weights)
from dlm.heads.store import open_store
from dlm.model.config import tiny_dream, tiny_llada
from dlm.model.transformer import init_model
from dlm.samplers import JointSampler, make_sampler
from tests.conftest import PROMPTS, VALID
from tests.reference_loops import adjust_reference

G = 8


def _peaked(cfg, seed):
  """A tiny network whose distributions are far from uniform (so entropy orders are well separated)."""
  net = init_model(cfg, seed=seed)
  net.final_norm.scale[...] = net.final_norm.scale[...] * 25.0
  return net


@pytest.fixture(scope="module", params=["llada", "dream"])
def setup(request, tmp_path_factory):
  cfg = tiny_llada() if request.param == "llada" else tiny_dream()
  net = _peaked(cfg, seed=7)
  layer = JointLayer(cfg, rngs=nnx.Rngs(11))
  folder = tmp_path_factory.mktemp(f"joint_{request.param}")
  save_joint(folder, layer, cfg, "tiny")
  return net, layer, str(folder)


@pytest.mark.parametrize("k,marginals", [(4, False), (3, False), (4, True), (1, False)])
def test_adjust_matches_the_plain_loop(setup, k, marginals):
  net, layer, folder = setup
  sampler = JointSampler(tokens_per_step=k, schedule="even", temperature=0.0, use_marginals=marginals, head=folder)
  out = generate(net, PROMPTS, VALID, sampler=sampler, gen_length=G, block_length=G)
  ref, passes = adjust_reference(net, layer, PROMPTS, VALID, gen_length=G, tokens_per_step=k,
                                 use_marginals=marginals)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)
  steps = -(-G // k)
  np.testing.assert_array_equal(np.asarray(out.nfe), steps)
  extras = jax.tree.map(np.asarray, out.extras)
  np.testing.assert_array_equal(extras["layer_passes"], passes)
  if sampler.uses_layer:  # k - 1 passes per step, the last commit's pass skipped
    assert passes.tolist() == [G - steps] * 3
    n_params = sum(x.size for x in jax.tree.leaves(nnx.state(layer)))
    assert n_params == layer_parameters(net.cfg)
    length = PROMPTS.shape[1] + G
    per_pass = 2.0 * n_params * length + 2.0 * net.cfg.d_model * net.cfg.vocab_size * G
    np.testing.assert_allclose(extras["aux_flops"], passes * per_pass, rtol=1e-6)
  else:
    assert (extras["layer_passes"] == 0).all()


def test_one_token_per_step_is_the_entropy_ordered_step(setup):
  """K = 1: one commit per full forward, the lowest-entropy masked slot, its argmax; the layer never runs."""
  net, layer, folder = setup
  one = JointSampler(tokens_per_step=1, schedule="even", temperature=0.0, head=folder)
  assert not one.uses_layer and not one.canvas_features and one.default_params(G, G) is None
  out = generate(net, PROMPTS, VALID, sampler=one, gen_length=G, block_length=G)
  order = np.asarray(out.commit_step)
  assert (np.sort(order, axis=1) == np.arange(G)).all()  # exactly one slot per step
  ref, _ = adjust_reference(net, layer, PROMPTS, VALID, gen_length=G, tokens_per_step=1, use_marginals=True)
  np.testing.assert_array_equal(np.asarray(out.tokens), ref)


def test_layer_weights_are_data_and_rows_independent(setup):
  net, layer, folder = setup
  sampler = JointSampler(tokens_per_step=4, schedule="even", temperature=0.0, head=folder)
  batch = generate(net, PROMPTS, VALID, sampler=sampler, gen_length=G, block_length=G)
  for row in range(3):
    alone = generate(net, PROMPTS[row:row + 1], VALID[row:row + 1], sampler=sampler, gen_length=G, block_length=G)
    np.testing.assert_array_equal(np.asarray(alone.tokens)[0], np.asarray(batch.tokens)[row])
  # Other weights of the same shapes: the same compiled program, the decode of those weights.
  other_layer = JointLayer(net.cfg, rngs=nnx.Rngs(99))
  before = _compiled_programs()
  swapped = generate(net, PROMPTS, VALID, sampler=sampler, gen_length=G, block_length=G,
                     sampler_params=nnx.state(other_layer))
  assert _compiled_programs() == before
  ref, _ = adjust_reference(net, other_layer, PROMPTS, VALID, gen_length=G, tokens_per_step=4, use_marginals=False)
  np.testing.assert_array_equal(np.asarray(swapped.tokens), ref)


def _compiled_programs():
  from dlm.engine.generate import _generate_jit
  return _generate_jit._cache_size()


def test_sampling_at_temperature_and_the_dream_schedule(setup):
  """T = 1 (the reference's setting, statistics path) and T = 0.7 with top-p (full-logits path) run batched;
  Dream's count schedule with steps = ceil(G / 4) finishes every row."""
  net, _, folder = setup
  for sampler in (JointSampler(head=folder), JointSampler(temperature=0.7, top_p=0.9, head=folder)):
    out = generate(net, PROMPTS, VALID, sampler=sampler, gen_length=G, block_length=G, key=jax.random.key(3))
    assert np.asarray(out.finished).all()
    assert (np.asarray(out.nfe) == 2).all()
  blocks = generate(net, PROMPTS, VALID, sampler=JointSampler(head=folder), gen_length=G, block_length=4)
  assert np.asarray(blocks.finished).all() and (np.asarray(blocks.nfe) == 2).all()  # one step per block of 4


def test_a_layer_for_another_network_is_refused(setup, tmp_path):
  net, _, _ = setup
  wide = tiny_llada(d_model=48)
  save_joint(tmp_path / "wide", JointLayer(wide, rngs=nnx.Rngs(0)), wide, "other")
  with pytest.raises(ValueError, match="trained for a network with d_model=48"):
    generate(net, PROMPTS, VALID, sampler=JointSampler(tokens_per_step=4, head=str(tmp_path / "wide")),
             gen_length=G)
  with pytest.raises(FileNotFoundError, match="no ADJUST layer"):
    generate(net, PROMPTS, VALID, sampler=JointSampler(head=str(tmp_path / "missing")), gen_length=G)
  (tmp_path / "filter").mkdir()
  (tmp_path / "filter" / "head.json").write_text(json.dumps({"kind": "learn2pd_filter"}))
  with pytest.raises(ValueError, match="not an ADJUST layer"):
    load_joint(str(tmp_path / "filter"))


def test_adjust_errors(setup):
  net, _, folder = setup
  with pytest.raises(ValueError, match="cache='dual'.*only cache='none'"):
    generate(net, PROMPTS, VALID, sampler=JointSampler(head=folder), gen_length=G, cache="dual")
  with pytest.raises(ValueError, match="tokens_per_step=0"):
    JointSampler(tokens_per_step=0)
  with pytest.raises(ValueError, match="schedule='x'"):
    make_sampler("adjust", schedule="x")
  with pytest.raises(ValueError, match="use_marginals=1"):
    JointSampler(use_marginals=1)


def test_states_rank_and_unroll_weights_by_hand():
  order = np.asarray([[2, 0, 1, 3], [0, 3, 1, 2]])
  rank = commit_rank(order)
  assert rank.tolist() == [[2, 0, 1, 3], [0, 3, 1, 2]]
  answer = jnp.asarray([[10, 11, 12, 13], [20, 21, 22, 23]])
  x = np.asarray(states_at(answer, jnp.asarray(rank), jnp.asarray([2, 1]), mask_id=1))
  assert x.tolist() == [[1, 11, 12, 1], [20, 1, 1, 1]]
  w = unroll_weights(3, 0.5)
  e = np.exp([1.0, 0.5, 0.25])
  np.testing.assert_allclose(w, e / e.sum())


@pytest.fixture(scope="module")
def trajectories(tmp_path_factory):
  from dlm.tasks import get_task
  net = _peaked(tiny_llada(vocab_size=56, max_len=96), seed=2)
  task = get_task("hmm")
  folder = tmp_path_factory.mktemp("traj") / "hmm"
  store = collect_joint_data(net, task, folder, n=24, batch=8, model_name="tiny56", progress=False)
  return net, task, folder, store


def test_collection_records_whole_trajectories_and_resumes(trajectories, tmp_path):
  net, task, folder, store = trajectories
  data = store.read()
  assert store.rows == 24 and store.meta["temperature"] == 1.0  # the task's sampling temperature
  assert (np.sort(data["order"], axis=1) == np.arange(task.gen_length)).all()  # one commit per step
  assert (data["answer"] != net.cfg.mask_id).all()
  # Interrupted after one batch of 8, then resumed: the same 24 trajectories, none twice.
  part = tmp_path / "part"
  collect_joint_data(net, task, part, n=24, batch=8, model_name="tiny56", progress=False, stop_after=1)
  assert open_store(part).units_done == 8
  resumed = collect_joint_data(net, task, part, n=24, batch=8, model_name="tiny56", progress=False)
  again = resumed.read()
  for name in data:
    np.testing.assert_array_equal(again[name], data[name])


def test_training_lowers_the_kl_and_the_layer_loads(trajectories, tmp_path):
  net, task, folder, _ = trajectories
  info = train_joint(folder, tmp_path / "head", net, model_name="tiny56", steps=40, batch=16, lr=3e-3, warmup=5,
                     ckpt_every=20, progress=False)
  m = info["metrics"]
  assert m["loss_last"] < m["loss_first"]
  graphdef, state, loaded = load_joint(str(tmp_path / "head"))
  assert loaded["model"] == "tiny56" and loaded["speculation"] == 3 and set(m["held_out"]) == {"1", "2", "3"}
  out = generate(net, *task.encode(task.examples(4, seed=1))[:2], sampler=JointSampler(head=str(tmp_path / "head")),
                 gen_length=task.gen_length)
  assert np.asarray(out.finished).all()
  # Rerunning a finished run trains no further and leaves the layer and its head.json as they are.
  before = (tmp_path / "head" / "head.json").read_text()
  again = train_joint(folder, tmp_path / "head", net, model_name="tiny56", steps=40, batch=16, lr=3e-3, warmup=5,
                      ckpt_every=20, progress=False)
  assert again == json.loads(before) and (tmp_path / "head" / "head.json").read_text() == before
  with pytest.raises(ValueError, match="collected with the model 'tiny56', not 'other'"):
    train_joint(folder, tmp_path / "x", net, model_name="other", steps=2, progress=False)


def test_bench_reports_the_layer_cost(setup):
  from dlm.eval.bench import bench
  from dlm.eval.compare import forward_flops
  net, layer, folder = setup
  result = bench(net, PROMPTS, VALID, sampler=JointSampler(tokens_per_step=4, schedule="even", temperature=0.0,
                                                           head=folder), gen_length=G, repeats=1)
  length = PROMPTS.shape[1] + G
  n_params = layer_parameters(net.cfg)
  per_pass = 2.0 * n_params * length + 2.0 * net.cfg.d_model * net.cfg.vocab_size * G
  # Two steps of 4 commits: 3 passes each, per 1 forward.
  np.testing.assert_allclose(result["head_cost_per_forward"], 3 * per_pass / forward_flops(net, length), rtol=1e-5)
  np.testing.assert_allclose(result["nfe_flops_mean"], 2 + 6 * per_pass / forward_flops(net, length), rtol=1e-5)
  assert result["layer_passes_mean"] == 6
