"""Shaping the output: the engine's per-choice text deltas become what OpenAI's wire carries, as
stream deltas (content pieces, tool calls, a legacy function call, then a finish) and, gathered, as
each choice's message. Tool-call markup is read here (rillet/api/call_reader.py) and never reaches
content. The record of a choice (its content, its calls, its finish) is kept apart from the chat
wire's deltas, so that the Responses API frames the same record as its own events.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from rillet.api.logprobs import LogprobFormatter
from rillet.api.call_reader import CallReader, CallStarted, ReaderEvent
from rillet.api.tools import ToolPlan
from rillet.engine.outputs import RequestOutput


@dataclass(slots=True)
class Call:
    call_id: str
    name: str
    arguments: list[str] = field(default_factory=list)


@dataclass(slots=True)
class Choice:
    reader: CallReader | None
    content: list[str] = field(default_factory=list)
    calls: list[Call] = field(default_factory=list)
    finish_reason: str | None = None
    logprobs: list[dict] = field(default_factory=list)


@dataclass(slots=True)
class ChoiceUpdate:
    """What one engine output added to a choice: content pieces (str) and call events, in order, the
    logprobs entries of its tokens (when asked for), and its finish reason once it ends."""
    index: int
    events: list[ReaderEvent]
    logprobs: list[dict] | None
    finish_reason: str | None


@dataclass(slots=True)
class Completion:
    """What one request has produced so far, and the fields every chunk repeats."""
    request_id: str
    created: int
    model: str
    fingerprint: str
    n: int
    num_prompt_tokens: int
    tools: ToolPlan | None = None
    include_usage: bool = False
    num_completion_tokens: int = 0
    # Set when the request asked for logprobs.
    logprob_formatter: LogprobFormatter | None = None
    choices: list[Choice] = field(default_factory=list)

    def __post_init__(self) -> None:
        calls = self.tools is not None and self.tools.calls_allowed
        self.choices = [Choice(CallReader(self.tools.calling.format) if calls else None) for _ in range(self.n)]

    @property
    def legacy_functions(self) -> bool:
        return self.tools is not None and self.tools.legacy

    def usage(self) -> dict:
        return {"prompt_tokens": self.num_prompt_tokens, "completion_tokens": self.num_completion_tokens,
                "total_tokens": self.num_prompt_tokens + self.num_completion_tokens}

    def first_deltas(self) -> list[dict]:
        """Each choice's opening delta: its role (content stays null where calls may follow)."""
        opening = {"role": "assistant", "content": None if self.choices[0].reader else ""}
        return [{"index": i, "delta": dict(opening), "logprobs": None, "finish_reason": None} for i in range(self.n)]

    def update(self, output: RequestOutput) -> list[ChoiceUpdate]:
        """Records one engine output; returns what it added to each choice it concerns."""
        updates = []
        for delta in output.deltas:
            choice = self.choices[delta.index]
            self.num_completion_tokens += len(delta.token_ids)
            logprobs = None
            if delta.logprobs and self.logprob_formatter is not None:
                logprobs = [self.logprob_formatter.entry(lp) for lp in delta.logprobs]
                choice.logprobs.extend(logprobs)
            events = choice.reader.feed(delta.text) if choice.reader is not None else [delta.text] if delta.text else []
            if delta.finish_reason is not None and choice.reader is not None:
                events += choice.reader.finish()
            for event in events:
                self._record(choice, event)
            if delta.finish_reason is not None:
                choice.finish_reason = self._finish_reason(choice, delta.finish_reason)
            updates.append(ChoiceUpdate(delta.index, events, logprobs, choice.finish_reason))
        return updates

    def apply(self, output: RequestOutput) -> list[dict]:
        """Records one engine output; returns its chat stream choices: pieces, calls, then finishes."""
        deltas = []
        for update in self.update(output):
            logprobs = {"content": update.logprobs, "refusal": None} if update.logprobs else None
            pieces = [self._delta(event) for event in update.events]
            if logprobs and not pieces:
                pieces = [{"content": ""}]
            for k, piece in enumerate(pieces):
                deltas.append({"index": update.index, "delta": piece, "logprobs": logprobs if k == 0 else None,
                               "finish_reason": None})
            if update.finish_reason is not None:
                deltas.append({"index": update.index, "delta": {}, "logprobs": None,
                               "finish_reason": update.finish_reason})
        return deltas

    def message(self, index: int) -> dict:
        """A choice's whole message, as the non-stream answer carries it."""
        choice = self.choices[index]
        content = "".join(choice.content)
        message: dict = {"role": "assistant", "content": content if content or not choice.calls else None}
        if choice.calls and self.legacy_functions:
            call = choice.calls[0]
            message["function_call"] = {"name": call.name, "arguments": "".join(call.arguments)}
        elif choice.calls:
            message["tool_calls"] = [{"id": c.call_id, "type": "function",
                                      "function": {"name": c.name, "arguments": "".join(c.arguments)}}
                                     for c in choice.calls]
        return message

    @staticmethod
    def _record(choice: Choice, event: ReaderEvent) -> None:
        if isinstance(event, str):
            choice.content.append(event)
        elif isinstance(event, CallStarted):
            choice.calls.append(Call(event.call_id, event.name))
        else:
            choice.calls[event.index].arguments.append(event.text)

    def _delta(self, event: ReaderEvent) -> dict:
        """A content piece or call event as a chat stream delta."""
        if isinstance(event, str):
            return {"content": event}
        if isinstance(event, CallStarted):
            return self._call_delta(event.index, {"name": event.name, "arguments": ""}, event.call_id)
        return self._call_delta(event.index, {"arguments": event.text})

    def _call_delta(self, index: int, function: dict, call_id: str | None = None) -> dict:
        if self.legacy_functions:
            return {"function_call": function}
        call: dict = {"index": index}
        if call_id is not None:
            call.update(id=call_id, type="function")
        call["function"] = function
        return {"tool_calls": [call]}

    def _finish_reason(self, choice: Choice, engine_reason: str) -> str:
        """OpenAI's: a choice that ends in calls finished with them ("stop" when the request named the
        function; "function_call" in the legacy form), unless it was cut at max_tokens."""
        if engine_reason != "stop" or not choice.calls:
            return engine_reason
        if self.tools.choice == "named":
            return "stop"
        return "function_call" if self.legacy_functions else "tool_calls"
