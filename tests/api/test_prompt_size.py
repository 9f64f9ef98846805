"""A prompt longer than the context is refused from its size before it is tokenized (the tokenizer's
most characters a token: rillet/model/tokenizer.py), and big prompt texts are tokenized one at a
time, off the event loop (rillet/api/prompt.py)."""
from __future__ import annotations

import asyncio
import threading
import time

from tests.api.helpers import chat_body


def resident_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith("VmRSS")) / 1024


def test_a_prompt_too_long_for_any_tokenization_is_refused_before_it_is_tokenized(http, server):
    """4 MiB of "a " (under --max-request-bytes) was once tokenized whole: about 2 million tokens,
    4 s, and 540 MB the HTTP process kept."""
    before = resident_mb(server.process.pid)
    started = time.monotonic()
    response = http.post("/v1/chat/completions", json=chat_body("a " * 2_096_152))
    took = time.monotonic() - started
    assert response.status_code == 400, response.text
    error = response.json()["error"]
    assert error["code"] == "context_length_exceeded" and error["param"] == "messages"
    assert "at least" in error["message"] and "no token of this model stands for more than 81" in error["message"]
    assert resident_mb(server.process.pid) - before < 100
    assert took < 3, f"{took:.1f} s"


def test_a_prompt_under_the_size_bound_but_over_the_context_is_still_counted_and_refused(http):
    response = http.post("/v1/chat/completions", json=chat_body("a " * 20_000))
    error = response.json()["error"]
    assert response.status_code == 400 and error["code"] == "context_length_exceeded"
    assert "the messages have 20" in error["message"]  # counted: its tokens, not a bound


class GatedTokenizer:
    """Holds big texts until released; counts how many are being tokenized at once."""

    def __init__(self, big_chars: int) -> None:
        self.big_chars = big_chars
        self.release = threading.Event()
        self.lock = threading.Lock()
        self.inside = self.most_inside = 0

    def encode(self, text: str) -> list[int]:
        if len(text) <= self.big_chars:
            return [1] * len(text.split())
        with self.lock:
            self.inside += 1
            self.most_inside = max(self.most_inside, self.inside)
        self.release.wait(10)
        with self.lock:
            self.inside -= 1
        return [1]


def test_big_prompts_are_tokenized_one_at_a_time_and_a_small_one_never_waits_behind_them():
    from rillet.api.prompt import BIG_PROMPT_CHARS, PromptEncoder

    async def scenario() -> None:
        tokenizer = GatedTokenizer(BIG_PROMPT_CHARS)
        encoder = PromptEncoder(tokenizer)
        big = [asyncio.create_task(encoder.encode("a " * BIG_PROMPT_CHARS)) for _ in range(8)]
        await asyncio.sleep(0.2)
        assert await asyncio.wait_for(encoder.encode("a small prompt"), 2) == [1, 1, 1]
        tokenizer.release.set()
        await asyncio.gather(*big)
        assert tokenizer.most_inside == 1

    asyncio.run(scenario())
