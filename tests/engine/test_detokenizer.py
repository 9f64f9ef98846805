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


class MarkerTokenizer(ByteTokenizer):
    """Byte tokens, and token 300, a special token "[TOOL_CALLS]" left out unless asked for."""

    def decode(self, ids: list[int], skip_special_tokens: bool = True) -> str:
        marker = "" if skip_special_tokens else "[TOOL_CALLS]"
        runs = bytes(i if i != 300 else 0 for i in ids).split(b"\0")
        return marker.join(run.decode("utf-8", errors="replace") for run in runs)


def test_a_shown_special_token_comes_out_in_place_and_others_stay_hidden():
    ids = [*"a\u20ac".encode(), 300, *b"b"]
    hidden = IncrementalDetokenizer(MarkerTokenizer())
    assert "".join(hidden.add_token(i) for i in ids) + hidden.flush() == "a\u20acb"
    shown = IncrementalDetokenizer(MarkerTokenizer(), frozenset({300}))
    pieces = [shown.add_token(i) for i in ids]
    assert pieces[-2] == "[TOOL_CALLS]" and "".join(pieces) + shown.flush() == "a\u20ac[TOOL_CALLS]b"
    # Text held before it (a partial character) is released first, as it stands.
    partial = IncrementalDetokenizer(MarkerTokenizer(), frozenset({300}))
    assert partial.add_token(0xE2) == "" and partial.add_token(300) == "\ufffd[TOOL_CALLS]"
