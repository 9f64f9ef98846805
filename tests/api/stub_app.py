"""An app over a stub engine, for failures a real engine cannot be made to show on demand and for
fuzzing the API layer fast: in-process, or served by a real uvicorn on a free port in a thread."""
from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager

import uvicorn

from rillet.api.app import create_app
from rillet.api.served_model import ServedModel
from rillet.engine.outputs import ChoiceDelta, RequestOutput
from rillet.engine.sampling_params import SamplingParams
from rillet.engine.stats import EngineStats
from tests.conftest import free_port

SECRET = "secret detail of the failure"


class WordTokenizer:
    vocab_size = 100

    def __init__(self) -> None:
        self.broken = False

    def encode(self, text: str) -> list[int]:
        if self.broken:
            raise RuntimeError(SECRET)
        return list(range(len(text.split())))


class JoiningTemplate:
    def render(self, messages: list[dict], add_generation_prompt: bool = True) -> str:
        return " ".join(m["content"] or "" for m in messages)


class StubEngine:
    """Yields one word per step; raises `failure` at step `fail_at_step` when set."""

    def __init__(self) -> None:
        self.is_alive = True
        self.failure: BaseException | None = None
        self.fail_at_step = 0

    def stats(self) -> EngineStats:
        return EngineStats(0, 0, 0, 0, 0, 0, 0, 0, 0)

    async def generate(self, request_id: str, prompt_token_ids: list[int],
                       params: SamplingParams) -> AsyncIterator[RequestOutput]:
        steps = params.max_tokens or 3
        for step in range(steps):
            if self.failure is not None and step == self.fail_at_step:
                raise self.failure
            last = step == steps - 1
            deltas = [ChoiceDelta(i, f"w{step} ", [step], "length" if last else None) for i in range(params.n)]
            yield RequestOutput(request_id, len(prompt_token_ids), deltas, finished=last)


def stub_app(engine: StubEngine | None = None, tokenizer: WordTokenizer | None = None):
    engine, tokenizer = engine or StubEngine(), tokenizer or WordTokenizer()
    return create_app(engine, ServedModel(name="stub", tokenizer=tokenizer, chat_template=JoiningTemplate(),
                                          max_context_len=64, max_num_seqs=4, fingerprint="fp_stub", created=1))


@contextmanager
def serving(app) -> Iterator[str]:
    """Serves `app` with uvicorn on loopback in a thread; yields its base URL."""
    port = free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=lambda: asyncio.run(server.serve()), daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline and thread.is_alive(), "the stub server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=10)
