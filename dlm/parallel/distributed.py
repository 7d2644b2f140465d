"""Multi-host runs: `jax.distributed` start-up, each process's share of the prompts, one writer.

On a TPU pod slice every host runs the same command with `--distributed` (JAX finds the coordinator from the
TPU metadata); elsewhere give `--coordinator HOST:PORT --num-processes N --process-id K` (or the DLM_COORDINATOR,
DLM_NUM_PROCESSES, DLM_PROCESS_ID variables that `dlm launch` sets for local runs).  Then the mesh spans every
device of every process; each process builds only the rows of the batch its own devices hold (`local_rows`),
results are all-gathered and process 0 alone writes them, atomically, once everything succeeded.

A process that dies takes the run down: its peers' collectives fail (JAX's coordination service notices the
missing heartbeat after `heartbeat_timeout_seconds`), each survivor exits with a one-line message, and no output
file is written.  `dlm launch` (local runs) stops the others as soon as one exits badly.
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding

ENV = {"coordinator": "DLM_COORDINATOR", "num_processes": "DLM_NUM_PROCESSES", "process_id": "DLM_PROCESS_ID"}


class DistributedRunError(RuntimeError):
  """A multi-process run that cannot go on (a peer died, the coordinator is unreachable)."""


def add_arguments(p) -> None:
  g = p.add_argument_group("multi-host (jax.distributed)")
  g.add_argument("--distributed", action="store_true",
                 help="start jax.distributed (TPU pods and clusters JAX detects: no other flag needed)")
  g.add_argument("--coordinator", default=None, help="HOST:PORT of process 0 (implies --distributed)")
  g.add_argument("--num-processes", type=int, default=None)
  g.add_argument("--process-id", type=int, default=None)
  g.add_argument("--heartbeat-timeout", type=int, default=100,
                 help="seconds after which a silent peer fails the run (default 100)")


def settings_from(args) -> dict | None:
  """The jax.distributed.initialize arguments asked for by flags or DLM_* variables; None for one process."""
  values = {k: getattr(args, k, None) for k in ENV}
  for k, var in ENV.items():
    if values[k] is None and os.environ.get(var):
      values[k] = os.environ[var] if k == "coordinator" else int(os.environ[var])
  explicit = values["coordinator"] is not None
  if not (explicit or getattr(args, "distributed", False)):
    if values["num_processes"] is not None or values["process_id"] is not None:
      raise ValueError("--num-processes / --process-id need --coordinator HOST:PORT (or --distributed)")
    return None
  if explicit and (values["num_processes"] is None or values["process_id"] is None):
    raise ValueError("--coordinator needs --num-processes N and --process-id K (0 <= K < N)")
  if explicit and not 0 <= values["process_id"] < values["num_processes"]:
    raise ValueError(f"--process-id {values['process_id']} must lie in [0, --num-processes "
                     f"{values['num_processes']})")
  return dict(coordinator_address=values["coordinator"], num_processes=values["num_processes"],
              process_id=values["process_id"], heartbeat_timeout_seconds=getattr(args, "heartbeat_timeout", 100))


def initialize(settings: dict | None) -> None:
  """Start jax.distributed (once); CPU processes exchange data through gloo collectives."""
  if settings is None or jax.distributed.is_initialized():
    return
  if os.environ.get("JAX_PLATFORMS", "") == "cpu":
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
  try:
    jax.distributed.initialize(**{k: v for k, v in settings.items() if v is not None})
  except Exception as e:  # noqa: BLE001 - JAX raises several runtime types here
    raise DistributedRunError(f"jax.distributed.initialize failed ({type(e).__name__}: {str(e).splitlines()[0]}); "
                              f"check --coordinator and that every process was started") from e


def is_primary() -> bool:
  """Process 0: the one that prints and writes results."""
  return jax.process_index() == 0


def local_rows(mesh: Mesh, rows: int, width: int = 1) -> np.ndarray:
  """Indices of the batch rows [rows] this process's devices hold under the batch sharding (sorted)."""
  from dlm.parallel.rules import batch_spec
  sharding = NamedSharding(mesh, batch_spec(2, mesh=mesh))
  held = set()
  for index in sharding.addressable_devices_indices_map((rows, width)).values():
    held.update(range(*index[0].indices(rows)))
  return np.asarray(sorted(held), np.int64)


def fault_point(name: str) -> None:
  """Fault injection for tests of failed runs: DLM_FAULT=K:NAME kills process K (SIGKILL) when it reaches the
  point NAME ('generate': just before the generation program runs)."""
  if os.environ.get("DLM_FAULT") == f"{jax.process_index()}:{name}":
    import signal
    os.kill(os.getpid(), signal.SIGKILL)


def barrier(name: str) -> None:
  if jax.process_count() > 1:
    from jax.experimental import multihost_utils
    multihost_utils.sync_global_devices(name)
