"""dlm.schedules: noise schedules alpha(t), time grids, per-step unmask counts and DUS dilated groups.

Pure functions and small frozen, hashable dataclasses.  Everything works inside `jax.jit` with static Python ints
(step counts, block lengths) except the host-side helpers: the `*_np` functions and the `dilated` module.
"""

from dlm.schedules.counts import dream_count, dream_count_np, dream_counts_np, llada_counts
from dlm.schedules.dilated import dilated_groups, group_index, num_rounds
from dlm.schedules.grids import cosine_grid, cosine_grid_np, uniform_grid, uniform_grid_np
from dlm.schedules.noise import (SCHEDULE_NAMES, Cosine, Linear, LogLinear, Polynomial, Schedule,
                                 get_schedule)

__all__ = [
    "SCHEDULE_NAMES", "Schedule", "Linear", "LogLinear", "Cosine", "Polynomial", "get_schedule",
    "uniform_grid", "uniform_grid_np", "cosine_grid", "cosine_grid_np",
    "llada_counts", "dream_count", "dream_count_np", "dream_counts_np",
    "dilated_groups", "group_index", "num_rounds",
]
