"""Tensor-by-tensor reading and writing of safetensors files with bounded host memory.

`safetensors.safe_open` memory-maps the whole file: every page it touches stays resident (and counts in the
process's RSS) until the file is closed, so reading a 5 GB shard through it costs 5 GB of host memory on top of
the converted parameters. Here `safe_open` only validates a file (header, offsets, length); the bytes of each
tensor are then read with plain positioned reads, in row chunks, straight into a buffer of the target dtype and
layout (optionally transposed). The writer streams tensors one at a time under a header computed up front.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import struct
from collections.abc import Callable, Iterable
from pathlib import Path

import ml_dtypes
import numpy as np
from safetensors import SafetensorError, safe_open

DTYPES: dict[str, np.dtype] = {
    "F64": np.dtype(np.float64), "F32": np.dtype(np.float32), "F16": np.dtype(np.float16),
    "BF16": np.dtype(ml_dtypes.bfloat16), "F8_E4M3": np.dtype(ml_dtypes.float8_e4m3fn),
    "F8_E5M2": np.dtype(ml_dtypes.float8_e5m2), "I64": np.dtype(np.int64), "I32": np.dtype(np.int32),
    "I16": np.dtype(np.int16), "I8": np.dtype(np.int8), "U8": np.dtype(np.uint8), "BOOL": np.dtype(np.bool_),
}
_NAMES = {v: k for k, v in DTYPES.items()}
_MAX_HEADER = 100 * 1024 * 1024
CHUNK_BYTES = 16 * 1024 * 1024  # at most this much raw data is in flight beside the output buffer.


class SafetensorsFormatError(ValueError):
  """A file that is not a complete, well-formed safetensors file."""


@dataclasses.dataclass(frozen=True)
class TensorInfo:
  """Where one tensor's bytes lie: absolute byte range [start, end) in `file`."""

  name: str
  file: Path
  dtype: str  # safetensors spelling: "BF16", "F32", ...
  shape: tuple[int, ...]
  start: int
  end: int

  @property
  def np_dtype(self) -> np.dtype:
    return DTYPES[self.dtype]

  @property
  def nbytes(self) -> int:
    return self.end - self.start


def dtype_name(dtype) -> str:
  """numpy/jax dtype -> safetensors dtype string."""
  dt = np.dtype(dtype)
  if dt not in _NAMES:
    raise ValueError(f"{dt=} has no safetensors spelling; known: {sorted(DTYPES)}")
  return _NAMES[dt]


def read_header(path: str | os.PathLike) -> dict[str, TensorInfo]:
  """Validate `path` as a safetensors file and return its tensors by name (no tensor data is read)."""
  path = Path(path)
  if not path.is_file():
    raise FileNotFoundError(f"{path} does not exist")
  try:  # The library's own checks: header JSON, dtypes, contiguous offsets, file length.
    with safe_open(str(path), framework="numpy") as f:
      names = set(f.keys())
  except (SafetensorError, OSError, ValueError) as e:
    raise SafetensorsFormatError(
        f"{path} is not a valid safetensors file ({e}); it may be truncated or corrupt: download it again") from e
  size = path.stat().st_size
  with open(path, "rb") as fh:
    raw = fh.read(8)
    if len(raw) < 8:
      raise SafetensorsFormatError(f"{path}: {size=} bytes is too short for a safetensors header")
    (n,) = struct.unpack("<Q", raw)
    if n > min(_MAX_HEADER, size - 8):
      raise SafetensorsFormatError(f"{path}: header length {n} exceeds the file ({size=})")
    try:
      header = json.loads(fh.read(n))
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
      raise SafetensorsFormatError(f"{path}: header is not valid JSON ({e})") from e
  header.pop("__metadata__", None)
  base = 8 + n
  out = {}
  for name, entry in header.items():
    dtype, shape, (a, b) = entry["dtype"], tuple(int(s) for s in entry["shape"]), entry["data_offsets"]
    if dtype not in DTYPES:
      raise SafetensorsFormatError(f"{path}: tensor {name!r} has unsupported {dtype=}")
    if b - a != math.prod(shape) * DTYPES[dtype].itemsize or base + b > size:
      raise SafetensorsFormatError(f"{path}: tensor {name!r} byte range [{a}, {b}) does not fit {shape=} "
                                   f"{dtype=} within the file ({size=})")
    out[name] = TensorInfo(name, path, dtype, shape, base + a, base + b)
  if set(out) != names:
    raise SafetensorsFormatError(f"{path}: header disagrees with safetensors' own reading")
  return out


