"""`sudoku4`: a 4x4 Sudoku with blanks ('.') -> the full grid as 16 digits, row by row."""

from __future__ import annotations

import dataclasses
import functools
import itertools

import numpy as np

from dlm.tasks.base import Example, Task


@functools.cache
def all_grids() -> np.ndarray:
  """All 288 valid 4x4 Sudoku grids, [288, 16] int8, found by brute force over row permutations."""
  perms = list(itertools.permutations(range(1, 5)))
  grids = []
  for rows in itertools.product(perms, repeat=4):
    g = np.asarray(rows)
    if is_valid(g.reshape(-1)):
      grids.append(g.reshape(-1))
  return np.asarray(grids, np.int8)


def is_valid(cells) -> bool:
  g = np.asarray(cells).reshape(4, 4)
  full = set(range(1, 5))
  units = [g[i] for i in range(4)] + [g[:, j] for j in range(4)]
  units += [g[r:r + 2, c:c + 2].reshape(-1) for r in (0, 2) for c in (0, 2)]
  return all(set(u.tolist()) == full for u in units)


@dataclasses.dataclass(frozen=True)
class Sudoku4(Task):
  """Score 1 when the completion is a valid grid that keeps every given; many solutions may be valid."""

  min_blanks: int = 6
  max_blanks: int = 6
  name: str = "sudoku4"
  gen_length: int = 16
  max_prompt_len: int = 18

  @property
  def tag(self) -> str:
    return "sudoku4"

  def __post_init__(self):
    if not 0 <= self.min_blanks <= self.max_blanks <= 16:
      raise ValueError(f"need 0 <= {self.min_blanks=} <= {self.max_blanks=} <= 16")

  def sample(self, rng):
    grids = all_grids()
    grid = grids[int(rng.integers(len(grids)))]
    blanks = rng.choice(16, size=int(rng.integers(self.min_blanks, self.max_blanks + 1)), replace=False)
    puzzle = ["." if i in set(blanks.tolist()) else str(v) for i, v in enumerate(grid.tolist())]
    return Example("".join(puzzle) + "=", "".join(map(str, grid.tolist())))

  def score_one(self, prompt, completion):
    givens = prompt.rstrip("=")
    if len(completion) != 16 or not all(c in "1234" for c in completion):
      return 0.0
    if any(g != "." and g != c for g, c in zip(givens, completion)):
      return 0.0
    return float(is_valid([int(c) for c in completion]))
