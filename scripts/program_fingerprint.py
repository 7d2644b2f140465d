"""Fingerprints of the lowered generation programs (StableHLO text) of a fixed set of samplers and caches.

A change to the engine that leaves these programs identical cannot change their speed: run this on the parent
and on the change (each from its own checkout) and compare the lines; only the programs that differ need
timing (`scripts/bench_suite.py`, `dlm bench`).

  python scripts/program_fingerprint.py > after.txt   # in the change's checkout
  (cd ../parent && python scripts/program_fingerprint.py) > before.txt; diff before.txt after.txt
"""

from __future__ import annotations

import hashlib

import numpy as np

CASES = (("low_confidence", dict(steps=16), "none"), ("threshold", {}, "dual"), ("eb", {}, "prefix"),
         ("threshold", {}, "window"), ("dream", dict(steps=16), "none"))


def main():
  from dlm.engine.generate import _generate_jit, _prepare
  from dlm.model.config import tiny_dream, tiny_llada, tiny_sdar
  from dlm.model.transformer import init_model
  from dlm.samplers.registry import make_sampler
  prompts = np.array([[0, 0, 5, 6, 7, 8], [3, 4, 5, 6, 7, 9]], np.int32)
  for make in (tiny_llada, tiny_dream):
    net = init_model(make(), seed=3)
    for name, settings, cache in CASES:
      args, statics = _prepare(net, prompts, prompts != 0, sampler=make_sampler(name, **settings), gen_length=16,
                               block_length=8, cache=cache)
      text = _generate_jit.lower(*args, **statics).as_text()
      print(make.__name__, name, cache, hashlib.sha1(text.encode()).hexdigest()[:16], len(text))
  # a block-causal model's exact cache (blocks of 4, prompt tails placed)
  net = init_model(tiny_sdar(dtype="float32"), seed=1)
  for name, settings in (("threshold", {}), ("sdar", dict(steps=4))):
    args, statics = _prepare(net, prompts, prompts != 0, sampler=make_sampler(name, **settings), gen_length=12,
                             block_length=4, cache="block")
    text = _generate_jit.lower(*args, **statics).as_text()
    print("tiny_sdar", name, "block", hashlib.sha1(text.encode()).hexdigest()[:16], len(text))


if __name__ == "__main__":
  main()
