"""The generation schema closes objects that name their properties (as xgrammar's strict mode does),
only adds constraints, and leaves open what asks to be open or would lose keys it asks for."""
from __future__ import annotations

import copy

import jsonschema
import pytest

from rillet.api.strict_schema import closed_objects

# LangChain's standard tests' tool, as langchain_core's convert_to_openai_tool writes its parameters.
MAGIC = {"properties": {"input": {"exclusiveMaximum": 1000, "exclusiveMinimum": -1000, "type": "integer"}},
         "required": ["input"], "type": "object"}
NESTED = {"type": "object", "properties": {
    "point": {"type": "object", "properties": {"x": {"type": "number"}}},
    "tags": {"type": "array", "items": {"type": "object", "properties": {"name": {"type": "string"}}}},
    "pair": {"type": "array", "prefixItems": [{"type": "object", "properties": {"a": {}}}]},
    "either": {"anyOf": [{"$ref": "#/$defs/Cat"}, {"type": "object", "properties": {"bark": {"type": "boolean"}}}]},
}, "$defs": {"Cat": {"type": "object", "properties": {"meow": {"type": "boolean"}}}}}


def closed(schema: dict) -> dict:
    sent = copy.deepcopy(schema)
    result = closed_objects(schema)
    assert schema == sent, "the schema as sent is left as it was"
    return result


def test_an_object_that_names_its_properties_allows_no_others():
    strict = closed(MAGIC)
    assert strict["additionalProperties"] is False
    jsonschema.validate({"input": 3}, strict)
    copied = {"input": 1, "exclusiveMaximum": 1000, "exclusiveMinimum": -1000, "type": "integer"}
    jsonschema.validate(copied, MAGIC)  # what the model wrote, and the schema as sent allowed
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate(copied, strict)
    assert closed({"type": "object", "properties": {}})["additionalProperties"] is False  # no arguments: {}


def test_objects_are_closed_at_every_depth_and_in_whole_alternatives():
    strict = closed(NESTED)
    properties = strict["properties"]
    assert strict["additionalProperties"] is False
    assert properties["point"]["additionalProperties"] is False
    assert properties["tags"]["items"]["additionalProperties"] is False
    assert properties["pair"]["prefixItems"][0]["additionalProperties"] is False
    assert properties["either"]["anyOf"][1]["additionalProperties"] is False
    assert strict["$defs"]["Cat"]["additionalProperties"] is False
    jsonschema.validate({"point": {"x": 1}, "tags": [{"name": "a"}], "either": {"meow": True}}, strict)
    for extra in ({"point": {"x": 1, "y": 2}}, {"tags": [{"name": "a", "id": 1}]}, {"either": {"meow": True, "x": 1}}):
        jsonschema.validate(extra, NESTED)
        with pytest.raises(jsonschema.ValidationError):
            jsonschema.validate(extra, strict)


@pytest.mark.parametrize("schema", [
    # It says what other keys may be.
    {"type": "object", "properties": {"a": {}}, "additionalProperties": True},
    {"type": "object", "properties": {"a": {}}, "additionalProperties": {"type": "integer"}},
    {"type": "object", "properties": {"a": {}}, "patternProperties": {"^x-": {}}},
    {"type": "object", "properties": {"a": {}}, "unevaluatedProperties": False},
    # A free-form object: no properties keyword at all (json_object's answer is one).
    {"type": "object"},
    # Closing it would make it unsatisfiable, or forbid keys another part of the schema asks for.
    {"type": "object", "properties": {"a": {}}, "required": ["a", "b"]},
    {"type": "object", "properties": {"a": {}}, "minProperties": 2},
    {"type": "object", "properties": {"a": {}}, "allOf": [{"properties": {"b": {}}}]},
    {"type": "object", "properties": {"a": {}}, "anyOf": [{"type": "object", "properties": {"b": {}}}]},
    {"type": "object", "properties": {"kind": {}}, "if": {"properties": {"kind": {"const": 1}}}, "then": {}},
])
def test_an_object_that_asks_for_other_keys_or_would_lose_them_stays_open(schema):
    strict = closed(schema)
    assert strict.get("additionalProperties") == schema.get("additionalProperties")
    for key in ("allOf", "anyOf"):
        for branch in strict.get(key, []):
            assert "additionalProperties" not in branch


def test_nothing_is_closed_in_a_negative_place_nor_a_definition_one_could_refer_to():
    schema = {"type": "object", "properties": {"a": {"not": {"type": "object", "properties": {"b": {}}}},
                                               "c": {"$ref": "#/$defs/D"}},
              "$defs": {"D": {"type": "object", "properties": {"e": {}}}}}
    strict = closed(schema)
    assert "additionalProperties" not in strict["properties"]["a"]["not"]
    assert "additionalProperties" not in strict["$defs"]["D"]
    # A closed `not` would allow more than the schema as sent: {"a": {"b": 1, "z": 2}} is invalid as sent.
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"a": {"b": 1, "z": 2}}, schema)
    with pytest.raises(jsonschema.ValidationError):
        jsonschema.validate({"a": {"b": 1, "z": 2}}, strict)


def test_a_property_named_like_a_keyword_is_a_name_not_a_keyword():
    schema = {"type": "object", "properties": {"not": {"type": "string"}, "c": {"$ref": "#/$defs/D"}},
              "$defs": {"D": {"type": "object", "properties": {"e": {}}}}}
    assert closed(schema)["$defs"]["D"]["additionalProperties"] is False
