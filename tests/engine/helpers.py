from __future__ import annotations

import itertools

from rillet.engine.detokenizer import IncrementalDetokenizer
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.sequence import Sequence
from rillet.engine.stop_checker import StopChecker

_ids = itertools.count()


class CharTokenizer:
    """Token id i is the character chr(i); enough for engine bookkeeping tests."""

    stop_token_ids = frozenset({0})

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return "".join(chr(i) for i in ids if i)


def make_seq(prompt: list[int], max_tokens: int = 8, request_id: str | None = None,
             params: SamplingParams | None = None) -> Sequence:
    params = params or SamplingParams(max_tokens=max_tokens)
    return Sequence(
        seq_id=next(_ids), request_id=request_id or f"r{next(_ids)}", index=0,
        prompt_token_ids=list(prompt), params=params,
        detokenizer=IncrementalDetokenizer(CharTokenizer()), stop_checker=StopChecker(params.stop),
        max_total_tokens=len(prompt) + max_tokens,
    )
