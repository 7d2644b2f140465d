"""Token frequency tables: how often each token id occurs in a reference corpus (PC-Sampler's calibration).

The file is PC-Sampler's own `P_baseline.json` layout (NEUIR/PC-Sampler `src/generate.py::load_baseline`), so a
table made for the reference loads here and the other way round:

  {"num_token": N, "p_baseline_dict": {"<token id>": count, ...}}

A token's frequency is count / N; a token absent from the table gets 1 / N (what the reference fills its
[V] table with).  `dlm token-freq` builds one from text files (the model's tokenizer) or from testbed tasks.
Writes are atomic (a temporary file renamed into place), so an interrupted build leaves no half-written table.
"""

from __future__ import annotations

import collections
import functools
import json
import os
from pathlib import Path

import numpy as np


def count_tokens(sequences) -> tuple[dict[int, int], int]:
  """Iterable of token-id sequences -> ({id: count}, total tokens)."""
  counts = collections.Counter()
  for seq in sequences:
    counts.update(int(t) for t in seq)
  return dict(counts), int(sum(counts.values()))


def write_table(counts: dict[int, int], total: int, path) -> Path:
  """Write a table atomically; refuses an empty one (every frequency would be 1/0)."""
  if total <= 0:
    raise ValueError("the token frequency table would be empty: no tokens were counted")
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  tmp = path.with_name(path.name + ".tmp")
  tmp.write_text(json.dumps({"num_token": total, "p_baseline_dict": {str(k): v for k, v in sorted(counts.items())}}))
  os.replace(tmp, path)
  return path


@functools.lru_cache(maxsize=8)
def _read(path: str, mtime: float):
  del mtime  # part of the cache key: a rewritten file is read again
  try:
    data = json.loads(Path(path).read_text())
    total = int(data["num_token"])
    table = {int(k): float(v) for k, v in data["p_baseline_dict"].items()}
  except FileNotFoundError:
    raise ValueError(f"baseline={path!r}: no such file (build one with `dlm token-freq`)") from None
  except (ValueError, KeyError, TypeError, AttributeError) as e:
    raise ValueError(f"baseline={path!r} is not a token frequency table ({{\"num_token\": N, \"p_baseline_dict\": "
                     f"{{id: count}}}}): {type(e).__name__}: {e}") from None
  if total <= 0 or any(v < 0 or k < 0 for k, v in table.items()):
    raise ValueError(f"baseline={path!r}: num_token must be > 0 and ids and counts >= 0")
  ids = np.asarray(sorted(table), np.int32)
  freq = np.asarray([table[i] / total for i in ids.tolist()], np.float32)
  return ids, freq, np.float32(1.0 / total)


SHIPPED_TABLES = {"testbed": "testbed_token_freq.json"}  # in the dlm.configs package (the repository's configs/)


def table_path(name) -> str:
  """A shipped table's name ("testbed": the testbed tasks' answers) or a file path -> the file path."""
  name = str(name)
  if name in SHIPPED_TABLES:
    from importlib import resources
    return str(resources.files("dlm.configs").joinpath(SHIPPED_TABLES[name]))
  return name


def read_table(path) -> tuple[np.ndarray, np.ndarray, np.float32]:
  """-> (ids [K] int32 ascending, frequencies [K] float32, the frequency of an absent token).  path: a file or
  the name of a shipped table (`SHIPPED_TABLES`)."""
  path = table_path(path)
  try:
    mtime = os.path.getmtime(path)
  except OSError:
    mtime = -1.0
  return _read(path, mtime)
