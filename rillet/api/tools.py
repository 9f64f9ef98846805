"""Tools and functions: what a request offers the model, how a call is written, and how the model's
text is read back into calls as it streams.

A call is written in the Hermes markup that Qwen and Hermes-style templates use, the only form the
answer grammar (rillet/api/structured_output.py) lets the model write:

    <tool_call>
    {"name": "get_weather", "arguments": {"city":"Paris"}}
    </tool_call>

Parallel calls follow one another, a newline apart. A template without tools of its own gets them
described in the system message, with this markup (GENERIC_TOOLS_PROMPT).
"""
from __future__ import annotations

import json
import secrets
from dataclasses import dataclass

from rillet.api.errors import APIError, ErrorKind
from rillet.api.schemas import ChatCompletionRequest, FunctionDefinition

CALL_OPEN = '<tool_call>\n{"name": "'
CALL_ARGUMENTS = '", "arguments": '
CALL_CLOSE = "}\n</tool_call>"
CALL_SEPARATOR = "\n"

GENERIC_TOOLS_PROMPT = """You can call functions. Their definitions, as JSON Schema, are:
<tools>
{tools}
</tools>
To call functions, answer with one block per call, each a JSON object with the function's name and its \
arguments:
<tool_call>
{{"name": "<function name>", "arguments": <the arguments as a JSON object>}}
</tool_call>"""


@dataclass(frozen=True, slots=True)
class ToolPlan:
    """The functions a request offers and how it lets the model use them."""

    functions: list[FunctionDefinition]
    # "none", "auto", "required", or "named" (then `named` is the function).
    choice: str
    named: str | None
    parallel: bool
    # The legacy form (functions and function_call): at most one call, answered as function_call.
    legacy: bool

    @property
    def calls_allowed(self) -> bool:
        return self.choice != "none"

    @property
    def field(self) -> str:
        return "functions" if self.legacy else "tools"

    def parameters_param(self, index: int) -> str:
        return f"functions.{index}.parameters" if self.legacy else f"tools.{index}.function.parameters"


def tool_plan(request: ChatCompletionRequest) -> ToolPlan | None:
    """The request's tools (or legacy functions) and choice; None when it offers none."""
    if request.tools is not None and request.functions is not None:
        raise APIError(ErrorKind.INVALID_REQUEST, "use tools or functions, not both", "functions")
    if request.tools is None and request.functions is None:
        for name in ("tool_choice", "function_call"):
            if getattr(request, name) not in (None, "none"):
                raise APIError(ErrorKind.INVALID_REQUEST, f"{name} needs tools to choose from", name)
        if request.parallel_tool_calls is not None:
            raise APIError(ErrorKind.INVALID_REQUEST, "parallel_tool_calls is only allowed with tools",
                           "parallel_tool_calls")
        return None
    if request.tools is not None:
        functions, choice, legacy, choice_field = [t.function for t in request.tools], request.tool_choice, False, "tool_choice"
        parallel = request.parallel_tool_calls is not False
    else:
        functions, choice, legacy, choice_field = list(request.functions), request.function_call, True, "function_call"
        parallel = False
    names = [f.name for f in functions]
    if len(set(names)) != len(names):
        raise APIError(ErrorKind.INVALID_REQUEST, "two functions have the same name", "functions" if legacy else "tools")
    named = None
    if choice is None:
        choice = "auto" if functions else "none"
    elif not isinstance(choice, str):
        named = choice.function.name if not legacy else choice.name
        if named not in names:
            raise APIError(ErrorKind.INVALID_REQUEST, f"{choice_field} names {named!r}, which is not among the "
                           "functions offered", choice_field)
        choice = "named"
    if choice in ("required", "auto") and not functions:
        raise APIError(ErrorKind.INVALID_REQUEST, f"{choice_field} {choice!r} needs at least one function",
                       choice_field)
    return ToolPlan(functions, choice, named, parallel, legacy)


def new_call_id() -> str:
    return f"call_{secrets.token_hex(12)}"


def call_markup(name: str, arguments: str) -> str:
    """One call as the model writes it; arguments that are JSON are written compactly."""
    try:
        arguments = json.dumps(json.loads(arguments), ensure_ascii=False, separators=(",", ":"))
    except ValueError:
        pass
    return f"{CALL_OPEN}{name}{CALL_ARGUMENTS}{arguments}{CALL_CLOSE}"


def tools_for_template(plan: ToolPlan) -> list[dict]:
    """The functions as chat templates (and OpenAI's tools field) describe them."""
    return [{"type": "function", "function": f.model_dump(exclude_none=True)} for f in plan.functions]


def generic_tools_prompt(plan: ToolPlan) -> str:
    return GENERIC_TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False)
                                                       for t in tools_for_template(plan)))


# -- reading calls back ------------------------------------------------------------------


@dataclass(slots=True)
class CallStarted:
    index: int
    call_id: str
    name: str


@dataclass(slots=True)
class ArgumentsPiece:
    index: int
    text: str


class ToolCallReader:
    """Reads one choice's text, piece by piece, into plain content or calls. The grammar makes the
    text either free text (which never starts with "<") or one or more calls in the markup above, so
    the first character decides, and the markup's literal parts are skipped by length. With a named
    function the whole text is that function's arguments."""

    def __init__(self, named: str | None = None) -> None:
        self.named = named
        self.num_calls = 0
        # "undecided", "content", "arguments-only", or within calls: "literal", "name", "arguments".
        self._state = "arguments-only" if named else "undecided"
        self._literal = ""  # what is left of the markup's current literal part
        self._after_literal = ""
        self._name = ""
        self._depth = 0  # nesting of the arguments' JSON object
        self._in_string = False
        self._escaped = False

    @property
    def is_calls(self) -> bool:
        return self._state not in ("undecided", "content")

    def feed(self, text: str) -> list[str | CallStarted | ArgumentsPiece]:
        """Content pieces (str) and call events, in order."""
        if self._state == "arguments-only":
            events: list = [] if self.num_calls else [self._start_call(self.named)]
            return events + ([ArgumentsPiece(0, text)] if text else [])
        if self._state == "undecided" and text:
            if text.startswith("<"):
                self._expect(CALL_OPEN, then="name")
            else:
                self._state = "content"
        if self._state == "content":
            return [text] if text else []
        return self._read_calls(text)

    def _expect(self, literal: str, then: str) -> None:
        self._state, self._literal, self._after_literal = "literal", literal, then

    def _start_call(self, name: str) -> CallStarted:
        self.num_calls += 1
        return CallStarted(self.num_calls - 1, new_call_id(), name)

    def _read_calls(self, text: str) -> list[CallStarted | ArgumentsPiece]:
        events: list[CallStarted | ArgumentsPiece] = []
        while text:
            if self._state == "literal":
                taken = min(len(text), len(self._literal))
                self._literal, text = self._literal[taken:], text[taken:]
                if not self._literal:
                    self._state = self._after_literal
            elif self._state == "name":
                end = text.find('"')
                if end < 0:
                    self._name += text
                    break
                events.append(self._start_call(self._name + text[:end]))
                self._name, text = "", text[end:]
                self._expect(CALL_ARGUMENTS, then="arguments")
            else:
                consumed, done = self._scan_arguments(text)
                if consumed:
                    events.append(ArgumentsPiece(self.num_calls - 1, text[:consumed]))
                text = text[consumed:]
                if done:
                    self._expect(CALL_CLOSE + CALL_SEPARATOR + CALL_OPEN, then="name")
        return events

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
