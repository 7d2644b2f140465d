"""Learn2PD (Bao et al., arXiv 2509.25188; ims-kdks/Learning-to-Parallel-Decoding `generate_learn2parallel`,
`generate_l2p_eot`): a small learned filter decides which masked slots of the block to commit, from the block's
confidence vector alone; End-of-Text Prediction (EoTP) cuts the answer once the end is in sight.

Filter f: [Bk] confidences -> [Bk] logits, a two-layer MLP Linear(Bk, Bk) -> ReLU -> Linear(Bk, Bk) (the
reference's `LogisticRegression(32)`: 2,112 parameters at Bk = 32; its activation is not in the public code,
ReLU is our choice).  Its parameters are a pytree passed as `generate(sampler_params=...)` (`View.params`), so a
new filter never recompiles; `dlm.heads.filter` trains and loads it.

Step (per block, the reference at steps = gen_length, greedy; `llada/generate.py::generate_l2p_eot`):
  x0 = argmax, c = p(x0) at every slot of the block (committed ones included, as the filter was trained);
  commit the masked slots with sigmoid(f(c)) > tau, and always the most confident masked slot (LLaDA's
  one-token schedule at steps = gen_length: the guaranteed progress).
EoTP (`eotp=True`), after the commits, as the reference code runs it:
  1. if the filter accepted a masked slot whose token is EOS, the answer ends right after the first such slot
     (an EOS committed only as the forced top-1 does not count here);
  2. otherwise, if a slot that was masked before this step's commits predicts EOS (this step's commits included),
     anywhere in the answer, the answer ends after the one with the highest EOS probability, which stays masked
     unless it was just committed.
  The reference cuts the canvas (`x = x[:, :pos + 1]`), so later forwards see a shorter sequence; here the slots
  after the cut become EOS in the output at no cost (`Decision.truncate`, later blocks skipped) and are hidden
  from every query of later forwards (`input_horizon`, as APD's masked-input limit), the same computation.  When
  the cut falls inside the active block, the reference's filter would next read a vector shorter than Bk (its
  Linear layer refuses it); dlm feeds 0 for the cut slots.
`span="answer"` (the default, the reference's) shows the sampler the whole answer, so rule 2 searches every
masked answer slot; it needs cache 'none' (the reference runs full forwards).  `span="block"` searches the active
block only and runs under every cache policy; there the cut slots stay visible to later forwards as EOS inputs
(a cache keeps their keys), a documented difference from the reference.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from dlm.engine.state import BlockState, Decision, View
from dlm.kernels.head import HeadRequest
from dlm.samplers.base import Sampler, check_number
from dlm.samplers.threshold import top1_per_row


def filter_logits(params, conf: jax.Array) -> jax.Array:
  """The Learn2PD filter: conf [..., Bk] -> logits [..., Bk].  params: {w1 [Bk, Bk], b1 [Bk], w2, b2}."""
  hidden = jax.nn.relu(conf @ params["w1"] + params["b1"])
  return hidden @ params["w2"] + params["b2"]


def init_filter(key: jax.Array, block_length: int) -> dict:
  """Glorot-uniform weights, zero biases (torch.nn.Linear's init differs only in scale)."""
  k1, k2 = jax.random.split(key)
  init = jax.nn.initializers.glorot_uniform()
  zeros = jnp.zeros((block_length,), jnp.float32)
  return {"w1": init(k1, (block_length, block_length), jnp.float32), "b1": zeros,
          "w2": init(k2, (block_length, block_length), jnp.float32), "b2": zeros}


@dataclasses.dataclass(frozen=True)
class Learn2PD(Sampler):
  """The learned filter with EoTP (module docstring).  tau 0.96 is the reference's LLaDA setting (0.9 for Dream);
  `head` names a filter folder written by `dlm train-head filter` ("testbed": the filters shipped for the testbed
  model, one per block length, `dlm/assets/testbed_filter/block<Bk>`)."""

  tau: float = 0.96
  eotp: bool = True
  head: str = "testbed"
  span: str = "answer"

  def __post_init__(self):
    check_number("tau", self.tau, 0, 1)
    if not isinstance(self.eotp, bool):
      raise ValueError(f"eotp={self.eotp!r} must be True or False")
    if not isinstance(self.head, str):
      raise ValueError(f"head={self.head!r} must be 'testbed' or a filter folder path")
    if self.span not in ("answer", "block"):
      raise ValueError(f"span={self.span!r}; expected 'answer' (the reference: whole-answer EOS search, cache "
                       "'none') or 'block' (the active block, every cache policy)")

  @property
  def view_span(self):
    return self.span

  @property
  def input_horizon(self):
    return self.span == "answer" and self.eotp  # the cut hides later slots from later forwards

  def horizon(self, carry):
    return carry["horizon"]

  @property
  def family(self):
    return "learn2pd" + ("+eotp" if self.eotp else "")

  @property
  def head_request(self):
    return HeadRequest(top=1)

  def validate(self, gen_length, block_length):
    from dlm.heads.filter import load_filter
    load_filter(self.head, block_length=block_length)  # a filter for another block length is refused here

  def max_nfe(self, gen_length, block_length):
    return gen_length  # >= 1 commit per step

  def default_params(self, gen_length, block_length):
    from dlm.heads.filter import load_filter
    return load_filter(self.head, block_length=block_length)[0]

  def init(self, batch, block_length, vocab_size=0):
    # No cut yet: every answer slot visible (2**30, not int32's max: the engine adds the prompt length to it).
    return dict(aux_flops=jnp.zeros((batch,), jnp.float32), horizon=jnp.full((batch,), 2 ** 30, jnp.int32))

  def report(self, carry):
    return dict(aux_flops=carry["aux_flops"])  # the filter's FLOPs (2 * its parameters per step)

  def step(self, view: View, block: BlockState, carry, key):
    del key
    x0, conf = view.top1, view.top1_prob  # [B, Bv]: the block (span 'block') or the whole answer (span 'answer')
    bk = block.block_length
    # Answer index of the view's first slot, and the block's offset inside the view.
    v_offset = 0 if self.span == "answer" else block.block * bk
    b_offset = block.block * bk - v_offset
    masked, block_masked = block.masked, block.block_masked  # [B, Bv]
    n_params = sum(x.size for x in jax.tree.leaves(view.params))
    if view.params["w1"].shape[0] != bk:
      raise ValueError(f"the Learn2PD filter reads blocks of {view.params['w1'].shape[0]} slots, the engine runs "
                       f"blocks of {bk}")
    block_conf = jax.lax.dynamic_slice_in_dim(conf, b_offset, bk, axis=1)  # [B, Bk]
    # Slots past an earlier cut are not in the reference's (shorter) canvas; its filter cannot read a block cut
    # short (a Linear of Bk inputs), so dlm feeds 0 there: the cut slots are absent.
    in_canvas = block.block * bk + jnp.arange(bk)[None] < carry["horizon"][:, None]
    block_conf = jnp.where(in_canvas, block_conf, 0.0)
    block_accept = jax.nn.sigmoid(filter_logits(view.params, block_conf)) > self.tau
    accept = jax.lax.dynamic_update_slice_in_dim(jnp.zeros_like(masked), block_accept, b_offset, axis=1)
    accept = accept & block_masked  # [B, Bv]
    commit = accept | top1_per_row(conf, block_masked)
    carry = dict(aux_flops=carry["aux_flops"] + block.active * (2.0 * n_params), horizon=carry["horizon"])
    truncate = None
    if self.eotp:
      eos = block.end_ids[0]
      accepted_end = accept & (x0 == eos)  # rule 1: the filter's own EOS
      predicted = masked & (x0 == eos)  # rule 2: masked before this step's commits
      likeliest = jnp.argmax(jnp.where(predicted, conf, -1.0), axis=-1)
      big = jnp.iinfo(jnp.int32).max
      truncate = jnp.where(accepted_end.any(-1), v_offset + jnp.argmax(accepted_end, axis=-1),
                           jnp.where(predicted.any(-1), v_offset + likeliest, big)).astype(jnp.int32)
      horizon = jnp.where(block.active & (truncate < big), jnp.minimum(carry["horizon"], truncate + 1),
                          carry["horizon"])
      carry = dict(carry, horizon=horizon)
    return Decision(tokens=x0, commit=commit, truncate=truncate), carry


@dataclasses.dataclass(frozen=True)
class EgpReplay(Sampler):
  """Learn2PD's "extremely greedy parallel" oracle replay, the filter's training data (not a decoding method).

  `View.params` is the reference answer y [B, G] (one-token-per-step greedy decoding of the same prompts).  Each
  step, inside the block: x0 = argmax, c = p(x0) at every slot; label = [x0 == y]; commit every masked slot with
  label 1; when none can be committed the block would never change again, so it is filled from y.  The carry
  records (c, label, masked) per step of each row: `report` returns conf/label/masked [B, T, Bk] and steps [B].
  """

  max_steps: int = 256  # rows of the record per row (the answer's length bounds the steps)

  @property
  def head_request(self):
    return HeadRequest(top=1)

  def max_nfe(self, gen_length, block_length):
    return gen_length

  def validate(self, gen_length, block_length):
    if self.max_steps < gen_length:
      raise ValueError(f"max_steps={self.max_steps} must be >= gen_length={gen_length}")

  def init(self, batch, block_length, vocab_size=0):
    t = self.max_steps
    return dict(conf=jnp.zeros((batch, t, block_length), jnp.float32),
                label=jnp.zeros((batch, t, block_length), bool), masked=jnp.zeros((batch, t, block_length), bool),
                n=jnp.zeros((batch,), jnp.int32))

  def report(self, carry):
    return dict(conf=carry["conf"], label=carry["label"], masked=carry["masked"], steps=carry["n"])

  def step(self, view: View, block: BlockState, carry, key):
    del key
    x0, conf = view.top1, view.top1_prob  # [B, Bk]
    bk = conf.shape[-1]
    y = jax.lax.dynamic_slice_in_dim(view.params, block.block * bk, bk, axis=1)  # [B, Bk]
    label = x0 == y
    masked = block.masked
    hit = masked & label
    stuck = ~hit.any(-1, keepdims=True)
    commit = jnp.where(stuck, masked, hit)
    tokens = jnp.where(stuck, y, x0)
    rows = jnp.arange(conf.shape[0])
    at = jnp.minimum(carry["n"], self.max_steps - 1)
    active = block.active

    def put(buffer, value):
      return buffer.at[rows, at].set(jnp.where(active[:, None], value, buffer[rows, at]))

    carry = dict(conf=put(carry["conf"], conf), label=put(carry["label"], label), masked=put(carry["masked"], masked),
                 n=carry["n"] + active)
    return Decision(tokens=tokens, commit=commit), carry
