"""The package's layering: nothing in the library imports the command line (dlm/cli/ is a leaf)."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LIBRARY = ("dlm", "samplers", "schedules", "kernels", "configs")
# `python -m dlm` is the command itself (what `dlm launch` starts in each process).
ENTRY_POINTS = {ROOT / "dlm" / "__main__.py"}


def _imports(path: Path):
  for node in ast.walk(ast.parse(path.read_text())):
    if isinstance(node, ast.Import):
      yield from (alias.name for alias in node.names)
    elif isinstance(node, ast.ImportFrom) and node.module:
      yield node.module


def test_no_library_module_imports_the_cli():
  cli = ROOT / "dlm" / "cli"
  offenders = []
  for folder in LIBRARY:
    for path in (ROOT / folder).rglob("*.py"):
      if cli in path.parents or path in ENTRY_POINTS:
        continue
      if any(name == "dlm.cli" or name.startswith("dlm.cli.") for name in _imports(path)):
        offenders.append(str(path.relative_to(ROOT)))
  assert not offenders, f"library modules importing the CLI: {offenders}"
