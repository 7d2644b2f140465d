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


ZERO_SCORE = 0.02  # a panel whose best accuracy is below this says so: its lines would read as a flat result


def family_colors(records: list[dict]) -> dict[str, tuple]:
  """One colour per sampler family, the same in every panel (tab20, families in sorted order)."""
  families = sorted({r["family"] for r in records})
  cmap = plt.get_cmap("tab20" if len(families) > 10 else "tab10")
  return {f: cmap(i % cmap.N) for i, f in enumerate(families)}


def _plain_log_axis(axis) -> None:
  """Ticks at 1, 2, 5 x 10^k labelled as plain numbers (no overlapping `3x10^0 4x10^0` minor labels)."""
  from matplotlib.ticker import FuncFormatter, LogLocator, NullFormatter
  axis.set_major_locator(LogLocator(base=10, subs=(1.0, 2.0, 5.0)))
  axis.set_major_formatter(FuncFormatter(lambda v, _: f"{v:g}"))
  axis.set_minor_formatter(NullFormatter())


def _label_points(ax, points, color) -> None:
  """Each point's setting beside it; labels of neighbouring points alternate above and below the line, and a
  label that would sit on an earlier one (same text, nearly the same place) is left out."""
  placed = []
  for i, (x, y, text) in enumerate(points):
    if not text or any(t == text and abs(x / px - 1) < 0.05 and abs(y - py) < 0.02 for px, py, t in placed):
      continue
    placed.append((x, y, text))
    ax.annotate(text, (x, y), fontsize=5, color=color, xytext=(3, 4 if i % 2 == 0 else -9),
                textcoords="offset points")


def frontier_plot(records: list[dict], path, *, labels: bool = True) -> None:
  """The figure of `frontier_figure`, written to `path` (PNG) through a temporary file and a rename."""
  fig = frontier_figure(records, labels=labels)
  Path(path).parent.mkdir(parents=True, exist_ok=True)
  tmp = Path(path).with_suffix(".tmp.png")
  fig.savefig(tmp, dpi=120)
  plt.close(fig)
  tmp.replace(path)


def frontier_figure(records: list[dict], *, labels: bool = True):
  """One panel per task (module docstring); one colour per family across panels; plain-number log ticks; one
  legend below the panels; a panel whose every point scores ~0 says so."""
  tasks = list(dict.fromkeys(r["task"] for r in records))
  cols = min(max(len(tasks), 1), 3)
  rows = -(-max(len(tasks), 1) // cols)
  colors = family_colors(records)
  legend_rows = -(-(len(colors) + 2) // 6)  # families, the Pareto front and the data line, 6 per row
  legend_h = 0.25 + 0.17 * legend_rows  # inches below the panels
  fig, axes = plt.subplots(rows, cols, figsize=(5.2 * cols, 4.0 * rows + legend_h), squeeze=False)
  for ax in axes.reshape(-1)[len(tasks):]:
    ax.axis("off")
  handles = {}
  for ax, task in zip(axes.reshape(-1), tasks):
    rs_task = [r for r in records if r["task"] == task]
    by_family = collections.defaultdict(list)
    for r in rs_task:
      by_family[r["family"]].append(r)
    for family, rs in sorted(by_family.items()):
      rs = sorted(rs, key=lambda r: r["nfe_mean"])
      ys = [quality(r) for r in rs]
      line = ax.errorbar([r["nfe_mean"] for r in rs], [y for y, _ in ys], yerr=[e for _, e in ys], marker="o",
                         ms=4, capsize=2, lw=1, color=colors[family], label=family)
      handles.setdefault(family, line)
      if labels:
        _label_points(ax, [(r["nfe_mean"], y, r.get("label", "")) for r, (y, _) in zip(rs, ys)], colors[family])
    front = pareto_front(rs_task)
    handles.setdefault("Pareto front", ax.plot(
        [r["nfe_mean"] for r in front], [quality(r)[0] for r in front], ls="--", color="black", lw=0.8,
        marker="o", mfc="none", ms=9)[0])
    distribution = bool(rs_task[0].get("distribution"))
    if not distribution and not rs_task[0].get("accuracy_scored", True):
      handles.setdefault("data", ax.axhline(rs_task[0]["reference_score"], color="gray", ls=":", lw=1))
    best = max(r["score"] for r in rs_task)
    if not distribution and rs_task[0].get("accuracy_scored", True) and best < ZERO_SCORE:
      ax.set_ylim(-0.05, 1.0)  # on the accuracy scale, so the flat line reads as zero, not as a close race
      ax.text(0.5, 0.6, f"every point scores ~0 (best {best:.3f})", transform=ax.transAxes, ha="center",
              va="center", fontsize=9, color="firebrick", bbox=dict(facecolor="white", edgecolor="none"))
    ax.set_xscale("log")
    _plain_log_axis(ax.xaxis)
    ax.set_title(f"{task} (gen {rs_task[0]['gen_length']}, block {rs_task[0]['block_length']})", fontsize=9)
    ax.set_xlabel("NFE per row (log)", fontsize=8)
    ax.set_ylabel("− distance to data" if distribution else "score", fontsize=8)
    ax.tick_params(labelsize=7)
    ax.grid(alpha=0.3)
  # One legend for the figure, below the panels: it never covers a point.
  fig.legend(list(handles.values()), list(handles), loc="lower center", ncol=min(len(handles), 6), fontsize=7,
             frameon=False)
  fig.tight_layout(rect=(0, legend_h / (4.0 * rows + legend_h), 1, 1))
  return fig
