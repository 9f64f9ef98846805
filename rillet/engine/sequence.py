"""One choice of one request: its tokens, its place in the KV cache and its progress."""
from __future__ import annotations

import enum
from dataclasses import dataclass, field

from rillet.engine.detokenizer import IncrementalDetokenizer
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.stop_checker import StopChecker


# In a block table: a block the sequence no longer holds (behind a sliding window).
DEAD_BLOCK = -1


class SequenceStatus(enum.Enum):
    WAITING = "waiting"
    RUNNING = "running"
    FINISHED = "finished"


@dataclass(slots=True, eq=False)
class Sequence:
    seq_id: int
    request_id: str
    # Which of the request's n choices this is.
    index: int
    prompt_token_ids: list[int]
    params: SamplingParams
    detokenizer: IncrementalDetokenizer
    stop_checker: StopChecker
    # The most tokens this sequence may hold (prompt + output): the model's context or max_tokens.
    max_total_tokens: int
    token_ids: list[int] = field(default_factory=list)
    # Each KV group's block table (rillet/engine/kv_layout.py; one group for most models). A
    # windowed group's blocks that no query will read again are DEAD_BLOCK.
    block_tables: list[list[int]] = field(default_factory=lambda: [[]])
    # Tokens whose K/V are in the cache. Everything past it is still to be computed.
    num_computed_tokens: int = 0
    # Prefix-cache key of each full, computed block of this sequence, in order.
    block_hashes: list[bytes] = field(default_factory=list)
    # Its prefix-cache lookup has been counted in the hit-rate figures (once, however often it waits).
    prefix_lookup_recorded: bool = False
    status: SequenceStatus = SequenceStatus.WAITING
    finish_reason: str | None = None
    # Choices that still have to be forked off this one once its prompt is computed (n > 1).
    pending_forks: int = 0
    # Sequences admitted ahead of it while it waited for slots for its choices (scheduler.py).
    num_overtaken: int = 0
    # Its place in the request's grammar (a TokenConstraint), when the request has one.
    constraint: object | None = None

    def __post_init__(self) -> None:
        if not self.token_ids:
            self.token_ids = list(self.prompt_token_ids)

    @property
    def block_table(self) -> list[int]:
        """The first group's block table (the only one of a model without sliding windows)."""
        return self.block_tables[0]

    @property
    def num_prompt_tokens(self) -> int:
        return len(self.prompt_token_ids)

    @property
    def num_tokens(self) -> int:
        return len(self.token_ids)

    @property
    def num_output_tokens(self) -> int:
        return len(self.token_ids) - len(self.prompt_token_ids)

    @property
    def output_token_ids(self) -> list[int]:
        return self.token_ids[len(self.prompt_token_ids):]

    @property
    def num_uncomputed_tokens(self) -> int:
        return len(self.token_ids) - self.num_computed_tokens

    @property
    def is_finished(self) -> bool:
        return self.status is SequenceStatus.FINISHED
