"""Decides, each step, how many tokens of which sequences the model computes.

Prefill chunks and decodes share one token budget: a sequence asks for all the tokens it
has not computed yet (its prompt, or the one token it just sampled), and gets as many as the
budget allows. When the KV pool runs out, the most recently admitted running sequence is
preempted: its blocks are freed and it is recomputed later from its tokens.

Waiting requests are admitted in order, each with all its choices at once (they share the
prompt's blocks). A request whose choices do not fit in the free sequence slots does not hold up
the smaller ones behind it: they may go first, but only until it has been overtaken by
max_num_seqs sequences; then the queue waits for it, so that it is not starved in turn.
"""
from __future__ import annotations

import itertools
from collections import deque
from dataclasses import dataclass, field

from rillet.engine.block_manager import BlockManager
from rillet.engine.sequence import Sequence, SequenceStatus


@dataclass(slots=True)
class SchedulerOutput:
    # Each scheduled sequence with the number of its tokens computed this step.
    scheduled: list[tuple[Sequence, int]] = field(default_factory=list)
    preempted: list[Sequence] = field(default_factory=list)
    # (source, destination) KV block copies to do before the forward.
    block_copies: list[tuple[int, int]] = field(default_factory=list)

    @property
    def num_tokens(self) -> int:
        return sum(n for _, n in self.scheduled)

    @property
    def is_empty(self) -> bool:
        return not self.scheduled


class Scheduler:
    def __init__(self, block_manager: BlockManager, max_num_seqs: int, max_num_batched_tokens: int) -> None:
        self.block_manager = block_manager
        self.max_num_seqs = max_num_seqs
        self.max_num_batched_tokens = max_num_batched_tokens
        self.waiting: deque[Sequence] = deque()
        self.running: list[Sequence] = []
        self.num_preemptions = 0

    @property
    def has_work(self) -> bool:
        return bool(self.waiting or self.running)

    def add(self, seq: Sequence) -> None:
        self.waiting.append(seq)

    def add_running(self, seq: Sequence) -> None:
        """A choice forked from a running sequence runs at once: it owns blocks already."""
        seq.status = SequenceStatus.RUNNING
        self.running.append(seq)

    def schedule(self) -> SchedulerOutput:
        out = SchedulerOutput()
        budget = self._schedule_running(out, self.max_num_batched_tokens)
        if not out.preempted:
            self._admit_waiting(out, budget)
        out.block_copies = self.block_manager.pending_copies
        self.block_manager.pending_copies = []
        return out

    def finish(self, seq: Sequence) -> None:
        seq.status = SequenceStatus.FINISHED
        if seq in self.running:
            self.running.remove(seq)
        else:
            self._remove_waiting(seq)
        self.block_manager.free(seq)

    def abort_request(self, request_id: str) -> list[Sequence]:
        """Drops every sequence of a request, waiting or running, and frees its blocks."""
        aborted = [s for s in (*self.running, *self.waiting) if s.request_id == request_id]
        for seq in aborted:
            self.finish(seq)
        return aborted

    def _schedule_running(self, out: SchedulerOutput, budget: int) -> int:
        index = 0
        while index < len(self.running) and budget > 0:
            seq = self.running[index]
            num_new = min(seq.num_uncomputed_tokens, budget)
            if num_new == 0:
                index += 1
                continue
            while not self.block_manager.allocate_slots(seq, num_new):
                victim = self.running.pop()
                self._preempt(victim, out)
                if victim is seq:
                    return budget
            out.scheduled.append((seq, num_new))
            budget -= num_new
            index += 1
        return budget

    def _admit_waiting(self, out: SchedulerOutput, budget: int) -> None:
        index = 0
        while index < len(self.waiting) and budget > 0:
            seq = self.waiting[index]
            if self._num_running_slots() + 1 + seq.pending_forks > self.max_num_seqs:
                if seq.num_overtaken >= self.max_num_seqs:
                    return  # it has waited its turn: nothing behind it goes first now
                index += 1
                continue
            num_hit_tokens = self.block_manager.claim_cached_prefix(seq)
            num_new = min(seq.num_uncomputed_tokens, budget)
            if not self.block_manager.allocate_slots(seq, num_new):
                # Give the claimed prefix back so waiting sequences never hold blocks.
                self.block_manager.free(seq)
                return
            self.block_manager.record_prefix_lookup(seq, num_hit_tokens)
            del self.waiting[index]
            for passed in itertools.islice(self.waiting, index):
                passed.num_overtaken += 1 + seq.pending_forks
            seq.status = SequenceStatus.RUNNING
            self.running.append(seq)
            out.scheduled.append((seq, num_new))
            budget -= num_new

    def _preempt(self, seq: Sequence, out: SchedulerOutput) -> None:
        self.block_manager.free(seq)
        seq.status = SequenceStatus.WAITING
        self.waiting.appendleft(seq)
        out.preempted.append(seq)
        self.num_preemptions += 1

    def _num_running_slots(self) -> int:
        return sum(1 + s.pending_forks for s in self.running)

    def _remove_waiting(self, seq: Sequence) -> None:
        try:
            self.waiting.remove(seq)
        except ValueError:
            pass
