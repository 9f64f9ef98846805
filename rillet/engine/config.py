"""Engine settings, chosen at startup."""
from __future__ import annotations

import os
from dataclasses import dataclass


@dataclass(slots=True)
class EngineConfig:
    device: str = "cpu"
    # Element type of the KV cache, a torch dtype's name; attention arithmetic is float32 either way on the CPU.
    kv_cache_dtype: str = "float32"
    block_size: int = 16
    # KV capacity in tokens, shared by all running sequences (rounded down to whole blocks).
    kv_cache_tokens: int = 16384
    max_num_seqs: int = 64
    # Token budget of one step, shared by prefill chunks and decodes.
    max_num_batched_tokens: int = 256
    enable_prefix_caching: bool = True
    # Compute threads of the model step; None: every core but what the HTTP loop needs.
    num_threads: int | None = None

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
