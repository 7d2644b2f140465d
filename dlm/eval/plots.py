"""Speed/quality plots: score against NFE, one line per sampler family, one panel per task."""

from __future__ import annotations

import collections
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def frontier_plot(records: list[dict], path) -> None:
  tasks = sorted({r["task"] for r in records})
  fig, axes = plt.subplots(1, max(len(tasks), 1), figsize=(4.2 * max(len(tasks), 1), 3.6), squeeze=False)
  for ax, task in zip(axes[0], tasks):
    by_family = collections.defaultdict(list)
    for r in records:
      if r["task"] == task:
        by_family[r["family"]].append(r)
    for family, rs in sorted(by_family.items()):
      rs = sorted(rs, key=lambda r: r["nfe_mean"])
      ax.errorbar([r["nfe_mean"] for r in rs], [r["score"] for r in rs], yerr=[r["score_ci95"] for r in rs],
                  marker="o", capsize=2, label=family)
    ref = [r["reference_score"] for r in records if r["task"] == task]
    if ref and task == "hmm":
      ax.axhline(ref[0], color="gray", ls="--", lw=1, label="data")
    ax.set_title(task)
    ax.set_xlabel("NFE per row")
    ax.set_ylabel("score")
    ax.grid(alpha=0.3)
  axes[0][-1].legend(fontsize=7, loc="best")
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(path).with_suffix(".tmp.png")
  fig.savefig(tmp, dpi=110)
  plt.close(fig)
  tmp.replace(path)
