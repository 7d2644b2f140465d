"""The Sampler protocol and the primitives most samplers share (Gumbel-max, per-row top-k)."""

from __future__ import annotations

import abc
import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, View
from dlm.kernels.head import LOGITS, HeadRequest, stats_from_logits
from dlm.kernels.noise import exponential_from_words, gumbel_scores, seed_words


class Sampler(abc.ABC):
  """A frozen, hashable dataclass that decides which masked slots of the active block to commit.

  The engine calls `init` once and `step` once per denoising step; a sampler returns proposals over its view
  (tokens [B, Bv], commit [B, Bv] bool, as a tuple with its carry, or a `dlm.engine.state.Decision` that may also
  remask committed slots and hold a block open).  The engine only writes proposals at masked slots of active rows
  and only remasks answer slots committed earlier, so a sampler can never touch prompt tokens.
  """

  # Classifier-free guidance scale (LLaDA's "unsupervised CFG": the unconditional input masks the prompt).
  cfg_scale: float = 0.0
  # What the engine shows the sampler (DESIGN.md §6): "block" = the active block's slots [B, Bk, ...];
  # "answer" = every answer slot [B, G, ...] with `BlockState.in_block` marking the active block (cache 'none').
  view_span: str = "block"
  # Whether the forward also runs the block's leave-one-out shadow rows (`View.verify`, WINO; cache 'none').
  verify_rows: bool = False
  # Whether the sampler keeps a belief over its view and feeds it back as soft inputs (LRD, iteration smoothing):
  # its step must return `Decision(soft=[B, Bv, V])`, and the next forward feeds still-masked slots the mixture
  # of input embeddings (docs/design.md §1, item 2).
  soft_inputs: bool = False
  # Whether the sampler limits what the next forward sees: `horizon(carry)` -> [B] answer-slot bound, and answer
  # slots at or beyond it are hidden from every query (APD's masked-input limit M; cache 'none').
  input_horizon: bool = False
  # Width of a per-row recompute window (0: off; needs input_horizon): after a first full forward that fills a
  # KV cache, each forward recomputes only canvas slots [window_start(carry), + row_window) per row and reads the
  # rest from the cache (APD's approximate dLLM cache, kv_window).  Only the view slots inside it are valid.
  row_window: int = 0
  # Whether the sampler reads the base network's features of the whole canvas (`View.base`, a
  # dlm.engine.features.BaseFeatures: slot-aligned final hidden states, the embedding table and the vocabulary
  # head) to run a learned layer of its own on top (ADJUST; cache 'none', no CFG).
  canvas_features: bool = False
  # Whether each model block of a block-causal model starts with a left-to-right token: the argmax of the output
  # before the block (the store forward's last slot), committed before the block's first denoising forward
  # (Fast-dLLM v2; needs cache='block', whose program places it).
  block_start_ar: bool = False
  # Candidate copies of the view per forward (0: off; K >= 2, copy 0 being the canvas as it stands):
  # `drafts(carry, tokens, masked)` gives copies 1..K-1, each run by its own rows in the same forward, and
  # `View.drafts` holds their head statistics (draft-and-verify, FreeDave; every cache policy).
  draft_copies: int = 0

  @property
  def head_request(self) -> HeadRequest:
    """What `step` reads from the head (docs/design.md §1, item 4).  The default, full logits, suits any sampler;
    one that needs only a sample, its probability, the top-k or the entropy says so and never makes the engine
    write [B, Bv, V] logits.  A sample at temperature T > 0 is drawn with the first half of the step key's split
    (`dlm.engine.calls.head_key`)."""
    return LOGITS

  @property
  def verify_request(self) -> HeadRequest:
    """What `step` reads from the verification rows (`View.verify`) when `verify_rows`; token_prob is of the
    block's current tokens."""
    return LOGITS

  @property
  def reuse_unchanged(self) -> bool:
    """Whether the engine may reuse the previous prediction when a row's canvas did not change (MDLM cache)."""
    return False

  def validate(self, gen_length: int, block_length: int) -> None:
    """Raise ValueError for settings that do not fit the canvas."""

  @abc.abstractmethod
  def max_nfe(self, gen_length: int, block_length: int) -> int:
    """Upper bound on denoising steps for the whole answer (the loop's default budget)."""

  def init(self, batch: int, block_length: int, vocab_size: int = 0):
    """The carry before the first step.  block_length is the view's length Bv; vocab_size is V (for samplers
    that carry per-token state, such as KLASS's previous distribution)."""
    del batch, block_length, vocab_size
    return ()

  @abc.abstractmethod
  def step(self, view: View, block: BlockState, carry, key: jax.Array):
    """-> (tokens [B, Bk] int32, commit [B, Bk] bool, carry)."""

  def horizon(self, carry):
    """[B] int32: the next forward sees answer slots < horizon only (samplers with `input_horizon`)."""
    raise NotImplementedError(f"{type(self).__name__} sets input_horizon but does not define horizon(carry)")

  def drafts(self, carry, tokens, masked):
    """[B, K-1, Bv] int32: the view's candidate copies 1..K-1 for the next forward (samplers with `draft_copies`);
    tokens [B, Bv] is the view as it stands (copy 0), masked [B, Bv] its unresolved slots.  A row with nothing to
    draft returns its tokens (when no row drafts, the engine runs the plain forward alone)."""
    raise NotImplementedError(f"{type(self).__name__} sets draft_copies but does not define drafts()")

  def window_start(self, carry):
    """[B] int32 canvas index where each row's recompute window starts (samplers with `row_window`)."""
    raise NotImplementedError(f"{type(self).__name__} sets row_window but does not define window_start(carry)")

  def default_params(self, gen_length: int, block_length: int):
    """The traced parameters `generate` passes as `View.params` when the caller gives no `sampler_params`
    (docs/design.md §1, item 1): a learned head's or a second network's weights (which may depend on the block
    length, as Learn2PD's filter does); None for most samplers."""
    del gen_length, block_length
    return None

  def report(self, carry) -> dict:
    """Per-row extra measurements from the final carry ({name: [B] array}), returned as `Generation.extras`
    (APD's AR-model forwards and FLOPs).  Called inside the compiled program."""
    del carry
    return {}

  @property
  def family(self) -> str:
    """Name of the sampler family (one line per family in frontier plots)."""
    return type(self).__name__

  def settings(self) -> dict:
    return {f.name: getattr(self, f.name) for f in dataclasses.fields(self)}


