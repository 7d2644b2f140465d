"""APD, adaptive parallel decoding (Israel, Van den Broeck, Grover, arXiv 2506.00413; danielmisrael/apd,
`dream/generation_utils.py` `apd_sample`): left-to-right decoding in which the dLLM drafts the next M slots in
parallel from its marginals and a small autoregressive model, sharing the tokenizer, decides how many to keep.

One step, for each row, with t its first masked answer slot (../shared/research/landscape.md §2):
  1. the dLLM forward sees the canvas up to slot t + M only (the "masked-input limit"; `input_horizon`);
  2. draft d_j for j in [t, t + M) from the dLLM's per-slot logits at temperature T with top-p (one noise draw);
  3. the AR model scores the draft in one teacher-forced pass (its own KV cache, carried in the loop):
     its logits at slot j read prompt + committed slots + d_t..d_{j-1};
  4. target y_j = argmax of R * dLLM logits + (1 - R) * AR logits (the product of experts p_D^R p_AR^(1-R));
  5. accept the longest prefix with d_j == y_j (the first slot always), commit it; once an accepted token is the
     end-of-text token the rest of the answer becomes EOS and the row is done (the reference stops there).
     `stop` says which tokens end it: "eos" (default, the reference: `eos_token_id` only, so it decodes on after
     Dream's `<|im_end|>` or LLaDA's `<|eot_id|>`) or "any" (every end id of the model, as dlm's other samplers).
R = 1 keeps only the dLLM (every draft slot agrees: M tokens per forward); a perfect AR draft is accepted whole.

Reference code vs paper (`rule`):
  "reference" (default): as `apd_sample` runs: the draft is `sample_with_gumbel(logits, T, top_p)`, i.e.
    argmax(z - T log E) with z = top-p(logits / T) and E ~ Exp(1) (LLaDA's noise on already scaled logits, so the
    draft's effective temperature is T^2); the target is the *noise-free* argmax of the raw mixed logits
    (`sample_with_gumbel` is called with its default temperature 0, which ignores the shared noise).
  "paper": one shared Gumbel draw g: d = argmax(z + g), y = argmax(mix / T + g) (exact coupling).
At T = 0 both are greedy and agree.

The dLLM cache (W, the reference's `kv_window`).  W = None (default, as the reference's generation config)
recomputes the dLLM canvas every step.  With W the first forward fills a KV cache and each later one recomputes
only canvas slots from t - W - a + 1 (a: the slots accepted last step) through the horizon t + M, reading the
older keys from the cache, stale since they were computed (the reference crops its cache there the same way).
The window has a static width W + 2M - 1, so it starts at the reference's left edge and may run past the horizon
(those queries are hidden from every key and cost compute, counted in `tokens_computed`).  Blocks do not constrain APD (the reference has none): it decodes left to
right across them, and the engine's block index catches up with it at no NFE.  

Cost.  The dLLM's forwards are the NFE as for every sampler; the AR model's are counted apart in
`Generation.extras`: `ar_forwards` and `ar_tokens` per row, and `aux_flops` = 2 * (AR parameters) * ar_tokens,
which `dlm compare` adds to the dLLM's 2 * N * L per forward as a FLOPs-weighted NFE.
The AR model: `ar_model` names a folder written by `dlm.io.save_model` ("bundled": `dlm/assets/ar`, trained with
`dlm train --config configs/ar.yaml`); `generate(..., sampler_params=state)` swaps in other weights of the same
architecture without recompiling.  Its KV cache has the AR model's max_len slots; slots past the canvas are
invalid keys.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from pathlib import Path

import jax
import jax.numpy as jnp
from flax import nnx

from dlm.engine.cache import empty_cache, row_window_forward, window_forward
from dlm.engine.state import BlockState, Decision, View
from dlm.kernels.head import LOGITS
from dlm.model.transformer import positions_from_valid
from dlm.samplers.base import Sampler, check_number, check_positive_int, exponential_hires
from dlm.samplers.dream import filter_logits

RULES = ("reference", "paper")
STOPS = ("eos", "any")


def ar_folder(name: str) -> Path:
  from dlm.heads.folder import asset_or_path
  return asset_or_path(name, "bundled", "ar")


@functools.lru_cache(maxsize=4)
def load_ar(name: str):
  """-> (graphdef, state, config) of the AR model in folder `name` ("bundled": the shipped one), loaded once."""
  from dlm.io.params import load_model
  folder = ar_folder(name)
  if not (folder / "config.json").is_file():
    raise FileNotFoundError(f"ar_model={name!r}: no AR model at {folder}; train one with `dlm train --config "
                            "configs/ar.yaml --out runs/ar` and pass ar_model='runs/ar/model'")
  model = load_model(folder)
  if not model.cfg.causal:
    raise ValueError(f"ar_model={name!r} is not a causal (autoregressive) network; train it with --causal")
  graphdef, state = nnx.split(model)
  return graphdef, state, model.cfg


@dataclasses.dataclass(frozen=True)
class AdaptiveParallel(Sampler):
  """APD (module docstring).  Defaults: the reference demo's R = 0.7, M = 100, top_p 0.95, and greedy decoding
  (the demo samples at T = 0.2)."""

  R: float = 0.7  # mixture weight of the dLLM (apd_mixture_weight); 1 = the dLLM alone
  M: int = 100  # max_lookahead: draft length and the dLLM's masked-input limit
  W: int | None = None  # kv_window: recompute the dLLM's KV for the last W committed slots only (None: all)
  temperature: float = 0.0
  top_p: float = 0.95
  rule: str = "reference"
  ar_model: str = "bundled"
  stop: str = "eos"  # which accepted tokens end the answer: "eos" (the reference) or "any" end id

  view_span = "answer"
  input_horizon = True

  def __post_init__(self):
    check_number("R", self.R, 0, 1)
    check_positive_int("M", self.M)
    if self.W is not None:
      check_positive_int("W", self.W)
    check_number("temperature", self.temperature, 0)
    check_number("top_p", self.top_p, 0, 1, open_lo=True)
    if self.rule not in RULES:
      raise ValueError(f"rule={self.rule!r}; expected one of {RULES}")
    if self.stop not in STOPS:
      raise ValueError(f"stop={self.stop!r}; expected one of {STOPS}")
    if not isinstance(self.ar_model, str):
      raise ValueError(f"ar_model={self.ar_model!r} must be 'bundled' or a model folder path")

  @property
  def family(self):
    return "apd"

  @property
  def head_request(self):
    return LOGITS

  @property
  def row_window(self):
    # The window [t - W - a + 1, t + M) of the reference is at most W + 2M - 1 wide (a <= M accepted last step).
    return 0 if self.W is None else self.W + 2 * self.M - 1

  def window_start(self, carry):
    return carry["left"]

  def max_nfe(self, gen_length, block_length):
    return gen_length  # >= 1 accepted slot per step

  def default_params(self, gen_length, block_length):
    return load_ar(self.ar_model)[1]

  def init(self, batch, block_length, vocab_size=0):
    _, _, cfg = load_ar(self.ar_model)
    return dict(kv=empty_cache(cfg, batch, cfg.max_len), horizon=jnp.full((batch,), self.M, jnp.int32),
                left=jnp.zeros((batch,), jnp.int32),
                ar_forwards=jnp.zeros((batch,), jnp.int32), ar_tokens=jnp.zeros((batch,), jnp.int32),
                aux_flops=jnp.zeros((batch,), jnp.float32))

  def horizon(self, carry):
    return carry["horizon"]

  def report(self, carry):
    return {k: carry[k] for k in ("ar_forwards", "ar_tokens", "aux_flops")}

  def step(self, view: View, block: BlockState, carry, key):
    graphdef, _, cfg = load_ar(self.ar_model)
    ar = nnx.merge(graphdef, view.params)
    logits = view.logits.astype(jnp.float32)  # [B, G, V], mask id -inf
    b, g, vocab = logits.shape
    if cfg.vocab_size != vocab:
      raise ValueError(f"ar_model={self.ar_model!r} has a vocabulary of {cfg.vocab_size}, the dLLM {vocab}: APD "
                       "needs models that share the tokenizer")
    p = block.prompt.shape[1]
    length = p + g
    if length > cfg.max_len:
      raise ValueError(f"prompt {p} + gen_length {g} = {length} exceeds the AR model's max_len={cfg.max_len}")
    m = min(self.M, g)  # static draft width
    masked = block.masked  # [B, G]
    t = jnp.argmax(masked, axis=-1).astype(jnp.int32)  # first masked slot (left to right: all after it masked)
    idx = t[:, None] + jnp.arange(m)[None]  # [B, m] draft slots
    in_range = idx < g
    idx_c = jnp.minimum(idx, g - 1)

    # 2. the draft (one noise draw for the whole view; `head_key` is the first half, ours the second)
    _, k_noise = jax.random.split(key)
    # APD's generation_utils is Dream's: temperature, then Dream's top-p rule (samplers/dream.py).
    z = filter_logits(logits, self.temperature, self.top_p, None)
    if self.temperature > 0:
      log_e = jnp.log(exponential_hires(k_noise, logits.shape))  # [B, G, V], log E, E ~ Exp(1)
      noisy = z - self.temperature * log_e if self.rule == "reference" else z - log_e
      draft = jnp.argmax(noisy, axis=-1).astype(jnp.int32)
    else:
      draft = jnp.argmax(z, axis=-1).astype(jnp.int32)  # [B, G]
    draft_w = jnp.take_along_axis(draft, idx_c, axis=1)  # [B, m]

    # 3. the AR model on prompt + committed + draft, padded to its cache length (pads are invalid keys)
    pad = cfg.max_len - length
    answer = jnp.where(masked, draft, block.tokens)  # draft beyond the window is never read (causal)
    rows = jnp.concatenate([block.prompt, answer, jnp.zeros((b, pad), jnp.int32)], axis=1)  # [B, Lc]
    valid = jnp.concatenate([block.prompt_valid, jnp.ones((b, g), bool), jnp.zeros((b, pad), bool)], axis=1)
    positions = positions_from_valid(valid)

    def prefill(kv):  # the first step: every position of the canvas, batched
      hidden, kv = window_forward(ar, rows, positions, valid, kv, 0, length)  # [B, L, D]
      at = p + idx_c - 1  # the output at position P + j - 1 predicts slot j
      return jnp.take_along_axis(hidden, at[..., None], axis=1), kv

    def extend(kv):  # later steps: m positions from the last committed one, per row against its own cache
      start = jnp.minimum(p + t - 1, length - m)  # [B]
      hidden, kv = row_window_forward(ar, rows, positions, valid, kv, start, m)  # [B, m, D]
      at = p + idx_c - 1 - start[:, None]  # [B, m], inside the window
      return jnp.take_along_axis(hidden, at[..., None], axis=1), kv

    first = (block.step == 0) & (block.block == 0)
    hidden_w, kv = jax.lax.cond(first, prefill, extend, carry["kv"])
    computed = jnp.where(first, length, m)  # AR positions this step recomputed
    ar_logits = ar.logits(hidden_w, shift=False)  # [B, m, V]
    ar_logits = jnp.where(jnp.arange(vocab) == block.mask_id, -jnp.inf, ar_logits)

    # 4-5. the product of experts and the longest agreeing prefix
    d_logits = jnp.take_along_axis(logits, idx_c[..., None], axis=1)  # [B, m, V]
    mix = _weighted(self.R, d_logits) + _weighted(1.0 - self.R, ar_logits)
    if self.rule == "paper" and self.temperature > 0:
      log_e_w = jnp.take_along_axis(log_e, idx_c[..., None], axis=1)
      target = jnp.argmax(mix / self.temperature - log_e_w, axis=-1)
    else:
      target = jnp.argmax(mix, axis=-1)
    agree = ((draft_w == target) | (jnp.arange(m) == 0)[None]) & in_range
    accepted = jnp.cumprod(agree, axis=-1).sum(-1).astype(jnp.int32)  # [B], >= 1
    slot = jnp.arange(g)[None]
    commit = masked & (slot >= t[:, None]) & (slot < (t + accepted)[:, None])
    stops = block.end_ids[:1] if self.stop == "eos" else block.end_ids  # end_ids[0] is the eos id
    ends = commit & jnp.isin(draft, jnp.asarray(stops))
    first_end = jnp.where(ends.any(-1), jnp.argmax(ends, -1), g)  # [B]
    after = slot > first_end[:, None]
    tokens = jnp.where(after, block.end_ids[0], draft)
    commit = (commit & ~after) | (masked & after)

    active = block.active
    n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(view.params))
    new_t = t + accepted
    # The reference's next dLLM window starts at canvas index t' - W - a + 1 (the newly accepted slots and W
    # before them); with W None the engine ignores it.
    left = jnp.maximum(p + new_t - (self.W or 0) - accepted + 1, 0)
    carry = dict(kv=kv, horizon=jnp.where(active, new_t + self.M, carry["horizon"]).astype(jnp.int32),
                 left=jnp.where(active, left, carry["left"]).astype(jnp.int32),
                 ar_forwards=carry["ar_forwards"] + active,
                 ar_tokens=carry["ar_tokens"] + active * computed,
                 aux_flops=carry["aux_flops"] + active * (2.0 * n_params * computed))
    return Decision(tokens=tokens, commit=commit), carry


def _weighted(w: float, logits: jax.Array) -> jax.Array:
  """w * logits with 0 * (-inf) = 0 (a weight of 0 removes a model, including its banned columns)."""
  if w == 0:
    return jnp.zeros_like(logits)
  return w * logits
