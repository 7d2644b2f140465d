"""The generation engine (DESIGN.md §2): canvas, blocks, while-loop, caches, NFE accounting."""

from dlm.engine.cache import CACHE_POLICIES
from dlm.engine.generate import EngineSpec, generate
from dlm.engine.state import BlockState, Generation, LoopState, View

__all__ = ["BlockState", "CACHE_POLICIES", "EngineSpec", "Generation", "LoopState", "View", "generate"]
