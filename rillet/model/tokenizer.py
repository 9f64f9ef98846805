"""A tokenizer built from the GGUF's own vocabulary and merges with the `tokenizers` library."""
from __future__ import annotations

import gguf
from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from rillet.model.errors import ModelLoadError
from rillet.model.gguf_loader import field

# The regex of Llama 3 style byte-level BPE pre-tokenizers (llama.cpp's "llama-bpe" and kin).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_CONTROL, _USER_DEFINED = 3, 4


def _pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in ("smollm", "starcoder", "refact"):
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    if pre in ("llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe"):
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(_LLAMA3_SPLIT), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    return byte_level


class Tokenizer:
    def __init__(self, backend: HFTokenizer, tokens: list[str], bos_token_id: int | None, eos_token_id: int | None,
                 add_bos_token: bool, stop_token_ids: frozenset[int]) -> None:
        self._backend = backend
        self._tokens = tokens
        self.vocab_size = len(tokens)
        self.bos_token_id = bos_token_id
        self.eos_token_id = eos_token_id
        self.bos_token = tokens[bos_token_id] if bos_token_id is not None else ""
        self.eos_token = tokens[eos_token_id] if eos_token_id is not None else ""
        self.add_bos_token = add_bos_token
        self.stop_token_ids = stop_token_ids

    @classmethod
    def from_gguf(cls, reader: gguf.GGUFReader) -> Tokenizer:
        kind = field(reader, "tokenizer.ggml.model")
        if kind != "gpt2":
            raise ModelLoadError(f"unsupported tokenizer model {kind!r} (supported: byte-level BPE, 'gpt2')")
        tokens: list[str] = field(reader, "tokenizer.ggml.tokens")
        token_types: list[int] = field(reader, "tokenizer.ggml.token_type", [1] * len(tokens))
        merges = [tuple(m.split(" ", 1)) for m in field(reader, "tokenizer.ggml.merges", [])]
        vocab = {token: i for i, token in enumerate(tokens)}
        backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
        backend.pre_tokenizer = _pre_tokenizer(field(reader, "tokenizer.ggml.pre"))
        backend.decoder = decoders.ByteLevel()
        backend.add_special_tokens([
            AddedToken(tokens[i], special=True, normalized=False)
            for i, kind in enumerate(token_types) if kind in (_CONTROL, _USER_DEFINED)
        ])
        bos = field(reader, "tokenizer.ggml.bos_token_id")
        eos = field(reader, "tokenizer.ggml.eos_token_id")
        stops = {int(eos)} if eos is not None else set()
        eot = field(reader, "tokenizer.ggml.eot_token_id")
        if eot is not None:
            stops.add(int(eot))
        # Chat models end a turn with their end-of-turn token even where the file names only eos.
        stops.update(vocab[t] for t in _END_OF_TURN_TOKENS if t in vocab and token_types[vocab[t]] == _CONTROL)
        return cls(backend, tokens, None if bos is None else int(bos), None if eos is None else int(eos),
                   bool(field(reader, "tokenizer.ggml.add_bos_token", False)), frozenset(stops))

    def encode(self, text: str) -> list[int]:
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if self.add_bos_token and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(ids, skip_special_tokens=skip_special_tokens)

    def convert_ids_to_tokens(self, ids: list[int]) -> list[str]:
        return [self._tokens[i] for i in ids]
