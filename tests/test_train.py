"""Training: the masked-diffusion loss and checkpoint resume."""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from dlm.io.params import load_model, save_model
from dlm.model.config import tiny_llada
from dlm.model.transformer import init_model
from dlm.train.loop import TrainConfig, check_resume, train
from dlm.train.loss import mask_answer, masked_diffusion_loss

TINY = TrainConfig(model=dict(d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, max_len=64),
                   tasks={"add": {"weight": 1.0}, "reverse": {"weight": 1.0, "max_len": 5}},
                   steps=4, batch_per_task=4, warmup=1, ckpt_every=2, log_every=1)


def test_mask_answer_masks_only_with_p_mask():
  answers = jnp.full((4096, 16), 7, jnp.int32)
  noisy, masked, p_mask = mask_answer(jax.random.key(0), answers, mask_id=1)
  assert ((noisy == 1) == masked).all()
  # The masked fraction follows p_mask: compare within quartiles of p_mask (stratified t covers (0, 1)).
  frac, p = np.asarray(masked.mean(1)), np.asarray(p_mask)
  for lo, hi in [(0, .25), (.25, .5), (.5, .75), (.75, 1.01)]:
    rows = (p >= lo) & (p < hi)
    assert abs(frac[rows].mean() - p[rows].mean()) < 0.02
  assert float(p_mask.min()) >= 1e-3 and float(p_mask.max()) <= 1.0


def test_loss_equals_hand_computed_weighting():
  cfg = tiny_llada()
  net = init_model(cfg)
  prompts = jnp.array([[5, 6], [0, 7]], jnp.int32)
  valid = prompts != 0
  answers = jnp.array([[8, 9, 10], [11, 12, 2]], jnp.int32)
  key = jax.random.key(3)
  loss, _ = masked_diffusion_loss(net, key, prompts, valid, answers)
  noisy, masked, p_mask = mask_answer(key, answers, cfg.mask_id)
  from dlm.model.transformer import positions_from_valid
  tokens = jnp.concatenate([prompts, noisy], 1)
  full_valid = jnp.concatenate([valid, jnp.ones_like(noisy, bool)], 1)
  logits = net.logits(net(tokens, positions_from_valid(full_valid), full_valid)[0])[:, 2:]
  logp = np.asarray(jax.nn.log_softmax(logits))
  expected = 0.0
  for b in range(2):
    ce = sum(-logp[b, j, int(answers[b, j])] for j in range(3) if masked[b, j])
    expected += ce / float(p_mask[b]) / 3
  assert float(loss) == pytest.approx(expected / 2, rel=1e-5)


def test_resume_after_interruption_matches_uninterrupted(tmp_path):
  full = train(TINY, tmp_path / "a", progress=False)
  train(TINY, tmp_path / "b", progress=False, stop_after=2)  # "interrupted" after a checkpoint at step 2
  assert not (tmp_path / "b" / "model").exists()  # no final model from an unfinished run
  # Another recipe is refused in one line before any checkpoint is read (a changed lr was taken silently, a
  # changed shape failed inside orbax); how often it checkpoints or logs may change.
  for change, named in ((dict(lr=2e-3), "lr: 0.001 -> 0.002"), (dict(model={**TINY.model, "d_model": 64}), "model")):
    with pytest.raises(ValueError, match=f"another recipe.*{named}") as err:
      train(dataclasses.replace(TINY, **change), tmp_path / "b", progress=False)
    assert "\n" not in str(err.value)
  check_resume(dataclasses.replace(TINY, log_every=3, ckpt_every=1), tmp_path / "b")
  resumed = train(TINY, tmp_path / "b", progress=False)
  a, b = nnx.state(full, nnx.Param), nnx.state(resumed, nnx.Param)
  jax.tree.map(lambda x, y: np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=1e-6), a, b)
  loaded = load_model(tmp_path / "b" / "model")
  jax.tree.map(lambda x, y: np.testing.assert_array_equal(np.asarray(x), np.asarray(y)),
               nnx.state(loaded, nnx.Param), b)


@pytest.mark.parametrize("change, named", [
    (dict(warmup=4), r"warmup=4 must be an integer in \[0, steps=4\)"), (dict(ckpt_every=0), "ckpt_every=0"),
    (dict(log_every=-1), "log_every=-1"), (dict(lr=0.0), "lr=0.0"), (dict(steps=0), "steps=0")])
def test_recipe_values_are_checked_before_any_work(change, named):
  with pytest.raises(ValueError, match=named):
    dataclasses.replace(TINY, **change)


def test_params_format_errors(tmp_path):
  with pytest.raises(FileNotFoundError, match="config.json"):
    load_model(tmp_path)
  net = init_model(tiny_llada())
  save_model(net, tmp_path)
  bigger = dataclasses.replace(net.cfg, d_model=64)
  (tmp_path / "config.json").write_text(__import__("json").dumps(bigger.to_dict()))
  with pytest.raises(ValueError, match="shape"):
    load_model(tmp_path)
