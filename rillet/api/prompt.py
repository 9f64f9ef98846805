"""The prompt: the conversation as the model's chat template sees it, rendered and tokenized.

Roles the template has no word for are mapped onto ones it has: `developer` is a system message,
and where the template has no tool calls rillet knows (the generic prompt, rillet/api/call_formats.py),
a tool's (or a function's) result is a user turn in <tool_response> tags (results in a row share
one turn), the assistant's calls are written in Hermes markup, and the tools offered are described
in the system message (rillet/api/tools.py). A template with its own tool calls gets the tools, and
the messages' calls and results, as Hugging Face templates expect them, with call ids it accepts.
"""
from __future__ import annotations

import asyncio
import json
from typing import Any

from rillet.api.errors import APIError, ErrorKind
from rillet.api.schemas import ChatCompletionRequest, ChatMessage, FunctionCall
from rillet.api.served_model import ServedModel
from rillet.api.call_formats import ToolCalling
from rillet.api.tools import ToolPlan, generic_tools_prompt, tools_for_template
from rillet.model.errors import ChatTemplateError
from rillet.model.loader import release_freed_memory

# A prompt text longer than this is tokenized under PromptEncoder's bound (one at a time, by default).
BIG_PROMPT_CHARS = 64 * 1024


def render_prompt(request: ChatCompletionRequest, plan: ToolPlan | None, served: ServedModel) -> str:
    """The prompt text: the messages, and the tools where the request lets the model call them."""
    template = served.chat_template
    source = getattr(template, "source", "")
    calling = served.tool_calling
    messages = _joined_results([_template_message(i, m, calling) for i, m in enumerate(request.messages)])
    if "developer" not in source:
        messages = [{**m, "role": "system"} if m["role"] == "developer" else m for m in messages]
    extra: dict[str, Any] = {}
    if plan is not None and plan.calls_allowed:
        if calling.in_template:
            extra["tools"] = tools_for_template(plan)
        else:
            messages = _with_system_text(messages, generic_tools_prompt(plan))
    try:
        return template.render(messages, add_generation_prompt=True, **extra)
    except ChatTemplateError as error:
        raise APIError(ErrorKind.INVALID_REQUEST, str(error), "messages") from None


def check_prompt_size(text: str, served: ServedModel) -> None:
    """A text longer than the context could hold at the tokenizer's most characters a token is a
    400 before it is tokenized: a 4 MiB body of "a " was once 2 million tokens and a gigabyte."""
    if served.max_prompt_chars is None or len(text) <= served.max_prompt_chars:
        return
    fewest = served.tokenizer.fewest_tokens(text)  # less the characters that become no token
    if fewest is not None and fewest > served.max_context_len:
        raise APIError(ErrorKind.CONTEXT_LENGTH_EXCEEDED,
                       f"this model's context holds {served.max_context_len} tokens; the messages have at least "
                       f"{fewest} ({len(text)} characters, and no token of this model stands for more than "
                       f"{served.tokenizer.max_chars_per_token})", "messages")


class PromptEncoder:
    """Tokenizes prompt texts off the event loop. Those over BIG_PROMPT_CHARS take turns, at most
    `max_big` at once, so that a few of them never hold every worker thread (nor their memory
    each) while a small request waits behind them."""

    def __init__(self, tokenizer, max_big: int = 1) -> None:
        self.tokenizer = tokenizer
        self._big = asyncio.Semaphore(max_big)

    async def encode(self, text: str) -> list[int]:
        if len(text) <= BIG_PROMPT_CHARS:
            return await asyncio.to_thread(self.tokenizer.encode, text)
        async with self._big:
            return await asyncio.to_thread(self._encode_big, text)

    def _encode_big(self, text: str) -> list[int]:
        try:
            return self.tokenizer.encode(text)
        finally:
            release_freed_memory()  # the tokenizer's per-token buffers, hundreds of MB for the longest


def _template_message(index: int, message: ChatMessage, calling: ToolCalling) -> dict[str, Any]:
    text = message.text()
    calls = _calls_of(message)
    where = f"messages.{index}"
    if text is None and not (message.role == "assistant" and calls):
        raise APIError(ErrorKind.INVALID_REQUEST, f"{where}.content is required for a {message.role} message",
                       f"{where}.content")
    if message.role == "function" and not message.name:
        raise APIError(ErrorKind.INVALID_REQUEST, f"{where}.name is required for a function message", f"{where}.name")
    if message.role == "tool" and not message.tool_call_id:
        raise APIError(ErrorKind.INVALID_REQUEST, f"{where}.tool_call_id is required for a tool message",
                       f"{where}.tool_call_id")
    if calls and message.role != "assistant":
        raise APIError(ErrorKind.INVALID_REQUEST, "only assistant messages carry calls", f"{where}.tool_calls")
    if message.role in ("tool", "function"):
        if calling.in_template:
            call_id = calling.format.template_call_id(message.tool_call_id or _LEGACY_CALL_ID)
            entry = {"role": "tool", "content": text, "tool_call_id": call_id}
            return {**entry, "name": message.name} if message.name else entry
        return {"role": "user", "content": f"<tool_response>\n{text}\n</tool_response>", _RESULT: True}
    entry: dict[str, Any] = {"role": message.role, "content": text}
    if message.name is not None:
        entry["name"] = message.name
    if calls and calling.in_template:
        entry["tool_calls"] = [{"id": calling.format.template_call_id(call_id), "type": "function",
                                "function": {"name": call.name, "arguments": _arguments_value(call.arguments)}}
                               for call_id, call in calls]
    elif calls:
        markup = calling.format.write([(call.name, call.arguments) for _, call in calls])
        entry["content"] = f"{text}\n{markup}" if text else markup
    return entry


# A legacy function call and its result carry no id; they are rendered with this one.
_LEGACY_CALL_ID = "call_0"
# Marks a user turn that holds a tool's result, in the generic prompt.
_RESULT = "_tool_result"


def _joined_results(messages: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The generic prompt's tool results in a row as one user turn (as Qwen's template writes them):
    templates that want user and assistant turns to alternate accept two results after one turn of
    calls."""
    joined: list[dict[str, Any]] = []
    for message in messages:
        result = message.pop(_RESULT, False)
        if result and joined and joined[-1].get(_RESULT):
            joined[-1]["content"] += "\n" + message["content"]
        else:
            joined.append({**message, _RESULT: True} if result else message)
    for message in joined:
        message.pop(_RESULT, None)
    return joined


def _calls_of(message: ChatMessage) -> list[tuple[str, FunctionCall]]:
    calls = [(call.id, call.function) for call in message.tool_calls or []]
    if message.function_call is not None:
        calls.append((_LEGACY_CALL_ID, message.function_call))
    return calls


def _arguments_value(arguments: str) -> Any:
    """Templates write the arguments as an object; a call whose arguments are not JSON keeps its text."""
    try:
        return json.loads(arguments)
    except ValueError:
        return arguments


def _with_system_text(messages: list[dict[str, Any]], text: str) -> list[dict[str, Any]]:
    if messages and messages[0]["role"] == "system":
        first = messages[0]
        return [{**first, "content": f"{first['content']}\n\n{text}" if first["content"] else text}, *messages[1:]]
    return [{"role": "system", "content": text}, *messages]
