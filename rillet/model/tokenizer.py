"""A tokenizer built from the GGUF's own vocabulary and merges with the `tokenizers` library."""
from __future__ import annotations

import functools
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from tokenizers import AddedToken, Regex, decoders, models, pre_tokenizers
from tokenizers import Tokenizer as HFTokenizer

from rillet.model.errors import ModelLoadError
from rillet.model.gguf_file import GGUFFile

# The split regex of Llama 3 style byte-level BPE (llama.cpp's "llama-bpe" and kin).
_LLAMA3_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                 r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# Qwen 2 and 3's split: Llama 3's, with every digit apart.
_QWEN2_SPLIT = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*"
                r"|\s*[\r\n]+|\s+(?!\S)|\s+")
# llama.cpp pre-tokenizer names that split every digit apart before GPT-2's byte-level split.
_DIGIT_SPLIT_PRES = ("smollm", "starcoder", "refact", "command-r", "codeshell", "exaone", "minerva-7b")
_LLAMA3_PRES = ("llama3", "llama-bpe", "llama-v3", "dbrx", "smaug-bpe", "falcon3", "pixtral")
_QWEN2_PRES = ("qwen2", "deepseek-r1-qwen")
_END_OF_TURN_TOKENS = ("<|im_end|>", "<|eot_id|>", "<end_of_turn>", "<|end|>", "<|endoftext|>")
_NORMAL, _CONTROL, _USER_DEFINED, _BYTE = 1, 3, 4, 6
_SPACE = "\u2581"  # SentencePiece's visible space


def _byte_level_pre_tokenizer(pre: str | None) -> pre_tokenizers.PreTokenizer:
    byte_level = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if pre in _DIGIT_SPLIT_PRES:
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), byte_level])
    split = _LLAMA3_SPLIT if pre in _LLAMA3_PRES else _QWEN2_SPLIT if pre in _QWEN2_PRES else None
    if split is not None:
        return pre_tokenizers.Sequence([
            pre_tokenizers.Split(Regex(split), behavior="isolated", invert=False),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ])
    if pre not in (None, "default", "gpt2", "gpt-2"):
        raise ModelLoadError(f"unsupported byte-level pre-tokenizer {pre!r}")
    return byte_level


def _byte_level_backend(file: GGUFFile, tokens: list[str]) -> HFTokenizer:
    merges = [tuple(m.split(" ", 1)) for m in file.get("tokenizer.ggml.merges", [])]
    vocab = {token: i for i, token in enumerate(tokens)}
    backend = HFTokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False, byte_fallback=False))
    backend.pre_tokenizer = _byte_level_pre_tokenizer(file.get("tokenizer.ggml.pre"))
    backend.decoder = decoders.ByteLevel()
    return backend


def _merges_from_scores(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple[str, str]]:
    """SentencePiece BPE merges the pair whose joined piece scores highest; as ranked merges
    that is every split of a normal piece into two known pieces, ordered by the piece's score."""
    vocab = {token: i for i, token in enumerate(tokens)}
    ranked = []
    for i, piece in enumerate(tokens):
        if types[i] != _NORMAL or len(piece) < 2:
            continue
        for cut in range(1, len(piece)):
            left, right = piece[:cut], piece[cut:]
            if left in vocab and right in vocab:
                ranked.append((-scores[i], vocab[left], vocab[right], left, right))
    return [(left, right) for *_, left, right in sorted(ranked)]


