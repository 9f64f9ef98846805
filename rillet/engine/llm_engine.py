"""The synchronous engine core: requests in, one batched model step at a time, deltas out."""
from __future__ import annotations

import itertools
from dataclasses import dataclass

import torch

from rillet.engine.block_manager import BlockManager
from rillet.engine.config import EngineConfig
from rillet.engine.detokenizer import IncrementalDetokenizer
from rillet.engine.model_runner import ModelRunner
from rillet.engine.outputs import ChoiceDelta, RequestOutput, TokenLogprob
from rillet.engine.sampler import Sampler
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.scheduler import Scheduler
from rillet.engine.sequence import Sequence
from rillet.engine.stats import EngineStats
from rillet.engine.stop_checker import StopChecker


class PromptTooLongError(ValueError):
    """The prompt leaves no room for a single generated token."""


@dataclass(slots=True)
class _Request:
    request_id: str
    num_prompt_tokens: int
    num_unfinished: int


class LLMEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, max_context_len: int, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.device = torch.device(config.device)
        self.block_manager = BlockManager(config.num_blocks, config.block_size, config.enable_prefix_caching)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = ModelRunner(model, config.num_blocks, config.block_size, config.kv_cache_dtype, self.device)
        self.sampler = Sampler(self.device)
        # A lone sequence must always fit in the KV pool, or preemption could never make room.
        self.max_model_len = min(max_context_len, config.num_blocks * config.block_size)
        self._stop_token_ids = frozenset(tokenizer.stop_token_ids)
        self._requests: dict[str, _Request] = {}
        self._generators: dict[int, torch.Generator] = {}
        self._seq_ids = itertools.count()
        self.num_computed_prompt_tokens = 0
        self.num_generated_tokens = 0

    @property
    def has_work(self) -> bool:
        return self.scheduler.has_work

    def stats(self) -> EngineStats:
        blocks = self.block_manager
        return EngineStats(
            num_running_seqs=len(self.scheduler.running),
            num_waiting_seqs=len(self.scheduler.waiting),
            num_kv_blocks=blocks.num_blocks,
            num_free_kv_blocks=blocks.num_free_blocks,
            num_computed_prompt_tokens=self.num_computed_prompt_tokens,
            num_generated_tokens=self.num_generated_tokens,
            prefix_cache_queried_tokens=blocks.prefix_cache_queries * blocks.block_size,
            prefix_cache_hit_tokens=blocks.prefix_cache_hits * blocks.block_size,
            num_preemptions=self.scheduler.num_preemptions,
        )

    def add_request(self, request_id: str, prompt_token_ids: list[int], params: SamplingParams) -> None:
        if not prompt_token_ids or len(prompt_token_ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_token_ids)} tokens; the context holds {self.max_model_len}")
        limit = self.max_model_len
        if params.max_tokens is not None:
            limit = min(limit, len(prompt_token_ids) + params.max_tokens)
        seq = self._new_sequence(request_id, 0, prompt_token_ids, params, limit)
        seq.pending_forks = params.n - 1
        self._requests[request_id] = _Request(request_id, len(prompt_token_ids), params.n)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> None:
        for seq in self.scheduler.abort_request(request_id):
            self._generators.pop(seq.seq_id, None)
        self._requests.pop(request_id, None)

    def step(self) -> list[RequestOutput]:
        batch = self.scheduler.schedule()
        if batch.is_empty:
            return []
        sampling_seqs, logits = self.runner.run(batch)
        for seq, num_new in batch.scheduled:
            if seq.num_computed_tokens < seq.num_prompt_tokens:
                self.num_computed_prompt_tokens += min(num_new, seq.num_prompt_tokens - seq.num_computed_tokens)
            seq.num_computed_tokens += num_new
            self.block_manager.register_full_blocks(seq)
        if logits is None:
            return []
        sampling_seqs, rows = self._fork_choices(sampling_seqs)
        logits = logits.index_select(0, torch.tensor(rows, dtype=torch.long, device=logits.device))
        wanted = [i for i, s in enumerate(sampling_seqs) if s.params.logprobs is not None]
        # A copy taken before sampling, which transforms its logits in place.
        model_logits = logits.index_select(0, torch.tensor(wanted, dtype=torch.long, device=logits.device))
        tokens = self.sampler.sample(
            logits,
            [s.params for s in sampling_seqs],
            [s.output_token_ids for s in sampling_seqs],
            [self._generators.get(s.seq_id) for s in sampling_seqs],
        )
        logprobs: list[TokenLogprob | None] = [None] * len(tokens)
        if wanted:
            entries = self.sampler.logprobs(model_logits, [tokens[i] for i in wanted],
                                            [sampling_seqs[i].params.logprobs for i in wanted])
            for i, entry in zip(wanted, entries):
                logprobs[i] = entry
        self.num_generated_tokens += len(tokens)
        return self._collect_outputs(sampling_seqs, tokens, logprobs)

    def _fork_choices(self, sampling_seqs: list[Sequence]) -> tuple[list[Sequence], list[int]]:
        """A request with n > 1 computes its prompt once; then its other choices fork off it."""
        seqs: list[Sequence] = []
        rows: list[int] = []
        for row, seq in enumerate(sampling_seqs):
            seqs.append(seq)
            rows.append(row)
            for index in range(1, seq.pending_forks + 1):
                child = self._new_sequence(seq.request_id, index, seq.prompt_token_ids, seq.params,
                                           seq.max_total_tokens)
                self.block_manager.fork(seq, child)
                self.scheduler.add_running(child)
                seqs.append(child)
                rows.append(row)
            seq.pending_forks = 0
        return seqs, rows

    def _collect_outputs(self, seqs: list[Sequence], tokens: list[int],
                         logprobs: list[TokenLogprob | None]) -> list[RequestOutput]:
        by_request: dict[str, RequestOutput] = {}
        for seq, token, logprob in zip(seqs, tokens, logprobs):
            delta = self._append_token(seq, token, logprob)
            request = self._requests[seq.request_id]
            out = by_request.get(seq.request_id)
            if out is None:
                out = by_request[seq.request_id] = RequestOutput(seq.request_id, request.num_prompt_tokens, [])
            out.deltas.append(delta)
            if delta.finish_reason is not None:
                self.scheduler.finish(seq)
                self._generators.pop(seq.seq_id, None)
                request.num_unfinished -= 1
                if request.num_unfinished == 0:
                    out.finished = True
                    del self._requests[seq.request_id]
        return list(by_request.values())

    def _append_token(self, seq: Sequence, token: int, logprob: TokenLogprob | None) -> ChoiceDelta:
        seq.token_ids.append(token)
        finish_reason = None
        if token in self._stop_token_ids:
            finish_reason = "stop"
            text = seq.stop_checker.feed(seq.detokenizer.flush())
        else:
            text = seq.stop_checker.feed(seq.detokenizer.add_token(token))
            if seq.stop_checker.stopped:
                finish_reason = "stop"
            elif seq.num_tokens >= seq.max_total_tokens:
                finish_reason = "length"
                text += seq.stop_checker.feed(seq.detokenizer.flush())
        if finish_reason is not None and not seq.stop_checker.stopped:
            text += seq.stop_checker.flush()
        entries = None
        if logprob is not None:
            # The end-of-turn token adds no text, so it gets no logprobs entry either.
            entries = [] if token in self._stop_token_ids else [logprob]
        return ChoiceDelta(seq.index, text, [token], finish_reason, entries)

    def _new_sequence(self, request_id: str, index: int, prompt: list[int], params: SamplingParams,
                      max_total_tokens: int) -> Sequence:
        seq = Sequence(
            seq_id=next(self._seq_ids), request_id=request_id, index=index,
            prompt_token_ids=list(prompt), params=params,
            detokenizer=IncrementalDetokenizer(self.tokenizer), stop_checker=StopChecker(params.stop),
            max_total_tokens=max_total_tokens,
        )
        if params.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(hash((params.seed, index)) & 0x7FFF_FFFF_FFFF_FFFF)
            self._generators[seq.seq_id] = generator
        return seq