def drive_step(sampler: Sampler, view: View, block: BlockState, carry, key: jax.Array, verify_logits=None):
  """Run `sampler.step` on a View that holds logits only (a hand-built case, another framework's logits): the
  statistics the sampler asks for are computed from the logits by the reference reduction, with the engine's
  bans (the mask id) and the engine's noise for the same key, exactly as `generate` would hand them over."""
  from dlm.engine.calls import head_seed, resolve_request

  def complete(logits, request, tokens):
    request = resolve_request(request, block.end_ids[0])
    stats = stats_from_logits(logits, request, mask_id=block.mask_id, seed=head_seed(request, key), tokens=tokens)
    return View.from_stats(stats, view.hidden).replace(params=view.params)

  if view.stats is None:
    verify = None
    if verify_logits is not None:
      verify = complete(verify_logits, sampler.verify_request, block.tokens)
    view = complete(view.logits, sampler.head_request, block.tokens).replace(verify=verify)
  return sampler.step(view, block, carry, key)


def check_number(name: str, value, lo: float, hi: float | None = None, open_lo: bool = False) -> None:
  """Raise ValueError unless value is a real number (not a bool) in [lo, hi] (or (lo, hi] with open_lo)."""
  ok = isinstance(value, (int, float)) and not isinstance(value, bool)
  ok = ok and (value > lo if open_lo else value >= lo) and (hi is None or value <= hi)
  if not ok:
    bounds = f"{'>' if open_lo else '>='} {lo}" + ("" if hi is None else f" and <= {hi}")
    raise ValueError(f"{name}={value!r} must be a number {bounds}")


def check_positive_int(name: str, value) -> None:
  if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
    raise ValueError(f"{name}={value!r} must be a positive int")


class AdaptiveSampler(Sampler):
  """A sampler that commits >= 1 slot per step until the block is full (threshold-style rules)."""

  def max_nfe(self, gen_length, block_length):
    return gen_length  # >= 1 commit per step, so each block of Bk slots takes <= Bk steps


