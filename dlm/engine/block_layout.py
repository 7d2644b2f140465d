"""Where a block-causal model's prompts sit on the canvas, and how its result returns to the caller's layout.

A block-causal model (SDAR, Fast-dLLM v2: `ModelConfig.attention_layout == "block_causal"`) counts its blocks
from each row's first token, prompt included, and both references decode the prompt's last, partial block as the
first block of the answer: its prompt tokens stay fixed and visible, its masks are decoded (SDAR generate.py
L75-93; Fast-dLLM v2 batch_sample L58-64).  The engine decodes lockstep blocks on one canvas grid, so here

  * each row's *full* prompt blocks (F_r = P_r // bs * bs tokens) become the engine's prompt, left-padded to
    P' = max(P // bs, 1) * bs slots (so every row's blocks start at the same canvas slots);
  * the row's prompt tail (P_r - F_r tokens) is written into the first answer slots, where the engine treats it
    as already committed (never decoded, never an end of text, commit step -1);
  * the engine's answer is G' = ceil((bs - 1 + G) / bs) * bs slots, room for the longest tail a row can have;
    a row's slots past its own canvas (ceil((tail + G) / bs) blocks, what the reference allocates) are filled
    with padding, so it decodes and pays for exactly the blocks its batch-1 run would.
    P' and G' depend on the shapes only, never on the prompts, so every batch of one shape runs one compiled
    program and a caller can size a sampler for G' before it sees the data (`placed_answer_length`).

`to_caller` cuts each row's G new tokens out again and returns a `Generation` over the caller's prompts, as a
bidirectional model's run returns it.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np

from dlm.engine.state import Generation


@dataclasses.dataclass(frozen=True)
class BlockPlacement:
  """Host arrays of one placement (B rows)."""

  prompts: np.ndarray  # [B, P'] the rows' full prompt blocks, left-padded (P' a multiple of the block size)
  prompt_valid: np.ndarray  # [B, P']
  answer_init: np.ndarray  # [B, G'] the prompt tail, then mask ids
  answer_start: np.ndarray  # [B] int32: the tail's length, the first slot the engine decodes
  gen_length: int  # G' (a multiple of the block size)


def placed_answer_length(gen_length: int, block_size: int) -> int:
  """G': the engine's answer length for G new tokens (module docstring)."""
  return -(-(block_size - 1 + gen_length) // block_size) * block_size


def place_prompts(prompts, prompt_valid, *, block_size: int, gen_length: int, mask_id: int,
                  pad_id: int) -> BlockPlacement:
  prompts = np.asarray(jax.device_get(prompts)).astype(np.int32)
  valid = np.asarray(jax.device_get(prompt_valid), bool)
  b, p = prompts.shape
  lengths = valid.sum(-1)  # [B]
  full = lengths // block_size * block_size  # [B]
  tails = lengths - full
  head = max(p // block_size, 1) * block_size  # at least one block, so the canvas has a prompt region
  answer = placed_answer_length(gen_length, block_size)
  new_prompts = np.full((b, head), pad_id, np.int32)
  new_valid = np.zeros((b, head), bool)
  answer_init = np.full((b, answer), mask_id, np.int32)
  for r in range(b):
    row = prompts[r, p - lengths[r]:]
    new_prompts[r, head - full[r]:] = row[:full[r]]
    new_valid[r, head - full[r]:] = True
    answer_init[r, :tails[r]] = row[full[r]:]
    own = -(-(int(tails[r]) + gen_length) // block_size) * block_size  # the row's own canvas ends here
    answer_init[r, own:] = pad_id  # past it: filled, so the row decodes (and pays for) no extra block
  return BlockPlacement(prompts=new_prompts, prompt_valid=new_valid, answer_init=answer_init,
                        answer_start=tails.astype(np.int32), gen_length=answer)


def _answer_slots(placement: BlockPlacement, gen_length: int):
  """(rows [B, 1], cols [B, G]): each row's G new slots in the engine's answer."""
  rows = np.arange(len(placement.answer_start))[:, None]
  return rows, placement.answer_start[:, None] + np.arange(gen_length)[None]


def caller_canvas(placement: BlockPlacement, prompts, gen_length: int, tokens, commit_step):
  """Host arrays over the placed canvas (tokens [B, P' + G'], commit_step [B, G']) -> the caller's layout
  (tokens [B, P + G]: the caller's prompts, then each row's G new slots; commit_step [B, G])."""
  rows, cols = _answer_slots(placement, gen_length)
  answer = np.asarray(tokens)[:, placement.prompts.shape[1]:][rows, cols]
  caller = np.concatenate([np.asarray(jax.device_get(prompts)).astype(np.int32), answer], axis=1)
  return caller, np.asarray(commit_step)[rows, cols]


def to_caller(out: Generation, placement: BlockPlacement, prompts, gen_length: int, *, mask_id: int,
              end_ids: tuple[int, ...], stop_at_eos: bool) -> Generation:
  """The engine's result over the placed canvas -> the caller's [B, P + G] layout (each row's G new slots)."""
  from dlm.engine.step import first_end  # the loop's own end-of-text rule
  out = out.to_numpy()
  rows, cols = _answer_slots(placement, gen_length)
  tokens, commit_step = caller_canvas(placement, prompts, gen_length, out.tokens, out.commit_step)
  answer = tokens[:, -gen_length:]
  history = None if out.history is None else out.history[:, rows, cols]
  first = np.asarray(first_end(jnp.asarray(answer), end_ids))
  finished = ~(answer == mask_id).any(-1)
  if stop_at_eos:
    before = np.arange(gen_length)[None] < first[:, None]
    finished = finished | ((first < gen_length) & ~((answer == mask_id) & before).any(-1))
  out = out.replace(tokens=tokens, commit_step=commit_step, history=history, finished=finished,
                    gen_tokens=np.minimum(first + 1, gen_length).astype(np.int32),
                    prompt_length=tokens.shape[1] - gen_length)
  return jax.tree.map(jnp.asarray, out)
