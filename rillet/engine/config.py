"""Engine settings, chosen at startup; their defaults are rillet/config.py's."""
from __future__ import annotations

import os
from dataclasses import dataclass

from rillet.config import DEFAULTS


@dataclass(slots=True)
class EngineConfig:
    device: str = DEFAULTS.device
    # Element type of the KV cache, a torch dtype's name; attention arithmetic is float32 either way on the CPU.
    kv_cache_dtype: str = DEFAULTS.kv_cache_dtype
    block_size: int = DEFAULTS.block_size
    # KV capacity in tokens, shared by all running sequences (rounded down to whole blocks).
    kv_cache_tokens: int = DEFAULTS.kv_cache_tokens
    max_num_seqs: int = DEFAULTS.max_num_seqs
    # Token budget of one step, shared by prefill chunks and decodes.
    max_num_batched_tokens: int = DEFAULTS.max_num_batched_tokens
    enable_prefix_caching: bool = DEFAULTS.enable_prefix_caching
    # Compute threads of the model step; None: one per core (the engine runs in its own process,
    # and the HTTP process gives up CPU priority to it instead: --http-nice).
    num_threads: int | None = DEFAULTS.num_threads

    @property
    def num_blocks(self) -> int:
        return max(1, self.kv_cache_tokens // self.block_size)

    def resolved_num_threads(self) -> int:
        return self.num_threads or max(1, os.cpu_count() or 1)

    def describe(self) -> str:
        """The settings that can change outputs or speed, for the system fingerprint."""
        return (f"device={self.device} kv={self.kv_cache_dtype} block={self.block_size} "
                f"kv_tokens={self.num_blocks * self.block_size} seqs={self.max_num_seqs} "
                f"budget={self.max_num_batched_tokens} prefix={self.enable_prefix_caching}")
