"""Name -> sampler class, for the command line and experiment grids (the library itself passes objects)."""

from __future__ import annotations

from dlm.samplers.base import Sampler
from dlm.samplers.adjust import JointSampler
from dlm.samplers.ancestral import Ancestral
from dlm.samplers.apd import AdaptiveParallel
from dlm.samplers.dilated import Dilated
from dlm.samplers.dinfer import Credit, Hierarchy
from dlm.samplers.dream import DreamSampler
from dlm.samplers.draft_verify import DraftVerify
from dlm.samplers.fast_dllm_v2 import FastDLLMv2
from dlm.samplers.llada import LowConfidence, RandomRemasking
from dlm.samplers.llada2 import LLaDA2Sampler
from dlm.samplers.eb import EntropyBounded
from dlm.samplers.frechet import FrechetProfile
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

SAMPLERS: dict[str, type[Sampler]] = {
    "low_confidence": LowConfidence,
    "random": RandomRemasking,
    "ancestral": Ancestral,
    "threshold": Threshold,
    "factor": Factor,
    "dream": DreamSampler,
    "dilated": Dilated,
    "credit": Credit,
    "hierarchy": Hierarchy,
    "eb": EntropyBounded,
    "remdm": ReMDM,
    "wino": Wino,
    "prophet": Prophet,
    "klass": Klass,
    "lrd": LatentRefinement,
    "smoothing": IterationSmoothing,
    "apd": AdaptiveParallel,
    "learn2pd": Learn2PD,
    "adjust": JointSampler,
    "sdar": SDARSampler,
    "fast_dllm_v2": FastDLLMv2,
    "draft_verify": DraftVerify,
    "entropy_threshold": EntropyThreshold,
    "pc_sampler": PCSampler,
    "fastdllm_pp": FrechetProfile,
    "multi_block": MultiBlock,
    "llada2": LLaDA2Sampler,
}


def register(name: str, cls: type[Sampler]) -> None:
  SAMPLERS[name] = cls


def make_sampler(name: str, **settings) -> Sampler:
  """Build a sampler by registry name; unknown names and settings raise ValueError naming the valid ones."""
  if name not in SAMPLERS:
    raise ValueError(f"unknown sampler {name!r}; expected one of {sorted(SAMPLERS)}")
  cls = SAMPLERS[name]
  try:
    return cls(**settings)
  except TypeError as e:
    import dataclasses
    fields = sorted(f.name for f in dataclasses.fields(cls))
    raise ValueError(f"bad settings {settings} for sampler {name!r}: {e}; its settings are {fields}") from None
