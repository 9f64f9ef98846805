"""The grammar an answer must follow, for constrained decoding: JSON for response_format, the served
model's call format for tools (rillet/api/call_formats.py), in llguidance's Lark dialect. The engine
applies it as a token mask while sampling, so the output is valid by construction.

Every JSON Schema is generated under its closed form (rillet/api/strict_schema.py: no keys beyond
an object's properties unless it asks for them) and checked by llguidance (once; the verdict is
cached). A schema feature it cannot enforce is a 400 naming the field that holds the schema, never a
constraint silently dropped. A response_format answer is written compactly (no whitespace outside
strings, so it cannot run on blanks); a call's arguments as the model's chat template writes them.
"""
from __future__ import annotations

import json
from functools import lru_cache

import llguidance

from rillet.api.call_formats import ITEM_SEPARATOR, KEY_SEPARATOR, ToolCalling
from rillet.api.errors import APIError, ErrorKind
from rillet.api.schemas import ChatCompletionRequest, JsonSchemaResponseFormat
from rillet.api.strict_schema import closed_objects
from rillet.api.tools import ToolPlan, parameters_schema

ANY_OBJECT = {"type": "object"}
# llguidance's options: no whitespace between tokens of JSON, or only the separators templates write.
COMPACT = {"whitespace_flexible": False}
TEMPLATE_JSON = {"whitespace_flexible": False, "item_separator": ITEM_SEPARATOR, "key_separator": KEY_SEPARATOR}


@lru_cache(maxsize=512)
def _schema_problem(schema_text: str) -> str:
    """Why llguidance cannot enforce the schema; "" when it can."""
    try:
        grammar = llguidance.LLMatcher.grammar_from_json_schema(schema_text)
    except ValueError as error:
        return str(error)
    return llguidance.LLMatcher.validate_grammar(grammar)


def checked_schema(schema: dict | None, param: str, object_only: bool = False, style: dict = COMPACT) -> str:
    """The schema an answer is generated under (closed objects, the JSON style), as one line of JSON,
    once llguidance has accepted it."""
    schema = ANY_OBJECT if schema is None else schema
    if object_only and schema.get("type", "object") != "object":
        raise APIError(ErrorKind.INVALID_REQUEST, f"{param} must describe a JSON object", param)
    text = json.dumps({**closed_objects(schema), "x-guidance": style}, ensure_ascii=False)
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
    arguments = [checked_schema(parameters_schema(f), plan.parameters_param(i), object_only=True, style=TEMPLATE_JSON)
                 for i, f in enumerate(plan.functions)]
    callable_ = [i for i, f in enumerate(plan.functions) if plan.choice != "named" or f.name == plan.named]
    calling = plan.calling
    call_format = calling.format
    rules = [_rule(f"call_{i}", _markup(call_format.call_open + plan.functions[i].name + call_format.name_close,
                                         calling), f"args_{i}", _markup(call_format.call_close, calling))
             + f"\nargs_{i}: %json {arguments[i]}" for i in callable_]
    separator = _markup(call_format.separator or "", calling)
    more = "" if plan.single_call else f"({separator} call)*" if separator else "call*"
    calls = _rule("calls", _markup(call_format.calls_open, calling), "call", more,
                  _markup(call_format.calls_close, calling))
    if plan.choice in ("required", "named"):
        start = "start: calls"
    elif json_answer is not None:
        start = "start: calls | answer\nanswer: %json " + json_answer
    else:
        start = f"start: calls | TEXT |\nTEXT: {_free_text(call_format.opening)}"
    return "\n".join([start, calls, "call: " + " | ".join(f"call_{i}" for i in callable_), *rules]) + "\n"


def _rule(name: str, *items: str) -> str:
    return f"{name}: " + " ".join(item for item in items if item)


def _response_format_schema(request: ChatCompletionRequest) -> str | None:
    form = request.response_format
    if form is None or form.type == "text":
        return None
    if isinstance(form, JsonSchemaResponseFormat):
        return checked_schema(form.json_schema.schema_, "response_format.json_schema.schema")
    return checked_schema(ANY_OBJECT, "response_format")


def _markup(text: str, calling: ToolCalling) -> str:
    """A literal part of the call markup as Lark items: each token of the vocabulary it holds whole as
    that token (`<[id]>`), the text between as string literals; "" for nothing."""
    items: list[str] = []
    while text:
        found = [(text.find(token), token) for token in calling.marker_tokens if token in text]
        if not found:
            items.append(_literal(text))
            break
        at, token = min(found)
        if at:
            items.append(_literal(text[:at]))
        items.append(f"<[{calling.marker_tokens[token]}]>")
        text = text[at + len(token):]
    return " ".join(items)


def _free_text(opening: str) -> str:
    """Free text, in "auto" tool choice: anything that does not start as the calls do."""
    first = opening[0]
    escaped = "\\" + first if first in "\\]^-[/" else first
    return f"/[^{escaped}](.|\\n)*/"


def _literal(text: str) -> str:
    """A Lark string literal (JSON's escapes are Lark's)."""
    return json.dumps(text)
