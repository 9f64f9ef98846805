"""Sampling fields seen from a client: each changes the answer the way OpenAI documents."""
from __future__ import annotations

import concurrent.futures

import pytest

from rillet.model import default_model_path
from rillet.model.gguf_file import open_gguf
from rillet.model.tokenizer import Tokenizer
from tests.api.helpers import chat_body, stream_events, stream_text

# Prompts on which the greedy answer of the default model repeats itself.
REPEATS_WORDS = "List the numbers: one, one, one, one, one, one, one,"
REPEATS_PHRASES = "Repeat after me: la la la la la la la la la la"


def distinct_ratio(text: str) -> float:
    words = text.split()
    return len(set(words)) / max(1, len(words))


def test_penalties_reduce_repetition(client):
    def ratio(prompt: str, **penalties) -> float:
        body = chat_body(prompt, max_tokens=48, logit_bias={"0": -100, "2": -100}, **penalties)
        return distinct_ratio(client.chat.completions.create(**body).choices[0].message.content)

    assert ratio(REPEATS_WORDS) < 0.3
    assert ratio(REPEATS_WORDS, frequency_penalty=2.0) > ratio(REPEATS_WORDS) + 0.3
    assert ratio(REPEATS_PHRASES, presence_penalty=2.0) > ratio(REPEATS_PHRASES) + 0.2


@pytest.fixture(scope="module")
def tokenizer():
    return Tokenizer.from_gguf(open_gguf(default_model_path()))


def first_token(http, **fields) -> dict:
    body = chat_body("Name a color.", logprobs=True, **fields)
    return http.post("/v1/chat/completions", json=body).json()["choices"][0]["logprobs"]["content"]


def test_logit_bias_minus_100_bans_a_token(http, tokenizer):
    [entry] = first_token(http, max_tokens=1, top_logprobs=2)
    best, runner_up = entry["top_logprobs"][0]["token"], entry["top_logprobs"][1]["token"]
    [best_id] = tokenizer.encode(best)
    [banned] = first_token(http, max_tokens=1, logit_bias={str(best_id): -100})
    assert banned["token"] == runner_up


def test_logit_bias_100_forces_a_token(http, tokenizer):
    forced_id = tokenizer.encode(" zebra")[0]
    entries = first_token(http, max_tokens=3, logit_bias={str(forced_id): 100})
    assert [e["token"] for e in entries] == [tokenizer.decode([forced_id])] * 3


def test_seed_gives_the_same_text_with_other_requests_in_flight(client):
    seeded = chat_body("Invent a name for a cat.", temperature=1.0, max_tokens=16, seed=1234)

    def ask(body: dict) -> str:
        return client.chat.completions.create(**body).choices[0].message.content

    alone = ask(seeded)
    others = [chat_body(f"Tell me about topic {i}.", temperature=1.0, max_tokens=24) for i in range(4)]
    with concurrent.futures.ThreadPoolExecutor(5) as pool:
        results = list(pool.map(ask, [*others[:2], seeded, *others[2:]]))
    assert results[2] == alone


def test_stop_string_spanning_two_tokens_never_appears_in_any_chunk(http):
    base = chat_body("Explain what a library is.", max_tokens=24, logprobs=True)
    reference = http.post("/v1/chat/completions", json=base).json()["choices"][0]
    tokens = [e["token"] for e in reference["logprobs"]["content"]]
    # A stop string made of the end of one token and the start of the next.
    k = next(i for i in range(3, len(tokens) - 1) if len(tokens[i].strip()) >= 2 and len(tokens[i + 1].strip()) >= 2)
    stop = tokens[k][-2:] + tokens[k + 1][:2]
    text = reference["message"]["content"]
    expected = text[:text.index(stop)]
    body = chat_body("Explain what a library is.", max_tokens=24, stop=[stop])
    lines, chunks = stream_events(http, body)
    assert stream_text(chunks) == expected
    assert all(stop not in line for line in lines)
    assert chunks[-1]["choices"][0]["finish_reason"] == "stop"


def test_a_tiny_temperature_answers_as_temperature_zero(client):
    """`"temperature": 1e-300` once overflowed the logits and answered "ectableectable..."."""
    greedy = client.chat.completions.create(**chat_body("Name three colors.", max_tokens=12, temperature=0))
    for temperature in (1e-300, 1e-9):
        tiny = client.chat.completions.create(**chat_body("Name three colors.", max_tokens=12,
                                                          temperature=temperature, seed=1))
        assert tiny.choices[0].message.content == greedy.choices[0].message.content
