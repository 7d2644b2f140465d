"""A recorded dataset that grows in chunks and survives being killed: tensorstore zarr3 arrays plus a marker.

Layout of a store folder:
  <name>.zarr/     one zarr3 array per field, [N, *shape], chunked along N, zstd; all fields grow together
  progress.json    {"rows": n, "units_done": k, "meta": {...}}: only the first n rows of every array are data

`append(rows, units_done)` writes the chunk first (growing the arrays), then replaces progress.json atomically
(write a temporary file, then rename).  A run killed between the two leaves rows past the marker, which `read`
ignores and the next `append` overwrites, so a resumed collection never duplicates or loses a unit (a prompt),
and the store always opens.  `meta` records what produced the data (model, task, settings); reopening with
different meta is a one-line error rather than a silent mix of two datasets.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import tensorstore as ts

PROGRESS = "progress.json"
_CHUNK_ROWS = 1024


def _spec(folder: Path, name: str) -> dict:
  return {"driver": "zarr3", "kvstore": {"driver": "file", "path": str(folder / f"{name}.zarr")}}


class RecordStore:
  """Fields of fixed trailing shape and dtype, appended row-chunk by row-chunk (module docstring)."""

  def __init__(self, folder, fields: dict[str, tuple[tuple[int, ...], str]], meta: dict):
    self.folder = Path(folder)
    self.fields = {name: (tuple(shape), np.dtype(dtype).name) for name, (shape, dtype) in fields.items()}
    self.meta = json.loads(json.dumps(meta))  # what JSON round-trips, so a reopen compares equal
    progress = self.folder / PROGRESS
    if progress.is_file():
      state = json.loads(progress.read_text())
      if state["meta"] != self.meta:
        raise ValueError(f"{self.folder} holds a dataset made with other settings ({state['meta']}); expected "
                         f"{self.meta}: use another --out folder")
      self.rows, self.units_done = int(state["rows"]), int(state["units_done"])
      self.arrays = {name: ts.open(_spec(self.folder, name), open=True).result() for name in self.fields}
    else:
      self.folder.mkdir(parents=True, exist_ok=True)
      self.rows, self.units_done = 0, 0
      self.arrays = {}
      for name, (shape, dtype) in self.fields.items():
        meta_z = {"chunk_grid": {"name": "regular", "configuration": {"chunk_shape": [_CHUNK_ROWS, *shape]}},
                  "codecs": [{"name": "bytes", "configuration": {"endian": "little"}},
                             {"name": "zstd", "configuration": {"level": 3}}]}
        self.arrays[name] = ts.open({**_spec(self.folder, name), "metadata": meta_z}, create=True,
                                    delete_existing=True, dtype=ts.dtype(dtype), shape=[0, *shape]).result()
      self._commit()

  def _commit(self) -> None:
    tmp = self.folder / (PROGRESS + ".tmp")
    tmp.write_text(json.dumps({"rows": self.rows, "units_done": self.units_done, "meta": self.meta}))
    os.replace(tmp, self.folder / PROGRESS)

  def append(self, rows: dict[str, np.ndarray], units_done: int) -> None:
    """Write a chunk of rows (every field, the same count k), then mark `units_done` units as finished."""
    if set(rows) != set(self.fields):
      raise ValueError(f"append needs every field {sorted(self.fields)}, got {sorted(rows)}")
    counts = {len(v) for v in rows.values()}
    if len(counts) != 1:
      raise ValueError(f"append got different row counts per field: { {k: len(v) for k, v in rows.items()} }")
    k = counts.pop()
    for name, value in rows.items():
      shape, dtype = self.fields[name]
      value = np.asarray(value, dtype)
      if value.shape[1:] != shape:
        raise ValueError(f"field {name!r} rows have shape {value.shape[1:]}, expected {shape}")
      array = self.arrays[name]
      end = max(self.rows + k, array.domain.exclusive_max[0])  # rows past the marker are overwritten, not kept
      array = array.resize(exclusive_max=[end, *shape], expand_only=True).result()
      if k:
        array[self.rows:self.rows + k].write(value).result()
      self.arrays[name] = array
    self.rows += k
    self.units_done = units_done
    self._commit()

  def read(self) -> dict[str, np.ndarray]:
    """Every committed row of every field, as numpy."""
    return {name: np.asarray(array[:self.rows].read().result()) for name, array in self.arrays.items()}

  def batches(self, batch_size: int, seed: int = 0, epochs: int = 1):
    """Shuffled numpy batches of the committed rows (the last partial batch included)."""
    data = self.read()
    rng = np.random.default_rng(seed)
    for _ in range(epochs):
      order = rng.permutation(self.rows)
      for i in range(0, self.rows, batch_size):
        take = order[i:i + batch_size]
        yield {name: value[take] for name, value in data.items()}


def open_store(folder) -> RecordStore:
  """Reopen an existing store read-only-style (fields and meta from its files)."""
  folder = Path(folder)
  progress = folder / PROGRESS
  if not progress.is_file():
    raise FileNotFoundError(f"{folder} is not a dlm dataset (no {PROGRESS}); make one with `dlm collect`")
  state = json.loads(progress.read_text())
  fields = {}
  for path in sorted(folder.glob("*.zarr")):
    array = ts.open(_spec(folder, path.stem), open=True).result()
    fields[path.stem] = (tuple(array.shape[1:]), array.dtype.numpy_dtype.name)
  return RecordStore(folder, fields, state["meta"])


def pending_batches(store: RecordStore, prompts, valid, *, n: int, batch: int, progress: bool = True,
                    desc: str = "collect", stop_after: int | None = None):
  """Yield (start, rows, prompts [batch, P], valid [batch, P]) for the prompts `store` has not recorded yet,
  padded to `batch` rows (one compiled program), with a progress bar.  The caller appends each batch's records
  (`units_done=start + rows`) before asking for the next, so a killed run resumes at the next batch.
  stop_after: yield at most this many batches (tests use it to interrupt a collection)."""
  from tqdm.auto import tqdm
  from dlm.eval.compare import pad_batch
  bar = tqdm(total=n, initial=store.units_done, disable=not progress, desc=desc)
  for i, start in enumerate(range(store.units_done, n, batch)):
    if stop_after is not None and i >= stop_after:
      break
    p, v = prompts[start:start + batch], valid[start:start + batch]
    rows = len(p)
    yield (start, rows, *pad_batch(batch, p, v))
    bar.update(rows)
  bar.close()