def _sentencepiece_backend(file: GGUFFile, tokens: list[str], types: list[int]) -> HFTokenizer:
    scores = file.get("tokenizer.ggml.scores", [0.0] * len(tokens))
    unk_id = file.get("tokenizer.ggml.unknown_token_id")
    vocab = {token: i for i, token in enumerate(tokens)}
    bpe = models.BPE(vocab=vocab, merges=_merges_from_scores(tokens, scores, types),
                     unk_token=None if unk_id is None else tokens[unk_id], fuse_unk=True, byte_fallback=True)
    backend = HFTokenizer(bpe)
    # llama.cpp puts a space before the text and after each special token ("always").
    prepend = "always" if file.get("tokenizer.ggml.add_space_prefix", True) else "never"
    backend.pre_tokenizer = pre_tokenizers.Metaspace(replacement=_SPACE, prepend_scheme=prepend, split=False)
    steps = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prepend == "always":
        steps.append(decoders.Strip(" ", 1, 0))
    backend.decoder = decoders.Sequence(steps)
    return backend


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
        # The vocabulary's added tokens (control and user-defined) by their text: each is matched whole
        # in a text, and a grammar names it by its id (llguidance takes them for special tokens).
        self.added_tokens: dict[str, int] = {}
        # Byte-level BPE spells each byte as one printable character; this maps them back.
        self._byte_of_char: dict[str, int] | None = None
        # SentencePiece-style pieces: "\u2581" is a space, "<0xAB>" a byte.
        self._sentencepiece = False

    @classmethod
    def from_gguf(cls, file: GGUFFile) -> Tokenizer:
        kind = file.get("tokenizer.ggml.model")
        tokens: list[str] = file.get("tokenizer.ggml.tokens") or []
        if not tokens:
            raise ModelLoadError("the GGUF file has no tokenizer vocabulary (tokenizer.ggml.tokens)")
        types: list[int] = file.get("tokenizer.ggml.token_type", [_NORMAL] * len(tokens))
        if kind == "gpt2":
            backend = _byte_level_backend(file, tokens)
        elif kind == "llama":
            backend = _sentencepiece_backend(file, tokens, types)
        else:
            raise ModelLoadError(f"unsupported tokenizer model {kind!r} (supported: 'gpt2' byte-level BPE, 'llama')")
        # Both kinds encode as one piece wherever they appear; only control tokens are left out of
        # decoded text (llama.cpp prints user-defined ones).
        backend.add_tokens([AddedToken(tokens[i], special=token_type == _CONTROL, normalized=False)
                            for i, token_type in enumerate(types) if token_type in (_CONTROL, _USER_DEFINED)])
        bos, eos = file.get("tokenizer.ggml.bos_token_id"), file.get("tokenizer.ggml.eos_token_id")
        tokenizer = cls(backend, tokens, bos, eos, bool(file.get("tokenizer.ggml.add_bos_token", kind == "llama")),
                        _stop_token_ids(file, tokens, types))
        tokenizer.added_tokens = {token: i for i, token in enumerate(tokens) if types[i] in (_CONTROL, _USER_DEFINED)}
        tokenizer._set_token_spelling("gpt2" if kind == "gpt2" else "sentencepiece")
        return tokenizer

    @classmethod
    def from_hf_folder(cls, folder: Path) -> Tokenizer:
        """tokenizer.json as is; special tokens and add_bos_token from tokenizer_config.json."""
        if not (folder / "tokenizer.json").is_file():
            raise ModelLoadError(f"{folder} has no tokenizer.json")
        backend = HFTokenizer.from_file(str(folder / "tokenizer.json"))
        settings = _read_json(folder / "tokenizer_config.json")
        tokens = [backend.id_to_token(i) or "" for i in range(backend.get_vocab_size(with_added_tokens=True))]

        def token_id(key: str) -> int | None:
            token = settings.get(key)
            token = token.get("content") if isinstance(token, dict) else token
            return None if token is None else backend.token_to_id(token)

        bos, eos = token_id("bos_token"), token_id("eos_token")
        eos_ids = _read_json(folder / "generation_config.json").get("eos_token_id", [])
        stops = {eos, *(eos_ids if isinstance(eos_ids, list) else [eos_ids])} - {None}
        specials = {t.content for t in backend.get_added_tokens_decoder().values() if t.special}
        stops.update(backend.token_to_id(t) for t in _END_OF_TURN_TOKENS if t in specials)
        # Without add_bos_token in the config, the tokenizer.json post-processor says whether bos leads.
        add_bos = settings.get("add_bos_token", bos is not None and backend.encode("").ids[:1] == [bos])
        tokenizer = cls(backend, tokens, bos, eos, bool(add_bos), frozenset(stops))
        tokenizer.added_tokens = {t.content: i for i, t in backend.get_added_tokens_decoder().items()}
        decoder = json.dumps(json.loads(backend.to_str()).get("decoder"))
        tokenizer._set_token_spelling("gpt2" if '"ByteLevel"' in decoder else
                                      "sentencepiece" if '"ByteFallback"' in decoder or _SPACE in decoder else None)
        return tokenizer

    def _set_token_spelling(self, kind: str | None) -> None:
        """How the vocabulary spells a token's bytes: byte-level BPE ("gpt2"), SentencePiece, or
        neither (token_bytes then decodes the token)."""
        if kind == "gpt2":
            self._byte_of_char = {char: byte for byte, char in _byte_level_alphabet().items()}
        self._sentencepiece = kind == "sentencepiece"

    @property
    def max_chars_per_token(self) -> int | None:
        """The most characters of text one token can stand for, of those the tokenizer keeps (see
        fewest_tokens); None where it gives no such bound."""
        bound = self._size_bound
        return None if bound is None else bound[0]

    def fewest_tokens(self, text: str) -> int | None:
        """The fewest tokens `text` can be, found from its length alone: its characters that every
        tokenization keeps, over max_chars_per_token. None where the tokenizer may read several
        characters as one token's worth and less (a normalizer that drops or replaces them, a
        pre-tokenizer that drops whitespace, unknown characters fused into one token or dropped)."""
        bound = self._size_bound
        if bound is None:
            return None
        per_token, dropped = bound
        kept = len(text) - sum(text.count(char) for char in dropped)
        return -(-kept // per_token)

    @functools.cached_property
    def _size_bound(self) -> tuple[int, frozenset[str]] | None:
        """(max_chars_per_token, the characters that become no token at all), or None."""
        config = json.loads(self._backend.to_str())
        model = config.get("model") or {}
        factor = _normalizer_factor(config.get("normalizer"))
        dropped = self._dropped_chars(model)
        added_tokens = config.get("added_tokens", [])
        if factor is None or dropped is None or _drops_text(config.get("pre_tokenizer")) or self._fuses_unknown(model) \
                or any(token.get("lstrip") or token.get("rstrip") for token in added_tokens):  # they take in blanks
            return None
        longest = max((len(self.token_bytes(i)) for i in range(self.vocab_size)), default=1)
        added = max((len(token["content"]) for token in added_tokens), default=1)
        return factor * max(longest, added, 1), dropped

    def _fuses_unknown(self, model: dict) -> bool:
        """Whether a run of characters outside the vocabulary can become a single token."""
        if model.get("type") == "BPE":
            return model.get("unk_token") is not None and bool(model.get("fuse_unk")) \
                and not self._falls_back_to_bytes(model)
        if model.get("type") == "Unigram":  # it fuses unknown characters, always
            return model.get("unk_id") is not None and not self._falls_back_to_bytes(model)
        return True  # WordPiece reads a long word as one [UNK], WordLevel any unknown word

    def _dropped_chars(self, model: dict) -> frozenset[str] | None:
        """The characters that become no token: a byte-level vocabulary may lack some bytes' tokens
        (SmolLM2's lacks six ASCII control characters', such as \x16), and BPE drops what it has no
        token for. None where a character of several bytes could vanish, or where it cannot be told."""
        if self._byte_of_char is not None:
            vocabulary = set(self._tokens)
            missing = {byte for char, byte in self._byte_of_char.items() if char not in vocabulary}
            if any(0x80 <= byte < 0xC0 for byte in missing):  # a continuation byte: some whole characters
                return None
            return frozenset(chr(byte) for byte in missing if byte < 0x80)
        if model.get("type") == "BPE" and model.get("unk_token") is None and not self._falls_back_to_bytes(model):
            return None
        return frozenset()

    def _falls_back_to_bytes(self, model: dict) -> bool:
        return bool(model.get("byte_fallback")) and self._backend.token_to_id("<0x00>") is not None

    def encode(self, text: str) -> list[int]:
        ids = self._backend.encode(text, add_special_tokens=False).ids
        if self.add_bos_token and self.bos_token_id is not None and (not ids or ids[0] != self.bos_token_id):
            ids = [self.bos_token_id, *ids]
        return ids

    def decode(self, ids: Iterable[int], skip_special_tokens: bool = True) -> str:
        return self._backend.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def backend_json(self) -> str:
        """The `tokenizers` tokenizer as JSON, for libraries that build their own view of the
        vocabulary (the grammar library of constrained decoding)."""
        return self._backend.to_str()

    def convert_ids_to_tokens(self, ids: Iterable[int]) -> list[str]:
        return [self._tokens[i] for i in ids]

    def token_bytes(self, token_id: int) -> bytes:
        """The bytes one token stands for, as it stands in a longer text (a SentencePiece piece
        keeps its leading space); a multi-byte character may span several tokens."""
        token = self._tokens[token_id]
        if self._byte_of_char is not None and all(char in self._byte_of_char for char in token):
            return bytes(self._byte_of_char[char] for char in token)
        if self._sentencepiece:
            if len(token) == 6 and token.startswith("<0x") and token.endswith(">"):
                return bytes([int(token[3:5], 16)])
            return token.replace(_SPACE, " ").encode()
        return self.decode([token_id], skip_special_tokens=False).encode()


# Normalizers that never make a text shorter, and those that compose characters: one composed
# character stands for at most 4 code points (U+1F82 is four in NFD).
_KEEPS_LENGTH = frozenset({"Prepend", "NFD", "NFKD", "Lowercase"})
_COMPOSES = frozenset({"NFC", "NFKC"})


def _normalizer_factor(normalizer: dict | None) -> int | None:
    """How many characters of the text one character after the normalizer may stand for; None
    where it may drop characters or replace them with fewer."""
    if normalizer is None:
        return 1
    kind = normalizer.get("type")
    if kind == "Sequence":
        factor = 1
        for step in normalizer.get("normalizers", []):
            step_factor = _normalizer_factor(step)
            if step_factor is None:
                return None
            factor *= step_factor
        return factor
    if kind in _KEEPS_LENGTH:
        return 1
    if kind in _COMPOSES:
        return 4
    pattern = (normalizer.get("pattern") or {}).get("String")
    if kind == "Replace" and pattern is not None and len(normalizer.get("content", "")) >= len(pattern):
        return 1
    return None


def _drops_text(pre_tokenizer: dict | None) -> bool:
    """Whether the pre-tokenizer (or one in its sequence) leaves characters out of every token."""
    if pre_tokenizer is None:
        return False
    kind = pre_tokenizer.get("type")
    if kind == "Sequence":
        return any(_drops_text(step) for step in pre_tokenizer.get("pretokenizers", []))
    return kind in ("Whitespace", "WhitespaceSplit", "BertPreTokenizer", "CharDelimiterSplit") or \
        (kind == "Split" and pre_tokenizer.get("behavior") == "Removed")


def _byte_level_alphabet() -> dict[int, str]:
    """GPT-2's byte-to-character table: printable bytes stand for themselves, the rest are
    shifted past 255 so that no byte is whitespace or a control character in the vocabulary."""
    printable = [*range(ord("!"), ord("~") + 1), *range(ord("¡"), ord("¬") + 1), *range(ord("®"), ord("ÿ") + 1)]
    table = {byte: chr(byte) for byte in printable}
    shifted = (byte for byte in range(256) if byte not in table)
    table.update((byte, chr(256 + n)) for n, byte in enumerate(shifted))
    return table


def _stop_token_ids(file: GGUFFile, tokens: list[str], types: list[int]) -> frozenset[int]:
    stops = {int(file.get(key)) for key in ("tokenizer.ggml.eos_token_id", "tokenizer.ggml.eot_token_id")
             if file.get(key) is not None}
    # Chat models end a turn with their end-of-turn token even where the file names only eos.
    ids = {token: i for i, token in enumerate(tokens) if types[i] == _CONTROL}
    stops.update(ids[t] for t in _END_OF_TURN_TOKENS if t in ids)
    return frozenset(stops)


def _read_json(path: Path) -> dict[str, Any]:
    try:
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else {}
    except (OSError, ValueError) as error:
        raise ModelLoadError(f"cannot read {path}: {' '.join(str(error).split())}") from None
