"""A snapshot of the engine's counters and gauges, for metrics and tests."""
from __future__ import annotations

from dataclasses import dataclass


@dataclass(slots=True, frozen=True)
class EngineStats:
    num_running_seqs: int
    num_waiting_seqs: int
    num_kv_blocks: int
    num_free_kv_blocks: int
    # Prompt tokens the model actually computed (prefix-cache hits excluded).
    num_computed_prompt_tokens: int
    num_generated_tokens: int
    prefix_cache_queried_tokens: int
    prefix_cache_hit_tokens: int
    num_preemptions: int

    def __reduce__(self):  # pickled once per step with its outputs: as rillet/engine/outputs.py's classes
        return EngineStats, tuple(getattr(self, name) for name in EngineStats.__slots__)  # the fields, in order
