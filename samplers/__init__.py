"""Samplers: frozen, hashable dataclasses behind the `Sampler` protocol (DESIGN.md §2)."""

from dlm.samplers.ancestral import Ancestral
from dlm.samplers.base import Sampler, exponential_hires, gumbel_argmax, probability_of, topk_per_row
from dlm.samplers.dilated import Dilated
from dlm.samplers.dinfer import Credit, Hierarchy
from dlm.samplers.dream import DreamSampler
from dlm.samplers.llada import LowConfidence, RandomRemasking
from dlm.samplers.registry import SAMPLERS, make_sampler
from dlm.samplers.threshold import Factor, Threshold

__all__ = ["Ancestral", "Credit", "Dilated", "DreamSampler", "Factor", "Hierarchy", "LowConfidence",
           "RandomRemasking", "SAMPLERS", "Sampler", "Threshold", "exponential_hires", "gumbel_argmax",
           "make_sampler", "probability_of", "topk_per_row"]
