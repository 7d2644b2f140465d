"""ADJUST, approximate joint sampling with a learned layer (Bansal & Sanghavi, arXiv 2509.22738;
academicanonymous2701/joint_sampling_diffusion_models, `jointsampler.py` `_sample`, decoding_strategy 'fixed'):
one full forward of the network, then k cheap passes of a one-layer head (dlm/heads/joint.py), each committing
one slot and feeding it back, so the k tokens of a step approximate k sequential one-token steps.

One step, for each row (k = that step's count, from the schedule):
  1. the network's forward gives the slot-aligned hidden states h of the canvas and every answer slot's
     distribution (`View.base`, the sampler's `canvas_features`);
  2. repeat k times: among the block's masked slots take the one of lowest entropy (the reference's neg-entropy
     confidence, of the distribution after temperature and top-p), commit a token sampled from it; then, unless
     `use_marginals` or it was the step's last commit, run the layer on the updated canvas:
     h <- layer(E[x], h), and every slot's distribution becomes head(h).
`use_marginals=True` never runs the layer: k picks from the same marginals, i.e. plain entropy-ordered parallel
decoding, the paper's baseline, from the same code path.  k = 1 (tokens_per_step=1, schedule='even') is the
network's own joint: one token per full forward in entropy order, the trajectories the layer trains on.

Schedule.  The reference runs steps = ceil(G / (S + 1)) (S + 1 = `tokens_per_step`, 4 in the paper's headline)
with Dream's count n = int(masked * (1 - s/t)) on linspace(1, eps, steps + 1) and everything left at the last
step (`schedule='dream'`, the default; per block here, as `dream` does).  `schedule='even'` commits exactly
`tokens_per_step` per step (the remainder at the block's last step).

Reference code vs dlm:
  - the reference runs the layer after every commit, the step's last one included, whose output the next full
    forward overwrites; dlm skips that pass (the same tokens; its cost is not charged).
  - the reference uses one count for the whole batch (the batch mean of masked slots, Dream's rule); dlm counts
    per row (every row has the same count unless rows end early, so the results agree).
  - the token at the chosen slot is drawn from the same distribution as in the reference (which re-draws it
    after choosing the slot; a fresh draw from the same distribution, so the law is the same).
  - the mask id is banned in the layer's distributions too (the engine's rule; the reference bans it in the
    network's logits only; a trained head gives it ~0 mass).
  - `ban_eos` is the reference's `mask_eos` (it bans Dream's pad = end-of-text and BOS columns; dlm bans the
    model's end-of-text id), and applies to the layer's outputs as well; off by default here because the testbed
    tasks end with end-of-text.
Cost: the network's forwards are the NFE; the layer's passes are counted in `Generation.extras`:
`layer_passes` and `aux_flops` = passes * (2 * layer parameters * L + 2 * D * V * G), which `dlm compare` adds to
the NFE as a FLOPs-weighted NFE (`nfe_flops_mean`).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp

from dlm.engine.calls import head_key
from dlm.engine.state import BlockState, Decision, View
from dlm.kernels.head import LOGITS, HeadRequest
from dlm.kernels.noise import seed_words
from dlm.samplers.base import Sampler, check_number, check_positive_int, gumbel_argmax
from dlm.samplers.dream import filter_logits
from dlm.schedules import dream_count

SCHEDULES = ("dream", "even")


@dataclasses.dataclass(frozen=True)
class JointSampler(Sampler):
  """ADJUST (module docstring).  Defaults: the reference's configuration (S = 3, so 4 tokens per full forward;
  T = 1, top_p 1, entropy order).  `head` names a layer folder written by `dlm train-head joint` ("testbed": the
  layer shipped for the testbed model, `dlm/assets/testbed_joint`)."""

  tokens_per_step: int = 4
  schedule: str = "dream"
  temperature: float = 1.0
  top_p: float | None = None
  use_marginals: bool = False
  ban_eos: bool = False
  eps: float = 1e-3
  head: str = "testbed"

  view_span = "answer"

  def __post_init__(self):
    check_positive_int("tokens_per_step", self.tokens_per_step)
    if self.schedule not in SCHEDULES:
      raise ValueError(f"schedule={self.schedule!r}; expected one of {SCHEDULES}")
    check_number("temperature", self.temperature, 0)
    if self.top_p is not None:
      check_number("top_p", self.top_p, 0, 1, open_lo=True)
    for name in ("use_marginals", "ban_eos"):
      if not isinstance(getattr(self, name), bool):
        raise ValueError(f"{name}={getattr(self, name)!r} must be True or False")
    if not 0 < self.eps < 1:
      raise ValueError(f"eps={self.eps!r} must lie in (0, 1)")
    if not isinstance(self.head, str):
      raise ValueError(f"head={self.head!r} must be 'testbed' or a layer folder path")

  @property
  def uses_layer(self) -> bool:
    return not self.use_marginals and self.tokens_per_step > 1

  @property
  def canvas_features(self):
    return self.uses_layer

  @property
  def family(self):
    return "adjust_marginals" if self.use_marginals else "adjust"

  @property
  def _statistics_only(self) -> bool:
    # The fused head's entropy is of the clean softmax: it is the reference's confidence when the distribution
    # is not reshaped (T in {0, 1}, no top-p).  Otherwise the sampler reads full logits.
    return (self.top_p is None or self.top_p >= 1) and self.temperature in (0, 1)

  @property
  def head_request(self) -> HeadRequest:
    """The network's view and every layer pass read the same statistics (or full logits, see above)."""
    if self._statistics_only:
      return HeadRequest(sample=True, temperature=float(self.temperature), entropy=True, ban_eos=self.ban_eos)
    return dataclasses.replace(LOGITS, ban_eos=self.ban_eos)

  def steps_per_block(self, block_length: int) -> int:
    return math.ceil(block_length / self.tokens_per_step)

  def max_nfe(self, gen_length, block_length):
    return (gen_length // block_length) * self.steps_per_block(block_length)

  def validate(self, gen_length, block_length):
    if self.uses_layer:
      from dlm.heads.joint import load_joint
      load_joint(self.head)  # a missing or wrong-kind head fails before compiling

  def default_params(self, gen_length, block_length):
    if not self.uses_layer:
      return None
    from dlm.heads.joint import load_joint
    return load_joint(self.head)[1]

  def init(self, batch, block_length, vocab_size=0):
    return dict(layer_passes=jnp.zeros((batch,), jnp.int32), aux_flops=jnp.zeros((batch,), jnp.float32))

  def report(self, carry):
    return dict(carry)

  def _scores(self, stats, logits, key):
    """-> (entropy [B, G], token [B, G]) of the distribution the reference ranks and samples from."""
    if self._statistics_only:
      return stats.entropy, stats.sample
    z = filter_logits(logits, self.temperature, self.top_p, None)  # [B, G, V] tempered, top-p
    logp = jax.nn.log_softmax(z, axis=-1)
    entropy = -jnp.sum(jnp.where(jnp.isfinite(logp), jnp.exp(logp) * logp, 0.0), axis=-1)
    return entropy, gumbel_argmax(head_key(key), z, 1.0 if self.temperature > 0 else 0.0)

  def step(self, view: View, block: BlockState, carry, key):
    spb = self.steps_per_block(block.block_length)
    masked = block.block_masked  # [B, G] candidates: the active block's masked slots
    left = masked.sum(-1).astype(jnp.int32)  # [B]
    if self.schedule == "dream":
      n = dream_count(left.astype(jnp.float32), block.step, spb, self.eps)
    else:
      n = jnp.full_like(left, self.tokens_per_step)
    n = jnp.where(block.step >= spb - 1, left, jnp.minimum(n, left))
    n = jnp.where(block.active, n, 0).astype(jnp.int32)  # [B] commits this step
    entropy, token = self._scores(view.stats, view.logits, key)
    rounds = n.max()
    g = masked.shape[1]
    slot = jnp.arange(g)[None]

    if self.uses_layer:
      from dlm.heads.joint import apply_layer, check_layer_fits, load_joint
      graphdef, _, info = load_joint(self.head)
      base = view.base
      check_layer_fits(info, self.head, base.hidden.shape[-1], base.embedding.shape[0])
      p = base.tokens.shape[1] - g
      n_params = sum(math.prod(x.shape) for x in jax.tree.leaves(view.params))
      flops = 2.0 * n_params * base.tokens.shape[1] + 2.0 * base.hidden.shape[-1] * base.embedding.shape[0] * g
      request = self.head_request
      _, k_layer = jax.random.split(key)

      def layer_pass(j, canvas, hidden):
        hidden = apply_layer(graphdef, view.params, base.embed(canvas), hidden, base.positions, base.valid)
        pass_key = jax.random.fold_in(k_layer, j)
        stats = base.head(hidden[:, p:], request,
                          seed=seed_words(head_key(pass_key)) if request.sample and request.temperature > 0
                          else None)
        ent, tok = self._scores(stats, stats.logits, pass_key)
        return hidden, ent, tok
      canvas0, hidden0 = base.tokens, base.hidden
    else:
      p, canvas0, hidden0 = 0, jnp.zeros((), jnp.int32), jnp.zeros((), jnp.float32)

    def cond(state):
      return state["j"] < rounds

    def body(state):
      j = state["j"]
      eligible = masked & ~state["commit"] & (j < n)[:, None]  # [B, G]
      pick = jnp.argmin(jnp.where(eligible, state["entropy"], jnp.inf), axis=-1)  # lowest entropy, lower index
      chosen = (slot == pick[:, None]) & eligible  # [B, G], at most one per row
      state = dict(state, commit=state["commit"] | chosen, tokens=jnp.where(chosen, state["token"], state["tokens"]),
                   j=j + 1)
      if self.uses_layer:
        more = (j + 1) < n  # [B] rows that commit again this step
        canvas = state["canvas"].at[:, p:].set(jnp.where(chosen, state["token"], state["canvas"][:, p:]))

        def run(args):
          return layer_pass(j, *args)
        hidden, ent, tok = jax.lax.cond(more.any(), run, lambda args: (args[1], state["entropy"], state["token"]),
                                        (canvas, state["hidden"]))
        state = dict(state, canvas=canvas, hidden=hidden, entropy=ent, token=tok,
                     passes=state["passes"] + more)
      return state

    init = dict(j=jnp.int32(0), commit=jnp.zeros(masked.shape, bool), tokens=block.tokens, entropy=entropy,
                token=token, canvas=canvas0, hidden=hidden0, passes=jnp.zeros(n.shape, jnp.int32))
    final = jax.lax.while_loop(cond, body, init)
    carry = dict(carry)
    if self.uses_layer:
      carry["layer_passes"] = carry["layer_passes"] + final["passes"]
      carry["aux_flops"] = carry["aux_flops"] + final["passes"] * flops
    return Decision(tokens=final["tokens"], commit=final["commit"]), carry
