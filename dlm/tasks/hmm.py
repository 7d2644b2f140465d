"""`hmm`: unconditional samples from a fixed, seeded hidden Markov model; scored by true log-likelihood."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from dlm.tasks.base import Example, Task

SYMBOLS = "abcdefgh"


@functools.cache
def hmm_params(seed: int = 0, n_states: int = 6, n_symbols: int = len(SYMBOLS)):
  """Initial [S], transition [S, S], emission [S, K] probabilities.  Peaked Dirichlet draws give structure."""
  rng = np.random.default_rng(seed)
  init = rng.dirichlet(np.full(n_states, 1.0))
  trans = rng.dirichlet(np.full(n_states, 0.2), size=n_states)
  emit = rng.dirichlet(np.full(n_symbols, 0.3), size=n_states)
  return init, trans, emit


def log_likelihood(symbols: np.ndarray, params) -> float:
  """log p(x_1..x_T) by the scaled forward algorithm.  symbols: [T] ints in [0, K)."""
  init, trans, emit = params
  alpha = init * emit[:, symbols[0]]
  total = np.log(alpha.sum())
  alpha /= alpha.sum()
  for s in symbols[1:]:
    alpha = (alpha @ trans) * emit[:, s]
    norm = alpha.sum()
    if norm <= 0:
      return -np.inf
    total += np.log(norm)
    alpha /= norm
  return float(total)


@dataclasses.dataclass(frozen=True)
class HMM(Task):
  """Sequences of `length` symbols; score = mean log-likelihood per token (higher is better; data ~ reference)."""

  length: int = 32
  seed: int = 0
  name: str = "hmm"
  gen_length: int = 32
  max_prompt_len: int = 1

  def __post_init__(self):
    if self.length != self.gen_length:
      raise ValueError(f"{self.length=} must equal {self.gen_length=} (samples fill every slot)")

  @property
  def conditional(self) -> bool:
    return False

  @property
  def sampler_defaults(self) -> dict:
    # The score measures distance to the joint distribution, so samplers must sample: greedy decoding of an
    # unconditional prompt returns one sequence n times.
    return {"temperature": 1.0}

  def sample(self, rng):
    init, trans, emit = hmm_params(self.seed)
    z = rng.choice(len(init), p=init)
    out = []
    for _ in range(self.length):
      out.append(SYMBOLS[rng.choice(emit.shape[1], p=emit[z])])
      z = rng.choice(len(init), p=trans[z])
    return Example("", "".join(out))

  def score_one(self, prompt, completion):
    del prompt
    if len(completion) != self.length or any(c not in SYMBOLS for c in completion):
      # An invalid sample gets the log-likelihood of a uniformly random symbol string's floor.
      return float(np.log(1e-6))
    ll = log_likelihood(np.asarray([SYMBOLS.index(c) for c in completion]), hmm_params(self.seed))
    return max(ll / self.length, float(np.log(1e-6)))
