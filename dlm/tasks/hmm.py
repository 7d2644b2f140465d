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


def _symbol_rows(texts) -> np.ndarray:
  """Valid samples (only symbols, equal length) as [N, T] ints; invalid ones are dropped."""
  rows = [[SYMBOLS.index(c) for c in t] for t in texts if t and all(c in SYMBOLS for c in t)]
  length = max((len(r) for r in rows), default=0)
  rows = [r for r in rows if len(r) == length]
  return np.asarray(rows, np.int64).reshape(len(rows), length)


def _entropy(counts: np.ndarray) -> float:
  p = counts[counts > 0] / counts.sum()
  return float(-(p * np.log(p)).sum())


def sample_statistics(texts, seed: int = 0) -> dict:
  """Mean log-likelihood per token, pooled unigram entropy and pooled bigram entropy per token (nats)."""
  rows = _symbol_rows(texts)
  k = len(SYMBOLS)
  if rows.size == 0:
    return {"loglik": float(np.log(1e-6)), "unigram_entropy": 0.0, "bigram_entropy": 0.0}
  params = hmm_params(seed)
  ll = np.mean([log_likelihood(r, params) / rows.shape[1] for r in rows])
  uni = np.bincount(rows.reshape(-1), minlength=k)
  bi = np.bincount((rows[:, :-1] * k + rows[:, 1:]).reshape(-1), minlength=k * k)
  return {"loglik": float(ll), "unigram_entropy": _entropy(uni), "bigram_entropy": _entropy(bi) / 2}


@functools.cache
def reference_samples(length: int, seed: int = 0, n: int = 2048) -> tuple:
  """A fixed set of n data samples (its own generator seed) that distances are measured against."""
  task = HMM(length=length, gen_length=length, seed=seed)
  return tuple(e.answer for e in task.examples(n, seed=10_000 + length))


def distribution_distance(texts, reference, seed: int = 0) -> dict:
  """|Δ mean log-lik| + |Δ unigram entropy| + |Δ bigram entropy| against the reference samples (nats/token).

  The log-likelihood gap alone rewards nothing and punishes both directions, but a sampler can match the mean
  log-likelihood with the wrong spread; the entropy gaps catch mode-seeking (entropy too low: confidence-ordered
  greedy decoding) and noise (entropy too high: many tokens per step from independent marginals), as the MDLM
  line of work reports generative perplexity together with entropy.  0 for the reference set itself; invalid
  samples are dropped from the statistics and counted in `invalid`.
  """
  got, ref = sample_statistics(texts, seed), sample_statistics(reference, seed)
  gaps = {f"{name}_gap": got[name] - ref[name] for name in got}
  distance = sum(abs(v) for v in gaps.values())
  invalid = 1.0 - len(_symbol_rows(texts)) / max(len(texts), 1)
  return {"distance": float(distance), **gaps, **{f"sample_{k}": v for k, v in got.items()}, "invalid": invalid}


@dataclasses.dataclass(frozen=True)
class HMM(Task):
  """Sequences of `length` symbols; score = mean log-likelihood per token (higher is better; data ~ reference)."""

  length: int = 32
  seed: int = 0
  name: str = "hmm"
  gen_length: int = 32
  max_prompt_len: int = 1

  @property
  def tag(self) -> str:
    return "hmm"  # every length shares one tag: the canvas length is the sample length

  def __post_init__(self):
    if self.length != self.gen_length:
      raise ValueError(f"{self.length=} must equal {self.gen_length=} (samples fill every slot)")

  @property
  def conditional(self) -> bool:
    return False

  @property
  def accuracy_scored(self) -> bool:
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

  def distribution_metrics(self, completions: list[str]) -> dict:
    """Distance of a set of samples to the data distribution (`distribution_distance`), with its three parts."""
    return distribution_distance(completions, reference_samples(self.length, self.seed), self.seed)

  def score_one(self, prompt, completion):
    del prompt
    if len(completion) != self.length or any(c not in SYMBOLS for c in completion):
      # An invalid sample gets the log-likelihood of a uniformly random symbol string's floor.
      return float(np.log(1e-6))
    ll = log_likelihood(np.asarray([SYMBOLS.index(c) for c in completion]), hmm_params(self.seed))
    return max(ll / self.length, float(np.log(1e-6)))
