"""Device meshes for generation: the `data`, `fsdp`, `expert` and `tensor` axes (`--mesh data=2,tensor=4`).

* `data`: prompts (the batch) are split over it; parameters are replicated along it.
* `fsdp`: the batch is split over it too, and every large parameter is sharded along it (each device holds
  1/fsdp of the weights; XLA gathers a layer's weights when it runs it).
* `expert`: expert parallelism for mixture-of-experts networks: each device holds 1/expert of every MoE layer's
  experts; the batch is split over it too (for the attention and dense parts it is one more data axis), and an MoE
  layer gathers the tokens of the axis to every expert shard and scatters the summed outputs back
  (dlm/model/moe.py).  On a dense network it acts as a data axis.
* `tensor`: Megatron-style model parallelism: attention heads and the MLP hidden units are split over it (the
  column-parallel q/k/v/gate/up and the row-parallel o/down projections), and the vocabulary of the head.

The mesh is used with GSPMD's automatic propagation (`AxisType.Auto`): the engine places parameters, prompts
and its loop state with `NamedSharding`s (dlm/parallel/rules.py) and XLA partitions the program.  `use_mesh`
makes a mesh the current one for `generate`, so `dlm compare` / `dlm bench` / `dlm sample` reach it without an
argument threaded through every call.
"""

from __future__ import annotations

import contextlib
import contextvars
import dataclasses
import math

import jax
import numpy as np
from jax.sharding import AxisType, Mesh

AXES = ("data", "fsdp", "expert", "tensor")
BATCH_AXES = ("data", "fsdp", "expert")  # the axes the batch is split over


@dataclasses.dataclass(frozen=True)
class MeshSpec:
  """Sizes of the mesh axes; their product must equal the number of devices used."""

  data: int = 1
  fsdp: int = 1
  tensor: int = 1
  expert: int = 1

  def __post_init__(self):
    for name in AXES:
      value = getattr(self, name)
      if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise ValueError(f"mesh axis {name}={value!r}; expected a positive int")

  @property
  def size(self) -> int:
    return self.data * self.fsdp * self.expert * self.tensor

  @classmethod
  def parse(cls, text: str) -> "MeshSpec":
    """'data=2,tensor=4' -> MeshSpec(data=2, tensor=4); axes not named have size 1."""
    sizes = {}
    for part in filter(None, (p.strip() for p in str(text).split(","))):
      name, eq, value = part.partition("=")
      name = name.strip()
      if not eq or name not in AXES or not value.strip().isdigit():
        raise ValueError(f"--mesh {text!r}: expected comma-separated axis=size with axes {AXES}, e.g. "
                         f"'data=2,tensor=4'")
      if name in sizes:
        raise ValueError(f"--mesh {text!r}: axis {name!r} given twice")
      sizes[name] = int(value)
    if not sizes:
      raise ValueError(f"--mesh {text!r}: expected at least one axis=size, e.g. 'data=8'")
    try:
      return cls(**sizes)
    except ValueError as e:
      raise ValueError(f"--mesh {text!r}: {e}") from None

  def __str__(self) -> str:
    return ",".join(f"{a}={getattr(self, a)}" for a in AXES if getattr(self, a) > 1) or "data=1"

  def make(self, devices=None) -> Mesh:
    """The mesh over `devices` (default: every device of every process, in jax.devices() order)."""
    devices = list(jax.devices() if devices is None else devices)
    if len(devices) != self.size:
      raise ValueError(f"--mesh {self}: needs {self.size} devices (the product of the axis sizes) but "
                       f"{len(devices)} are available ({devices[0].platform}); make the sizes multiply to "
                       f"{len(devices)}")
    grid = np.asarray(devices, dtype=object).reshape(self.data, self.fsdp, self.expert, self.tensor)
    return Mesh(grid, AXES, axis_types=(AxisType.Auto,) * len(AXES))


def mesh_spec_of(mesh: Mesh) -> MeshSpec:
  """The MeshSpec of a mesh built here (or any mesh whose axes are a subset of AXES)."""
  unknown = set(mesh.axis_names) - set(AXES)
  if unknown:
    raise ValueError(f"mesh axes {sorted(unknown)} are not dlm's; expected axes among {AXES}")
  return MeshSpec(**{a: int(mesh.shape[a]) for a in mesh.axis_names})


def batch_axes(mesh: Mesh) -> tuple[str, ...]:
  """The batch axes (data, fsdp, expert) this mesh has."""
  return tuple(a for a in BATCH_AXES if a in mesh.axis_names)


def batch_split(mesh: Mesh | None) -> int:
  """How many pieces the batch is cut into (data x fsdp x expert)."""
  if mesh is None:
    return 1
  return math.prod(int(mesh.shape[a]) for a in batch_axes(mesh))


def padded_rows(rows: int, mesh: Mesh | None) -> int:
  """`rows` rounded up to a multiple of data x fsdp x expert: the batch `generate` runs on the mesh."""
  split = batch_split(mesh)
  return -(-rows // split) * split


_CURRENT: contextvars.ContextVar[Mesh | None] = contextvars.ContextVar("dlm_mesh", default=None)


@contextlib.contextmanager
def use_mesh(mesh: Mesh | None):
  """Make `mesh` the one `generate` shards over when it is given no `mesh=` (None: single device)."""
  token = _CURRENT.set(mesh)
  try:
    yield mesh
  finally:
    _CURRENT.reset(token)


def current_mesh() -> Mesh | None:
  return _CURRENT.get()
