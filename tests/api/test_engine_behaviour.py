"""The engine's promises, seen from outside: batching changes no answer, prefixes are reused,
clients that go away stop costing compute, and a long prompt does not stall running streams."""
from __future__ import annotations

import concurrent.futures
import threading
import time

import httpx
import pytest

from tests.api.helpers import chat_body

LONG_SYSTEM_PROMPT = " ".join(f"Rule {i}: always be kind to the number {i}." for i in range(60))


def wait_until_all_blocks_free(server, timeout: float = 10.0) -> None:
    """Until no sequence is left in the engine and every block is free. The engine's metrics are a
    snapshot taken after each step and each batch of commands: a request taken in but not yet
    scheduled holds no block, and shows only as a waiting sequence."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if (server.metric("rillet_running_sequences") == server.metric("rillet_waiting_sequences") == 0
                and server.metric("rillet_kv_blocks_free") == server.metric("rillet_kv_blocks_total")):
            return
        time.sleep(0.05)
    pytest.fail(f"KV blocks still held: {server.metric('rillet_kv_blocks_free')} free "
                f"of {server.metric('rillet_kv_blocks_total')}")


def test_16_concurrent_greedy_requests_equal_each_alone(client):
    topics = ["rivers", "bread", "owls", "chess", "rain", "glass", "bees", "ships",
              "salt", "maps", "ice", "jazz", "moss", "kites", "tea", "wolves"]
    bodies = [chat_body(f"Write one sentence about {t}.", max_tokens=16) for t in topics]

    def answer(body: dict) -> str:
        return client.chat.completions.create(**body).choices[0].message.content

    alone = [answer(b) for b in bodies]
    with concurrent.futures.ThreadPoolExecutor(16) as pool:
        together = list(pool.map(answer, bodies))
    assert together == alone


def test_second_request_with_same_system_prompt_computes_only_new_tokens(client, server):
    def ask(question: str) -> int:
        before = server.metric("rillet_prompt_tokens_computed_total")
        reply = client.chat.completions.create(**chat_body(max_tokens=1, messages=[
            {"role": "system", "content": LONG_SYSTEM_PROMPT}, {"role": "user", "content": question}]))
        return reply.usage.prompt_tokens, server.metric("rillet_prompt_tokens_computed_total") - before

    first_prompt, first_computed = ask("Which rule is about 7?")
    second_prompt, second_computed = ask("Is rule 12 kind?")
    assert first_prompt > 600 and first_computed == first_prompt
    # Only the tail after the last shared full block is computed again.
    assert second_computed < 40
    assert server.metric("rillet_prefix_cache_hit_tokens_total") >= second_prompt - second_computed


def test_disconnect_mid_stream_frees_blocks(server):
    with httpx.Client(base_url=server.base_url, timeout=60) as http:
        with http.stream("POST", "/v1/chat/completions",
                         json=chat_body("Write a very long essay about oceans.", max_tokens=2000, stream=True,
                                        logit_bias={"0": -100, "2": -100})) as response:
            for count, _ in enumerate(response.iter_lines()):
                if count > 5:
                    break
    wait_until_all_blocks_free(server)
    generated = server.metric("rillet_generated_tokens_total")
    time.sleep(0.5)
    assert server.metric("rillet_generated_tokens_total") == generated


@pytest.mark.parametrize("stream", [True, False])
def test_disconnect_mid_prefill_stops_compute_and_frees_blocks(server, stream):
    prompt = "word " * 3500  # many prefill chunks
    before = server.metric("rillet_prompt_tokens_computed_total")
    body = chat_body(prompt, max_tokens=5, stream=stream)
    with pytest.raises(httpx.ReadTimeout):
        with httpx.Client(base_url=server.base_url, timeout=httpx.Timeout(60, read=0.6)) as http:
            with http.stream("POST", "/v1/chat/completions", json=body) as response:
                for line in response.iter_lines():
                    if "content" in line and '"role"' not in line:
                        pytest.fail("the prefill finished before the client left; make the prompt longer")
    wait_until_all_blocks_free(server)
    computed = server.metric("rillet_prompt_tokens_computed_total") - before
    assert computed < 3500
    time.sleep(0.5)
    assert server.metric("rillet_prompt_tokens_computed_total") - before == computed


def test_long_prompt_does_not_stall_a_running_stream(server):
    """A 1,500-token prompt is computed in chunks of 256, one a step, and each step also decodes the
    running stream: the stream goes on receiving tokens while the prompt is computed. Counted, not
    timed: how many of the stream's tokens arrive between the long request's start and its answer."""
    arrivals: list[float] = []
    window: list[float] = []

    def long_request() -> None:
        with httpx.Client(base_url=server.base_url, timeout=120) as http:
            window.append(time.monotonic())
            body = chat_body("Summarize: " + "the cat sat on the mat " * 250, max_tokens=1)
            assert http.post("/v1/chat/completions", json=body).status_code == 200
            window.append(time.monotonic())

    other = threading.Thread(target=long_request)
    with httpx.Client(base_url=server.base_url, timeout=120) as http:
        body = chat_body("Write a long story about a lighthouse.", max_tokens=300, stream=True,
                         logit_bias={"0": -100, "2": -100})
        with http.stream("POST", "/v1/chat/completions", json=body) as response:
            for line in response.iter_lines():
                if line.startswith("data: {"):
                    arrivals.append(time.monotonic())
                    if len(arrivals) == 10:
                        other.start()
                    if len(window) == 2 and arrivals[-1] > window[1] + 0.2:
                        break
    other.join()
    assert len(window) == 2, "the long request did not finish"
    during = [t for t in arrivals if window[0] <= t <= window[1]]
    # About one token per prefill chunk (6 of them); a prompt computed in one step would allow 1 or 2.
    assert len(during) >= 4, (len(during), window[1] - window[0])
