"""WINO: wide-in, narrow-out revocable decoding (Hong et al., arXiv 2507.18578, ICLR 2026;
Feng-Hong/WINO-DLLM `LLaDA/decoding.py::decoding_wino`).

Every step is one forward over the canvas plus Bk *shadow* rows (`verify_rows`): shadow row i is a mask at block
slot i's position that sees the whole canvas except slot i itself, so it gives slot i's leave-one-out
prediction (`View.verify`).  In the same step:
- draft ("wide in"): commit the masked block slots whose confidence p(x0) > `tau_draft` (0.6), at most
  max_accept = min(max(int(0.7 * masked), 5), 20) of them (the most confident), and the most confident slot when
  none passes;
- verify ("narrow out"): if the draft accepted more than one slot, return to the mask the slots committed in
  earlier steps whose leave-one-out probability of their current token is < `tau_verify` (0.9); when that is at
  least `last_accept` slots (the previous step's draft count; 30 on block entry), only the last_accept - 1 least
  confident.  Drafted slots are not verified in the step that drafts them.
Each step nets at least one slot (a draft of a commits, at most a_prev - 1 revoked), so a block of Bk slots ends
within Bk steps and the budget is gen_length, as for the threshold rules.

Where dlm differs: nothing in the rule.  The reference runs batch 1 and positions 0..L-1; here rows are batched,
left padding is respected, and confidences are float32 (float64 in the reference).  The shadow rows need the
LLaDA layout (no logit shift), no CFG and cache 'none', which the engine checks.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, Decision, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import AdaptiveSampler, check_number, rank_per_row

FIRST_LAST_ACCEPT = 30  # the reference's `last_accept` at block entry


def wino_max_accept(masked_count: jax.Array) -> jax.Array:
  """min(max(int(0.7 m), 5), 20) per row.  [B] int -> [B] int32."""
  return jnp.clip(jnp.floor(0.7 * masked_count.astype(jnp.float32)).astype(jnp.int32), 5, 20)


def wino_draft(conf: jax.Array, masked: jax.Array, tau: float) -> jax.Array:
  """[B, Bk] confidences and masks -> bool [B, Bk] drafted slots."""
  over = masked & (conf > tau)
  cap = wino_max_accept(masked.sum(-1))  # [B]
  rank = rank_per_row(conf, masked)  # [B, Bk]
  capped = masked & (rank < cap[:, None])  # the top max_accept by confidence
  best = masked & (rank == 0)
  n_over = over.sum(-1, keepdims=True)
  return jnp.where(n_over > cap[:, None], capped, jnp.where(n_over == 0, best, over))


def wino_revoke(back_conf: jax.Array, committed: jax.Array, tau: float, last_accept: jax.Array,
                accepted: jax.Array) -> jax.Array:
  """Slots to return to the mask.  back_conf [B, Bk] leave-one-out confidence of each committed slot's token,
  committed [B, Bk] (before this step), last_accept [B], accepted [B] this step's draft count -> bool [B, Bk]."""
  low = committed & (back_conf < tau)
  rank = rank_per_row(-back_conf, committed)  # 0 = least confident committed slot
  capped = committed & (rank < (last_accept - 1)[:, None])
  revoke = jnp.where(low.sum(-1, keepdims=True) >= last_accept[:, None], capped & low, low)
  return revoke & (accepted > 1)[:, None]


@dataclasses.dataclass(frozen=True)
class Wino(AdaptiveSampler):
  """WINO (module docstring): draft above tau_draft, revoke earlier commits whose leave-one-out confidence falls
  below tau_verify."""

  tau_draft: float = 0.6
  tau_verify: float = 0.9
  temperature: float = 0.0

  verify_rows = True

  def __post_init__(self):
    check_number("tau_draft", self.tau_draft, 0, 1)
    check_number("tau_verify", self.tau_verify, 0, 1)
    check_number("temperature", self.temperature, 0)

  @property
  def family(self):
    return "wino"

  def init(self, batch, block_length, vocab_size=0):
    del block_length, vocab_size
    return jnp.full((batch,), FIRST_LAST_ACCEPT, jnp.int32)  # last_accept per row

  @property
  def head_request(self):
    return HeadRequest(sample=True, temperature=self.temperature)

  @property
  def verify_request(self):
    return HeadRequest(token_prob=True)  # the leave-one-out probability of each slot's current token

  def step(self, view: View, block: BlockState, carry, key):
    del key  # the sample is the view's
    last_accept = jnp.where(block.step == 0, FIRST_LAST_ACCEPT, carry)  # [B]
    x0 = view.sample  # [B, Bk]
    draft = wino_draft(view.sample_prob, block.masked, self.tau_draft)
    accepted = draft.sum(-1).astype(jnp.int32)  # [B]
    committed = ~block.masked  # block slots committed in earlier steps
    back_conf = view.verify.token_prob  # [B, Bk] leave-one-out p(current token)
    revoke = wino_revoke(back_conf, committed, self.tau_verify, last_accept, accepted)
    last_accept = jnp.where(block.active, accepted, last_accept)
    return Decision(tokens=x0, commit=draft, remask=revoke), last_accept
