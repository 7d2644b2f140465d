"""The generation engine (DESIGN.md §2): canvas, blocks, while-loop, caches, NFE accounting.

`generate` runs the whole generation as one compiled program; `generate_steps` drives the same step from Python,
one loop iteration at a time (docs/design.md §1, "The loop").
"""

from dlm.engine.cache import CACHE_POLICIES
from dlm.engine.driver import Snapshot, generate_steps
from dlm.engine.generate import EngineSpec, generate
from dlm.engine.state import BlockState, Generation, LoopState, View

__all__ = ["BlockState", "CACHE_POLICIES", "EngineSpec", "Generation", "LoopState", "Snapshot", "View", "generate",
           "generate_steps"]
