"""DUS dilated unmasking groups ("Plan for Speed: Dilated Scheduling for Masked Diffusion LMs").

Within a semi-autoregressive block of B positions, DUS commits a fixed, data-independent group of in-block
offsets per forward pass, coarse to fine, so that positions revealed together are far apart (their mutual
dependence, and so the error of sampling them independently, is small) and the dense late rounds have the most
context.  The rule (omerlux/DUS `dilated_unmask_levels`, samplers_core.md §4):

    stride = B // base**base_skip
    while stride >= 1:
      round = still-unassigned offsets o with o % stride == 0      (never empty, see below)
      stride //= base
    leftovers, if any, form a final round
    merge_last_level: fold the last round into the previous one when it is strictly smaller

B = 8, base 2 gives {0, 4}, {2, 6}, {1, 3, 5, 7}; B = 32 gives rounds of 2, 2, 4, 8, 16 offsets.

Round count.  The strides are floor(B / base^j) for j = base_skip, base_skip + 1, ... while >= 1, and each gives a
non-empty round (offset floor(B / base^j) itself is new: it is positive and smaller than every earlier stride).
So the number of rounds, the NFE per block, is

    R = #{j >= base_skip : base^j <= B}  +  1 if leftovers remain (the last stride is > 1, or there was none)

- B a power of base, base_skip = 1: R = log_base B (the paper's ceil(log_a B)); base_skip = e gives log_base B - e + 1.
- Other B (handled the way DUS handles them, not padded or rejected): with base 2 the last stride is always 1, so
  R = floor(log2 B), one round fewer than ceil(log2 B), and the last round is denser (B = 12: {0, 6}, {3, 9} and
  then the other 8 offsets; B = 24: 2, 2, 4, 16).  Bases > 2 can leave leftovers, which add a round (B = 20,
  base 3: strides 6 and 2 take 4 and 6 offsets, the 10 odd offsets form a third round).
- base**base_skip > B (stride 0): the whole block is one round, as for B = 1.
- base = 1: one round holding the whole block (DUS's special case; the stride would never shrink).

merge_last_level: DUS's `generate_scheduled` always applies its `merge_last_level` to the rounds.  It changes
nothing when B is a power of the base (the last round is then the largest), only some other B (base 2: B = 5,
rounds [3, 2] -> [5]; B = 46, [2, 4, 9, 16, 15] -> [2, 4, 9, 31]).  It is off by default here; `True` reproduces
DUS's `generate_scheduled` for every B.

These are host-side, static helpers (plain ints and NumPy): an engine turns `group_index` into a constant and
commits `masked & (group_index[offset] == round)` at each round.
"""

from __future__ import annotations

import functools

import numpy as np

from dlm.schedules._checks import static_int


def _check(block_length, base, base_skip, merge_last_level) -> tuple[int, int, int, bool]:
  block_length = static_int("block_length", block_length, minimum=1)
  base = static_int("base", base, minimum=1)
  base_skip = static_int("base_skip", base_skip, minimum=1)  # DUS rejects skip_exp < 1 as well
  if not isinstance(merge_last_level, (bool, np.bool_)):
    raise ValueError(f"{merge_last_level=} must be a bool")
  return block_length, base, base_skip, bool(merge_last_level)


@functools.lru_cache(maxsize=256)
def _groups(block_length: int, base: int, base_skip: int, merge_last_level: bool) -> tuple[tuple[int, ...], ...]:
  if base == 1:
    return (tuple(range(block_length)),)
  rounds: list[list[int]] = []
  assigned = np.zeros(block_length, bool)  # [B]
  offsets = np.arange(block_length)  # [B]
  stride = block_length // base ** base_skip
  while stride >= 1:
    new = (offsets % stride == 0) & ~assigned
    if new.any():  # always true (see the module docstring); kept as DUS keeps it
      rounds.append(offsets[new].tolist())
      assigned |= new
    stride //= base
  if not assigned.all():
    rounds.append(offsets[~assigned].tolist())
  if merge_last_level and len(rounds) >= 2 and len(rounds[-1]) < len(rounds[-2]):
    last = rounds.pop()
    rounds[-1] = sorted(rounds[-1] + last)
  return tuple(tuple(r) for r in rounds)


def dilated_groups(block_length: int, base: int = 2, base_skip: int = 1,
                   merge_last_level: bool = False) -> tuple[tuple[int, ...], ...]:
  """DUS rounds for one block: a tuple of rounds, each a sorted tuple of in-block offsets (0-based).

  Every offset in [0, block_length) appears in exactly one round.  Host-side and static (cached).
  """
  return _groups(*_check(block_length, base, base_skip, merge_last_level))


def num_rounds(block_length: int, base: int = 2, base_skip: int = 1, merge_last_level: bool = False) -> int:
  """Number of DUS rounds (forward passes) per block."""
  return len(dilated_groups(block_length, base, base_skip, merge_last_level))


def group_index(block_length: int, base: int = 2, base_skip: int = 1,
                merge_last_level: bool = False) -> np.ndarray:
  """[block_length] int32: the round in which each in-block offset is committed (a fresh array each call)."""
  groups = dilated_groups(block_length, base, base_skip, merge_last_level)
  index = np.empty(sum(len(g) for g in groups), np.int32)  # [B]
  for r, group in enumerate(groups):
    index[list(group)] = r
  return index
