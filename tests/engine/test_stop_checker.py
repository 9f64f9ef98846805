from __future__ import annotations

from rillet.engine.stop_checker import StopChecker


def feed_all(checker: StopChecker, pieces: list[str]) -> list[str]:
    return [checker.feed(p) for p in pieces]


def test_without_stop_strings_text_passes_through():
    checker = StopChecker([])
    assert feed_all(checker, ["a", "b"]) == ["a", "b"]
    assert checker.flush() == ""


def test_stop_string_split_across_pieces_is_never_emitted():
    checker = StopChecker(["END"])
    emitted = feed_all(checker, ["Hello E", "N", "D tail"])
    assert "".join(emitted) == "Hello "
    assert checker.stopped
    assert not any("E" in piece for piece in emitted)


def test_held_text_is_released_when_ruled_out():
    checker = StopChecker(["END"])
    assert checker.feed("Hello EN") == "Hello "
    assert checker.feed("X") == "ENX"
    assert not checker.stopped


def test_held_text_is_flushed_at_the_end():
    checker = StopChecker(["END"])
    assert checker.feed("abc E") == "abc "
    assert checker.flush() == "E"


def test_overlapping_candidates_stop_at_the_earliest_match():
    checker = StopChecker(["abcd", "bc"])
    assert checker.feed("xab") == "x"
    assert checker.feed("c") == "a"  # "a" is released, "bc" matches first
    assert checker.stopped


def test_longest_partial_match_is_held():
    checker = StopChecker(["aab"])
    assert checker.feed("aa") == ""
    assert checker.feed("a") == "a"
    assert checker.feed("b") == ""
    assert checker.stopped


def test_nothing_after_stop():
    checker = StopChecker(["\n"])
    assert checker.feed("one\ntwo") == "one"
    assert checker.feed("more") == ""
    assert checker.flush() == ""
