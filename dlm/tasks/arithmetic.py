"""`add` and `reverse`: exact-match tasks."""

from __future__ import annotations

import dataclasses
import string

import numpy as np

from dlm.tasks.base import Example, Task


@dataclasses.dataclass(frozen=True)
class Add(Task):
  """Multi-digit addition in fixed width: "4821+0379=" -> "05200".

  Operands are zero-padded to `max_digits` digits and the sum to `max_digits + 1`, so that digits of equal place
  value sit at fixed offsets (DESIGN.md's example "4821+379=" -> "5200" written in fixed width).  A small
  bidirectional model learns place alignment from positions this way; with variable widths it has to infer
  the alignment from content, which our 4-layer bundled model did not learn in 1000 steps (score 3%).  Carries
  still couple the digits right to left, which is what makes parallel unmasking fail here.  Operand lengths are
  drawn uniformly in [1, max_digits] before padding.
  """

  max_digits: int = 4
  name: str = "add"
  gen_length: int = 8
  max_prompt_len: int = 12

  def __post_init__(self):
    if not 1 <= self.max_digits <= 4:
      raise ValueError(f"{self.max_digits=} must be in [1, 4] (the bundled model's prompt width)")

  def _operand(self, rng) -> int:
    digits = int(rng.integers(1, self.max_digits + 1))
    return int(rng.integers(0 if digits == 1 else 10 ** (digits - 1), 10 ** digits))

  def sample(self, rng):
    a, b = self._operand(rng), self._operand(rng)
    w = self.max_digits
    return Example(f"{a:0{w}d}+{b:0{w}d}=", f"{a + b:0{w + 1}d}")

  def score_one(self, prompt, completion):
    a, b = prompt.rstrip("=").split("+")
    return float(completion == f"{int(a) + int(b):0{self.max_digits + 1}d}")


@dataclasses.dataclass(frozen=True)
class Reverse(Task):
  """A lowercase string -> its reverse: "abc=" -> "cba"."""

  min_len: int = 3
  max_len: int = 12
  name: str = "reverse"
  gen_length: int = 16
  max_prompt_len: int = 14

  def __post_init__(self):
    if not 1 <= self.min_len <= self.max_len <= 12:
      raise ValueError(f"need 1 <= {self.min_len=} <= {self.max_len=} <= 12")

  def sample(self, rng):
    n = int(rng.integers(self.min_len, self.max_len + 1))
    s = "".join(rng.choice(list(string.ascii_lowercase), size=n))
    return Example(f"{s}=", s[::-1])

  def score_one(self, prompt, completion):
    return float(completion == prompt.rstrip("=")[::-1])