class FixedStepsSampler(Sampler):
  """A sampler with a fixed `steps` budget split evenly over the blocks (LLaDA, MDLM/MD4, Dream).

  Subclasses are dataclasses with a `steps: int` field.
  """

  steps: int

  def validate(self, gen_length, block_length):
    num_blocks = gen_length // block_length
    if self.steps < num_blocks or self.steps % num_blocks:
      raise ValueError(f"{self.steps=} must be a positive multiple of the number of blocks "
                       f"(gen_length/block_length = {gen_length}/{block_length} = {num_blocks})")

  def max_nfe(self, gen_length, block_length):
    return self.steps


def exponential_hires(key: jax.Array, shape) -> jax.Array:
  """Exp(1) draws E = -log(U) whose small values (the upper Gumbel tail, -log E) are not truncated.

  A float32 uniform has 23-24 random bits, so E = -log(U) is never smaller than ~2^-24 and the Gumbel sample
  g = -log(E) never exceeds ~16.6: rare tokens are under-sampled and the effective temperature drops
  (arXiv:2409.02908, the reason LLaDA draws its noise in float64).  We build W = 1 - U from two 32-bit words,
  W = (b1 + (b2 + 1) 2^-32) 2^-32, which resolves W (hence E = -log1p(-W) ≈ W) down to 2^-64, i.e. g up to
  ~44, with float32's full relative precision at every scale.  The lower tail (g < -2.8) stays truncated; it
  has probability ~1e-7 and only affects tokens that lose the argmax anyway.
  """
  b1, b2 = jax.random.bits(key, (2, *shape), jnp.uint32)
  return exponential_from_words(b1, b2)


def gumbel_argmax(key: jax.Array, logits: jax.Array, temperature: float) -> jax.Array:
  """An exact sample from softmax(logits / T) by Gumbel-max; T == 0 is greedy argmax.  [..., V] -> [...].

  The noise is the fused head's counter noise (kernels/noise.py) keyed by `seed_words(key)` with the flattened
  leading index as the row, so a sampler that reads full logits and calls this with `head_key(step_key)` draws
  exactly the sample the statistics view would have given it.
  """
  if temperature == 0:
    return jnp.argmax(logits, axis=-1).astype(jnp.int32)
  lead, vocab = logits.shape[:-1], logits.shape[-1]
  flat = logits.reshape(-1, vocab).astype(jnp.float32)
  rows = jnp.arange(flat.shape[0], dtype=jnp.int32)[:, None]
  tokens = jnp.arange(vocab, dtype=jnp.int32)[None]
  # argmax(logits - T log E) == argmax(exp(logits) / E^T), LLaDA's add_gumbel_noise form.
  noisy = gumbel_scores(flat, seed_words(key), rows, tokens, temperature)
  return jnp.argmax(noisy, axis=-1).astype(jnp.int32).reshape(lead)


def topk_per_row(score: jax.Array, k: jax.Array, eligible: jax.Array) -> jax.Array:
  """Select the k[b] highest-scoring eligible slots of each row.  score [B, N], k [B], eligible [B, N] -> bool.

  Rank by a stable descending sort (ties go to the lower index), so a row-specific k needs no Python loop.
  """
  score = jnp.where(eligible, score, -jnp.inf)
  order = jnp.argsort(-score, axis=-1, stable=True)
  rank = jnp.argsort(order, axis=-1, stable=True)
  return (rank < k[:, None]) & eligible


def probability_of(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """softmax(logits)[tokens] in float32.  [..., V], [...] -> [...]."""
  logp = jax.nn.log_softmax(logits.astype(jnp.float32), axis=-1)
  return jnp.exp(jnp.take_along_axis(logp, tokens[..., None], axis=-1)[..., 0])


def rank_per_row(score: jax.Array, eligible: jax.Array) -> jax.Array:
  """Rank of each slot when the eligible slots of a row are sorted by descending score (ties to the lower index;
  ineligible slots rank after every eligible one).  [B, N] -> [B, N] int32, 0 = best."""
  order = jnp.argsort(-jnp.where(eligible, score, -jnp.inf), axis=-1, stable=True)
  return jnp.argsort(order, axis=-1, stable=True).astype(jnp.int32)
