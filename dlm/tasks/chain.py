"""`chain`: GSM8K-shaped multi-step arithmetic with a worked solution, a `#### <answer>` line and EOS padding.

Prompt (after the <chain> tag): one to three given quantities, then 2-10 steps, each defining the next variable
from earlier variables and small constants, then the question:

    a=07;b=a+5;c=b*2;d=c-a;?d

Worked solution (the answer slots): every step restated with its operands' values and its result, in order, then
the final answer in GSM8K's form, then <eos> up to `gen_length`:

    b=07+5=12;c=12*2=24;d=24-07=17;#### 17

Values lie in [0, 99] and are written with two digits (constants with one), so that digits of equal place value
sit at fixed offsets inside a step (see `Add`: a small model learns alignment from positions, not from content).
Every value after the first given depends on earlier ones, so a step cannot be written before the steps it reads.
Solutions are 27-117 characters; at `gen_length` 256 about three quarters of the canvas is padding.

Scoring is GSM8K's: the first `#### <number>` match in the completion (regex `#### (-?[0-9.,]+)`, commas removed,
surrounding space stripped) compared as a string with the true answer (openai/grade_school_math `extract_answer`
and lm-evaluation-harness's "strict-match"); a completion without the line scores 0.
"""

from __future__ import annotations

import dataclasses
import re
import string

import numpy as np

from dlm.tasks.base import Example, Task

ANSWER_RE = re.compile(r"#### (\-?[0-9\.\,]+)")
MAX_VALUE = 99


def apply_op(op: str, a: int, b: int) -> int:
  return a + b if op == "+" else a - b if op == "-" else a * b


def extract_answer(completion: str) -> str | None:
  """GSM8K's final-answer extraction; None when the completion has no `#### <number>` line."""
  match = ANSWER_RE.search(completion)
  if match is None:
    return None
  return match.group(1).strip().replace(",", "")


@dataclasses.dataclass(frozen=True)
class Problem:
  givens: tuple  # ((name, value), ...)
  steps: tuple  # ((name, left, op, right), ...); left is a variable, right a variable or a one-digit int

  def values(self) -> dict:
    env = dict(self.givens)
    for name, left, op, right in self.steps:
      env[name] = apply_op(op, env[left], env[right] if isinstance(right, str) else right)
    return env

  @property
  def answer(self) -> int:
    return self.values()[self.steps[-1][0]]

  def prompt(self) -> str:
    parts = [f"{n}={v:02d}" for n, v in self.givens]
    parts += [f"{n}={left}{op}{right}" for n, left, op, right in self.steps]
    return ";".join(parts) + f";?{self.steps[-1][0]}"

  def solution(self) -> str:
    env = dict(self.givens)
    parts = []
    for name, left, op, right in self.steps:
      b_text = f"{env[right]:02d}" if isinstance(right, str) else str(right)
      env[name] = apply_op(op, env[left], env[right] if isinstance(right, str) else right)
      parts.append(f"{name}={env[left]:02d}{op}{b_text}={env[name]:02d}")
    return ";".join(parts) + f";#### {env[self.steps[-1][0]]}"


def parse_problem(prompt: str) -> Problem:
  """The inverse of `Problem.prompt` (the scorer recomputes the answer from the prompt, not from a stored one)."""
  givens, steps = [], []
  for part in prompt.split(";")[:-1]:
    name, expr = part.split("=")
    if expr.isdigit():
      givens.append((name, int(expr)))
    else:
      left, op, right = expr[0], expr[1], expr[2:]
      steps.append((name, left, op, int(right) if right.isdigit() else right))
  return Problem(tuple(givens), tuple(steps))


def random_problem(rng: np.random.Generator, min_steps: int, max_steps: int) -> Problem:
  names = iter(string.ascii_lowercase)
  n_givens = int(rng.integers(1, 4))
  givens = tuple((next(names), int(rng.integers(0, MAX_VALUE + 1))) for _ in range(n_givens))
  env = dict(givens)
  steps = []
  for _ in range(int(rng.integers(min_steps, max_steps + 1))):
    name, known = next(names), list(env)
    while True:  # rejection keeps every value in [0, 99]; "+1" or "-1" always fits, so this ends quickly
      # The left operand is the newest variable with probability 1/2, so chains of dependent steps are common.
      left = known[-1] if rng.random() < 0.5 else known[int(rng.integers(len(known)))]
      op = "+-*"[int(rng.integers(3))]
      if op == "*":
        right = int(rng.integers(2, 10))
      elif rng.random() < 0.5 and len(known) > 1:
        right = known[int(rng.integers(len(known)))]
      else:
        right = int(rng.integers(1, 10))
      value = apply_op(op, env[left], env[right] if isinstance(right, str) else right)
      if 0 <= value <= MAX_VALUE:
        break
    env[name] = value
    steps.append((name, left, op, right))
  return Problem(givens, tuple(steps))


@dataclasses.dataclass(frozen=True)
class Chain(Task):
  """Exact match of the extracted final answer (GSM8K's rule); `gen_length` slots, the rest EOS padding."""

  min_steps: int = 2
  max_steps: int = 10
  name: str = "chain"
  gen_length: int = 256
  max_prompt_len: int = 80
  block_length: int = 32  # the real regime's semi-autoregressive block (LLaDA/Fast-dLLM on GSM8K)

  @property
  def tag(self) -> str:
    return "chain"

  def __post_init__(self):
    if not 1 <= self.min_steps <= self.max_steps <= 10:
      raise ValueError(f"need 1 <= {self.min_steps=} <= {self.max_steps=} <= 10 (the longest solution must fit "
                       f"128 slots and the prompt {self.max_prompt_len})")
    if self.gen_length < 128:
      raise ValueError(f"{self.gen_length=} must be >= 128 (the longest worked solution has 117 characters)")

  def sample(self, rng):
    problem = random_problem(rng, self.min_steps, self.max_steps)
    return Example(problem.prompt(), problem.solution())

  def score_one(self, prompt, completion):
    got = extract_answer(completion)
    return float(got is not None and got == str(parse_problem(prompt).answer))
