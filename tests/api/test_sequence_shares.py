"""Sequences per request and per key: no request's n choices, and no key's requests, may take
every sequence the engine runs (rillet/api/shares.py, admission.py; the scheduler's side is in
tests/engine/test_scheduler.py)."""
from __future__ import annotations

import asyncio
import concurrent.futures
import time

import httpx
import pytest

from tests.api.helpers import NO_END, chat_body
from tests.conftest import RunningServer

QUEUE_TIMEOUT = 6


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


@pytest.fixture(scope="module")
def shared_server(tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.toml"
    keys_file.write_text('[[keys]]\nid = "a"\nkey = "sk-a"\n\n[[keys]]\nid = "b"\nkey = "sk-b"\n')
    running = RunningServer(["--api-keys-file", str(keys_file), "--max-num-seqs", "4", "--max-seqs-per-request", "2",
                             "--max-seqs-per-key", "2", "--queue-timeout", str(QUEUE_TIMEOUT),
                             "--kv-cache-tokens", "4096", "--public-metrics"])
    yield running
    running.stop()


def test_one_keys_requests_leave_room_for_another_keys(shared_server):
    """One key's streamed choices once held every sequence, and another key's one-token request got a
    503 after the queue timeout. Key a's share is 2 of the engine's 4: its second request waits for
    its first; key b's request runs at once."""
    server = shared_server

    def stream_as_a():
        stream = httpx.stream("POST", f"{server.base_url}/v1/chat/completions", headers={"Authorization": "Bearer sk-a"},
                              json=chat_body(n=2, max_tokens=2000, stream=True, logit_bias=NO_END), timeout=120)
        response = stream.__enter__()
        return stream, response, response.iter_lines()

    first, response, lines = stream_as_a()
    assert response.status_code == 200
    next(lines)
    with concurrent.futures.ThreadPoolExecutor(1) as pool:
        second = pool.submit(stream_as_a)
        wait_until(lambda: server.metric("rillet_queued_requests") == 1)
        started = time.monotonic()
        reply = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": "Bearer sk-b"},
                           json=chat_body(max_tokens=1), timeout=120)
        assert reply.status_code == 200, reply.text
        assert time.monotonic() - started < QUEUE_TIMEOUT
        assert not second.done()  # still waiting for key a's share
        first.__exit__(None, None, None)
        stream, response, _ = second.result(timeout=QUEUE_TIMEOUT)
        assert response.status_code == 200
        stream.__exit__(None, None, None)
    refused = httpx.post(f"{server.base_url}/v1/chat/completions", headers={"Authorization": "Bearer sk-b"},
                         json=chat_body(n=3), timeout=30)
    assert refused.status_code == 422 and "at most 2 sequences for one request" in refused.json()["error"]["message"]


def test_a_request_over_its_keys_share_waits_in_order_and_a_cancelled_one_lets_the_next_in():
    from rillet.api.shares import KeyShares

    async def scenario() -> None:
        shares = KeyShares(per_key=4)
        held = shares.claim("a", 3)
        await held.acquire()
        big, small = shares.claim("a", 2), shares.claim("a", 1)
        waiting_big = asyncio.create_task(big.acquire())
        waiting_small = asyncio.create_task(small.acquire())
        await asyncio.sleep(0.01)
        # 1 of 4 is free and fits the small one, but it waits behind the big one: in order.
        assert not waiting_big.done() and not waiting_small.done()
        other_key = shares.claim("b", 4)
        await asyncio.wait_for(other_key.acquire(), 1)  # another key's share is its own
        waiting_big.cancel()
        await asyncio.wait_for(waiting_small, 1)
        assert shares.held_by("a") == 4 and not big.held
        held.release()
        held.release()  # idempotent
        small.release()
        assert shares.held_by("a") == 0
        assert shares.claim(None, 4).shares is None  # no key, no share: an open server

    asyncio.run(scenario())


@pytest.mark.parametrize("flags, per_request, per_key", [
    ([], 16, 32),
    (["--max-seqs-per-key", "4"], 4, 4),
    (["--max-seqs-per-request", "40"], 40, 40),
])
def test_the_sequence_shares_default_to_a_quarter_and_a_half_of_max_num_seqs(flags, per_request, per_key):
    from rillet.cli import build_parser
    from rillet.config import ServeConfig

    limits = ServeConfig.from_args(build_parser().parse_args(["serve", *flags])).admission_limits()
    assert (limits.max_seqs_per_request, limits.max_seqs_per_key) == (per_request, per_key)


def test_shares_that_could_never_run_a_request_stop_the_server_at_start():
    from rillet.cli import build_parser
    from rillet.config import ServeConfig

    settings = ServeConfig.from_args(build_parser().parse_args(["serve", "--max-seqs-per-request", "8",
                                                                "--max-seqs-per-key", "4"]))
    with pytest.raises(ValueError, match="could never run"):
        settings.admission_limits()
