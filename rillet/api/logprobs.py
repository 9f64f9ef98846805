"""OpenAI's `logprobs` object from the engine's per-token log probabilities."""
from __future__ import annotations

from functools import lru_cache

from rillet.engine.outputs import TokenLogprob


class LogprobFormatter:
    def __init__(self, tokenizer) -> None:
        self._token = lru_cache(maxsize=65536)(self._describe)
        self._tokenizer = tokenizer

    def _describe(self, token_id: int) -> tuple[str, list[int]]:
        raw = self._tokenizer.token_bytes(token_id)
        return raw.decode("utf-8", errors="replace"), list(raw)

    def entry(self, logprob: TokenLogprob) -> dict:
        text, raw = self._token(logprob.token_id)
        top = []
        for token_id, value in logprob.top:
            top_text, top_raw = self._token(token_id)
            top.append({"token": top_text, "logprob": value, "bytes": top_raw})
        return {"token": text, "logprob": logprob.logprob, "bytes": raw, "top_logprobs": top}
