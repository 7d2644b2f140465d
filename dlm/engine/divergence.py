"""How far a KV-cache policy drifts from the reference (`cache='none'`) run.

Two figures (issue 4, item 7):
  * agreement: the fraction of rows whose answer tokens equal the `none` policy's answer for the same prompts,
    sampler and key (plus the per-token agreement);
  * logit error: at every loop iteration of the cached run, the engine also runs a full forward on the *same*
    canvas and records max |cached logit - full-forward logit| over the masked slots of the active block of the
    rows still decoding (before the mask-id ban, after CFG).  At refresh steps (block entry) the cached prediction
    is a full forward, so that gap is 0 up to float noise; the cached steps show the staleness of the cache.

The probe doubles the network work of the cached run, so it is a separate compiled program; `generate` and
`bench` never run it.
"""

from __future__ import annotations

import jax
import numpy as np

from dlm.engine.cache import DEFAULT_WINDOW
from dlm.engine.generate import _generate_jit, _prepare, generate


def divergence_report(model, prompts, valid=None, *, sampler, gen_length: int, block_length: int | None = None,
                      cache: str, key: jax.Array | None = None, window: int = DEFAULT_WINDOW,
                      max_nfe: int | None = None, stop_at_eos: bool = False) -> dict:
  """Run `cache` (with the logit probe) and 'none' on the same inputs and key; -> a JSON-ready dict.

  rows_equal_frac: rows whose answer equals the 'none' answer token for token.
  token_agree_frac: answer slots equal to the 'none' answer.
  max_logit_diff: max over cached (non-refresh) steps of the probe gap; None when no cached step ran.
  max_logit_diff_first_cached: the same over the first cached step of each block (one step after the refresh).
  mean_step_logit_diff: mean over cached steps of the per-step max gap.
  refresh_max_logit_diff: the gap at refresh steps (expected 0: both sides are full forwards).
  row_max_logit_diff: [B] per-row max gap.
  """
  if sampler.draft_copies:
    raise ValueError(f"the divergence probe does not run under candidate copies ({type(sampler).__name__}."
                     f"draft_copies={sampler.draft_copies}): measure the cache with the rule it reproduces")
  key = jax.random.key(0) if key is None else key
  common = dict(sampler=sampler, gen_length=gen_length, block_length=block_length, max_nfe=max_nfe, key=key,
                stop_at_eos=stop_at_eos)
  reference = generate(model, prompts, valid, cache="none", **common).to_numpy()
  args, statics = _prepare(model, prompts, valid, cache=cache, window=window, probe=True, **common)
  out, aux = _generate_jit(*args, **statics)
  out = out.replace(prompt_length=args[2].shape[1]).to_numpy()
  aux = jax.tree.map(np.asarray, aux)

  same = out.answers == reference.answers  # [B, G]
  report = dict(cache=cache, window=window if cache == "window" else None, rows=int(same.shape[0]),
                rows_equal_frac=float(same.all(-1).mean()), token_agree_frac=float(same.mean()),
                nfe_mean=float(out.nfe.mean()), nfe_mean_none=float(reference.nfe.mean()),
                tokens_computed_mean=float(out.tokens_computed.mean()),
                tokens_computed_mean_none=float(reference.tokens_computed.mean()))
  if cache == "none":
    return report | dict(max_logit_diff=0.0, max_logit_diff_first_cached=0.0, mean_step_logit_diff=0.0,
                         refresh_max_logit_diff=0.0, cached_steps=0, row_max_logit_diff=[0.0] * report["rows"])
  iterations = int(aux["iterations"])
  trace = aux["probe"]["trace"][:iterations]  # [T] max gap over rows at each iteration
  step = aux["probe"]["trace_step"][:iterations]  # [T] step inside the block (0 = refresh)

  def max_or_none(x):
    return float(x.max()) if x.size else None

  cached = trace[step > 0]
  return report | dict(
      max_logit_diff=max_or_none(cached), max_logit_diff_first_cached=max_or_none(trace[step == 1]),
      mean_step_logit_diff=float(cached.mean()) if cached.size else None,
      refresh_max_logit_diff=max_or_none(trace[step == 0]), cached_steps=int(cached.size),
      row_max_logit_diff=[float(x) for x in aux["probe"]["gap"]])
