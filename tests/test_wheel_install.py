"""A wheel of dlm installed outside the checkout runs the main job (issue 13 §5): the default grid, the training
recipe and the bundled model are package data, not files found relative to the source tree.

The fresh venv borrows the test venv's dependencies through a .pth line (its site-packages .pth files, such as
the editable-install hook, are not processed that way), so only dlm itself comes from the wheel; no network.
"""

from __future__ import annotations

import os
import subprocess
import sys
import sysconfig
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def _run(cmd, cwd, env=None):
  run = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, env=env, timeout=600)
  assert run.returncode == 0, f"{cmd}\n{run.stdout[-3000:]}\n{run.stderr[-3000:]}"
  return run


@pytest.fixture(scope="module")
def installed(tmp_path_factory):
  tmp = tmp_path_factory.mktemp("wheel")
  build = _run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-w",
                str(tmp / "dist")], cwd=tmp)
  assert "Warning" not in build.stderr, build.stderr  # e.g. a data folder missing from `packages`
  wheel = next((tmp / "dist").glob("dlm-*.whl"))
  venv = tmp / "venv"
  _run([sys.executable, "-m", "venv", "--without-pip", str(venv)], cwd=tmp)
  py = venv / "bin" / "python"
  site = Path(_run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"], cwd=tmp)
              .stdout.strip())
  (site / "deps.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
  _run([sys.executable, "-m", "pip", "--python", str(py), "install", "--no-deps", "--no-index", str(wheel)], cwd=tmp)
  env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH",)}
  return venv, tmp, env


def test_wheel_runs_compare_and_sample(installed):
  venv, tmp, env = installed
  where = _run([str(venv / "bin" / "python"), "-c", "import dlm, dlm.cli; print(dlm.__file__); "
                "print(dlm.cli.packaged_config('compare_default.yaml'))"], cwd=tmp, env=env).stdout.split()
  assert all(str(ROOT) not in w for w in where), where  # the installed copy, not the checkout
  assert Path(where[1]).is_file()
  recipes = _run([str(venv / "bin" / "python"), "-c", "from dlm.eval.recipes import resolve_recipe_path as r; "
                  "print(r('llada_8b_instruct_gsm8k_cot_d3llm'))"], cwd=tmp, env=env).stdout.strip()
  assert str(ROOT) not in recipes and Path(recipes).is_file()  # recipes ship inside the package
  out = _run([str(venv / "bin" / "dlm"), "compare", "--n", "4", "--tasks", "add"], cwd=tmp, env=env).stdout
  assert "threshold" in out and "low_confidence" in out  # the packaged default grid ran
  out = _run([str(venv / "bin" / "dlm"), "sample", "--task", "add", "--n", "2"], cwd=tmp, env=env).stdout
  assert out.count("score=") == 2
