"""Constrained decoding: a request's grammar (SamplingParams.grammar, in llguidance's Lark dialect)
holds each of its sequences to the tokens the grammar allows next. The engine knows nothing of what
the grammar describes (JSON, tool calls); it asks each sequence's matcher for a token bitmask before
sampling (the sampler masks the logits with it) and feeds it the sampled token after.

A grammar is compiled once per engine (kept in a small cache) and each sequence gets a copy of its
compiled matcher. The end-of-turn tokens are what the grammar's end allows.
"""
from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass

import llguidance
import llguidance.numpy
import numpy as np
import torch

from rillet.engine.errors import RequestRejectedError

MAX_CACHED_GRAMMARS = 64


class TokenConstraint:
    """One sequence's place in its grammar."""

    __slots__ = ("_matcher",)

    def __init__(self, matcher: llguidance.LLMatcher) -> None:
        self._matcher = matcher

    def fill_bitmask(self, bitmask: np.ndarray, row: int) -> None:
        """Writes the tokens allowed next into row of bitmask (int32, a bit a token)."""
        llguidance.numpy.fill_next_token_bitmask(self._matcher, bitmask, row)
        if self._matcher.is_error():
            raise RuntimeError(f"the grammar matcher failed: {self._matcher.get_error()}")

    def advance(self, token_id: int) -> None:
        if not self._matcher.consume_token(token_id):
            raise RuntimeError(f"the grammar does not allow token {token_id}: {self._matcher.get_error()}")

    def copy(self) -> TokenConstraint:
        return TokenConstraint(self._matcher.deep_copy())


# Each byte of a bitmask as the 8 additive logit masks it stands for: 0 for a set bit, -inf else.
_BYTE_MASKS = np.array([[0.0 if byte >> bit & 1 else -np.inf for bit in range(8)] for byte in range(256)],
                       dtype=np.float32)


@dataclass(slots=True)
class TokenMasks:
    """The allowed tokens of some rows of a batch: bitmask [len(rows), ceil(vocab / 32)] int32."""

    rows: list[int]
    bitmask: np.ndarray

    def apply(self, logits: torch.Tensor) -> None:
        """Sets every token a row's grammar does not allow to -inf (tokens past the grammar's
        vocabulary included). Added as a mask looked up a byte at a time: a fifteenth of the cost of
        expanding the bits and filling, about 0.3 ms for 16 rows of 49,152 tokens."""
        width = logits.shape[1]
        masks = np.take(_BYTE_MASKS, self.bitmask.view(np.uint8), axis=0).reshape(len(self.rows), -1)
        if masks.shape[1] < width:
            masks = np.pad(masks, ((0, 0), (0, width - masks.shape[1])), constant_values=-np.inf)
        masks = torch.from_numpy(masks[:, :width]).to(logits.device)
        if self.rows == list(range(logits.shape[0])):
            logits.add_(masks)
        else:
            logits.index_add_(0, torch.tensor(self.rows, dtype=torch.long, device=logits.device), masks)


class GrammarCompiler:
    """Compiles grammars for one tokenizer (which must offer backend_json(), vocab_size and
    stop_token_ids); the llguidance tokenizer is built on first use."""

    def __init__(self, tokenizer) -> None:
        self._tokenizer = tokenizer
        self._ll_tokenizer: llguidance.LLTokenizer | None = None
        self._compiled: OrderedDict[str, llguidance.LLMatcher] = OrderedDict()

    @property
    def vocab_size(self) -> int:
        return self._tokenizer.vocab_size

    def constraint(self, grammar: str) -> TokenConstraint:
        """A fresh matcher at the grammar's start; RequestRejectedError if it does not compile."""
        compiled = self._compiled.get(grammar)
        if compiled is None:
            compiled = llguidance.LLMatcher(self._llguidance_tokenizer(), grammar, log_level=0)
            if compiled.is_error():
                raise RequestRejectedError(f"the grammar is not valid: {compiled.get_error()}")
            self._compiled[grammar] = compiled
            if len(self._compiled) > MAX_CACHED_GRAMMARS:
                self._compiled.popitem(last=False)
        self._compiled.move_to_end(grammar)
        return TokenConstraint(compiled.deep_copy())

    def new_bitmask(self, num_rows: int) -> np.ndarray:
        return np.full((num_rows, (self.vocab_size + 31) // 32), -1, dtype=np.int32)

    def _llguidance_tokenizer(self) -> llguidance.LLTokenizer:
        if self._ll_tokenizer is None:
            self._ll_tokenizer = llguidance.LLTokenizer(
                self._tokenizer.backend_json(), n_vocab=self._tokenizer.vocab_size,
                eos_token=sorted(self._tokenizer.stop_token_ids))
        return self._ll_tokenizer
