"""`sudoku` / `sudoku6`: N x N Sudoku (N = 9 with 3x3 boxes, N = 6 with 2x3 boxes) -> the full grid, row by row.

A 9x9 grid has 81 answer cells coupled by 27 units, so committing many cells per step clashes unless a sampler
respects the joint constraints.  `min_blanks`/`max_blanks` set the difficulty.  Grids are drawn from the
validity-preserving transformations of one pattern grid (digit relabelling, row swaps inside a band, band swaps,
the same for columns, and the transpose when the boxes are square): 9!·6^8 ≈ 6e11 distinct 9x9 grids, more than any
run sees, though not the uniform distribution over all 6.7e21 grids.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from dlm.tasks.base import Example, Task

BOXES = {6: (2, 3), 9: (3, 3)}  # size -> (box rows, box columns)


def units(size: int) -> list[np.ndarray]:
  """Index arrays of the rows, columns and boxes of a size x size grid."""
  br, bc = BOXES[size]
  idx = np.arange(size * size).reshape(size, size)
  out = [idx[r] for r in range(size)] + [idx[:, c] for c in range(size)]
  out += [idx[r:r + br, c:c + bc].reshape(-1) for r in range(0, size, br) for c in range(0, size, bc)]
  return out


def is_valid_grid(cells, size: int) -> bool:
  g = np.asarray(cells).reshape(-1)
  full = set(range(1, size + 1))
  return all(set(g[u].tolist()) == full for u in units(size))


def random_grid(rng: np.random.Generator, size: int) -> np.ndarray:
  """[size * size] digits 1..size of a valid grid."""
  br, bc = BOXES[size]
  r, c = np.meshgrid(np.arange(size), np.arange(size), indexing="ij")
  grid = (bc * (r % br) + r // br + c) % size  # the pattern grid, valid for (br, bc) boxes

  def band_perm(n_bands: int, width: int) -> np.ndarray:
    return np.concatenate([b * width + rng.permutation(width) for b in rng.permutation(n_bands)])

  grid = grid[band_perm(size // br, br)][:, band_perm(size // bc, bc)]
  if br == bc and rng.random() < 0.5:
    grid = grid.T
  return rng.permutation(size)[grid].reshape(-1) + 1


@dataclasses.dataclass(frozen=True)
class Sudoku(Task):
  """Score 1 when the completion is a valid grid that keeps every given; any valid completion counts."""

  size: int = 9
  min_blanks: int = 30
  max_blanks: int = 30
  name: str = "sudoku"
  gen_length: int = 81
  max_prompt_len: int = 83

  @property
  def tag(self) -> str:
    return "sudoku"

  def __post_init__(self):
    if self.size not in BOXES:
      raise ValueError(f"{self.size=} must be one of {sorted(BOXES)}")
    cells = self.size * self.size
    if not 0 <= self.min_blanks <= self.max_blanks <= cells:
      raise ValueError(f"need 0 <= {self.min_blanks=} <= {self.max_blanks=} <= {cells}")
    if self.gen_length != cells or self.max_prompt_len < cells + 2:
      raise ValueError(f"a {self.size}x{self.size} grid needs gen_length={cells} and max_prompt_len >= "
                       f"{cells + 2}; got {self.gen_length=}, {self.max_prompt_len=}")

  def sample(self, rng):
    cells = self.size * self.size
    grid = random_grid(rng, self.size)
    blanks = set(rng.choice(cells, size=int(rng.integers(self.min_blanks, self.max_blanks + 1)),
                            replace=False).tolist())
    puzzle = "".join("." if i in blanks else str(v) for i, v in enumerate(grid.tolist()))
    return Example(puzzle + "=", "".join(map(str, grid.tolist())))

  def score_one(self, prompt, completion):
    cells, digits = self.size * self.size, "123456789"[:self.size]
    givens = prompt.rstrip("=")
    if len(completion) != cells or not all(c in digits for c in completion):
      return 0.0
    if any(g != "." and g != c for g, c in zip(givens, completion)):
      return 0.0
    return float(is_valid_grid([int(c) for c in completion], self.size))
