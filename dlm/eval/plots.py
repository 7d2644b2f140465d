"""Speed/quality plots: one panel per task, one line per sampler family through its settings (sorted by NFE),
each point labelled with its setting, and the task's Pareto front (no other point has both fewer NFE and a
better score) ringed and joined by a dashed line.  Tasks with a distribution distance (`hmm`) plot the distance
to the data (lower is better) instead of the log-likelihood, which rewards mode-seeking."""

from __future__ import annotations

import collections
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


def quality(r: dict) -> tuple[float, float]:
  """(value, 95% half-width) on a higher-is-better axis."""
  if r.get("distribution"):
    return -r["distribution"]["distance"], 0.0
  return r["score"], r["score_ci95"]


def pareto_front(records: list[dict]) -> list[dict]:
  """Records not dominated by another (NFE <= and quality >=, one strictly), sorted by NFE."""
  front = []
  for r in records:
    nfe, q = r["nfe_mean"], quality(r)[0]
    dominated = any(o["nfe_mean"] <= nfe and quality(o)[0] >= q and (o["nfe_mean"] < nfe or quality(o)[0] > q)
                    for o in records)
    if not dominated:
      front.append(r)
  return sorted(front, key=lambda r: r["nfe_mean"])


def frontier_plot(records: list[dict], path, *, labels: bool = True) -> None:
  tasks = list(dict.fromkeys(r["task"] for r in records))
  cols = min(max(len(tasks), 1), 4)
  rows = -(-max(len(tasks), 1) // cols)
  fig, axes = plt.subplots(rows, cols, figsize=(5.0 * cols, 4.2 * rows), squeeze=False)
  for ax in axes.reshape(-1)[len(tasks):]:
    ax.axis("off")
  for ax, task in zip(axes.reshape(-1), tasks):
    rs_task = [r for r in records if r["task"] == task]
    by_family = collections.defaultdict(list)
    for r in rs_task:
      by_family[r["family"]].append(r)
    for family, rs in sorted(by_family.items()):
      rs = sorted(rs, key=lambda r: r["nfe_mean"])
      ys = [quality(r) for r in rs]
      line = ax.errorbar([r["nfe_mean"] for r in rs], [y for y, _ in ys], yerr=[e for _, e in ys], marker="o",
                         ms=4, capsize=2, lw=1, label=family)
      if labels:
        for r, (y, _) in zip(rs, ys):
          ax.annotate(r.get("label", ""), (r["nfe_mean"], y), fontsize=5, color=line[0].get_color(),
                      xytext=(2, 2), textcoords="offset points")
    front = pareto_front(rs_task)
    ax.plot([r["nfe_mean"] for r in front], [quality(r)[0] for r in front], ls="--", color="black", lw=0.8,
            marker="o", mfc="none", ms=9, label="Pareto front")
    if not rs_task[0].get("distribution") and not rs_task[0].get("accuracy_scored", True):
      ax.axhline(rs_task[0]["reference_score"], color="gray", ls=":", lw=1, label="data")
    ax.set_xscale("log")
    ax.set_title(f"{task} (gen {rs_task[0]['gen_length']}, block {rs_task[0]['block_length']})", fontsize=9)
    ax.set_xlabel("NFE per row (log)")
    ax.set_ylabel("− distance to data" if rs_task[0].get("distribution") else "score")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=5, loc="best")
  fig.tight_layout()
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(path).with_suffix(".tmp.png")
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  tmp.replace(path)
