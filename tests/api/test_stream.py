from __future__ import annotations

from tests.api.helpers import NO_END, chat_body, stream_events, stream_text
from tests.conftest import MODEL_NAME


def test_sse_framing(http):
    lines, chunks = stream_events(http, chat_body("Tell me about cats.", max_tokens=10))
    assert all(line.startswith("data: ") for line in lines)
    assert lines[-1] == "data: [DONE]"
    assert lines.count("data: [DONE]") == 1
    assert len({c["id"] for c in chunks}) == 1 and chunks[0]["id"].startswith("chatcmpl-")
    assert len({c["created"] for c in chunks}) == 1
    assert all(c["object"] == "chat.completion.chunk" and c["model"] == MODEL_NAME for c in chunks)
    first, last = chunks[0]["choices"][0], chunks[-1]["choices"][0]
    assert first["delta"]["role"] == "assistant"
    assert last["delta"] == {} and last["finish_reason"] == "length"
    middle = [c["choices"][0] for c in chunks[1:-1]]
    assert all(set(m["delta"]) == {"content"} and m["finish_reason"] is None for m in middle)
    # usage only on the last chunk
    assert chunks[-1]["usage"]["completion_tokens"] == 10
    assert all("usage" not in c or c["usage"] is None for c in chunks[:-1])


def test_stream_text_equals_non_stream_text_at_temperature_zero(http):
    body = chat_body("Explain what a computer is.", max_tokens=24)
    whole = http.post("/v1/chat/completions", json=body).json()
    _, chunks = stream_events(http, body)
    assert stream_text(chunks) == whole["choices"][0]["message"]["content"]
    assert chunks[-1]["usage"] == whole["usage"]


def test_stream_with_n_choices_has_each_choice_framed(http):
    body = chat_body("Say something.", n=2, temperature=1.0, max_tokens=5, logit_bias=NO_END, seed=11)
    _, chunks = stream_events(http, body)
    whole = http.post("/v1/chat/completions", json=body).json()
    for index in (0, 1):
        mine = [c for chunk in chunks for c in chunk["choices"] if c["index"] == index]
        assert mine[0]["delta"] == {"role": "assistant", "content": ""}
        assert mine[-1]["delta"] == {} and mine[-1]["finish_reason"] == "length"
        # Seeded: each choice streams the text it has in the whole answer.
        assert stream_text(chunks, index) == whole["choices"][index]["message"]["content"]
    assert stream_text(chunks, 0) != stream_text(chunks, 1)
    assert chunks[-1]["usage"]["completion_tokens"] == 10


def test_include_usage_adds_a_final_usage_chunk(http):
    _, chunks = stream_events(http, chat_body(max_tokens=4, stream_options={"include_usage": True}))
    assert chunks[-1]["choices"] == [] and chunks[-1]["usage"]["completion_tokens"] == 4
    assert all(c["usage"] is None for c in chunks[:-1])


def test_openai_client_stream(client):
    body = chat_body("Count to three.", max_tokens=12)
    whole = client.chat.completions.create(**body)
    stream = client.chat.completions.create(**body, stream=True)
    pieces, reasons, usages = [], [], []
    for chunk in stream:
        usages.append(chunk.usage)
        for choice in chunk.choices:
            pieces.append(choice.delta.content or "")
            reasons.append(choice.finish_reason)
    assert "".join(pieces) == whole.choices[0].message.content
    assert len([p for p in pieces if p]) > 1  # streamed in pieces, not one lump
    assert reasons[-1] == whole.choices[0].finish_reason and set(reasons[:-1]) == {None}
    assert usages[-1] == whole.usage


def test_stream_with_stop_string_equals_non_stream(http):
    body = chat_body("List five fruits.", max_tokens=24)
    full = http.post("/v1/chat/completions", json=body).json()["choices"][0]["message"]["content"]
    body["stop"] = full.split()[3]
    whole = http.post("/v1/chat/completions", json=body).json()["choices"][0]
    _, chunks = stream_events(http, body)
    assert stream_text(chunks) == whole["message"]["content"] == full[:full.index(body["stop"])]
    assert chunks[-1]["choices"][0]["finish_reason"] == whole["finish_reason"] == "stop"
