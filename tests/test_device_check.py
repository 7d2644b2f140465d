"""scripts/device_check.py runs end to end on CPU at tiny sizes (--dry-run), so the script cannot rot before a
device is at hand; its report has every section the README and docs/perf.md describe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_dry_run_writes_every_section(tmp_path):
  out = tmp_path / "check.json"
  run = subprocess.run([sys.executable, str(ROOT / "scripts" / "device_check.py"), "--dry-run", "--out", str(out)],
                       capture_output=True, text=True, timeout=600, cwd=tmp_path,
                       env=dict(os.environ, JAX_PLATFORMS="cpu"))
  assert run.returncode == 0, run.stderr[-3000:]
  report = json.loads(out.read_text())
  assert {"environment", "head", "attention", "generate", "recommend", "wall_s"} <= set(report)
  assert report["environment"]["backend"] == "cpu" and report["dry_run"]
  for row in report["head"].values():  # the Pallas kernel in interpret mode agrees with the reference
    assert row["pallas"]["same_samples"] and row["chunked"]["same_samples"], row
    assert row["pallas"]["same_shapes"] and row["pallas"]["top1_prob_max_delta"] < 1e-3, row
  assert report["attention"]["dot_product"]["max_delta"] < 5e-2
  cells = report["generate"]
  assert cells and all("wall_s" in c for c in cells), cells
  assert {c["cache"] for c in cells} == {"none", "dual"} and {c["sampler"] for c in cells} == {"threshold",
                                                                                              "low_confidence"}
  assert any(c["head"] == "pallas" for c in cells) and any(c["attention"] == "dot_product" for c in cells)
  assert report["recommend"]["cpu"]["head"] in ("chunked", "pallas", "ref")
  assert "device check:" in run.stdout and "recommend:" in run.stdout
