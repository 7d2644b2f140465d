"""Built-in tasks: seeded generators, encodings, scorers against hand-computed cases."""

import numpy as np
import pytest

from dlm.tasks import HMM, TASKS, TOKENIZER, Add, Reverse, Sudoku4, get_task
from dlm.tasks.hmm import hmm_params, log_likelihood
from dlm.tasks.sudoku import all_grids, is_valid


def test_tokenizer_round_trip_and_errors():
  ids = TOKENIZER.encode("<add>0012+0034=")
  assert ids[0] == TOKENIZER.tag_id("add")
  assert TOKENIZER.decode(ids) == "0012+0034="
  assert TOKENIZER.decode([TOKENIZER.stoi["7"], TOKENIZER.eos_id, TOKENIZER.stoi["8"]]) == "7"
  with pytest.raises(ValueError, match="not in the vocabulary"):
    TOKENIZER.encode("A")


@pytest.mark.parametrize("name", sorted(TASKS))
def test_generators_are_seeded_and_references_score_perfectly(name):
  task = get_task(name)
  a, b = task.examples(20, seed=5), task.examples(20, seed=5)
  assert a == b and a != task.examples(20, seed=6)
  prompts, valid, answers = task.encode(a)
  assert prompts.shape == (20, task.max_prompt_len) and answers.shape == (20, task.gen_length)
  assert valid[:, -1].all() and (prompts[~valid] == TOKENIZER.pad_id).all()  # left padding
  scores = task.score(a, answers)
  if task.conditional:
    np.testing.assert_array_equal(scores, 1.0)


def test_add_hand_cases():
  t = Add()
  assert t.score_one("4821+0379=", "05200") == 1.0
  assert t.score_one("4821+0379=", "5200") == 0.0  # fixed width is part of the answer
  assert t.score_one("9999+9999=", "19998") == 1.0


def test_reverse_and_sudoku_hand_cases():
  assert Reverse().score_one("abc=", "cba") == 1.0
  assert Reverse().score_one("abc=", "abc") == 0.0
  assert len(all_grids()) == 288  # the number of 4x4 Sudoku grids
  grid = "1234341221434321"
  assert is_valid([int(c) for c in grid])
  s = Sudoku4()
  assert s.score_one("1.3.3412214.4321=", grid) == 1.0
  assert s.score_one("1.3.3412214.4321=", "1234341221434312") == 0.0  # invalid grid
  assert s.score_one("2...............=", grid) == 0.0  # contradicts a given


def test_hmm_forward_algorithm_matches_brute_force():
  params = hmm_params(0)
  init, trans, emit = params
  x = np.array([0, 3, 1])
  brute = 0.0
  n = len(init)
  for z0 in range(n):
    for z1 in range(n):
      for z2 in range(n):
        brute += (init[z0] * emit[z0, x[0]] * trans[z0, z1] * emit[z1, x[1]] * trans[z1, z2] * emit[z2, x[2]])
  assert log_likelihood(x, params) == pytest.approx(np.log(brute), rel=1e-10)
  t = HMM()
  exs = t.examples(200, seed=0)
  ref = t.reference_score(exs)
  assert -2.5 < ref < -0.5
  # Uniformly random strings are much less likely than the HMM's own samples.
  rng = np.random.default_rng(0)
  rand = np.mean([t.score_one("", "".join(rng.choice(list("abcdefgh"), 32))) for _ in range(50)])
  assert rand < ref - 0.3


def test_bad_task_arguments():
  with pytest.raises(ValueError, match="unknown task"):
    get_task("chess")
  with pytest.raises(ValueError, match="max_digits"):
    Add(max_digits=7)
  with pytest.raises(ValueError, match="min_blanks"):
    Sudoku4(min_blanks=9, max_blanks=3)
