"""Finds stop strings in streamed text without ever emitting any part of one.

Text that could be the beginning of a stop string is held back until the next piece
either completes the stop string (then it is dropped and the choice ends) or rules it out.
"""
from __future__ import annotations


class StopChecker:
    __slots__ = ("_stops", "_held", "stopped")

    def __init__(self, stop_strings: list[str]) -> None:
        self._stops = [s for s in stop_strings if s]
        self._held = ""
        self.stopped = False

    def feed(self, text: str) -> str:
        """Takes the next piece of text; returns what may be emitted now."""
        if self.stopped:
            return ""
        if not self._stops:
            return text
        buffer = self._held + text
        cut = min((i for i in (buffer.find(s) for s in self._stops) if i >= 0), default=-1)
        if cut >= 0:
            self.stopped = True
            self._held = ""
            return buffer[:cut]
        hold = self._longest_stop_prefix_suffix(buffer)
        self._held = buffer[len(buffer) - hold:] if hold else ""
        return buffer[:len(buffer) - hold]

    def flush(self) -> str:
        """At the end of the sequence the held text can no longer become a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held

    def _longest_stop_prefix_suffix(self, buffer: str) -> int:
        """Length of the longest suffix of buffer that is a proper prefix of some stop string."""
        longest = 0
        for stop in self._stops:
            for length in range(min(len(stop) - 1, len(buffer)), longest, -1):
                if buffer.endswith(stop[:length]):
                    longest = length
                    break
        return longest
