"""Samplers: frozen, hashable dataclasses behind the `Sampler` protocol (DESIGN.md §2)."""

from dlm.samplers.ancestral import Ancestral
from dlm.samplers.base import Sampler, exponential_hires, gumbel_argmax, probability_of, topk_per_row
from dlm.samplers.llada import LowConfidence, RandomRemasking
from dlm.samplers.registry import SAMPLERS, make_sampler

__all__ = ["Ancestral", "LowConfidence", "RandomRemasking", "SAMPLERS", "Sampler", "exponential_hires", "gumbel_argmax",
           "make_sampler", "probability_of", "topk_per_row"]
