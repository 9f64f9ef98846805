from __future__ import annotations

from rillet.engine.detokenizer import IncrementalDetokenizer


class ByteTokenizer:
    """Each token is one UTF-8 byte, as byte-level BPE can produce for rare characters."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        return bytes(ids).decode("utf-8", errors="replace")


def test_multibyte_character_split_across_tokens_is_emitted_whole():
    detok = IncrementalDetokenizer(ByteTokenizer())
    pieces = [detok.add_token(b) for b in "a€🙂".encode()]
    assert "\ufffd" not in "".join(pieces)
    assert "".join(pieces) + detok.flush() == "a€🙂"
    assert pieces[1:3] == ["", ""]  # the first two bytes of € are held


def test_invalid_bytes_are_flushed_at_the_end():
    detok = IncrementalDetokenizer(ByteTokenizer())
    assert detok.add_token(0xE2) == ""
    assert detok.flush() == "\ufffd"
