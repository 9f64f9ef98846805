"""Fuzzing against the real engine: a real server over a tiny random-weight model (256-token context),
a KV cache no larger than one context and at most 4 sequences at once, so that long prompts, n > 1,
preemption and waiting for a turn all come into play. Hypothesis draws batches of up to 6 requests
over n, max_tokens, logit_bias, stop, logprobs, sampling and message shapes, sent at once: each is
served or refused (400, 422), never a 500 or a 503, within a bound and well formed, and at the end
no sequence is left in the engine and every KV block is free.
(tests/api/test_fuzz.py fuzzes the schema in-process over a stub engine, thousands of bodies fast.)"""
from __future__ import annotations

import concurrent.futures
import json
import time

import httpx
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.api.test_engine_behaviour import wait_until_all_blocks_free
from tests.conftest import RunningServer
from tests.model.tiny_gguf import SPM_VOCAB_SIZE, tiny_llama_tensors, write_gguf

CONTEXT = 256
MAX_NUM_SEQS = 4
# Every request is answered within this long, however it is answered; no request of these waits
# long for its turn, so the queue timeout (60 s) must never be what answers it.
ANSWER_BOUND_SECONDS = 15

floats = st.floats(allow_nan=False, allow_infinity=False, allow_subnormal=False)
texts = st.text(st.characters(codec="utf-8", exclude_categories=["Cs"]), max_size=12)
content = st.one_of(texts, texts, st.text(alphabet="hello world, ", min_size=100, max_size=700),
                    st.lists(st.fixed_dictionaries({"type": st.just("text"), "text": texts}), min_size=1, max_size=3))
message = st.one_of(
    st.fixed_dictionaries({"role": st.sampled_from(["system", "user", "assistant"]), "content": content}),
    st.fixed_dictionaries({"role": st.just("assistant"), "function_call": st.fixed_dictionaries(
        {"name": st.just("lookup"), "arguments": st.just("{}")})}),
    st.fixed_dictionaries({"role": st.just("function"), "name": st.just("lookup"), "content": texts}))
options = st.fixed_dictionaries({}, optional={
    "n": st.integers(1, MAX_NUM_SEQS + 2),
    "max_tokens": st.one_of(st.integers(1, 40), st.integers(CONTEXT - 60, CONTEXT + 10)),
    "logit_bias": st.dictionaries(st.integers(0, SPM_VOCAB_SIZE + 5).map(str), st.sampled_from([-100, 100, 3.5]),
                                  max_size=4),
    "stop": st.one_of(texts, st.lists(texts, max_size=4)),
    "temperature": floats.filter(lambda t: 0 <= t <= 2), "top_p": st.sampled_from([0.0, 0.3, 1.0]),
    "presence_penalty": st.sampled_from([-2.0, 0.0, 1.5]), "frequency_penalty": st.sampled_from([-2.0, 0.5]),
    "seed": st.integers(0, 2 ** 40),
})


@st.composite
def request(draw) -> dict:
    """Mostly bodies the server serves (logprobs and stream options where they belong); the schema
    fuzzing covers the rest."""
    body = {"model": "tiny", "messages": draw(st.lists(message, min_size=1, max_size=4)), **draw(options)}
    if draw(st.booleans()):
        body["logprobs"] = True
        if draw(st.booleans()):
            body["top_logprobs"] = draw(st.integers(0, 5))
    if draw(st.booleans()):
        body["stream"] = True
        if draw(st.booleans()):
            body["stream_options"] = {"include_usage": draw(st.booleans())}
    return body


@pytest.fixture(scope="module")
def tiny_server(tmp_path_factory):
    path = write_gguf(tmp_path_factory.mktemp("tiny") / "tiny.gguf", tensors=tiny_llama_tensors(SPM_VOCAB_SIZE),
                      tokenizer="llama", context_length=CONTEXT)
    running = RunningServer(["--model", str(path), "--served-model-name", "tiny", "--max-num-seqs", str(MAX_NUM_SEQS),
                             "--kv-cache-tokens", str(CONTEXT), "--max-num-batched-tokens", "32",
                             "--max-queued-requests", "6"])
    yield running
    running.stop()


def answer(server, body: dict) -> None:
    started = time.monotonic()
    with httpx.Client(base_url=server.base_url, timeout=ANSWER_BOUND_SECONDS) as http:
        response = http.post("/v1/chat/completions", json=body)
    assert time.monotonic() - started < ANSWER_BOUND_SECONDS
    assert response.status_code != 500 and "Traceback" not in response.text, (body, response.text)
    if response.status_code >= 400:
        error = response.json()["error"]
        assert response.status_code in (400, 422), (body, response.text)
        assert isinstance(error["message"], str) and (error["code"] is None or isinstance(error["code"], str))
        return
    n = body.get("n", 1)
    if body.get("stream"):
        lines = [line for line in response.text.splitlines() if line]
        assert lines[-1] == "data: [DONE]" and '"error"' not in response.text, (body, response.text[-500:])
        chunks = [json.loads(line[len("data: "):]) for line in lines[:-1]]
        finishes = [c["index"] for chunk in chunks for c in chunk["choices"] if c["finish_reason"]]
        assert sorted(finishes) == list(range(n)), body
        usage = chunks[-1]["usage"]
    else:
        reply = response.json()
        assert [c["index"] for c in reply["choices"]] == list(range(n))
        assert all(c["finish_reason"] in ("stop", "length") for c in reply["choices"])
        usage = reply["usage"]
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]
    if "max_tokens" in body:
        assert usage["completion_tokens"] <= n * body["max_tokens"]


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(batch=st.lists(request(), min_size=1, max_size=6))
def test_batches_of_requests_against_the_real_engine(tiny_server, batch):
    with concurrent.futures.ThreadPoolExecutor(len(batch)) as pool:
        for future in [pool.submit(answer, tiny_server, body) for body in batch]:
            future.result()


def test_after_the_fuzzing_no_sequence_is_left_and_every_block_is_free(tiny_server):
    wait_until_all_blocks_free(tiny_server)
    assert tiny_server.process.poll() is None
    assert "internal error" not in tiny_server.output() and "failed in the engine" not in tiny_server.output()
