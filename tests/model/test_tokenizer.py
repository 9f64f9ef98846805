from __future__ import annotations

import pytest

SAMPLES = [
    "Hello, world!",
    "  leading spaces,   runs of spaces\t\ttabs\n\n\nnewlines  ",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # recursion\n",
    "Crème brûlée, naïve café, Ångström, señor",
    "中文分词测试：今天天气很好。",
    "Emoji 🙂👍🏽🇫🇷 and ZWJ 👩‍💻",
    "Numbers 1234567890 and 3.14159, 1e-9",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_token_ids_equal_transformers(ours, reference_tokenizer, text):
    assert ours.tokenizer.encode(text) == reference_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", SAMPLES)
def test_decode_round_trips(ours, text):
    ids = ours.tokenizer.encode(text)
    assert ours.tokenizer.decode(ids, skip_special_tokens=False) == text


def test_special_tokens_come_from_the_file(ours):
    tok = ours.tokenizer
    assert tok.convert_ids_to_tokens([tok.eos_token_id]) == ["<|im_end|>"]
    assert tok.encode("<|im_start|>") == [1]
    assert 2 in tok.stop_token_ids
    assert tok.vocab_size == 49152
