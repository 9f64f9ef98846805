"""Tools and functions: what a request offers the model and how it lets the model use them.

How a call is written is the served model's call format (rillet/api/call_formats.py); how the
model's text is read back into calls, rillet/api/call_reader.py. A template without tools of its own
gets them described in the system message (GENERIC_TOOLS_PROMPT), with calls in Hermes markup.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from rillet.api.call_formats import GENERIC, ToolCalling
from rillet.api.errors import APIError, ErrorKind
from rillet.api.schemas import ChatCompletionRequest, FunctionDefinition

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
    # How the served model is offered tools and writes its calls.
    calling: ToolCalling = GENERIC

    @property
    def calls_allowed(self) -> bool:
        return self.choice != "none"

    @property
    def single_call(self) -> bool:
        """At most one call an answer: asked for, or all the format (its template) has room for."""
        return self.legacy or self.choice == "named" or not self.parallel or self.calling.format.separator is None

    @property
    def field(self) -> str:
        return "functions" if self.legacy else "tools"

    def parameters_param(self, index: int) -> str:
        return f"functions.{index}.parameters" if self.legacy else f"tools.{index}.function.parameters"


def tool_plan(request: ChatCompletionRequest, calling: ToolCalling = GENERIC) -> ToolPlan | None:
    """The request's tools (or legacy functions) and choice; None when it offers none. calling: the
    served model's (ServedModel.tool_calling)."""
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
    return ToolPlan(functions, choice, named, parallel, legacy, calling)


def parameters_schema(function: FunctionDefinition) -> dict:
    """A function's parameters. OpenAI: "omitting parameters defines a function with an empty
    parameter list"."""
    return {"type": "object", "properties": {}} if function.parameters is None else function.parameters


def tools_for_template(plan: ToolPlan) -> list[dict]:
    """The functions as chat templates (and OpenAI's tools field) describe them."""
    return [{"type": "function", "function": f.model_dump(exclude_none=True)} for f in plan.functions]


def generic_tools_prompt(plan: ToolPlan) -> str:
    return GENERIC_TOOLS_PROMPT.format(tools="\n".join(json.dumps(t, ensure_ascii=False)
                                                       for t in tools_for_template(plan)))
