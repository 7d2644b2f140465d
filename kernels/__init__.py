"""Kernels, each beside its pure-jnp reference: the fused decode head (head.py, head_pallas.py), the counter-based
Gumbel noise every head implementation shares (noise.py) and the attention backends (attention.py)."""

from dlm.kernels.head import (IMPLEMENTATIONS, LOGITS, HeadBlocks, HeadRequest, HeadStats, head_chunked,
                              head_reference, head_statistics)
from dlm.kernels.noise import counter_exponential, seed_words, threefry2x32

__all__ = ["IMPLEMENTATIONS", "LOGITS", "HeadBlocks", "HeadRequest", "HeadStats", "counter_exponential",
           "head_chunked", "head_reference", "head_statistics", "seed_words", "threefry2x32"]
