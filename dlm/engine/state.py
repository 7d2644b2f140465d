"""Pytrees that cross the engine/sampler boundary and the loop state."""

from __future__ import annotations

import flax.struct
import jax
import numpy as np


@flax.struct.dataclass
class View:
  """What the network tells a sampler about the slots it sees (the active block, or the whole answer when the
  sampler's `view_span` is "answer"); Bv below is Bk or G accordingly.

  The engine fills what the sampler's `head_request` (a `dlm.kernels.HeadRequest`) asks for, through one fused
  head that writes no [B, Bv, V] logits unless they are asked for (docs/design.md §1, item 4):
  stats: `HeadStats` with leading shape [B, Bv]; read it through the properties below (sample, sample_prob,
    top1, top1_prob, top2_prob, margin, entropy, token_prob, topk_ids, topk_probs).
  logits: [B, Bv, V] float32 (Dream's shift already applied; the mask id banned), only when the request says
    `logits=True`; None otherwise.
  hidden: [B, Bv, D] final hidden states feeding those statistics (for learned heads; CFG's unconditional pass
    is not included).
  params: the `sampler_params` pytree passed to `generate` (or the sampler's `default_params()`), a traced argument
    of the compiled program: new weights never recompile (docs/design.md §1, item 1).
  verify: with a sampler's `verify_rows`, the View of the block's leave-one-out shadow rows (WINO), filled per
    the sampler's `verify_request`: row i sees the canvas with block slot i hidden
    (dlm.engine.calls.NetworkCalls.forward_with_shadow); its `token_prob` is of the block's current tokens.
  base: with a sampler's `canvas_features`, the `dlm.engine.features.BaseFeatures` of this step's full forward
    (slot-aligned hidden states of the whole canvas, the embedding table and the vocabulary head), for samplers
    that run a learned layer of their own on top of the network (ADJUST); None otherwise.
  drafts: with a sampler's `draft_copies` K, the View of the K - 1 candidate copies of the view that
    `Sampler.drafts` asked for, each run by its own rows in this step's forward (the canvas outside the view as it
    stands), filled per the sampler's `head_request`; leading shape [B * (K - 1), Bv], row b * (K - 1) + k - 1
    holding copy k of row b.
  Unused fields cost nothing: everything is traced in one program and XLA drops what no one reads.
  """

  logits: jax.Array | None
  hidden: jax.Array | None
  verify: "View | None" = None
  stats: object = None  # dlm.kernels.HeadStats [B, Bv]
  params: object = None  # the traced `sampler_params` pytree (learned heads, APD's AR model), () when none
  base: object = None  # dlm.engine.features.BaseFeatures (samplers with canvas_features), else None
  drafts: "View | None" = None  # samplers with draft_copies: the candidate copies' View [B * (K - 1), Bv]

  @classmethod
  def from_stats(cls, stats, hidden) -> "View":
    """The View of head statistics: full logits (when requested) move to `View.logits`."""
    return cls(logits=stats.logits, hidden=hidden, stats=stats.replace(logits=None))

  def _need(self, field: str, what: str):
    value = None if self.stats is None else getattr(self.stats, field)
    if value is None:
      raise ValueError(f"View.{what} was not computed: the sampler's head_request does not ask for it")
    return value

  @property
  def sample(self) -> jax.Array:
    """[B, Bv] int32 Gumbel-max sample at the request's temperature (greedy at 0)."""
    return self._need("sample", "sample")

  @property
  def sample_prob(self) -> jax.Array:
    """[B, Bv] clean-softmax probability of `sample` (LLaDA's confidence)."""
    return self.stats.prob(self._need("sample_logit", "sample_prob"))

  @property
  def top1(self) -> jax.Array:
    """[B, Bv] int32 most likely token."""
    return self._need("top_ids", "top1")[..., 0]

  @property
  def top1_prob(self) -> jax.Array:
    return self.stats.prob(self._need("top_logits", "top1_prob")[..., 0])

  @property
  def top2_prob(self) -> jax.Array:
    return self.stats.prob(self._need("top_logits", "top2_prob")[..., 1])

  @property
  def margin(self) -> jax.Array:
    """[B, Bv] top-1 minus top-2 *logit* (Prophet's gap)."""
    top = self._need("top_logits", "margin")
    return top[..., 0] - top[..., 1]

  @property
  def topk_ids(self) -> jax.Array:
    return self._need("top_ids", "topk_ids")

  @property
  def topk_probs(self) -> jax.Array:
    return self.stats.prob(self._need("top_logits", "topk_probs"))

  @property
  def entropy(self) -> jax.Array:
    """[B, Bv] entropy of the clean softmax in nats."""
    return self._need("entropy", "entropy")

  @property
  def token_prob(self) -> jax.Array:
    """[B, Bv] clean probability of the view's current tokens (requests with token_prob)."""
    return self.stats.prob(self._need("token_logit", "token_prob"))


