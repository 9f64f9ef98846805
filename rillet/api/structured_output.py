"""The grammar an answer must follow, for constrained decoding: JSON for response_format, the call
markup for tools (rillet/api/tools.py), in llguidance's Lark dialect. The engine applies it as a
token mask while sampling, so the output is valid by construction.

Every JSON Schema is checked by llguidance (once; the verdict is cached). A schema feature it cannot
enforce is a 400 naming the field that holds the schema, never a constraint silently dropped. JSON is
written compactly: no whitespace outside strings, so a constrained answer cannot run on blanks.
"""
from __future__ import annotations

import json
from functools import lru_cache

import llguidance

from rillet.api.errors import APIError, ErrorKind
from rillet.api.schemas import ChatCompletionRequest, JsonSchemaResponseFormat
from rillet.api.tools import CALL_ARGUMENTS, CALL_CLOSE, CALL_OPEN, CALL_SEPARATOR, ToolPlan

ANY_OBJECT = {"type": "object"}
# llguidance's options for every schema: no whitespace between tokens of JSON.
COMPACT = {"whitespace_flexible": False}
# Free text, in "auto" tool choice: anything that does not start like a call.
FREE_TEXT = r"/[^<](.|\n)*/"


@lru_cache(maxsize=512)
def _schema_problem(schema_text: str) -> str:
    """Why llguidance cannot enforce the schema; "" when it can."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text)
    except ValueError as error:
        return str(error)
    return llguidance.LLMatcher.validate_grammar(grammar)


def checked_schema(schema: dict | None, param: str, object_only: bool = False) -> str:
    """The schema as one line of JSON, once llguidance has accepted it."""
    schema = ANY_OBJECT if schema is None else schema
    if object_only and schema.get("type", "object") != "object":
        raise APIError(ErrorKind.INVALID_REQUEST, f"{param} must describe a JSON object", param)
    text = json.dumps({**schema, "x-guidance": COMPACT}, ensure_ascii=False)
    problem = _schema_problem(text)
    if problem:
        said = " ".join(problem.split())[:400]
        raise APIError(ErrorKind.UNSUPPORTED_SCHEMA, f"{param}: this schema cannot be enforced: {said}", param)
    return text


def answer_grammar(request: ChatCompletionRequest, plan: ToolPlan | None) -> str | None:
    """The Lark grammar of the whole answer, or None when it is free text."""
    json_answer = _response_format_schema(request)
    if plan is None or not plan.calls_allowed:
        return None if json_answer is None else f"start: answer\nanswer: %json {json_answer}\n"
    arguments = [checked_schema(f.parameters, plan.parameters_param(i), object_only=True)
                 for i, f in enumerate(plan.functions)]
    if plan.choice == "named":
        index = next(i for i, f in enumerate(plan.functions) if f.name == plan.named)
        return f"start: arguments\narguments: %json {arguments[index]}\n"
    rules = [f"call_{i}: {_literal(CALL_OPEN + f.name + CALL_ARGUMENTS)} args_{i} {_literal(CALL_CLOSE)}\n"
             f"args_{i}: %json {arguments[i]}" for i, f in enumerate(plan.functions)]
    calls = f"call ({_literal(CALL_SEPARATOR)} call)*" if plan.parallel else "call"
    if plan.choice == "required":
        start = "start: calls"
    elif json_answer is not None:
        start = "start: calls | answer\nanswer: %json " + json_answer
    else:
        start = f"start: calls | TEXT |\nTEXT: {FREE_TEXT}"
    return "\n".join([start, f"calls: {calls}", "call: " + " | ".join(f"call_{i}" for i in range(len(rules))),
                      *rules]) + "\n"


def _response_format_schema(request: ChatCompletionRequest) -> str | None:
    form = request.response_format
    if form is None or form.type == "text":
        return None
    if isinstance(form, JsonSchemaResponseFormat):
        return checked_schema(form.json_schema.schema_, "response_format.json_schema.schema")
    return checked_schema(ANY_OBJECT, "response_format")


def _literal(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's)."""
    return json.dumps(text)
