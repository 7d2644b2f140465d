"""Task protocol and helpers that turn examples into left-padded arrays."""

from __future__ import annotations

import abc
import dataclasses

import numpy as np

from dlm.tasks.tokenizer import CharTokenizer

TOKENIZER = CharTokenizer()


@dataclasses.dataclass(frozen=True)
class Example:
  prompt: str  # text after the task tag, e.g. "4821+379="
  answer: str  # reference answer text, e.g. "5200" (for `hmm`: a sample of the data distribution)


class Task(abc.ABC):
  """A verifiable task: seeded generator, encoding, scorer.

  Layout of one sequence: [<tag>, prompt chars...] then `gen_length` answer slots holding the answer characters
  followed by <eos> up to the end (LLaDA's SFT convention: padding with EOS, and the padding is learned).
  """

  name: str  # registry name
  gen_length: int  # answer slots used in training and, by default, in generation
  max_prompt_len: int  # tag included
  block_length = None  # the semi-autoregressive block `dlm compare` uses unless told (None: one block)

  @abc.abstractmethod
  def sample(self, rng: np.random.Generator) -> Example:
    ...

  @abc.abstractmethod
  def score_one(self, prompt: str, completion: str) -> float:
    """Score of one decoded completion (text up to the first <eos>)."""

  @property
  def conditional(self) -> bool:
    return True

  @property
  def accuracy_scored(self) -> bool:
    """Scores are 0/1 accuracies (AUP applies); False for `hmm`'s log-likelihood."""
    return True

  @property
  def sampler_defaults(self) -> dict:
    """Sampler settings the compare harness uses for this task unless a grid entry sets them."""
    return {}

  def examples(self, n: int, seed: int) -> list[Example]:
    rng = np.random.default_rng(seed)
    return [self.sample(rng) for _ in range(n)]

  @property
  def tag(self) -> str:
    """The task-tag token's name (variants of one task share the tag)."""
    return self.name

  def prompt_ids(self, ex: Example) -> list[int]:
    return [TOKENIZER.tag_id(self.tag)] + TOKENIZER.encode(ex.prompt)

  def answer_ids(self, ex: Example) -> list[int]:
    ids = TOKENIZER.encode(ex.answer)
    if len(ids) > self.gen_length:
      raise ValueError(f"answer {ex.answer!r} is longer than {self.gen_length=}")
    return ids + [TOKENIZER.eos_id] * (self.gen_length - len(ids))

  def encode(self, exs: list[Example]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """-> prompts [N, P] int32 (left-padded), prompt_valid [N, P] bool, answers [N, gen_length] int32."""
    prompts = [self.prompt_ids(e) for e in exs]
    width = self.max_prompt_len
    tokens = np.full((len(exs), width), TOKENIZER.pad_id, np.int32)
    valid = np.zeros((len(exs), width), bool)
    for i, p in enumerate(prompts):
      if len(p) > width:
        raise ValueError(f"prompt {exs[i].prompt!r} has {len(p)} tokens > {self.max_prompt_len=}")
      tokens[i, width - len(p):] = p
      valid[i, width - len(p):] = True
    answers = np.asarray([self.answer_ids(e) for e in exs], np.int32).reshape(len(exs), self.gen_length)
    return tokens, valid, answers

  def decode(self, answer_ids) -> str:
    return TOKENIZER.decode(answer_ids)

  def score(self, exs: list[Example], answer_ids: np.ndarray) -> np.ndarray:
    """Per-example scores for generated answer slots [N, G]."""
    return np.asarray([self.score_one(e.prompt, self.decode(a)) for e, a in zip(exs, np.asarray(answer_ids))],
                      np.float64)

  def reference_score(self, exs: list[Example]) -> float:
    """The score of the reference answers (1.0 for exact-match tasks)."""
    return float(np.mean([self.score_one(e.prompt, e.answer) for e in exs]))
