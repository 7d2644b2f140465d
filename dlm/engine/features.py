"""The base network's canvas features, handed to samplers that run a learned layer on top of it (ADJUST).

A sampler with the static attribute `canvas_features = True` gets `View.base`, a `BaseFeatures` pytree built
from the step's full forward (cache 'none'): the final hidden states of the whole canvas, aligned to slots, and
the network's own input-embedding table and vocabulary head as traced arrays (references to the parameters the
program already holds, never copies).  With them a sampler can embed a canvas, run its own layer and read the
fused head's statistics of its layer's outputs exactly as the engine reads the base network's
(docs/design.md §1, "Canvas features").
"""

from __future__ import annotations

import flax.struct
import jax
import jax.numpy as jnp

from dlm.kernels.head import HeadBlocks, HeadRequest, HeadStats, head_statistics


@flax.struct.dataclass
class BaseFeatures:
  """hidden: [B, L, D] final hidden states (after the final norm), slot-aligned: row i feeds slot i's logits
    (Dream's shift applied: slot i reads position i - 1, slot 0 its own), for prompt and answer slots alike.
  tokens: [B, L] the canvas this forward saw; positions, valid: [B, L] its rotary positions and key mask.
  embedding: [V, D] the input-embedding table; head_weight: the vocabulary head ([D, V], or [V, D] when tied,
    see `v_axis`).
  """

  hidden: jax.Array
  tokens: jax.Array
  positions: jax.Array
  valid: jax.Array
  embedding: jax.Array
  head_weight: jax.Array
  v_axis: int = flax.struct.field(pytree_node=False, default=1)
  dtype: str = flax.struct.field(pytree_node=False, default="float32")  # the network's compute dtype
  mask_id: int = flax.struct.field(pytree_node=False, default=0)
  eos_id: int = flax.struct.field(pytree_node=False, default=0)
  head_impl: str = flax.struct.field(pytree_node=False, default="chunked")
  head_blocks: HeadBlocks | None = flax.struct.field(pytree_node=False, default=None)

  def embed(self, tokens: jax.Array) -> jax.Array:
    """[..., W] ids -> [..., W, D], the network's own lookup (`Transformer.embed_tokens`)."""
    return jnp.take(self.embedding.astype(self.dtype), tokens, axis=0)

  def head(self, hidden: jax.Array, request: HeadRequest, *, seed=None, tokens=None) -> HeadStats:
    """The engine's fused head on hidden [..., D] -> HeadStats [...] (the mask id banned, as for the base view).
    seed: `dlm.kernels.noise.seed_words(key)` when the request samples at T > 0."""
    from dlm.engine.calls import resolve_request
    return head_statistics(hidden, self.head_weight, resolve_request(request, self.eos_id), mask_id=self.mask_id,
                           seed=seed, tokens=tokens, v_axis=self.v_axis, dtype=jnp.dtype(self.dtype),
                           impl=self.head_impl, blocks=self.head_blocks)


def canvas_features(net, hidden, tokens, positions, valid, *, head_impl: str, head_blocks) -> BaseFeatures:
  """BaseFeatures of one full forward: hidden [B, L, D] straight from the network (not yet slot-aligned)."""
  from dlm.engine.calls import block_hidden_of
  weight, v_axis = net.head_weight()
  aligned = block_hidden_of(net, hidden, 0, hidden.shape[1])  # [B, L, D], slot i <- position i (- 1 for Dream)
  return BaseFeatures(hidden=aligned, tokens=tokens, positions=positions, valid=valid,
                      embedding=net.embed.embedding[...], head_weight=weight, v_axis=v_axis,
                      dtype=jnp.dtype(net.cfg.compute_dtype).name, mask_id=net.cfg.mask_id, eos_id=net.cfg.eos_id,
                      head_impl=head_impl, head_blocks=head_blocks)