@flax.struct.dataclass
class Decision:
  """What a sampler's step returns (with its carry): `step(...) -> (Decision, carry)`.

  tokens: [B, Bk] int32 proposals; written where `commit` is True.
  commit: [B, Bk] bool; the engine keeps only masked slots of active rows.
  remask: [B, Bk] bool or None: committed slots of the active block to return to the mask (ReMDM, WINO).  The
    engine keeps only slots that were committed before this step, of active rows; the block lies in the answer,
    so prompt tokens can never be touched.  A remasked slot's commit_step goes back to -1 until recommitted.
  hold: [B] bool or None: rows that keep the block open although it has no masks left (a remasking sampler
    with steps to go); such a row stays active and is charged NFE until it stops holding.
  soft: [B, Bv, V] float or None: the sampler's belief per view slot, as mixture weights over the vocabulary
    (samplers with `soft_inputs`, required there): on the next forward a slot that is still masked is fed
    sum_v soft[v] * E[v] (E: the network's input embeddings; weights need not sum to 1, and weight on the mask
    id is the mask embedding's share), instead of the mask embedding.  One-hot weights give exactly the
    embedding of that token.  Written for active rows only; a slot's last belief stays until overwritten.
  truncate: [B] int32 or None: end the answer after this answer-slot index (Learn2PD's end-of-text prediction):
    every later slot becomes EOS at once, committed and costing nothing, and blocks wholly after it are skipped;
    the slot itself and those before it decode on.  G (or more) leaves a row as it is.  Active rows only.
  edit: [B, Bk] bool or None: committed slots of the view to *replace* by `tokens` (LLaDA2.1's token-to-token
    editing), not sent back to the mask.  The engine keeps only slots the loop itself committed before this step
    (commit_step >= 0: never a prompt token, nor a block-causal placement's prompt tail, nor a masked slot), of
    active rows, and only where the token changes; an edited slot's commit_step becomes this iteration.  An edit
    costs no forward of its own: it rides on the step's forward, and a sampler that edits after its block is
    full holds the block open (`hold`) for the forwards that check it, each charged as NFE.  With the exact block
    cache of a block-causal model the block's keys are written once, after its last edit.
  The plain tuple `(tokens, commit, carry)` is the same as `(Decision(tokens, commit), carry)`.
  """

  tokens: jax.Array
  commit: jax.Array
  remask: jax.Array | None = None
  hold: jax.Array | None = None
  soft: jax.Array | None = None
  truncate: jax.Array | None = None
  edit: jax.Array | None = None


def as_decision(out) -> tuple[Decision, object]:
  """Normalise a sampler step's return value to (Decision, carry)."""
  if len(out) == 3:
    tokens, commit, carry = out
    return Decision(tokens=tokens, commit=commit), carry
  decision, carry = out
  if not isinstance(decision, Decision):
    raise TypeError(f"a sampler step returns (tokens, commit, carry) or (Decision, carry), got {type(decision)}")
  return decision, carry


@flax.struct.dataclass
class BlockState:
  """The canvas as a sampler sees it: the active block (or the whole answer) and where the loop stands.

  tokens: [B, Bv] current tokens of the view (mask id where unresolved); Bv = Bk, or G with view_span "answer".
  masked: [B, Bv] bool, tokens == mask id.
  active: [B] bool, rows that still decode this block (not finished, masks left).
  entry_masked: [B] int32, masked count of the block when it was entered (LLaDA fixes its counts there).
  step: [] int32, step index inside the block (0 at block entry).
  block: [] int32, block index.
  num_blocks, block_length, mask_id, end_ids: static.
  """

  tokens: jax.Array
  masked: jax.Array
  active: jax.Array
  entry_masked: jax.Array
  step: jax.Array
  block: jax.Array
  num_blocks: int = flax.struct.field(pytree_node=False)
  block_length: int = flax.struct.field(pytree_node=False)
  mask_id: int = flax.struct.field(pytree_node=False)
  end_ids: tuple[int, ...] = flax.struct.field(pytree_node=False)
  in_block: jax.Array | None = None  # [Bv] bool, the active block's slots in the view (None: the whole view)
  prompt: jax.Array | None = None  # [B, P] the prompts (left-padded), for samplers that run a model of their own
  prompt_valid: jax.Array | None = None  # [B, P] bool, False on padding
  committed: jax.Array | None = None  # [B, Bv] bool, slots the loop committed (not masked, not a prompt token)

  @property
  def block_masked(self) -> jax.Array:
    """[B, Bv] masked slots of the active block (the slots a block-local rule may commit)."""
    return self.masked if self.in_block is None else self.masked & self.in_block[None]


