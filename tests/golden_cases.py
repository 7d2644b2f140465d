"""The generations the statistics view must not change: every registered sampler at temperature 0 (plus cache,
CFG and logit-shift variants) on the bundled model, recorded by the code before the statistics view existed.

`python -m tests.golden_cases` rewrites tests/data/golden_generations.npz; only do that when a change of the
outputs is intended (and say so in the commit).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path

import jax
import numpy as np

from dlm.engine import generate
from dlm.io.params import load_model
from dlm.model.config import tiny_dream
from dlm.model.transformer import init_model
from dlm.samplers.registry import make_sampler
from dlm.tasks import get_task

GOLDEN = Path(__file__).parent / "data" / "golden_generations.npz"
BUNDLED = Path(__file__).resolve().parents[1] / "dlm" / "assets" / "bundled"

# (case name, task, sampler name, settings, engine options)
CASES = [
    ("low_confidence", "sudoku4_hard", "low_confidence", dict(steps=16), dict(block_length=8)),
    ("low_confidence_cfg", "add", "low_confidence", dict(steps=8, cfg_scale=1.0), {}),
    ("low_confidence_eos_intent", "add", "low_confidence",
     dict(steps=8, confidence_eos_eot_inf=True, eos_rule="intent"), {}),
    ("low_confidence_eos_inf", "add", "low_confidence", dict(steps=8, logits_eos_inf=True), {}),
    ("random", "sudoku4_hard", "random", dict(steps=16), {}),
    ("ancestral_t0", "sudoku4_hard", "ancestral", dict(steps=8, temperature=0.0), {}),
    ("threshold", "sudoku4_hard", "threshold", dict(tau=0.9), dict(block_length=8)),
    ("threshold_dual", "sudoku4_hard", "threshold", dict(tau=0.7), dict(block_length=8, cache="dual")),
    ("factor", "sudoku4_hard", "factor", dict(f=1.0), {}),
    ("dilated", "sudoku4_hard", "dilated", {}, {}),
    ("hierarchy", "sudoku4_hard", "hierarchy", {}, {}),
    ("credit", "sudoku4_hard", "credit", {}, {}),
    ("eb", "sudoku4_hard", "eb", dict(gamma=0.01), {}),
    ("eb_confidence", "sudoku4_hard", "eb", dict(gamma=0.1, proxy="confidence"), {}),
    ("klass", "sudoku4_hard", "klass", {}, {}),
    ("prophet", "sudoku4_hard", "prophet", dict(steps=16), dict(block_length=8)),
    ("wino", "sudoku4_hard", "wino", {}, {}),
    ("remdm_t0", "sudoku4_hard", "remdm", dict(steps=24, temperature=0.0), {}),
    ("dream_t0", "add", "dream", dict(steps=8, temperature=0.0), {}),
]
DREAM_CASES = [
    ("dream_shift", "dream", dict(steps=8, temperature=0.0), {}),
    ("threshold_shift", "threshold", dict(tau=0.5), dict(block_length=4, cache="prefix")),
]
N = 8


def run_case(model, task_name, sampler_name, settings, options):
  task = get_task(task_name)
  prompts, valid, _ = task.encode(task.examples(N, seed=7))
  sampler = make_sampler(sampler_name, **settings)
  out = generate(model, prompts, valid, sampler=sampler, gen_length=task.gen_length, key=jax.random.key(5),
                 **options)
  return np.asarray(out.answers), np.asarray(out.nfe)


def run_dream_case(model, sampler_name, settings, options):
  rng = np.random.default_rng(3)
  prompts = rng.integers(3, model.cfg.vocab_size, size=(4, 6)).astype(np.int32)
  sampler = make_sampler(sampler_name, **settings)
  out = generate(model, prompts, sampler=sampler, gen_length=8, key=jax.random.key(5), **options)
  return np.asarray(out.answers), np.asarray(out.nfe)


def bundled_model():
  return load_model(BUNDLED)


def dream_model():
  return init_model(tiny_dream(), seed=4)


def record() -> dict[str, np.ndarray]:
  model, dream = bundled_model(), dream_model()
  out = {}
  for name, task, sampler, settings, options in CASES:
    out[f"{name}/tokens"], out[f"{name}/nfe"] = run_case(model, task, sampler, settings, options)
  for name, sampler, settings, options in DREAM_CASES:
    out[f"{name}/tokens"], out[f"{name}/nfe"] = run_dream_case(dream, sampler, settings, options)
  return out


if __name__ == "__main__":
  GOLDEN.parent.mkdir(parents=True, exist_ok=True)
  np.savez_compressed(GOLDEN, **record())
  print(f"wrote {GOLDEN}")
