"""Text in, text out: a network with its tokenizer, batched generation of completions for text prompts.

The shared layer under `dlm eval` (benchmark files) and the lm-evaluation-harness adapter.  The tokenizer is the
character tokenizer of the shipped models or a Hugging Face tokenizer (`dlm.load`).  Prompts are left-padded into
batches of a fixed size (the last one padded with copies, so every batch runs one compiled program); each
completion is the answer cut before the first end-of-text token and, when given, before the first stop string.

Two switches follow the reference harnesses a published table came from (dlm.eval.recipes): `special_tokens`
tokenizes prompts with the tokenizer's own special tokens (LLaDA's and Fast-dLLM's harnesses call
`tokenizer(text)`, which adds LLaDA's BOS), and `decode="strip"` decodes as those harnesses do: the whole answer
with its special tokens, cut at the stop strings, then the special tokens dropped (text after an end token stays),
against the default `decode="cut"` (the answer before the first end token).
"""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np


@dataclasses.dataclass
class TextModel:
  model: object  # dlm Transformer
  tokenizer: object = None  # a Hugging Face tokenizer, or None for the character tokenizer
  name: str = ""
  special_tokens: bool = False  # prompts tokenized with the tokenizer's special tokens (a BOS where it adds one)
  decode_rule: str = "cut"  # "cut": before the first end token; "strip": the reference harnesses' rule (above)

  def __post_init__(self):
    if self.decode_rule not in ("cut", "strip"):
      raise ValueError(f"decode={self.decode_rule!r}; expected 'cut' or 'strip'")

  def encode(self, text: str) -> list[int]:
    if self.tokenizer is None:
      from dlm.tasks import TOKENIZER
      return TOKENIZER.encode(text)
    return list(self.tokenizer.encode(text, add_special_tokens=self.special_tokens))

  def completion(self, ids, stops) -> str:
    """An answer's ids [G] -> the completion text under `decode_rule`, cut at the stop strings."""
    if self.decode_rule == "cut" or self.tokenizer is None:
      return cut_at_stops(self.decode(ids), stops)
    text = cut_at_stops(self.tokenizer.decode([int(i) for i in np.asarray(ids)], skip_special_tokens=False), stops)
    return self.tokenizer.decode(self.tokenizer.encode(text, add_special_tokens=False), skip_special_tokens=True)

  def decode(self, ids) -> str:
    ids = [int(i) for i in np.asarray(ids)]
    ends = set(self.model.cfg.end_ids)
    cut = next((k for k, i in enumerate(ids) if i in ends), len(ids))
    ids = ids[:cut]
    if self.tokenizer is None:
      from dlm.tasks import TOKENIZER
      return TOKENIZER.decode(ids)
    return self.tokenizer.decode(ids, skip_special_tokens=True)

  def batch(self, texts: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """-> prompts [N, P] int32 (left-padded with the pad id), valid [N, P] bool."""
    ids = [self.encode(t) for t in texts]
    width = max(max((len(x) for x in ids), default=1), 1)
    pad = self.model.cfg.pad_id if self.model.cfg.pad_id is not None else 0
    prompts = np.full((len(ids), width), pad, np.int32)
    valid = np.zeros((len(ids), width), bool)
    for row, x in enumerate(ids):
      if x:
        prompts[row, width - len(x):] = x
        valid[row, width - len(x):] = True
    return prompts, valid


def cut_at_stops(text: str, stops) -> str:
  """The text before the earliest of the stop strings (lm-eval's `until`, HumanEval's stop sequences)."""
  cut = len(text)
  for stop in stops or ():
    if stop:
      at = text.find(stop)
      if at >= 0:
        cut = min(cut, at)
  return text[:cut]


def generate_texts(tm: TextModel, texts: list[str], *, sampler, gen_length: int, block_length: int | None = None,
                   batch: int = 8, stops=None, seed: int = 0, cache: str = "none", sampler_params=None,
                   progress: bool = False, warmup: bool = False) -> dict:
  """Completions of `texts` -> {completions [N] str, nfe [N], gen_tokens [N], wall_s, compile_s}.  Prompts longer
  than the model's window are refused in one line (`generate` names the lengths).  warmup: the first batch runs
  once untimed before the timed pass (its time, compile included, is `compile_s`), so `wall_s` times compiled
  programs only."""
  from dlm.engine.generate import generate
  from dlm.eval.compare import pad_batch
  from tqdm.auto import tqdm
  prompts, valid = tm.batch(texts)
  if prompts.shape[1] + gen_length > tm.model.cfg.max_len:
    raise ValueError(f"the longest prompt has {prompts.shape[1]} tokens; + gen_length={gen_length} exceeds the "
                     f"model's max_len={tm.model.cfg.max_len}: shorten the prompts (fewer shots) or the canvas")
  completions, nfe, gen_tokens = [], [], []
  wall = compile_s = 0.0

  def run(start):
    p, v = pad_batch(batch, prompts[start:start + batch], valid[start:start + batch])
    out = generate(tm.model, p, v, sampler=sampler, gen_length=gen_length, block_length=block_length, cache=cache,
                   key=jax.random.key(seed * 1_000_003 + start), sampler_params=sampler_params)
    return jax.block_until_ready(out)

  if warmup and len(texts):
    t0 = time.perf_counter()
    run(0)
    compile_s = time.perf_counter() - t0
  for start in tqdm(range(0, len(texts), batch), disable=not progress, desc="generate"):
    rows = len(prompts[start:start + batch])
    t0 = time.perf_counter()
    out = run(start)
    wall += time.perf_counter() - t0
    answers = np.asarray(out.answers)[:rows]
    completions += [tm.completion(a, stops) for a in answers]
    nfe += np.asarray(out.nfe)[:rows].tolist()
    gen_tokens += np.asarray(out.gen_tokens)[:rows].tolist()
  return {"completions": completions, "nfe": np.asarray(nfe), "gen_tokens": np.asarray(gen_tokens), "wall_s": wall,
          "compile_s": compile_s}
