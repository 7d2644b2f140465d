"""Input transforms: what a forward program feeds the network besides the canvas's token ids.

Two samplers' capabilities change the network's input rather than the program that runs it:
  SoftInputs      (`soft_inputs`)    a still-masked answer slot with a belief is fed the mixture of input
                                     embeddings the sampler last returned (`Decision.soft`), instead of the mask
                                     embedding (docs/design.md §1, item 2).  Owns the loop state's belief slice:
                                     embed [B, G, D] and on [B, G].
  InputHorizon    (`input_horizon`)  answer slots at or beyond `sampler.horizon(carry)` [B] are hidden keys in the
                                     next forward (APD's masked-input limit).  Stateless.

`InputFeed` holds the transforms a sampler's capabilities select (chosen once, at trace time) and hands every
forward program one `FeedInputs(soft, horizon)`; after the sampler's decision it lets each transform update its
state.  A forward program reads `FeedInputs` and never asks the sampler what it declared.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp


@dataclasses.dataclass(frozen=True)
class FeedInputs:
  """What one forward feeds besides the token ids: soft = (embed [B, G, D], on [B, G]) or None; horizon [B] or
  None."""

  soft: tuple | None = None
  horizon: jax.Array | None = None


class SoftInputs:
  """Belief inputs: the loop-state slice (embed [B, G, D], on [B, G]) and its update from `Decision.soft`."""

  def init(self, net, batch: int, gen_length: int):
    cfg = net.cfg
    return (jnp.zeros((batch, gen_length, cfg.d_model), cfg.compute_dtype), jnp.zeros((batch, gen_length), bool))

  def read(self, state, carry, sampler, inputs: FeedInputs) -> FeedInputs:
    del carry, sampler
    return dataclasses.replace(inputs, soft=state)

  def update(self, net, state, decision, active, offset, width: int, name: str):
    """Write a step's beliefs [B, Bv, V] into the [B, G, D] soft inputs at answer slots [offset, offset + Bv),
    for active rows (checked at trace time: a soft_inputs sampler must return them)."""
    soft_embed, soft_on = state
    b = soft_on.shape[0]
    expected = (b, width, net.cfg.vocab_size)
    if decision.soft is None or decision.soft.shape != expected:
      got = None if decision.soft is None else decision.soft.shape
      raise ValueError(f"{name}.soft_inputs is True, so its step must return Decision.soft of shape "
                       f"[B, Bv, V]={expected}, got {got}")
    mixed = net.embed_mixture(decision.soft)  # [B, Bv, D]
    old_embed = jax.lax.dynamic_slice_in_dim(soft_embed, offset, width, axis=1)
    old_on = jax.lax.dynamic_slice_in_dim(soft_on, offset, width, axis=1)
    new_embed = jnp.where(active[:, None, None], mixed, old_embed)
    new_on = old_on | active[:, None]
    return (jax.lax.dynamic_update_slice_in_dim(soft_embed, new_embed, offset, axis=1),
            jax.lax.dynamic_update_slice_in_dim(soft_on, new_on, offset, axis=1))


class InputHorizon:
  """APD's masked-input limit: the sampler's `horizon(carry)` bounds the answer slots the next forward sees."""

  def init(self, net, batch: int, gen_length: int):
    del net, batch, gen_length
    return ()

  def read(self, state, carry, sampler, inputs: FeedInputs) -> FeedInputs:
    del state
    return dataclasses.replace(inputs, horizon=sampler.horizon(carry))

  def update(self, net, state, decision, active, offset, width: int, name: str):
    del net, decision, active, offset, width, name
    return state


TRANSFORMS = {"soft_inputs": SoftInputs, "input_horizon": InputHorizon}


class InputFeed:
  """The input transforms of one program, selected from the sampler's (checked) capabilities."""

  def __init__(self, capabilities: frozenset[str]):
    self.names = tuple(name for name in TRANSFORMS if name in capabilities)
    self.transforms = tuple(TRANSFORMS[name]() for name in self.names)

  def init(self, net, batch: int, gen_length: int) -> tuple:
    return tuple(t.init(net, batch, gen_length) for t in self.transforms)

  def read(self, state: tuple, carry, sampler) -> FeedInputs:
    inputs = FeedInputs()
    for transform, part in zip(self.transforms, state):
      inputs = transform.read(part, carry, sampler, inputs)
    return inputs

  def update(self, net, state: tuple, decision, active, offset, width: int, name: str) -> tuple:
    if decision.soft is not None and "soft_inputs" not in self.names:
      raise ValueError(f"{name}.step returned Decision.soft but {name}.soft_inputs is False; set it to True")
    return tuple(t.update(net, part, decision, active, offset, width, name)
                 for t, part in zip(self.transforms, state))