def _readinto(fh, buf: np.ndarray, offset: int, info: TensorInfo) -> None:
  view = memoryview(buf.reshape(-1).view(np.uint8))
  fh.seek(offset)
  got = 0
  while got < len(view):
    n = fh.readinto(view[got:])
    if not n:
      raise SafetensorsFormatError(f"{info.file}: unexpected end of file while reading {info.name!r} "
                                   f"(file truncated after it was opened?)")
    got += n


def read_tensor(info: TensorInfo, *, dtype=None, transpose: bool = False,
                chunk_bytes: int = CHUNK_BYTES, rows: tuple[int, int] | None = None) -> np.ndarray:
  """Read one tensor, cast to `dtype` and (for 2-D tensors) transposed, holding at most one output buffer and
  one chunk of `chunk_bytes` of raw data in memory.  rows=(r0, r1): only the stored rows [r0, r1) (contiguous
  bytes; a host that holds one shard of a sharded parameter reads just that band)."""
  if rows is not None:
    r0, r1 = rows
    if not (info.shape and 0 <= r0 <= r1 <= info.shape[0]):
      raise ValueError(f"{info.name}: {rows=} outside its {info.shape[0] if info.shape else 0} rows")
    row_bytes = info.nbytes // info.shape[0] if info.shape[0] else 0
    info = dataclasses.replace(info, shape=(r1 - r0, *info.shape[1:]), start=info.start + r0 * row_bytes,
                               end=info.start + r1 * row_bytes)
  src_dtype = info.np_dtype
  dtype = src_dtype if dtype is None else np.dtype(dtype)
  if not info.shape:  # a scalar reads as one row
    return read_tensor(dataclasses.replace(info, shape=(1,)), dtype=dtype, chunk_bytes=chunk_bytes).reshape(())
  shape = info.shape
  if transpose and len(shape) != 2:
    raise ValueError(f"{info.name}: transpose needs a 2-D tensor, got {shape=}")
  out = aligned_empty(shape[::-1] if transpose else shape, dtype)
  if out.size == 0:
    return out
  rows = shape[0]
  row_bytes = info.nbytes // rows
  step = max(1, chunk_bytes // max(row_bytes, 1))
  if transpose:  # narrow row bands keep the strided writes of the transpose cache-friendly (2x faster)
    step = min(step, 256)
  direct = not transpose and dtype == src_dtype
  with open(info.file, "rb", buffering=0) as fh:
    for r0 in range(0, rows, step):
      r1 = min(rows, r0 + step)
      if direct:  # read straight into the output
        _readinto(fh, out[r0:r1], info.start + r0 * row_bytes, info)
        continue
      chunk = np.empty((r1 - r0, *shape[1:]), src_dtype)
      _readinto(fh, chunk, info.start + r0 * row_bytes, info)
      if transpose:
        out[:, r0:r1] = chunk.T
      else:
        out[r0:r1] = chunk
  return out


def aligned_empty(shape: tuple[int, ...], dtype, align: int = 64) -> np.ndarray:
  """np.empty on an `align`-byte boundary.  JAX's CPU client adopts such a buffer without copying on
  device_put, so a tensor read on a CPU-only host exists once, not twice."""
  dtype = np.dtype(dtype)
  nbytes = math.prod(shape) * dtype.itemsize
  raw = np.empty(nbytes + align, np.uint8)
  offset = -raw.ctypes.data % align
  return raw[offset:offset + nbytes].view(dtype).reshape(shape)


Producer = Callable[[], np.ndarray]


def write_file(path: str | os.PathLike, entries: Iterable[tuple[str, str, tuple[int, ...], Producer]],
               metadata: dict[str, str] | None = None) -> int:
  """Write a safetensors file from (name, dtype, shape, producer) entries, calling each producer only when its
  bytes are written, so one tensor at a time is materialised.  Returns the number of data bytes."""
  entries = list(entries)
  header: dict = {"__metadata__": dict(metadata or {"format": "pt"})}
  offset = 0
  for name, dtype, shape, _ in entries:
    nbytes = math.prod(shape) * DTYPES[dtype].itemsize
    header[name] = {"dtype": dtype, "shape": list(shape), "data_offsets": [offset, offset + nbytes]}
    offset += nbytes
  blob = json.dumps(header, separators=(",", ":")).encode()
  blob += b" " * (-len(blob) % 8)
  with open(path, "wb") as fh:
    fh.write(struct.pack("<Q", len(blob)))
    fh.write(blob)
    for name, dtype, shape, produce in entries:
      arr = np.ascontiguousarray(produce())
      if arr.dtype != DTYPES[dtype] or tuple(arr.shape) != tuple(shape):
        raise ValueError(f"{name}: produced {arr.dtype=} {arr.shape=}, header says {dtype=} {shape=}")
      fh.write(memoryview(arr.reshape(-1).view(np.uint8)))
      del arr
  return offset
