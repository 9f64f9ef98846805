from __future__ import annotations

from rillet.model import default_model_path, load_model
from tests.api.helpers import NO_END, access_lines, chat_body
from tests.conftest import MODEL_NAME

import pytest


@pytest.fixture(scope="module")
def rendered_prompt_tokens():
    """Counts tokens of a rendered conversation with the server's own template and tokenizer."""
    loaded = load_model(default_model_path())

    def count(messages: list[dict]) -> int:
        return len(loaded.tokenizer.encode(loaded.chat_template.render(messages)))

    return count


def test_non_stream_answers_with_sensible_text_and_real_usage(client, rendered_prompt_tokens):
    messages = [{"role": "user", "content": "What is the capital of France?"}]
    reply = client.chat.completions.create(model=MODEL_NAME, messages=messages, max_tokens=24, temperature=0)
    assert reply.id.startswith("chatcmpl-") and len(reply.id) > len("chatcmpl-") + 8
    assert reply.object == "chat.completion"
    assert reply.model == MODEL_NAME
    assert reply.system_fingerprint.startswith("fp_")
    choice = reply.choices[0]
    assert choice.message.role == "assistant"
    assert "Paris" in choice.message.content
    assert choice.finish_reason == "stop"
    assert reply.usage.prompt_tokens == rendered_prompt_tokens(messages)
    assert 0 < reply.usage.completion_tokens < 24
    assert reply.usage.total_tokens == reply.usage.prompt_tokens + reply.usage.completion_tokens


def test_max_tokens_cuts_with_finish_reason_length(client):
    reply = client.chat.completions.create(**chat_body("Write a long story about a dragon.", max_tokens=5))
    assert reply.choices[0].finish_reason == "length"
    assert reply.usage.completion_tokens == 5
    assert reply.choices[0].message.content


def test_max_completion_tokens_wins_over_max_tokens(client):
    reply = client.chat.completions.create(**chat_body("Write a long story.", max_tokens=20, max_completion_tokens=3))
    assert reply.usage.completion_tokens == 3


def test_n_gives_n_choices_and_counts_all_their_tokens(client):
    reply = client.chat.completions.create(**chat_body("Tell me a joke.", n=3, temperature=1.0, max_tokens=6, logit_bias=NO_END))
    assert [c.index for c in reply.choices] == [0, 1, 2]
    assert reply.usage.completion_tokens == 3 * 6
    assert all(c.finish_reason == "length" for c in reply.choices)


def test_temperature_zero_is_repeatable(client):
    first = client.chat.completions.create(**chat_body("Describe the sea.", max_tokens=16))
    second = client.chat.completions.create(**chat_body("Describe the sea.", max_tokens=16))
    assert first.choices[0].message.content == second.choices[0].message.content


def test_fingerprint_is_stable_and_created_is_recent(client):
    import time

    a = client.chat.completions.create(**chat_body(max_tokens=1))
    b = client.chat.completions.create(**chat_body(max_tokens=1))
    assert a.system_fingerprint == b.system_fingerprint
    assert a.id != b.id
    assert abs(a.created - time.time()) < 120


def first_words(client, **fields) -> list[str]:
    """The first token of each of 16 choices (the most one request may ask for by default), seeded so
    that the test is repeatable."""
    reply = client.chat.completions.create(**chat_body("Name a fruit.", n=16, max_tokens=1, seed=7, **fields))
    return [choice.message.content for choice in reply.choices]


def test_temperature_spreads_the_choices_and_zero_is_greedy(client):
    greedy = client.chat.completions.create(**chat_body("Name a fruit.", max_tokens=1)).choices[0].message.content
    assert set(first_words(client, temperature=0)) == {greedy}
    hot = first_words(client, temperature=2.0)
    assert len(set(hot)) >= 3, hot  # a field ignored (greedy, or a fixed temperature of 1) fails one or the other
    assert len(set(first_words(client, temperature=0.01))) == 1


def test_top_p_keeps_only_the_most_likely_tokens(client):
    greedy = client.chat.completions.create(**chat_body("Name a fruit.", max_tokens=1)).choices[0].message.content
    # At a temperature that spreads the choices, top_p near 0 keeps only the most likely token.
    assert set(first_words(client, temperature=2.0, top_p=1e-6)) == {greedy}
    assert len(set(first_words(client, temperature=2.0, top_p=1.0))) >= 3


def test_system_and_multi_turn_conversation(client, rendered_prompt_tokens):
    turns = [
        {"role": "system", "content": "You answer in one word."},
        {"role": "user", "content": "What color is the sky?"},
        {"role": "assistant", "content": "Blue."},
        {"role": "user", "content": "And grass?"},
    ]
    as_parts = [*turns[:3], {"role": "user", "content": [{"type": "text", "text": "And "},
                                                        {"type": "text", "text": "grass?"}]}]
    plain = client.chat.completions.create(model=MODEL_NAME, temperature=0, max_tokens=16, messages=turns)
    parts = client.chat.completions.create(model=MODEL_NAME, temperature=0, max_tokens=16, messages=as_parts)
    # Every turn reaches the prompt, and text parts are the same text as a string.
    assert plain.usage.prompt_tokens == parts.usage.prompt_tokens == rendered_prompt_tokens(turns)
    assert parts.choices[0].message.content == plain.choices[0].message.content
    alone = client.chat.completions.create(model=MODEL_NAME, temperature=0, max_tokens=16, messages=turns[3:])
    assert alone.usage.prompt_tokens < plain.usage.prompt_tokens


def test_stop_string_ends_the_text_before_it(client):
    body = chat_body("Count from one to ten, in words.", max_tokens=24)
    full = client.chat.completions.create(**body).choices[0].message.content
    stop = full.split()[2]
    stopped = client.chat.completions.create(**body, stop=[stop, "zzzz"]).choices[0]
    assert stopped.message.content == full[:full.index(stop)]
    assert stopped.finish_reason == "stop"


def test_same_seed_gives_the_same_sampled_text(client):
    body = chat_body("Invent a name for a cat.", temperature=1.0, max_tokens=12, seed=1234)
    first = client.chat.completions.create(**body).choices[0].message.content
    second = client.chat.completions.create(**body).choices[0].message.content
    assert first == second


def test_user_is_accepted_and_logged(client, server):
    client.chat.completions.create(**chat_body(max_tokens=1), user="tester-4711",
                                   extra_headers={"x-request-id": "user-is-logged"})
    assert [entry["user"] for entry in access_lines(server, "user-is-logged")] == ["tester-4711"]
