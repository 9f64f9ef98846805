"""A Responses request as the chat request the shared stages take (rillet/api/pipeline.py), and their
errors back in the Responses request's own terms.

`instructions` is a system message before the input; a string input is one user message; input
items become messages in order: a function_call joins the assistant turn it follows (one turn of
calls, as a chat message holds them), a function_call_output is a tool message. The error of a
stage names a chat field (`messages.3.content`, `tools.0.function.parameters`); PARAM_RENAMES and
the item each message came from turn it into the field the client sent (`input.2.content`,
`tools.0.parameters`).
"""
from __future__ import annotations

import re

from pydantic import ValidationError

from rillet.api.errors import APIError, ErrorKind
from rillet.api.responses.schemas import FunctionCallItem, FunctionCallOutputItem, MessageItem, ResponsesRequest
from rillet.api.schemas import ChatCompletionRequest, ChatMessage, FunctionCall, ToolCall

# A chat field's name (a pattern on the start of `param`) and the Responses field it stands for.
PARAM_RENAMES = (
    (r"tools\.(\d+)\.function\.", r"tools.\1."),
    (r"response_format\.json_schema\.schema", "text.format.schema"),
    (r"response_format", "text.format"),
    (r"max_completion_tokens", "max_output_tokens"),
    (r"messages$", "input"),
)


def chat_request(body: ResponsesRequest) -> tuple[ChatCompletionRequest, list[str]]:
    """The chat request, and for each of its messages the Responses field it came from."""
    messages: list[ChatMessage] = []
    sources: list[str] = []
    if body.instructions is not None:
        messages.append(ChatMessage(role="system", content=body.instructions))
        sources.append("instructions")
    if isinstance(body.input, str):
        messages.append(ChatMessage(role="user", content=body.input))
        sources.append("input")
    else:
        calls_open = False  # the last message is an assistant turn that further calls may join
        for index, item in enumerate(body.input):
            where = f"input.{index}"
            if isinstance(item, FunctionCallItem):
                call = ToolCall(id=item.call_id, function=FunctionCall(name=item.name, arguments=item.arguments))
                if calls_open:
                    messages[-1].tool_calls = [*(messages[-1].tool_calls or []), call]
                    continue
                messages.append(ChatMessage(role="assistant", content=None, tool_calls=[call]))
                calls_open = True
            elif isinstance(item, FunctionCallOutputItem):
                if not any(isinstance(earlier, FunctionCallItem) and earlier.call_id == item.call_id
                           for earlier in body.input[:index]):
                    raise APIError(ErrorKind.INVALID_REQUEST, f"{where}.call_id: no function_call before it has the "
                                   f"call_id {item.call_id!r}", f"{where}.call_id")
                messages.append(ChatMessage(role="tool", tool_call_id=item.call_id, content=item.text()))
                calls_open = False
            else:
                messages.append(_message(item))
                calls_open = item.role == "assistant"
            sources.append(where)
    try:
        return ChatCompletionRequest(
            model=body.model, messages=messages, temperature=body.temperature, top_p=body.top_p,
            max_completion_tokens=body.max_output_tokens, user=body.user, tools=_tools(body),
            tool_choice=_tool_choice(body), parallel_tool_calls=body.parallel_tool_calls if body.tools else None,
            response_format=_response_format(body)), sources
    except ValidationError as error:  # the Responses schema holds the chat one's bounds; a safety net
        raise APIError(ErrorKind.INVALID_REQUEST, f"the request cannot be served: {error.errors()[0]['msg']}") from None


def in_request_terms(error: APIError, sources: list[str]) -> APIError:
    """The error with `param` (and the message's mention of it) naming the Responses field."""
    param = error.param
    if param is None:
        return error
    renamed = _renamed(param, sources)
    if renamed == param:
        return error
    return APIError(error.kind, error.message.replace(param, renamed), renamed, error.headers)


def _renamed(param: str, sources: list[str]) -> str:
    item = re.match(r"messages\.(\d+)(.*)", param)
    if item:
        index = int(item.group(1))
        source = sources[index] if index < len(sources) else "input"
        return source + (item.group(2) if source.startswith("input.") else "")
    for pattern, replacement in PARAM_RENAMES:
        if re.match(pattern, param):
            return re.sub(pattern, replacement, param, count=1)
    return param


def _message(item: MessageItem) -> ChatMessage:
    return ChatMessage(role=item.role, content=item.text())


def _tools(body: ResponsesRequest) -> list[dict] | None:
    if body.tools is None:
        return None
    return [{"type": "function", "function": tool.model_dump(exclude={"type"}, exclude_none=True)}
            for tool in body.tools]


def _tool_choice(body: ResponsesRequest) -> str | dict | None:
    choice = body.tool_choice
    if choice is None or isinstance(choice, str):
        return choice
    return {"type": "function", "function": {"name": choice.name}}


def _response_format(body: ResponsesRequest) -> dict | None:
    form = body.text.format if body.text is not None else None
    if form is None or form.type == "text":
        return None
    if form.type == "json_object":
        return {"type": "json_object"}
    return {"type": "json_schema", "json_schema": {
        "name": form.name, "schema": form.schema_, "strict": form.strict,
        **({"description": form.description} if form.description is not None else {})}}
