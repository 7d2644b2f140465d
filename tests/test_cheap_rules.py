"""The 2026 cheap commit rules of issue 25: dParallel's per-token entropy threshold (`entropy_threshold`).

Each against a hand-built case and a plain loop written from its reference code's steps (one row at a time, as
the reference runs), then batched under jit.
"""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest

from dlm.engine import generate
from dlm.samplers.entropy_threshold import entropy_commit
from dlm.samplers.registry import make_sampler
from tests.conftest import PROMPTS, VALID
from tests.reference_loops import OneRow, assert_rows_match, softmax

GEN, BLOCK = 16, 8


def test_entropy_commit_by_hand():
  entropy = jnp.asarray([[0.9, 0.2, 0.5, 0.7], [0.8, 0.9, 0.6, 0.6]])
  eligible = jnp.asarray([[True, True, True, True], [True, True, False, True]])
  got = np.asarray(entropy_commit(entropy, eligible, 0.5))
  # row 0: 0.2 and 0.5 (<= tau, the bound is inclusive as in the reference); row 1: none passes, the lowest
  # eligible one (0.6 at slot 3; slot 2 is not eligible)
  np.testing.assert_array_equal(got, [[False, True, True, False], [False, False, False, True]])


def adaptive_reference(model, prompt, valid, *, gen_length, block_length, choose):
  """One row through a reference `generate` of the adaptive kind (a full forward per step, each block decoded
  until it has no masks): choose(logits [Bk, V] with the mask id banned, masked slot indices) -> the slots that
  take their argmax.  -> (tokens, forwards)."""
  row = OneRow(model, prompt, valid, gen_length)
  x, m_id = row.x, row.mask_id
  forwards = 0
  for blk in range(gen_length // block_length):
    s, e = row.block(blk, block_length)
    while (x[0, s:e] == m_id).any():
      logits = row.logits(s, e)  # the mask id banned, as in every dlm view (README: known differences)
      forwards += 1
      take = np.asarray(choose(logits, np.flatnonzero(x[0, s:e] == m_id)))
      x[0, s + take] = logits.argmax(-1)[take]
  return x[0], forwards


def dparallel_reference(model, prompt, valid, *, gen_length, block_length, tau):
  """dParallel's `generate` with `threshold`: the lowest-entropy masked slot and every one with entropy <= tau."""
  def choose(logits, masked):
    probs = softmax(logits)
    entropy = -np.sum(probs * np.log(probs + 1e-12), axis=-1)
    order = masked[np.argsort(entropy[masked], kind="stable")]
    return [order[0]] + [i for i in order[1:] if entropy[i] <= tau]
  return adaptive_reference(model, prompt, valid, gen_length=gen_length, block_length=block_length, choose=choose)


def test_entropy_threshold_matches_the_reference_loop(sharp_model):
  tau = 1.0
  out = generate(sharp_model, PROMPTS, VALID, sampler=make_sampler("entropy_threshold", tau=tau), gen_length=GEN,
                 block_length=BLOCK)
  assert_rows_match(out, dparallel_reference, sharp_model, PROMPTS, VALID, gen_length=GEN, block_length=BLOCK, tau=tau)
  assert (np.asarray(out.nfe) < GEN).any()  # several slots per step somewhere, or the test shows nothing


def test_entropy_threshold_settings():
  with pytest.raises(ValueError, match="tau='x' must be a number"):
    make_sampler("entropy_threshold", tau="x")
  with pytest.raises(ValueError, match="temperature=-1"):
    make_sampler("entropy_threshold", temperature=-1)


# -- PC-Sampler ---------------------------------------------------------------------------------------------------


def test_pc_score_and_table_lookup_by_hand(tmp_path):
  from dlm.io.token_freq import read_table, write_table
  from dlm.samplers.pc_sampler import calibrated_score, frequency_of
  path = write_table({5: 30, 9: 10}, 100, tmp_path / "t.json")
  ids, freq, default = read_table(path)
  got = np.asarray(frequency_of(jnp.asarray([[5, 9, 7, 200]]), jnp.asarray(ids), jnp.asarray(freq), default))
  np.testing.assert_allclose(got, [[0.3, 0.1, 0.01, 0.01]], rtol=1e-6)
  prob = jnp.asarray([[0.9, 0.5, 0.99, 0.2]])
  score = np.asarray(calibrated_score(prob, jnp.asarray(got), 0.25, 2.0))
  raw = -np.asarray(prob)[0] * np.log(got[0] + 1e-9)
  np.testing.assert_allclose(score[0], np.exp(-0.25 * np.arange(4)) * np.minimum(raw, 2.0), rtol=1e-6)
  # no table: the position-aware confidence alone
  np.testing.assert_allclose(np.asarray(calibrated_score(prob, None, 0.5, 2.0))[0],
                             np.exp(-0.5 * np.arange(4)) * np.asarray(prob)[0], rtol=1e-6)


def pc_reference(model, prompt, valid, *, steps, gen_length, block_length, lambd, alpha, table):
  """One row through PC-Sampler's `generate_with_pc_sampler` (a full forward per step, LLaDA's even split)."""
  row = OneRow(model, prompt, valid, gen_length)
  x, m_id = row.x, row.mask_id
  spb = steps // (gen_length // block_length)
  for blk in range(gen_length // block_length):
    s, e = row.block(blk, block_length)
    m = int((x[0, s:e] == m_id).sum())
    counts = [m // spb + (i < m % spb) for i in range(spb)]
    for i in range(spb):
      logits = row.logits(s, e)
      x0 = logits.argmax(-1)
      prob = softmax(logits)[np.arange(block_length), x0]
      f = np.asarray([table.get(int(t), table["default"]) for t in x0])
      score = np.exp(-lambd * np.arange(block_length)) * np.minimum(-prob * np.log(f + 1e-9), alpha)
      masked = np.flatnonzero(x[0, s:e] == m_id)
      take = masked[np.argsort(-score[masked], kind="stable")][:counts[i]]
      x[0, s + take] = x0[take]
  return x[0]


@pytest.mark.parametrize("lambd", [0.0, pytest.param(0.25, marks=pytest.mark.slow)])
def test_pc_sampler_matches_the_reference_loop(sharp_model, tmp_path, lambd):
  from dlm.io.token_freq import write_table
  rng = np.random.default_rng(0)
  v = sharp_model.cfg.vocab_size
  ids, rare = rng.choice(v, v // 2, replace=False), rng.integers(1, 5, v // 2)  # rare: -p log f clamps at alpha
  counts = {int(t): int(c) for t, c in zip(ids, rare)}
  counts[sharp_model.cfg.eos_id] = 10**6  # the tiny model proposes end of text often: make it the frequent token
  total = sum(counts.values()) + 1000
  path = str(write_table(counts, total, tmp_path / "freq.json"))
  table = {k: c / total for k, c in counts.items()} | {"default": 1.0 / total}
  sampler = make_sampler("pc_sampler", steps=GEN, lambd=lambd, alpha=10.0, baseline=path)
  out = generate(sharp_model, PROMPTS, VALID, sampler=sampler, gen_length=GEN, block_length=BLOCK)
  for row in range(PROMPTS.shape[0]):
    want = pc_reference(sharp_model, PROMPTS[row], VALID[row], steps=GEN, gen_length=GEN, block_length=BLOCK,
                        lambd=lambd, alpha=10.0, table=table)
    np.testing.assert_array_equal(np.asarray(out.tokens)[row], want)
  if lambd == 0:  # the calibration changes the order: without the table the same model decodes otherwise
    plain = generate(sharp_model, PROMPTS, VALID, sampler=make_sampler("pc_sampler", steps=GEN, lambd=0.0),
                     gen_length=GEN, block_length=BLOCK)
    assert not np.array_equal(np.asarray(plain.commit_step), np.asarray(out.commit_step))


def test_pc_sampler_table_errors(tmp_path):
  with pytest.raises(ValueError, match="no such file"):
    make_sampler("pc_sampler", baseline=str(tmp_path / "missing.json"))
  bad = tmp_path / "bad.json"
  bad.write_text('{"counts": {}}')
  with pytest.raises(ValueError, match="is not a token frequency table"):
    make_sampler("pc_sampler", baseline=str(bad))
  with pytest.raises(ValueError, match="lambd=-1"):
    make_sampler("pc_sampler", lambd=-1)


def test_token_freq_command(tmp_path, capsys):
  from dlm.cli import main
  from dlm.io.token_freq import read_table
  from tests.test_hf_io import write_tokenizer
  out = tmp_path / "t" / "freq.json"
  assert main(["token-freq", "--task", "sudoku4_hard", "--n", "8", "--out", str(out)]) == 0
  ids, freq, default = read_table(out)
  assert abs(freq.sum() - 1.0) < 1e-5 and default > 0 and not (tmp_path / "t" / "freq.json.tmp").exists()
  write_tokenizer(tmp_path)
  text = tmp_path / "corpus.txt"
  text.write_text("hello world\nwhat is 2+2 ?\nhello hello\n")
  assert main(["token-freq", "--text", str(text), "--tokenizer", str(tmp_path), "--out", str(out)]) == 0
  ids, freq, default = read_table(out)
  assert len(ids) == 6 and abs(default - 1 / 8) < 1e-7  # 8 words, "hello" three times
  assert main(["token-freq", "--text", str(text), "--out", str(out)]) != 0
  assert "--text needs --tokenizer" in capsys.readouterr().err


def test_pc_sampler_shipped_testbed_table():
  from dlm.io.token_freq import read_table
  ids, freq, _ = read_table("testbed")
  assert len(ids) > 10 and abs(freq.sum() - 1.0) < 1e-5
  assert make_sampler("pc_sampler", baseline="testbed").default_params(16, 8)["ids"].shape == ids.shape


# -- Fast-dLLM++ (Fréchet profile decoding) ---------------------------------------------------------------------


def test_frechet_count_by_hand_and_the_factor_case():
  from dlm.samplers.frechet import frechet_count
  conf = jnp.asarray([[0.99, 0.95, 0.9, 0.5], [0.9, 0.9, 0.9, 0.9], [0.3, 0.2, 0.1, 0.0]])
  eligible = jnp.asarray([[True] * 4, [True] * 4, [True, True, True, False]])
  # row 0: G_1 = 0.99 - 0.01, G_2 = 0.94 - 0.05 = 0.89, G_3 = 0.84 - 0.1 = 0.74, G_4 = 0.34 - 0.5 < 0.25 -> 3
  # row 1 (equal confidences, eps = 0.1): G_n = 1 - (n + 1) 0.1 > 0.25 for n <= 6 -> all 4, the factor rule's
  #   (n + 1) eps < f = 0.75;  row 2: nothing passes, at least one
  np.testing.assert_array_equal(np.asarray(frechet_count(conf, eligible, 0.25)), [3, 4, 1])
  np.testing.assert_array_equal(np.asarray(frechet_count(conf, eligible, 0.8)), [2, 1, 1])


def frechet_reference(model, prompt, valid, *, gen_length, block_length, margin):
  """Fast-dLLM++'s `generate` with `frechet_margin`: the sorted prefix whose Fréchet score beats the margin."""
  def choose(logits, masked):
    conf = softmax(logits)[np.arange(len(logits)), logits.argmax(-1)]
    order = masked[np.argsort(-conf[masked], kind="stable")]
    c = conf[order]
    score = np.cumsum(c) - np.arange(len(c)) - (1.0 - c)
    score[0] = np.inf
    return order[:max(int((score > margin).sum()), 1)]
  return adaptive_reference(model, prompt, valid, gen_length=gen_length, block_length=block_length, choose=choose)


def test_frechet_matches_the_reference_loop(sharp_model):
  out = generate(sharp_model, PROMPTS, VALID, sampler=make_sampler("fastdllm_pp", margin=0.25), gen_length=GEN,
                 block_length=BLOCK)
  assert_rows_match(out, frechet_reference, sharp_model, PROMPTS, VALID, gen_length=GEN, block_length=BLOCK,
                    margin=0.25)
  assert (np.asarray(out.nfe) < GEN).any()
