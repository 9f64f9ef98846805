"""Generation stricter than validation: the schema an answer is generated under closes every object
that names its properties and says nothing of other keys, as xgrammar's strict mode does.

JSON Schema lets an object without `additionalProperties` carry any key beyond its `properties`, and a
grammar that allows them lets a small model fill its arguments with keys it copied from the schema
(`{"input": 1, "type": "integer", "exclusiveMaximum": 1000}`). The generation schema adds
`additionalProperties: false` to such objects. It only ever adds constraints, and only where a
schema is used positively (never under `not` or `if`), so whatever it allows the schema as sent
allows too: the answer validates against what the client sent.

An object is left open where closing it would take away keys the schema asks for or could make it
unsatisfiable: one that says anything of other keys itself (`additionalProperties`,
`patternProperties`, `unevaluatedProperties`), is combined with others (`allOf`, `$ref`, `anyOf`
and `oneOf` beside its own properties, `if`, `dependentSchemas`), requires a key it does not name,
or needs more properties than it names. An object schema with no `properties` keyword at all
(`{"type": "object"}`, json_object's answer) is a free-form object and stays free.
"""
from __future__ import annotations

from typing import Any

# Keywords by which an object says something of keys beyond `properties`, or takes them from elsewhere.
_OPENS_OBJECT = ("additionalProperties", "patternProperties", "unevaluatedProperties", "allOf", "anyOf", "oneOf",
                 "$ref", "if", "dependentSchemas", "dependencies", "dependentRequired")
# Keywords whose subschemas are whole schemas used positively (an instance of the parent is checked
# against them as it is against the parent).
_SCHEMA_VALUED = ("items", "additionalItems", "unevaluatedItems", "additionalProperties", "contains")
_SCHEMA_MAPS = ("properties", "patternProperties")
_DEFINITIONS = ("$defs", "definitions")


def closed_objects(schema: Any) -> Any:
    """A copy of the schema in which each object schema that names its properties allows no others."""
    if not isinstance(schema, dict):
        return schema
    # A definition may be referred to from a negative place (`not`, `if`) or merged with siblings
    # (`allOf`); where the schema has either anywhere, its definitions are left as sent.
    close_definitions = not _has_keyword(schema, ("not", "if", "allOf"))
    return _close(schema, closable=True, close_definitions=close_definitions)


def _close(node: Any, closable: bool, close_definitions: bool) -> Any:
    if not isinstance(node, dict):
        return node
    out = dict(node)
    for key in _SCHEMA_MAPS:
        if isinstance(out.get(key), dict):
            out[key] = {name: _close(sub, True, close_definitions) for name, sub in out[key].items()}
    if close_definitions:
        for key in _DEFINITIONS:
            if isinstance(out.get(key), dict):
                out[key] = {name: _close(sub, True, close_definitions) for name, sub in out[key].items()}
    for key in _SCHEMA_VALUED:
        if isinstance(out.get(key), dict):
            out[key] = _close(out[key], True, close_definitions)
    for key in ("items", "prefixItems"):  # a list of schemas: a tuple's members
        if isinstance(out.get(key), list):
            out[key] = [_close(sub, True, close_definitions) for sub in out[key]]
    has_properties = isinstance(node.get("properties"), dict)
    for key in ("anyOf", "oneOf", "allOf"):
        if isinstance(out.get(key), list):
            # A branch is a whole alternative unless the parent names properties the branch would
            # forbid; allOf's members are always merged.
            whole = key != "allOf" and not has_properties
            out[key] = [_close(sub, whole, close_definitions) for sub in out[key]]
    if closable and has_properties and _may_close(node):
        out["additionalProperties"] = False
    return out


def _may_close(node: dict) -> bool:
    if any(key in node for key in _OPENS_OBJECT):
        return False
    named = node["properties"]
    required = node.get("required", [])
    if not isinstance(required, list) or any(key not in named for key in required):
        return False
    least = node.get("minProperties", 0)
    return not (isinstance(least, int) and least > len(named))


def _has_keyword(node: Any, keywords: tuple[str, ...]) -> bool:
    """Whether a keyword appears as a schema keyword anywhere (property names that merely spell it
    do not count)."""
    if isinstance(node, list):
        return any(_has_keyword(item, keywords) for item in node)
    if not isinstance(node, dict):
        return False
    for key, value in node.items():
        if key in keywords:
            return True
        if key in _SCHEMA_MAPS or key in _DEFINITIONS:
            if isinstance(value, dict) and any(_has_keyword(sub, keywords) for sub in value.values()):
                return True
        elif key not in ("enum", "const", "default", "examples", "required") and _has_keyword(value, keywords):
            return True
    return False
