"""Running a benchmark's generated program: isolation that keeps the evaluator alive, not a security sandbox.

`run_program(source)` starts a small supervisor process (this module run as a script) in its own session; the
supervisor starts the program in a fresh interpreter (`-I`) with an address-space limit in an empty temporary
folder, and reports one JSON line.  What holds, and is tested (tests/test_eval_benchmarks.py):

  * a timeout kills the program and every process it started, also one that left its session (`setsid`): on
    Linux the supervisor is a child subreaper (`PR_SET_CHILD_SUBREAPER`), so orphans are re-parented to it and
    it kills all of them before it reports;
  * `os.kill(os.getppid(), 9)` hits the supervisor, not the evaluator, which reports the problem as failed;
  * output is read in chunks and at most `OUTPUT_CAP` bytes of stderr are kept, so a program that writes
    gigabytes costs the evaluator no memory;
  * a memory hog meets RLIMIT_AS and reads "memory".

What does NOT hold: the program runs as the evaluator's user with its file system and network.  It can delete or
write files anywhere that user may, open sockets, or look up the evaluator's pid in /proc and signal it.  Run
untrusted completions (any model's HumanEval output) inside a container or VM with no credentials and no
network; dlm does not pretend to be that container.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

OUTPUT_CAP = 64 * 1024  # bytes of the program's stderr kept (for the MemoryError check); the rest is read and dropped
_PR_SET_CHILD_SUBREAPER = 36

# Inside the program's interpreter: the address-space limit, then the program as __main__.
_BOOT = ("import resource, runpy, sys; s = int(sys.argv[2]) * 1024 * 1024; "
         "resource.setrlimit(resource.RLIMIT_AS, (s, s)); sys.argv = sys.argv[1:2]; "
         "runpy.run_path(sys.argv[0], run_name='__main__')")


def run_program(source: str, *, timeout_s: float = 10.0, memory_mb: int = 1024) -> str:
  """Run a Python program under the supervisor -> "passed" | "failed" | "timeout" | "memory" (module docstring).
  Anything the program does to its supervisor (killing it, flooding it) reads "failed"."""
  with tempfile.TemporaryDirectory() as tmp:
    program = Path(tmp) / "program.py"
    program.write_text(source)
    # start_new_session: the supervisor and the program share a process group the evaluator can kill whole.
    proc = subprocess.Popen([sys.executable, "-I", __file__, str(program), str(timeout_s), str(memory_mb)],
                            cwd=tmp, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
                            start_new_session=True)
    try:
      out, _ = proc.communicate(timeout=timeout_s + 30)  # the supervisor enforces timeout_s; this is its own
    except subprocess.TimeoutExpired:
      out = b""
    _kill_group(proc.pid)
    proc.wait()
  try:
    verdict = json.loads(out.decode().strip().splitlines()[-1])["verdict"]
  except (ValueError, IndexError, KeyError):
    return "failed"  # the supervisor was killed or hung: the program attacked it
  return verdict if verdict in ("passed", "failed", "timeout", "memory") else "failed"


def _kill_group(pgid: int) -> None:
  try:
    os.killpg(pgid, signal.SIGKILL)
  except (ProcessLookupError, PermissionError):
    pass


def _children_of(pid: int) -> list[int]:
  """Live processes whose parent is `pid` (Linux /proc; [] elsewhere)."""
  out = []
  try:
    entries = os.listdir("/proc")
  except OSError:
    return out
  for entry in entries:
    if not entry.isdigit():
      continue
    try:
      stat = Path(f"/proc/{entry}/stat").read_text()
    except OSError:
      continue
    fields = stat[stat.rindex(")") + 2:].split()  # after "pid (comm) ": state ppid ...
    if int(fields[1]) == pid and fields[0] != "Z":
      out.append(int(entry))
  return out


def _reap_all() -> None:
  """Kill every descendant left (orphans come to us as the subreaper) and reap them; a few rounds, since a
  process may fork while we kill."""
  for _ in range(50):
    children = _children_of(os.getpid())
    for pid in children:
      try:
        os.kill(pid, signal.SIGKILL)
      except ProcessLookupError:
        pass
    while True:
      try:
        if os.waitpid(-1, os.WNOHANG)[0] == 0:
          break
      except ChildProcessError:
        break
    if not children:
      return
    time.sleep(0.01)


def _drain(stream, keep: bytearray) -> None:
  """Read a stream to its end, keeping at most OUTPUT_CAP bytes."""
  while True:
    chunk = stream.read(65536)
    if not chunk:
      return
    if len(keep) < OUTPUT_CAP:
      keep.extend(chunk[:OUTPUT_CAP - len(keep)])


def _supervise(program: str, timeout_s: float, memory_mb: int) -> str:
  if sys.platform.startswith("linux"):
    try:
      import ctypes
      ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)
    except (OSError, AttributeError):
      pass
  child = subprocess.Popen([sys.executable, "-I", "-c", _BOOT, program, str(memory_mb)], stdin=subprocess.DEVNULL,
                           stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
  err = bytearray()
  reader = threading.Thread(target=_drain, args=(child.stderr, err), daemon=True)
  reader.start()
  try:
    child.wait(timeout=timeout_s)
    timed_out = False
  except subprocess.TimeoutExpired:
    timed_out = True
    child.kill()
    child.wait()
  # The child's status is read above, before this reaps with waitpid(-1) (Popen would read a child reaped by
  # someone else as exit status 0).  Then everything the program started, in or out of its session.
  _reap_all()
  reader.join(timeout=5)
  if timed_out:
    return "timeout"
  if child.returncode == 0:
    return "passed"
  if b"MemoryError" in err or child.returncode in (-9, -6, 137):
    return "memory"
  return "failed"


if __name__ == "__main__":
  program_path, timeout, memory = sys.argv[1], float(sys.argv[2]), int(sys.argv[3])
  print(json.dumps({"verdict": _supervise(program_path, timeout, memory)}), flush=True)
