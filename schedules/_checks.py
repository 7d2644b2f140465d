"""Argument checks shared by the schedule modules.

They run on the host (in `__post_init__` or before a function builds its arrays), so they only accept static
Python numbers: a traced value reaching them is a misuse (a step count or a block length must be known when the
program is traced), and the error says so instead of failing later with an opaque tracer error.
Messages read `name=value must ...`, the f"{x=}" style used across dlm.
"""

from __future__ import annotations

import math
import numbers


def static_int(name: str, value, minimum: int | None = None) -> int:
  """`value` as a Python int, raising ValueError unless it is an int (not bool) >= minimum."""
  if isinstance(value, bool) or not isinstance(value, numbers.Integral):
    raise ValueError(f"{name}={value!r} must be a static Python int (got {type(value).__name__})")
  value = int(value)
  if minimum is not None and value < minimum:
    raise ValueError(f"{name}={value!r} must be >= {minimum}")
  return value


def static_real(name: str, value, lo: float, hi: float, hi_open: bool = True, lo_open: bool = False) -> float:
  """`value` as a Python float, raising ValueError unless it is a finite real number in the given interval."""
  if isinstance(value, bool) or not isinstance(value, numbers.Real):
    raise ValueError(f"{name}={value!r} must be a static Python float (got {type(value).__name__})")
  x = float(value)
  below = x <= lo if lo_open else x < lo
  above = x >= hi if hi_open else x > hi
  if not math.isfinite(x) or below or above:
    interval = f"{'(' if lo_open else '['}{lo:g}, {hi:g}{')' if hi_open else ']'}"
    raise ValueError(f"{name}={value!r} must lie in {interval}")
  return x
