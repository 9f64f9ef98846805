"""The synchronous engine core: requests in, one batched model step at a time, deltas out.

An exception raised for one request's data (in its part of the forward, its sampling, its
detokenization) ends that request with an error output and the engine runs on: the failed part
is run again one request at a time to find whose it was. Only a failure shared by every request
of a batch is the engine's own, and propagates.
"""
from __future__ import annotations

import itertools
import logging
from collections.abc import Callable
from dataclasses import dataclass
from typing import TypeVar

import torch

from rillet.engine.block_manager import BlockManager
from rillet.engine.config import EngineConfig
from rillet.engine.constraints import GrammarCompiler, TokenMasks
from rillet.engine.detokenizer import IncrementalDetokenizer
from rillet.engine.errors import PromptTooLongError, TooManyChoicesError
from rillet.engine.kv_layout import KVLayout
from rillet.engine.model_runner import ModelRunner
from rillet.engine.outputs import ChoiceDelta, RequestOutput, TokenLogprob
from rillet.engine.sampler import Sampler
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.scheduler import Scheduler, SchedulerOutput
from rillet.engine.sequence import Sequence
from rillet.engine.stats import EngineStats
from rillet.engine.stop_checker import StopChecker

__all__ = ["LLMEngine", "PromptTooLongError"]

log = logging.getLogger("rillet.engine")
T = TypeVar("T")

@dataclass(slots=True)
class _Request:
    request_id: str
    num_prompt_tokens: int
    num_unfinished: int
    # It has been scheduled (left the queue); its caller has been told.
    started: bool = False


