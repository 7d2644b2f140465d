"""Token counts as dlm and its peers define them, so figures can sit beside the peers' tables (DESIGN.md §3).

  dlm        generated tokens = answer slots up to and including the first end-of-text token (`gen_tokens`).
  fast_dllm  the answer's tokens that are not end-of-text, wherever they sit (Fast-dLLM's throughput counts the
             non-EOS output tokens).
  dinfer     the answer cut *before* the first end-of-text token (dInfer's TPF numerator).
TPF under a definition is its token count divided by NFE; the NFE is dlm's per-row count in every case.
"""

from __future__ import annotations

import numpy as np

TOKEN_COUNTS = ("dlm", "fast_dllm", "dinfer")


def peer_token_counts(answers, end_ids) -> dict[str, np.ndarray]:
  """answers [B, G] int -> {definition: [B] int64} for the definitions in TOKEN_COUNTS."""
  answers = np.asarray(answers)
  g = answers.shape[1]
  is_end = np.isin(answers, np.asarray(end_ids))  # [B, G]
  first_end = np.where(is_end.any(-1), is_end.argmax(-1), g)  # [B]
  return {"dlm": np.minimum(first_end + 1, g), "fast_dllm": (~is_end).sum(-1), "dinfer": first_end}
