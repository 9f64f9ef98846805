"""Admission against a real server that runs one sequence at a time and lets one request wait:
a full queue is a fast 503, a request that waits past the queue timeout is a 503 and is aborted
in the engine; the bounds' arithmetic in-process."""
from __future__ import annotations

import asyncio
import concurrent.futures
import os
import time

import httpx
import openai
import pytest

from rillet.api.admission import Admission, AdmissionLimits
from rillet.api.errors import APIError
from rillet.engine.outputs import ChoiceDelta, RequestOutput
from tests.api.helpers import NO_END, chat_body
from tests.conftest import RunningServer

QUEUE_TIMEOUT = 4


@pytest.fixture(scope="module")
def one_at_a_time():
    running = RunningServer(["--max-num-seqs", "1", "--max-queued-requests", "1",
                             "--queue-timeout", str(QUEUE_TIMEOUT), "--kv-cache-tokens", "4096"])
    yield running
    running.stop()


def wait_until(condition, timeout: float = 30) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.05)


def assert_overloaded(response: httpx.Response, message: str) -> None:
    assert response.status_code == 503
    error = response.json()["error"]
    assert (error["type"], error["code"]) == ("server_error", "overloaded") and message in error["message"]
    assert int(response.headers["retry-after"]) >= 1


def hold_the_only_sequence(server):
    """A stream that keeps the engine's one sequence busy until it is closed."""
    stream = httpx.stream("POST", f"{server.base_url}/v1/chat/completions",
                          json=chat_body(max_tokens=2000, stream=True, logit_bias=NO_END), timeout=120)
    response = stream.__enter__()
    lines = response.iter_lines()  # kept: a dropped line iterator closes the connection
    next(lines)
    return stream, lines


def test_full_queue_is_fast_503_and_a_long_wait_is_503_then_aborted(one_at_a_time):
    server = one_at_a_time
    client = openai.OpenAI(base_url=f"{server.base_url}/v1", api_key="x", max_retries=0, timeout=120)
    stream, _lines = hold_the_only_sequence(server)
    try:
        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            waiting = pool.submit(client.chat.completions.create, **chat_body(max_tokens=4))
            wait_until(lambda: server.metric("rillet_queued_requests") == 1)
            # The one place in the queue is taken: the next request is refused at once.
            assert_overloaded(httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(), timeout=120),
                              "already waiting")
            with pytest.raises(openai.InternalServerError) as caught:
                waiting.result()
        assert caught.value.status_code == 503 and caught.value.code == "overloaded"
        assert "queue timeout" in caught.value.message
        # The timed-out request left the engine too, while the held stream runs on.
        wait_until(lambda: server.metric("rillet_waiting_sequences") == 0)
        assert server.metric("rillet_running_sequences") == 1 and server.metric("rillet_queued_requests") == 0
        # A stream that waits too long gets the 503 as its status: nothing had been sent yet.
        assert_overloaded(httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(stream=True),
                                     timeout=120), "queue timeout")
    finally:
        stream.__exit__(None, None, None)
    wait_until(lambda: server.metric("rillet_kv_blocks_free") == server.metric("rillet_kv_blocks_total"))
    reply = client.chat.completions.create(**chat_body(max_tokens=2))
    assert reply.usage.completion_tokens == 2
    assert server.metric('rillet_requests_total{status="503"}') == 3


# -- in-process: the bounds ------------------------------------------------------------


def test_queue_bounds_in_requests_and_prompt_tokens():
    admission = Admission(AdmissionLimits(max_queued_requests=3, max_queued_tokens=100, queue_timeout=1))
    with admission.waiting(60), admission.waiting(40):
        with pytest.raises(APIError, match="prompt tokens"):
            with admission.waiting(1):
                pass
        assert (admission.num_waiting_requests, admission.num_waiting_tokens) == (2, 100)
    with admission.waiting(1), admission.waiting(1), admission.waiting(1):
        with pytest.raises(APIError, match="requests"):
            with admission.waiting(1):
                pass
    # Alone, a prompt larger than the whole token bound still gets in.
    with admission.waiting(500):
        assert admission.num_waiting_tokens == 500
    assert (admission.num_waiting_requests, admission.num_waiting_tokens) == (0, 0)


def test_a_request_that_waits_too_long_is_closed_and_refused():
    closed = []

    async def never_starts():
        try:
            await asyncio.sleep(3600)
            yield None
        finally:
            closed.append(True)

    admission = Admission(AdmissionLimits(queue_timeout=0.05))
    with pytest.raises(APIError, match="queue timeout") as caught:
        asyncio.run(admission.first_output(never_starts(), 10))
    assert caught.value.kind.value.status == 503 and closed == [True]
    assert admission.num_waiting_requests == 0


# -- requests the engine can never run -------------------------------------------------


def cpu_seconds(pid: int) -> float:
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def assert_refused_for_n_then_served_and_idle(server, n: int, most: int) -> None:
    for stream in (False, True):
        refused = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(n=n, stream=stream), timeout=30)
        assert refused.status_code == 422, refused.text
        error = refused.json()["error"]
        assert error["param"] == "n" and f"at most {most} sequences" in error["message"]
    started = time.monotonic()
    reply = httpx.post(f"{server.base_url}/v1/chat/completions", json=chat_body(max_tokens=1), timeout=30)
    assert reply.status_code == 200 and time.monotonic() - started < 5
    engine = server.engine_pid()
    time.sleep(0.5)  # the last step's outputs and stats leave the engine
    before = cpu_seconds(engine)
    time.sleep(2)
    assert cpu_seconds(engine) - before < 0.2, "the engine process spins while it has nothing to do"


def test_n_over_the_share_of_one_request_with_the_defaults_is_422_and_the_next_request_is_served(server):
    """--max-seqs-per-request defaults to a quarter of --max-num-seqs (64): n 64 once took every sequence."""
    assert_refused_for_n_then_served_and_idle(server, n=17, most=16)
    assert_refused_for_n_then_served_and_idle(server, n=64, most=16)


def test_n_over_max_num_seqs_of_1_is_422_and_the_next_request_is_served(one_at_a_time):
    assert_refused_for_n_then_served_and_idle(one_at_a_time, n=2, most=1)


def test_the_queue_timeout_counts_the_wait_to_be_scheduled_not_the_prompt_computing():
    """A prompt that takes longer to compute than the queue timeout, on an idle server: never a 503."""
    server = RunningServer(["--queue-timeout", "0.2", "--max-num-batched-tokens", "32", "--kv-cache-tokens", "4096"])
    try:
        started = time.monotonic()
        reply = httpx.post(f"{server.base_url}/v1/chat/completions", timeout=120,
                           json=chat_body("Summarize: " + "the cat sat on the mat " * 120, max_tokens=1, stream=True))
        took = time.monotonic() - started
        assert reply.status_code == 200, reply.text
        assert took > 0.6, f"the prompt took {took:.2f} s: too fast to show anything; make it longer"
    finally:
        server.stop()


def test_the_engines_notice_that_a_request_is_scheduled_stops_the_queue_clock():
    async def scheduled_then_slow():
        yield RequestOutput("r", 10, [])  # scheduled: its prompt is being computed
        await asyncio.sleep(0.3)  # longer than the queue timeout
        yield RequestOutput("r", 10, [ChoiceDelta(0, "hi", [5])])

    admission = Admission(AdmissionLimits(queue_timeout=0.05))
    first = asyncio.run(admission.first_output(scheduled_then_slow(), 10))
    assert first.deltas[0].text == "hi" and admission.num_waiting_requests == 0