class LLMEngine:
    def __init__(self, model: torch.nn.Module, tokenizer, max_context_len: int, config: EngineConfig) -> None:
        self.config = config
        self.tokenizer = tokenizer
        self.device = torch.device(config.device)
        # Sliding-window layers get KV groups of their own, drawn from one pool of pages.
        model_config = getattr(model, "config", None)
        num_layers = getattr(model_config, "num_layers", 1)
        self.kv_layout = KVLayout.of(getattr(model_config, "layer_windows", ()), num_layers, max_context_len)
        num_pages = self.kv_layout.num_pages(config.num_blocks)
        self.block_manager = BlockManager(num_pages, config.block_size, config.enable_prefix_caching, self.kv_layout)
        self.scheduler = Scheduler(self.block_manager, config.max_num_seqs, config.max_num_batched_tokens)
        self.runner = ModelRunner(model, num_pages, config.block_size, getattr(torch, config.kv_cache_dtype),
                                  self.device, self.kv_layout, max_num_seqs=config.max_num_seqs)
        self.sampler = Sampler(self.device)
        self.grammars = GrammarCompiler(tokenizer)
        # A lone sequence must always fit in the KV pool, or preemption could never make room.
        self.max_model_len = self.kv_layout.max_sequence_tokens(num_pages, config.block_size, max_context_len,
                                                                config.max_num_batched_tokens)
        # Blocks of positions the prefix cache can keep: more than config.num_blocks with windowed layers.
        self.cacheable_blocks = self.kv_layout.cacheable_blocks(num_pages)
        self._stop_token_ids = frozenset(tokenizer.stop_token_ids)
        self._requests: dict[str, _Request] = {}
        self._generators: dict[int, torch.Generator] = {}
        self._seq_ids = itertools.count()
        self.num_computed_prompt_tokens = 0
        self.num_generated_tokens = 0
        # The last step found nothing it could run; nothing changes until a request comes or goes.
        self.stalled = False

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
        """Queues a request, or raises a RequestRejectedError for one the engine could never run."""
        if not prompt_token_ids or len(prompt_token_ids) >= self.max_model_len:
            raise PromptTooLongError(
                f"the prompt has {len(prompt_token_ids)} tokens; the context holds {self.max_model_len}")
        if params.n > self.config.max_num_seqs:
            raise TooManyChoicesError(f"n is {params.n}, but this server runs at most "
                                      f"{self.config.max_num_seqs} sequences at once")
        self.stalled = False
        limit = self.max_model_len
        if params.max_tokens is not None:
            limit = min(limit, len(prompt_token_ids) + params.max_tokens)
        constraint = self.grammars.constraint(params.grammar) if params.grammar is not None else None
        seq = self._new_sequence(request_id, 0, prompt_token_ids, params, limit)
        seq.pending_forks = params.n - 1
        seq.constraint = constraint
        self._requests[request_id] = _Request(request_id, len(prompt_token_ids), params.n)
        self.scheduler.add(seq)

    def abort_request(self, request_id: str) -> None:
        self.stalled = False
        for seq in self.scheduler.abort_request(request_id):
            self._generators.pop(seq.seq_id, None)
        self._requests.pop(request_id, None)

    def step(self, on_scheduled: Callable[[list[RequestOutput]], None] | None = None) -> list[RequestOutput]:
        """One batched model step. The step that first schedules a request tells its caller that the
        request has left the queue with an output of no deltas: through on_scheduled before the
        forward runs, or else among the step's outputs where the request has none of its own."""
        batch = self.scheduler.schedule()
        self.stalled = batch.is_empty and not batch.preempted
        if batch.is_empty:
            return []
        notices = self._start_notices(batch)
        if on_scheduled is not None and notices:
            on_scheduled(notices)
            notices = []
        failed: list[RequestOutput] = []
        sampling_seqs, logits = self._forward(batch, failed)
        for seq, num_new in batch.scheduled:
            if seq.is_finished:
                continue  # failed in the forward
            if seq.num_computed_tokens < seq.num_prompt_tokens:
                self.num_computed_prompt_tokens += min(num_new, seq.num_prompt_tokens - seq.num_computed_tokens)
            seq.num_computed_tokens += num_new
            self.block_manager.register_full_blocks(seq)
        outputs = failed
        if logits is not None:
            sampling_seqs, rows = self._fork_choices(sampling_seqs)
            tokens = self._sample(sampling_seqs, logits, rows, failed)
            logprobs = self._logprobs(sampling_seqs, logits, rows, tokens, failed)
            outputs = failed + self._collect_outputs(sampling_seqs, tokens, logprobs, failed)
        answered = {output.request_id for output in outputs}
        return outputs + [notice for notice in notices if notice.request_id not in answered]

    def _start_notices(self, batch: SchedulerOutput) -> list[RequestOutput]:
        """An output of no deltas for each request this step schedules for the first time."""
        notices = []
        for seq, _ in batch.scheduled:
            request = self._requests.get(seq.request_id)
            if request is not None and not request.started:
                request.started = True
                notices.append(RequestOutput(seq.request_id, request.num_prompt_tokens, []))
        return notices

    # -- the parts of a step, each run again request by request if it fails ------------

    def _forward(self, batch: SchedulerOutput, failed: list[RequestOutput]) -> tuple[list[Sequence], torch.Tensor | None]:
        self.runner.copy_blocks(batch.block_copies)
        groups: dict[str, list[tuple[Sequence, int]]] = {}
        for seq, num_new in batch.scheduled:
            groups.setdefault(seq.request_id, []).append((seq, num_new))
        results = self._isolated(lambda: [self.runner.run(batch.scheduled)], self.runner.run, list(groups.values()),
                                 list(groups), failed)
        seqs = [seq for result in results if result is not None for seq in result[0]]
        logits = [result[1] for result in results if result is not None and result[1] is not None]
        return seqs, (torch.cat(logits) if len(logits) > 1 else logits[0] if logits else None)

    def _sample(self, seqs: list[Sequence], logits: torch.Tensor, rows: list[int],
                failed: list[RequestOutput]) -> list[int | None]:
        def sample(indices: list[int]) -> list[int]:
            chosen = [seqs[i] for i in indices]
            return self.sampler.sample(self._rows(logits, [rows[i] for i in indices]), [s.params for s in chosen],
                                       [s.output_token_ids for s in chosen],
                                       [self._generators.get(s.seq_id) for s in chosen], self._token_masks(chosen))

        everyone = list(range(len(seqs)))
        results = self._isolated(lambda: sample(everyone), lambda i: sample([i])[0], everyone,
                                 [s.request_id for s in seqs], failed)
        return results

    def _logprobs(self, seqs: list[Sequence], logits: torch.Tensor, rows: list[int], tokens: list[int | None],
                  failed: list[RequestOutput]) -> list[TokenLogprob | None]:
        wanted = [i for i, s in enumerate(seqs) if s.params.logprobs is not None and tokens[i] is not None]
        if not wanted:
            return [None] * len(seqs)

        def compute(indices: list[int]) -> list[TokenLogprob]:
            return self.sampler.logprobs(self._rows(logits, [rows[i] for i in indices]), [tokens[i] for i in indices],
                                         [seqs[i].params.logprobs for i in indices])

        entries = self._isolated(lambda: compute(wanted), lambda i: compute([i])[0], wanted,
                                 [seqs[i].request_id for i in wanted], failed)
        logprobs: list[TokenLogprob | None] = [None] * len(seqs)
        for i, entry in zip(wanted, entries):
            logprobs[i] = entry
        return logprobs

    def _isolated(self, run_all: Callable[[], list[T]], run_one: Callable[..., T], items: list,
                  request_ids: list[str], failed: list[RequestOutput]) -> list[T | None]:
        """run_all() gives one result per item. If it raises, each item is run alone with run_one;
        the requests whose items raise fail (their results are None), and the rest go on. If every
        item of more than one request fails, the failure is the engine's and is raised."""
        try:
            return run_all()
        except Exception as error:
            if len(set(request_ids)) < 2:
                self._fail(request_ids[0], error, failed)
                return [None] * len(items)
            shared_error = error
        results: list[T | None] = []
        for item, request_id in zip(items, request_ids):
            if request_id not in self._requests:
                results.append(None)  # failed on an earlier item
                continue
            try:
                results.append(run_one(item))
            except Exception as error:
                self._fail(request_id, error, failed)
                results.append(None)
        if all(result is None for result in results):
            raise shared_error
        return results

    def _fail(self, request_id: str, error: Exception, failed: list[RequestOutput]) -> None:
        """Ends a request whose data made a step raise; the caller's next stages skip its sequences."""
        log.error("request %s failed in the engine; the engine runs on", request_id, exc_info=error)
        request = self._requests.get(request_id)
        if request is None:
            return
        self.abort_request(request_id)
        failed.append(RequestOutput(request_id, request.num_prompt_tokens, [], finished=True,
                                    error=f"{type(error).__name__} while running the request"))

    def _token_masks(self, seqs: list[Sequence]) -> TokenMasks | None:
        """The grammar masks of the constrained sequences among seqs (rows of seqs)."""
        rows = [row for row, seq in enumerate(seqs) if seq.constraint is not None]
        if not rows:
            return None
        bitmask = self.grammars.new_bitmask(len(rows))
        for k, row in enumerate(rows):
            seqs[row].constraint.fill_bitmask(bitmask, k)
        return TokenMasks(rows, bitmask)

    @staticmethod
    def _rows(logits: torch.Tensor, rows: list[int]) -> torch.Tensor:
        """The rows of logits, in order; logits itself where that is every row (the sampler copies
        what it changes, so a failed batch leaves them as they were for each request alone)."""
        if rows == list(range(logits.shape[0])):
            return logits
        return logits.index_select(0, torch.tensor(rows, dtype=torch.long, device=logits.device))

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
                child.constraint = seq.constraint.copy() if seq.constraint is not None else None
                self.block_manager.fork(seq, child)
                self.scheduler.add_running(child)
                seqs.append(child)
                rows.append(row)
            seq.pending_forks = 0
        return seqs, rows

    def _collect_outputs(self, seqs: list[Sequence], tokens: list[int | None],
                         logprobs: list[TokenLogprob | None], failed: list[RequestOutput]) -> list[RequestOutput]:
        by_request: dict[str, RequestOutput] = {}
        for seq, token, logprob in zip(seqs, tokens, logprobs):
            if seq.request_id not in self._requests:
                continue  # failed earlier in this step
            try:
                delta = self._append_token(seq, token, logprob)
            except Exception as error:
                self._fail(seq.request_id, error, failed)
                by_request.pop(seq.request_id, None)
                continue
            self.num_generated_tokens += 1
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
        if seq.constraint is not None:
            seq.constraint.advance(token)
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
                if seq.stop_checker.stopped:  # the held-back text completed a stop string
                    finish_reason = "stop"
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
            detokenizer=IncrementalDetokenizer(self.tokenizer, params.shown_token_ids),
            stop_checker=StopChecker(params.stop),
            max_total_tokens=max_total_tokens,
        )
        if params.seed is not None:
            generator = torch.Generator(device=self.device)
            generator.manual_seed(hash((params.seed, index)) & 0x7FFF_FFFF_FFFF_FFFF)
            self._generators[seq.seq_id] = generator
        return seq
