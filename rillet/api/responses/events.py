"""A response's output as the Responses API carries it: output items (an assistant message, function
calls) built from the shaped output's updates (rillet/api/output.py), the typed events of each
change (response.created, response.output_item.added, response.output_text.delta,
response.function_call_arguments.delta, ..., response.completed), and the Response object. The
non-stream answer is the same updates, gathered, and the same object.
"""
from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field
from typing import Any

from rillet.api import sse
from rillet.api.call_reader import CallStarted
from rillet.api.errors import APIError
from rillet.api.output import ChoiceUpdate, Completion
from rillet.api.responses.schemas import ResponsesRequest


def new_item_id(prefix: str) -> str:
    return f"{prefix}_{secrets.token_hex(16)}"


@dataclass(slots=True)
class ResponseOutput:
    """One response's output items as they grow, and the events that tell each change."""
    response_id: str
    model: str
    body: ResponsesRequest
    completion: Completion
    created_at: int = field(default_factory=lambda: int(time.time()))
    items: list[dict] = field(default_factory=list)
    # The item being written (its index in items), None between items.
    _open: int | None = None
    _sequence_number: int = 0
    error: dict | None = None

    def started(self) -> list[dict]:
        return [self._event("response.created", response=self.response("in_progress")),
                self._event("response.in_progress", response=self.response("in_progress"))]

    def apply(self, updates: list[ChoiceUpdate]) -> list[dict]:
        """The events of what one engine output added (the request has one choice)."""
        events: list[dict] = []
        for update in updates:
            for piece in update.events:
                if isinstance(piece, str):
                    events += self._text(piece)
                elif isinstance(piece, CallStarted):
                    events += self._close_open_item("completed")
                    events += self._open_item({"id": new_item_id("fc"), "type": "function_call", "status": "in_progress",
                                               "call_id": piece.call_id, "name": piece.name, "arguments": ""})
                else:
                    item = self.items[self._open]
                    item["arguments"] += piece.text
                    events.append(self._event("response.function_call_arguments.delta", item_id=item["id"],
                                              output_index=self._open, delta=piece.text))
        return events

    def finished(self) -> list[dict]:
        """The last events: the open item closed, then response.completed (or .incomplete)."""
        status = self.status
        events = self._close_open_item("completed" if status == "completed" else "incomplete")
        kind = "response.completed" if status == "completed" else "response.incomplete"
        return events + [self._event(kind, response=self.response(status))]

    def failed(self, error: APIError) -> list[dict]:
        """After the events have begun, a failure is an error event, then response.failed."""
        spec = error.kind.value
        self.error = {"code": "server_error" if spec.status >= 500 else spec.code or spec.type,
                      "message": error.message}
        events = self._close_open_item("incomplete")
        events.append(self._event("error", code=spec.code, message=error.message, param=error.param))
        return events + [self._event("response.failed", response=self.response("failed"))]

    @property
    def status(self) -> str:
        reason = self.completion.choices[0].finish_reason
        return "incomplete" if reason == "length" else "completed"

    def response(self, status: str | None = None) -> dict[str, Any]:
        body, completion = self.body, self.completion
        status = status or self.status
        usage = None
        if status != "in_progress":
            usage = {"input_tokens": completion.num_prompt_tokens, "input_tokens_details": {"cached_tokens": 0},
                     "output_tokens": completion.num_completion_tokens,
                     "output_tokens_details": {"reasoning_tokens": 0},
                     "total_tokens": completion.num_prompt_tokens + completion.num_completion_tokens}
        text_format = body.text.format if body.text is not None and body.text.format is not None else None
        return {
            "id": self.response_id, "object": "response", "created_at": self.created_at, "status": status,
            "background": False, "error": self.error if status == "failed" else None,
            "incomplete_details": {"reason": "max_output_tokens"} if status == "incomplete" else None,
            "instructions": body.instructions, "max_output_tokens": body.max_output_tokens, "model": self.model,
            "output": [dict(item) for item in self.items] if status != "in_progress" else [],
            "parallel_tool_calls": body.parallel_tool_calls is not False, "previous_response_id": None,
            "reasoning": {"effort": None, "summary": None}, "service_tier": "default", "store": False,
            "temperature": 1.0 if body.temperature is None else body.temperature,
            "text": {"format": text_format.model_dump(by_alias=True, exclude_none=True) if text_format else
                     {"type": "text"}},
            "tool_choice": _tool_choice(body), "tools": [_tool(t) for t in body.tools or []],
            "top_p": 1.0 if body.top_p is None else body.top_p, "truncation": "disabled",
            "usage": usage, "user": body.user, "metadata": body.metadata or {},
        }

    def _text(self, text: str) -> list[dict]:
        events: list[dict] = []
        if self._open is None or self.items[self._open]["type"] != "message":
            events += self._close_open_item("completed")
            events += self._open_item({"id": new_item_id("msg"), "type": "message", "status": "in_progress",
                                       "role": "assistant", "content": []})
            part = {"type": "output_text", "text": "", "annotations": [], "logprobs": []}
            self.items[self._open]["content"].append(part)
            events.append(self._event("response.content_part.added", item_id=self.items[self._open]["id"],
                                      output_index=self._open, content_index=0, part=dict(part)))
        item = self.items[self._open]
        item["content"][0]["text"] += text
        events.append(self._event("response.output_text.delta", item_id=item["id"], output_index=self._open,
                                  content_index=0, delta=text, logprobs=[]))
        return events

    def _open_item(self, item: dict) -> list[dict]:
        self.items.append(item)
        self._open = len(self.items) - 1
        return [self._event("response.output_item.added", output_index=self._open, item=_snapshot(item))]

    def _close_open_item(self, status: str) -> list[dict]:
        if self._open is None:
            return []
        index, item = self._open, self.items[self._open]
        self._open = None
        item["status"] = status
        events = []
        if item["type"] == "message":
            part = item["content"][0]
            events += [self._event("response.output_text.done", item_id=item["id"], output_index=index,
                                   content_index=0, text=part["text"], logprobs=[]),
                       self._event("response.content_part.done", item_id=item["id"], output_index=index,
                                   content_index=0, part=dict(part))]
        else:
            events.append(self._event("response.function_call_arguments.done", item_id=item["id"],
                                      output_index=index, arguments=item["arguments"]))
        return events + [self._event("response.output_item.done", output_index=index, item=_snapshot(item))]

    def _event(self, kind: str, **fields: Any) -> dict:
        event = {"type": kind, "sequence_number": self._sequence_number, **fields}
        self._sequence_number += 1
        return event


def event_bytes(event: dict) -> bytes:
    """One typed event as the Responses API frames it: its type as the SSE event name."""
    return b"event: " + event["type"].encode() + b"\ndata: " + sse.encode_json(event).encode() + b"\n\n"



def _snapshot(item: dict) -> dict:
    copy = dict(item)
    if "content" in copy:
        copy["content"] = [dict(part) for part in copy["content"]]
    return copy


def _tool(tool) -> dict:
    return {"type": "function", "name": tool.name, "description": tool.description,
            "parameters": tool.parameters if tool.parameters is not None else {"type": "object", "properties": {}},
            "strict": bool(tool.strict)}


def _tool_choice(body: ResponsesRequest) -> str | dict:
    choice = body.tool_choice
    if choice is None:
        return "auto"
    return choice if isinstance(choice, str) else {"type": "function", "name": choice.name}
