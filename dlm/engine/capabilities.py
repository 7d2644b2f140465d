"""Which sampler capabilities combine with which engine settings: one table, read by the check and by the docs.

A sampler states what it needs through static attributes (samplers/base.py); the engine picks its forward
program from them once, at trace time (dlm/engine/programs.py).  Not every capability fits every setting: a KV
cache recomputes a window, so a view of every answer slot would read stale slots; WINO's shadow rows are laid out
for a canvas with no logit shift; and so on.  `TABLE` holds every such rule, one row per capability:

  kv_cache / cfg / logit_shift   what happens under a KV-cache policy (cache != 'none'), under classifier-free
                                 guidance (cfg_scale > 0) and on a model with Dream's logit shift:
                                 "ok" (works), "refused" (a one-line error naming both sides), or "off" (the
                                 capability is dropped and the step runs without it: MDLM's no-change reuse under a
                                 cache or CFG, where the cached step is already cheap and a skipped step would skip
                                 the cache's bookkeeping).
  needs                          capabilities it cannot run without.
  excludes                       capabilities it cannot run with (the relation is symmetric; each pair is written
                                 once, under the capability that comes first in the table).

`check_combination` is the only place these rules are enforced; `markdown_table` prints them into
docs/design.md.  A new capability is a new row here, a new forward program or input transform, and nothing in
the loop body.
"""

from __future__ import annotations

import dataclasses

OK, REFUSED, OFF = "ok", "refused", "off"


@dataclasses.dataclass(frozen=True)
class Rule:
  """How one capability combines with the engine's settings and with the other capabilities."""

  capability: str  # the name used by `capabilities_of` (a Sampler attribute, or view_span='answer')
  label: str  # how error messages name it
  part: str  # the object that provides it (dlm/engine/programs.py, inputs.py, or the step's view geometry)
  kv_cache: str = OK
  cfg: str = OK
  logit_shift: str = OK
  needs: tuple[str, ...] = ()
  excludes: tuple[str, ...] = ()
  why: str = ""  # the reason behind the refusals, printed in the docs


TABLE: tuple[Rule, ...] = (
    Rule("draft_copies", "candidate copies", "CandidateCopies (forward program)", cfg=REFUSED,
         excludes=("view_span_answer", "soft_inputs", "input_horizon", "row_window", "canvas_features",
                   "verify_rows", "reuse_unchanged"),
         why="the copies are the view's block run as extra rows beside the plain canvas; every other program "
             "or input transform changes what those rows would have to see"),
    Rule("view_span_answer", "view_span='answer'", "view geometry (StepContext)", kv_cache=REFUSED,
         why="a KV-cache step recomputes only a window around the active block; the other answer slots would be "
             "stale"),
    Rule("soft_inputs", "soft_inputs", "SoftInputs (input transform)",
         excludes=("verify_rows", "reuse_unchanged", "row_window"),
         why="a belief update is a change the canvas does not show (no-change reuse, shadow rows and the per-row "
             "window read the canvas alone)"),
    Rule("input_horizon", "input_horizon", "InputHorizon (input transform)", kv_cache=REFUSED, cfg=REFUSED,
         excludes=("verify_rows", "reuse_unchanged"),
         why="the horizon changes which keys every query sees, so no cached key or skipped forward stays valid"),
    Rule("row_window", "row_window", "RowWindow (forward program)", kv_cache=REFUSED, cfg=REFUSED,
         needs=("input_horizon",), excludes=("reuse_unchanged", "canvas_features"),
         why="the sampler keeps a per-row cache of its own; it is built from the horizon-limited canvas"),
    Rule("canvas_features", "canvas_features", "CanvasFeatures (forward program)", kv_cache=REFUSED, cfg=REFUSED,
         excludes=("reuse_unchanged", "verify_rows"),
         why="the features are those of one full forward of the conditional canvas"),
    Rule("verify_rows", "verification rows", "ShadowRows (forward program)", kv_cache=REFUSED, cfg=REFUSED,
         logit_shift=REFUSED, excludes=("reuse_unchanged",),
         why="shadow row i stands for block slot i itself, a layout without Dream's shift, run beside one full "
             "forward"),
    Rule("reuse_unchanged", "reuse_unchanged", "ReuseUnchanged (forward program)", kv_cache=OFF, cfg=OFF,
         why="under a cache or CFG a step is not skipped: a skipped block entry would also skip the cache refresh"),
)
RULES = {rule.capability: rule for rule in TABLE}


def capabilities_of(sampler) -> frozenset[str]:
  """The capabilities a sampler declares (its static attributes), as names of `TABLE` rows."""
  flags = dict(view_span_answer=sampler.view_span == "answer", soft_inputs=sampler.soft_inputs,
               input_horizon=sampler.input_horizon, row_window=sampler.row_window > 0,
               canvas_features=sampler.canvas_features, verify_rows=sampler.verify_rows,
               reuse_unchanged=sampler.reuse_unchanged, draft_copies=sampler.draft_copies > 0)
  return frozenset(name for name, on in flags.items() if on)


def check_combination(sampler, *, cache: str, cfg_scale: float, logit_shift: bool) -> frozenset[str]:
  """Refuse a combination the table refuses (one line naming both sides) -> the capabilities the engine runs
  with (the declared ones minus those the table turns off)."""
  name = type(sampler).__name__
  declared = capabilities_of(sampler)
  settings = (("kv_cache", cache != "none", f"cache={cache!r}", "only cache='none' provides"),
              ("cfg", cfg_scale > 0, f"cfg_scale={cfg_scale!r}", "only cfg_scale=0 provides"),
              ("logit_shift", logit_shift, "a model with logit shift (Dream layout)",
               "only a model without logit shift (LLaDA layout) provides"))
  active = set(declared)
  for rule in TABLE:
    if rule.capability not in declared:
      continue
    for needed in rule.needs:
      if needed not in declared:
        raise ValueError(f"{name}.{rule.label} needs {RULES[needed].label}; set both or neither")
    for other in rule.excludes:
      if other in declared:
        raise ValueError(f"{name}: {rule.label} cannot be combined with {RULES[other].label} ({rule.why})")
    for field, on, setting, provider in settings:
      verdict = getattr(rule, field)
      if on and verdict == REFUSED:
        raise ValueError(f"{setting}: {name} needs {rule.label}, which {provider}")
      if on and verdict == OFF:
        active.discard(rule.capability)
  return frozenset(active)


def markdown_table() -> str:
  """The table as docs/design.md prints it."""
  lines = ["| capability | provided by | KV cache | CFG | logit shift | needs | excludes | why |",
           "|---|---|---|---|---|---|---|---|"]
  for rule in TABLE:
    lines.append(f"| {rule.label} | {rule.part} | {rule.kv_cache} | {rule.cfg} | {rule.logit_shift} | "
                 f"{', '.join(RULES[n].label for n in rule.needs) or '-'} | "
                 f"{', '.join(RULES[n].label for n in rule.excludes) or '-'} | {rule.why} |")
  return "\n".join(lines)
