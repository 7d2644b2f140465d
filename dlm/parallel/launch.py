"""`dlm launch`: run one dlm command as N local processes joined by jax.distributed (CPU or one host's GPUs).

    dlm launch --processes 2 --devices-per-process 4 -- sample --task add --n 16 --mesh data=8 --out out.jsonl

Each process gets DLM_COORDINATOR / DLM_NUM_PROCESSES / DLM_PROCESS_ID (read by the command's multi-host flags)
and, on CPU, `--devices-per-process` fake devices.  The launcher watches them: when one exits with an error or
is killed, it stops the others at once and fails with a one-line message naming it; the command's output file
is written by process 0 only after the whole run succeeded, so a failed run leaves none.  This is the local
stand-in for a pod, where every host runs the command itself with `--distributed` (docs/parallel.md).
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time


def add_arguments(p) -> None:
  p.add_argument("--processes", type=int, default=2, help="number of processes (default 2)")
  p.add_argument("--devices-per-process", type=int, default=1,
                 help="fake CPU devices per process (JAX_PLATFORMS=cpu); 0 keeps the platform's own devices")
  p.add_argument("--port", type=int, default=None, help="coordinator port on localhost (default: a free one)")
  p.add_argument("argv", nargs="+", metavar="COMMAND", help="the dlm command and its arguments, after `--`")


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("127.0.0.1", 0))
    return s.getsockname()[1]


def _describe(code: int) -> str:
  if code < 0:
    try:
      return f"was killed by {signal.Signals(-code).name}"
    except ValueError:
      return f"was killed by signal {-code}"
  return f"exited with code {code}"


def launch(argv: list[str], *, processes: int = 2, devices_per_process: int = 1, port: int | None = None,
           poll_s: float = 0.2) -> int:
  """Run `dlm <argv>` as `processes` processes; -> 0 when all succeed, else 1 (after stopping the rest)."""
  if processes < 1:
    raise ValueError(f"--processes {processes}: expected a positive int")
  if devices_per_process < 0:
    raise ValueError(f"--devices-per-process {devices_per_process}: expected an int >= 0")
  argv = argv[1:] if argv and argv[0] == "--" else argv
  if not argv:
    raise ValueError("give the dlm command to run after `--`, e.g. `dlm launch -- sample --task add`")
  address = f"127.0.0.1:{port or _free_port()}"
  children = []
  for k in range(processes):
    env = dict(os.environ, DLM_COORDINATOR=address, DLM_NUM_PROCESSES=str(processes), DLM_PROCESS_ID=str(k))
    if devices_per_process:
      env["JAX_PLATFORMS"] = "cpu"
      flags = [f for f in env.get("XLA_FLAGS", "").split() if "force_host_platform_device_count" not in f]
      env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count={devices_per_process}"])
    children.append(subprocess.Popen([sys.executable, "-m", "dlm", *argv], env=env))
  failed = None
  try:
    while failed is None and any(c.poll() is None for c in children):
      for k, c in enumerate(children):
        if c.poll() not in (None, 0):
          failed = (k, c.returncode)
          break
      time.sleep(poll_s)
    if failed is None:
      bad = [(k, c.returncode) for k, c in enumerate(children) if c.returncode]
      failed = bad[0] if bad else None
  finally:
    for c in children:
      if c.poll() is None:
        c.terminate()
    for c in children:
      try:
        c.wait(timeout=3)
      except subprocess.TimeoutExpired:
        c.kill()
        c.wait()
  if failed is not None:
    k, code = failed
    print(f"dlm launch: error: process {k} of {processes} {_describe(code)}; the other processes were stopped and "
          f"the run wrote no output", file=sys.stderr)
    return 1
  return 0
