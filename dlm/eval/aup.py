"""AUP (Accuracy Under Parallelism), the trade-off metric of the d3LLM leaderboard (hao-ai-lab/d3LLM,
`AUP_leaderboard/aup_utils.py` and `main.py`, read at snapshot e5bfcac).

For one sampler family on one task, with points (ρ_i = TPF, y_i = accuracy in percent) sorted by ρ:

    AUP = ρ_1 y_1 + Σ_{i>1} (ρ_i − ρ_{i−1}) (y_i W(y_i) + y_{i−1} W(y_{i−1})) / 2,
    W(y) = min(exp(−α (1 − y / y_max)), 1),  α = 3,

over the points whose accuracy is at least y_1 − 5 (y_1: the accuracy of the lowest-TPF point), where y_max is
the best accuracy of *every* method on the task (main.py), not of this family alone.

The anchor.  The leaderboard gives every method a point at TPF 1, its one-token-per-step accuracy, and integrates
from there.  A compare grid has one such point per task, the one-token-per-step run (`low_confidence` with
steps = gen_length, no guidance, T = 0: `is_anchor`); every family whose points all lie at a higher TPF gets it
as its first point (`anchored` in the row), so its 5-point filter and W(y) act as the leaderboard's do.  Without
it a family with one fast point would score TPF x accuracy (on `sudoku4_hard` WINO's 0.562 at TPF 6.4 gave 362
against one-token-per-step's 94).  The anchor sits at its own measured TPF, which is below 1 when answers end
early (dlm counts a row's tokens up to its first end token, as the points beside it do).  `dlm compare` adds the
one-token-per-step run to a grid that lacks it on an accuracy-scored task and says so (`anchor_entries`).

Known difference: the reference asserts that the highest-TPF point is within 5 points of y_1 and stops otherwise;
a compare grid often has such points (that is what separates samplers), so by default we drop them with the same
filter the reference applies to the middle points and report how many were dropped; `strict=True` raises as
the reference does.  Accuracy is taken in percent, as the reference expects (it warns on values below 1).
"""

from __future__ import annotations

import math


def quality_weight(y: float, y_max: float, alpha: float = 3.0) -> float:
  """W(y) = min(exp(−α (1 − y / y_max)), 1)."""
  if y_max <= 0:
    return 1.0
  return min(math.exp(-alpha * (1.0 - y / y_max)), 1.0)


def aup(rho, y, y_max: float, *, alpha: float = 3.0, y_min_offset: float = 5.0,
        strict: bool = False) -> tuple[float, int]:
  """-> (AUP, number of points dropped by the y_1 − offset filter).  rho: TPF values > 0; y: accuracy in %."""
  rho, y = [float(r) for r in rho], [float(a) for a in y]
  if len(rho) != len(y) or not rho:
    raise ValueError(f"aup needs equally many TPF and accuracy values, at least one; got {len(rho)} and {len(y)}")
  if any(r <= 0 for r in rho):
    raise ValueError(f"aup: every TPF (rho) must be positive; got {rho}")
  pairs = sorted(zip(rho, y), key=lambda p: p[0])  # stable: ties keep their order, as Python's sorted in the ref
  y_1 = pairs[0][1]
  if strict and y_1 - pairs[-1][1] > y_min_offset:
    raise ValueError(f"aup (strict): the highest-TPF accuracy {pairs[-1][1]:.2f} is more than {y_min_offset} "
                     f"points below the lowest-TPF accuracy {y_1:.2f}")
  kept = [p for p in pairs if p[1] >= y_1 - y_min_offset]
  total = kept[0][0] * kept[0][1]
  for (r0, a0), (r1, a1) in zip(kept, kept[1:]):
    total += 0.5 * (r1 - r0) * (a1 * quality_weight(a1, y_max, alpha) + a0 * quality_weight(a0, y_max, alpha))
  return total, len(pairs) - len(kept)