@flax.struct.dataclass
class LoopState:
  """Carry of the engine's lax.while_loop (dlm/engine/step.py).  The loop owns the canvas and the counters; three
  slices belong to the objects chosen at trace time: `carry` to the sampler, `forward` to the forward program
  (dlm/engine/programs.py: a KV cache, the last prediction, a probe), `inputs` to the input transforms
  (dlm/engine/inputs.py: the belief embeddings).  Each is () when its owner keeps nothing."""

  tokens: jax.Array  # [B, L]
  block: jax.Array  # [] int32, lockstep over rows
  step: jax.Array  # [] int32, step inside the block
  iteration: jax.Array  # [] int32, loop iterations so far (bounded by max_nfe)
  entry_masked: jax.Array  # [B] int32
  nfe: jax.Array  # [B] int32, forward calls this row took part in
  batch_nfe: jax.Array  # [] int32, forward calls the batch made (a CFG step is one call over 2B rows)
  steps: jax.Array  # [B] int32, denoising steps this row took
  done: jax.Array  # [B] bool
  commit_step: jax.Array  # [B, G] int32, iteration at which each answer slot was committed (-1: never)
  remasked: jax.Array  # [B] int32, committed slots returned to the mask so far
  hold: jax.Array  # [B] bool, the row asked to keep its (maskless) block open
  history: jax.Array  # [T, B, G] answer tokens after each iteration when recording, else [0, B, G]
  key: jax.Array
  carry: object  # the sampler's carry
  forward: object  # the forward program's state
  inputs: object  # the input transforms' state (a tuple, one entry per transform)
  tokens_computed: jax.Array  # [B] int32, canvas positions the network recomputed for this row
  block_iterations: jax.Array  # [num_blocks] int32, loop iterations spent in each block


@flax.struct.dataclass
class Generation:
  """Result of `generate`.

  tokens: [B, P + G] prompt (left-padded, as given) followed by the answer slots.
  nfe: [B] network forward calls per row (a CFG step counts two): the honest per-sample cost.
  batch_nfe: [] network forward calls the batch made, what Fast-dLLM's `generate` returns as `nfe`: one per loop
    iteration that ran the network, a CFG step counting one call over the doubled batch (as LLaDA runs it).
  steps: [B] denoising steps per row.
  finished: [B] all answer slots resolved (or the row ended at an end-of-text token).
  gen_tokens: [B] generated tokens up to and including the first end-of-text (DESIGN.md §3).
  commit_step: [B, G] loop iteration at which each answer slot was last committed (-1 if masked at the end).
  remasked: [B] committed slots a remasking sampler returned to the mask (0 for every other sampler).
  history: [T, B, G] answer tokens after each iteration (only with record=True).
  tokens_computed: [B] canvas positions the network recomputed for the row, summed over its charged calls: L per
    full forward, the window width per cached step (a CFG step counts both passes), prompt padding included.
  extras: the sampler's `report(carry)`: per-row measurements of its own ({name: [B]}; APD's AR cost), else {}.
  """

  tokens: jax.Array
  nfe: jax.Array
  steps: jax.Array
  batch_nfe: jax.Array
  finished: jax.Array
  gen_tokens: jax.Array
  commit_step: jax.Array
  remasked: jax.Array | None = None
  history: jax.Array | None = None
  tokens_computed: jax.Array | None = None
  extras: dict | None = None
  prompt_length: int = flax.struct.field(pytree_node=False, default=0)

  @property
  def answers(self) -> jax.Array:
    """[B, G] the answer slots."""
    return self.tokens[:, self.prompt_length:]

  def to_numpy(self) -> "Generation":
    return jax.tree.map(np.asarray, self)
