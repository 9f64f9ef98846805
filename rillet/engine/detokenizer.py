"""Turns a growing list of token ids into text pieces, one call per new token.

Byte-level tokenizers split multi-byte characters across tokens; decoding such a prefix
yields U+FFFD. A piece is therefore only released once its text no longer ends in U+FFFD,
and the window that is decoded again each time stays a few tokens long.

Special tokens are left out of the text, except those the request asks to see (shown): such a token
releases what is held before it and then its own text, and the window starts again after it.
"""
from __future__ import annotations

from typing import Protocol

REPLACEMENT_CHAR = "\ufffd"


class Decoder(Protocol):
    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str: ...


class IncrementalDetokenizer:
    __slots__ = ("_tokenizer", "_shown", "_ids", "_prefix_offset", "_read_offset")

    def __init__(self, tokenizer: Decoder, shown_token_ids: frozenset[int] = frozenset()) -> None:
        self._tokenizer = tokenizer
        self._shown = shown_token_ids
        self._ids: list[int] = []
        # _ids[_prefix_offset:_read_offset] is context already emitted, decoded again so
        # that tokenizers which change a token's text by its neighbour (leading spaces) agree.
        self._prefix_offset = 0
        self._read_offset = 0

    def add_token(self, token_id: int) -> str:
        """Appends one token and returns the text it completes ("" while a character is partial)."""
        if token_id in self._shown:
            held = self._release(final=True)
            self._ids.append(token_id)
            self._prefix_offset = self._read_offset = len(self._ids)
            return held + self._tokenizer.decode([token_id], skip_special_tokens=False)
        self._ids.append(token_id)
        return self._release(final=False)

    def flush(self) -> str:
        """Returns whatever is still held back; called once when the sequence ends."""
        return self._release(final=True)

    def _release(self, final: bool) -> str:
        if self._read_offset == len(self._ids):
            return ""
        decode = self._tokenizer.decode
        prefix_text = decode(self._ids[self._prefix_offset:self._read_offset])
        full_text = decode(self._ids[self._prefix_offset:])
        if not final and (len(full_text) <= len(prefix_text) or full_text.endswith(REPLACEMENT_CHAR)):
            return ""
        self._prefix_offset = self._read_offset
        self._read_offset = len(self._ids)
        return full_text[len(prefix_text):]