def is_anchor(record: dict) -> bool:
  """The one-token-per-step run of a task: low_confidence with steps = gen_length (a block-causal model: the
  answer slots its engine places, `answer_slots`), no guidance, greedy."""
  settings = record.get("settings") or {}
  slots = record.get("answer_slots", record.get("gen_length"))
  return (record.get("sampler") == "low_confidence" and settings.get("steps") == slots
          and not settings.get("cfg_scale") and not settings.get("temperature"))


def aup_table(records: list[dict]) -> list[dict]:
  """AUP per (task, family) from compare records of accuracy-scored tasks (score in [0, 1]).

  y_max is the best accuracy among all records of the task.  Families are anchored at the task's
  one-token-per-step point (module docstring).  Tasks scored otherwise (`hmm`'s log-likelihood) have no AUP and
  are skipped.
  """
  out = []
  for task in dict.fromkeys(r["task"] for r in records):
    rs = [r for r in records if r["task"] == task]
    if any(not 0.0 <= r["score"] <= 1.0 for r in rs) or not rs[0].get("accuracy_scored", True):
      continue
    y_max = 100.0 * max(r["score"] for r in rs)
    for family in dict.fromkeys(r["family"] for r in rs):
      members = [r for r in rs if r["family"] == family]
      # each model's families are anchored at that model's one-token-per-step point (`tag_models`)
      anchor = next((r for r in rs if is_anchor(r) and r.get("model") == members[0].get("model")), None)
      points = [(r["tpf"], 100.0 * r["score"]) for r in members]
      anchored = anchor is not None and min(t for t, _ in points) > anchor["tpf"]
      if anchored:
        points = [(anchor["tpf"], 100.0 * anchor["score"])] + points
      value, dropped = aup([t for t, _ in points], [y for _, y in points], y_max)
      out.append({"task": task, "family": family, "aup": value, "points": len(points), "dropped": dropped,
                  "max_tpf": max(t for t, _ in points), "y_max": y_max, "anchored": anchored,
                  "anchor": None if anchor is None else {"tpf": anchor["tpf"], "score": anchor["score"]}})
  return out


def anchor_entries(grid: list, tasks: list[str]) -> tuple[list, list[str]]:
  """`grid` plus the one-token-per-step entry on the accuracy-scored tasks whose entries lack it -> (grid, the
  tasks it was added for)."""
  from dlm.eval.compare import GridEntry, cell_setup
  from dlm.tasks import get_task

  def _settings(task, entry):
    try:
      return cell_setup(task, entry, block_length=None, stop_at_eos=False)[0].settings()
    except ValueError:  # a setting that does not fit the task: compare skips that cell
      return {}

  missing = []
  for name in tasks:
    task = get_task(name)
    if not getattr(task, "accuracy_scored", True):
      continue
    if not any(e.runs_on(name) and e.sampler == "low_confidence" and is_anchor(
        dict(sampler=e.sampler, settings=_settings(task, e), gen_length=task.gen_length)) for e in grid):
      missing.append(name)
  if not missing:
    return grid, []
  return grid + [GridEntry("low_confidence", (("steps", "G"),), tasks=tuple(missing))], missing


def format_aup(rows: list[dict]) -> str:
  fw = max([22, *(len(r["family"]) for r in rows)])  # a family split by model (`tag_models`) is longer
  head = f"{'task':<12} {'family':<{fw}} {'AUP':>8} {'points':>6} {'dropped':>7} {'max TPF':>7} {'anchored':>8}"
  lines = ["AUP (d3LLM; accuracy in %, y_max = best on the task, anchored at the task's one-token-per-step point, "
           "points > 5 below the slowest dropped)", head, "-" * len(head)]
  for r in sorted(rows, key=lambda r: (r["task"], -r["aup"])):
    lines.append(f"{r['task']:<12} {r['family']:<{fw}} {r['aup']:>8.1f} {r['points']:>6} {r['dropped']:>7} "
                 f"{r['max_tpf']:>7.2f} {'yes' if r.get('anchored') else '':>8}")
  unanchored = sorted({r["task"] for r in rows if r.get("anchor", True) is None})
  if unanchored:
    lines.append(f"no one-token-per-step point on {', '.join(unanchored)}: families there are not anchored")
  return "\n".join(lines)
