from __future__ import annotations

import functools

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from rillet.model import default_model_path
from rillet.model.gguf_file import open_gguf
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


def test_a_qwen2_byte_level_vocabulary_splits_as_transformers_does(tmp_path):
    """Qwen's pre-tokenizer (llama.cpp's "qwen2": Llama 3's split with every digit apart), on the
    default model's vocabulary and merges written as a qwen2 GGUF file."""
    import gguf
    transformers = pytest.importorskip("transformers")
    source = open_gguf(default_model_path())
    path = tmp_path / "qwen.gguf"
    writer = gguf.GGUFWriter(path, "qwen2")
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2")
    writer.add_token_list(source.get("tokenizer.ggml.tokens"))
    writer.add_token_types(source.get("tokenizer.ggml.token_type"))
    writer.add_token_merges(source.get("tokenizer.ggml.merges"))
    writer.add_bos_token_id(1)
    writer.add_eos_token_id(2)
    writer.add_add_bos_token(False)
    for add in (writer.write_header_to_file, writer.write_kv_data_to_file, writer.write_tensors_to_file, writer.close):
        add()
    ours = Tokenizer.from_gguf(open_gguf(path))
    reference = transformers.AutoTokenizer.from_pretrained(tmp_path, gguf_file=path.name)
    for text in ["Numbers 1234567890 and 3.14159", "I'm sure they'll say we've DON'T", "  leading   spaces\n\n\nnewlines",
                 "中文分词测试", "x=12345;"]:
        assert ours.encode(text) == reference(text)["input_ids"], text
    # Every digit its own piece, where Llama 3's split keeps runs of three.
    assert len(ours.encode("1234567890")) == 10


# -- the most characters a token stands for: the server's bound on a prompt's size before tokenizing --

LONG_RUNS = ["#" * 1000, " " * 1000, "\n" * 500, "-=" * 400, "a " * 800, "𝕏" * 300, "e\u0301" * 400,
             "0" + "\x16" * 81, "\x16\x04" * 500]  # control characters SmolLM2 has no token for


def test_no_token_of_the_default_model_stands_for_more_than_max_chars_per_token(ours):
    tokenizer = ours.tokenizer
    assert tokenizer.max_chars_per_token == max(len(tokenizer.token_bytes(i)) for i in range(tokenizer.vocab_size))
    for text in SAMPLES + LONG_RUNS:
        assert tokenizer.fewest_tokens(text) <= len(tokenizer.encode(text)), repr(text)
    assert tokenizer.fewest_tokens("a " * 1000) == 25 and tokenizer.fewest_tokens("\x16" * 1000) == 0


@settings(max_examples=200, deadline=None)
@given(st.text(min_size=1, max_size=300) | st.builds(lambda s, n: s * n, st.text(min_size=1, max_size=4),
                                                    st.integers(1, 200)))
def test_a_text_never_holds_more_characters_than_its_tokens_can_stand_for(text):
    """Hypothesis found "0" and 81 of "\x16", which SmolLM2 reads as one token: the bound counts only
    the characters that every tokenization keeps."""
    tokenizer = _default_tokenizer()
    assert tokenizer.fewest_tokens(text) <= len(tokenizer.encode(text))


def test_the_sentencepiece_bound_holds(sentencepiece_gguf):
    tokenizer = Tokenizer.from_gguf(open_gguf(sentencepiece_gguf))
    assert tokenizer.max_chars_per_token is not None
    for text in SAMPLES + LONG_RUNS:
        assert tokenizer.fewest_tokens(text) <= len(tokenizer.encode(text)), repr(text)


def test_a_tokenizer_that_can_shrink_text_has_its_bound_widened_or_none():
    from tokenizers import Tokenizer as Backend
    from tokenizers import models, normalizers, pre_tokenizers

    vocab = {"a": 0, "b": 1, "abc": 2, "<unk>": 3}  # an unknown character is one <unk>: 1 character, 5 letters

    def built(normalizer=None, pre_tokenizer=None, model=None) -> Tokenizer:
        backend = Backend(model or models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
        if normalizer is not None:
            backend.normalizer = normalizer
        if pre_tokenizer is not None:
            backend.pre_tokenizer = pre_tokenizer
        return Tokenizer(backend, list(vocab), None, None, False, frozenset())

    assert built().max_chars_per_token == 5
    assert built(normalizers.NFC()).max_chars_per_token == 20  # a composed character is up to 4 in NFD
    spaces = normalizers.Sequence([normalizers.Prepend("▁"), normalizers.Replace(" ", "▁")])
    assert built(spaces).max_chars_per_token == 5
    assert built(normalizers.StripAccents()).max_chars_per_token is None
    assert built(pre_tokenizer=pre_tokenizers.Whitespace()).max_chars_per_token is None
    assert built(model=models.BPE(vocab={"a": 0, "<unk>": 1}, merges=[], unk_token="<unk>",
                                  fuse_unk=True)).max_chars_per_token is None
    # Without an unknown token, BPE drops what it has no token for: no bound from the length alone.
    assert built(model=models.BPE(vocab={"a": 0}, merges=[])).max_chars_per_token is None


@functools.cache
def _default_tokenizer() -> Tokenizer:
    return Tokenizer.from_gguf(open_gguf(default_model_path()))
