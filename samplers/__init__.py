"""Samplers: frozen, hashable dataclasses behind the `Sampler` protocol (DESIGN.md §2)."""

from dlm.samplers.adjust import JointSampler
from dlm.samplers.ancestral import Ancestral
from dlm.samplers.apd import AdaptiveParallel
from dlm.samplers.base import Sampler, exponential_hires, gumbel_argmax, probability_of, topk_per_row
from dlm.samplers.dilated import Dilated
from dlm.samplers.dinfer import Credit, Hierarchy
from dlm.samplers.dream import DreamSampler
from dlm.samplers.draft_verify import DraftVerify
from dlm.samplers.fast_dllm_v2 import FastDLLMv2
from dlm.samplers.frechet import FrechetProfile
from dlm.samplers.llada import LowConfidence, RandomRemasking
from dlm.samplers.llada2 import LLaDA2Sampler
from dlm.samplers.registry import SAMPLERS, make_sampler
from dlm.samplers.eb import EntropyBounded
from dlm.samplers.entropy_threshold import EntropyThreshold
from dlm.samplers.klass import Klass
from dlm.samplers.learn2pd import Learn2PD
from dlm.samplers.lrd import LatentRefinement
from dlm.samplers.multi_block import MultiBlock
from dlm.samplers.pc_sampler import PCSampler
from dlm.samplers.prophet import Prophet
from dlm.samplers.remdm import ReMDM
from dlm.samplers.sdar import SDARSampler
from dlm.samplers.smoothing import IterationSmoothing
from dlm.samplers.threshold import Factor, Threshold
from dlm.samplers.wino import Wino

__all__ = ["AdaptiveParallel", "Ancestral", "Credit", "Dilated", "DraftVerify", "DreamSampler", "EntropyBounded", "EntropyThreshold", "Factor", "FastDLLMv2", "FrechetProfile", "Hierarchy",
           "IterationSmoothing", "JointSampler", "Klass", "LLaDA2Sampler", "LatentRefinement", "Learn2PD", "LowConfidence", "MultiBlock", "PCSampler", "Prophet", "RandomRemasking", "ReMDM", "SAMPLERS", "SDARSampler", "Sampler", "Threshold", "Wino",
           "exponential_hires", "gumbel_argmax", "make_sampler", "probability_of", "topk_per_row"]
