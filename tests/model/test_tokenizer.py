from __future__ import annotations

import pytest

from rillet.model.gguf_loader import open_gguf
from rillet.model.tokenizer import Tokenizer
from tests.model.tiny_gguf import write_gguf

SAMPLES = [
    "Hello, world!",
    "  leading spaces,   runs of spaces\t\ttabs\n\n\nnewlines  ",
    "Windows\r\nline ends\r\n\r\n and trailing space ",
    "def fib(n):\n    return n if n < 2 else fib(n - 1) + fib(n - 2)  # recursion\n",
    "Crème brûlée, naïve café, Ångström, señor, e\u0301 (combining)",
    "中文分词测试：今天天气很好。日本語もテストします。",
    "Emoji 🙂👍🏽🇫🇷 and ZWJ 👩‍💻",
    "Numbers 1234567890 and 3.14159, 1e-9, 2024-05-01",
    "I'm sure they'll say we've DON'T",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "<|im_end|><|im_start|><|endoftext|>text right after",
]


@pytest.mark.parametrize("text", SAMPLES)
def test_token_ids_equal_transformers(ours, reference_tokenizer, text):
    assert ours.tokenizer.encode(text) == reference_tokenizer.encode(text, add_special_tokens=False)


@pytest.mark.parametrize("text", SAMPLES)
def test_decode_round_trips(ours, text):
    ids = ours.tokenizer.encode(text)
    assert ours.tokenizer.decode(ids, skip_special_tokens=False) == text


def test_decode_skips_special_tokens(ours, reference_tokenizer):
    ids = ours.tokenizer.encode(SAMPLES[9])
    assert ours.tokenizer.decode(ids) == reference_tokenizer.decode(ids, skip_special_tokens=True) == "user\nHi there\nassistant\n"


def test_special_tokens_come_from_the_file(ours):
    tok = ours.tokenizer
    assert tok.convert_ids_to_tokens([tok.eos_token_id]) == ["<|im_end|>"] and tok.eos_token == "<|im_end|>"
    assert tok.encode("<|im_start|>") == [1] and tok.bos_token_id == 1
    assert 2 in tok.stop_token_ids
    assert tok.vocab_size == 49152


@pytest.fixture(scope="module")
def sentencepiece_gguf(tmp_path_factory):
    return write_gguf(tmp_path_factory.mktemp("spm") / "spm.gguf", tokenizer="llama")


@pytest.mark.parametrize("text", ["hello world", " hello  world!", "hello, worldé", "héllo wörld 日本",
                                  "hello<|user|> world", ""])
def test_sentencepiece_vocab_equals_transformers(sentencepiece_gguf, text):
    transformers = pytest.importorskip("transformers")
    reference = transformers.AutoTokenizer.from_pretrained(sentencepiece_gguf.parent, gguf_file=sentencepiece_gguf.name)
    ours = Tokenizer.from_gguf(open_gguf(sentencepiece_gguf))
    ids = ours.encode(text)
    assert ids == reference.encode(text)
    assert ours.decode(ids) == reference.decode(ids, skip_special_tokens=True)


def test_sentencepiece_prefixes_a_space_after_special_tokens_like_llama_cpp(sentencepiece_gguf):
    ours = Tokenizer.from_gguf(open_gguf(sentencepiece_gguf))
    assert ours.convert_ids_to_tokens(ours.encode("<|user|>hello")) == ["<s>", "<|user|>", "\u2581h", "el", "lo"]
