"""Reading a choice's text back into content or calls as it streams, for any call format
(rillet/api/call_formats.py). The grammar makes the text either free text or one turn of calls in
the format, so the reader decides once, from the text's start, and then follows the format's
markup: its literal parts are skipped by length, a name runs to the first character after it, and
the arguments are a JSON object whose end is found by counting brackets outside strings. The same
events come out of every format, so the wire shapes are the same for every family.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

from rillet.api.call_formats import CallFormat


@dataclass(slots=True)
class CallStarted:
    index: int
    call_id: str
    name: str


@dataclass(slots=True)
class ArgumentsPiece:
    index: int
    text: str


ReaderEvent = str | CallStarted | ArgumentsPiece


class CallReader:
    """One choice's text, piece by piece, as content pieces (str) and call events."""

    def __init__(self, call_format: CallFormat, new_call_id: Callable[[], str] | None = None) -> None:
        self.format = call_format
        self._new_call_id = new_call_id or call_format.new_call_id
        self.num_calls = 0
        # "start", "content", "literal", "name", "arguments", "between" (calls), "done".
        self._state = "start"
        self._held = ""  # text that may still be the start of markup
        self._literal = ""  # what is left of the markup's current literal part
        self._after_literal = ""
        self._name = ""
        self._depth = 0  # nesting of the arguments' JSON
        self._in_string = False
        self._escaped = False

    @property
    def is_calls(self) -> bool:
        return self._state not in ("start", "content")

    def feed(self, text: str) -> list[ReaderEvent]:
        events: list[ReaderEvent] = []
        while text:
            if self._state == "content":
                events.append(text)
                break
            if self._state in ("start", "between"):
                text = self._decide(text, events)
            elif self._state == "literal":
                taken = min(len(text), len(self._literal))
                self._literal, text = self._literal[taken:], text[taken:]
                if not self._literal:
                    self._state = self._after_literal
            elif self._state == "name":
                text = self._read_name(text, events)
            elif self._state == "arguments":
                text = self._read_arguments(text, events)
            else:  # done: the grammar allows nothing after the calls
                break
        return events

    def finish(self) -> list[ReaderEvent]:
        """At the end of the choice: text held back as a possible start of markup that never came."""
        held, self._held = self._held, ""
        return [held] if held and self._state == "start" else []

    def _decide(self, text: str, events: list[ReaderEvent]) -> str:
        """At the start: content or calls. Between calls: another call or the end."""
        self._held += text
        held = self._held
        if self._state == "start":
            candidates = {self.format.opening: "name"}
        else:
            candidates = {self.format.calls_close: "done"} if self.format.calls_close else {}
            if self.format.separator is not None:
                candidates[self.format.separator + self.format.call_open] = "name"
        for opening, then in candidates.items():
            if held.startswith(opening):
                self._held = ""
                self._state = then
                return held[len(opening):]
        if any(opening.startswith(held) for opening in candidates):
            return ""  # wait for more
        self._held = ""
        if self._state == "start":
            self._state = "content"
            events.append(held)
        else:
            self._state = "done"
        return ""

    def _read_name(self, text: str, events: list[ReaderEvent]) -> str:
        end = text.find(self.format.name_close[0])
        if end < 0:
            self._name += text
            return ""
        name, self._name = self._name + text[:end], ""
        self.num_calls += 1
        events.append(CallStarted(self.num_calls - 1, self._new_call_id(), name))
        self._state, self._literal, self._after_literal = "literal", self.format.name_close, "arguments"
        return text[end:]

    def _read_arguments(self, text: str, events: list[ReaderEvent]) -> str:
        consumed, done = self._scan_arguments(text)
        if consumed:
            events.append(ArgumentsPiece(self.num_calls - 1, text[:consumed]))
        if done:
            if self.format.call_close:
                self._state, self._literal, self._after_literal = "literal", self.format.call_close, "between"
            else:
                self._state = "between"
        return text[consumed:]

    def _scan_arguments(self, text: str) -> tuple[int, bool]:
        """How much of text belongs to the arguments' JSON object, and whether it ends there."""
        for i, char in enumerate(text):
            if self._in_string:
                if self._escaped:
                    self._escaped = False
                elif char == "\\":
                    self._escaped = True
                elif char == '"':
                    self._in_string = False
            elif char == '"':
                self._in_string = True
            elif char in "{[":
                self._depth += 1
            elif char in "}]":
                self._depth -= 1
                if self._depth == 0:
                    return i + 1, True
        return len(text), False
