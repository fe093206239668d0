"""The mock's tool-call arguments validate against the tool's JSON Schema (workers/providers/mock_schema.py)."""

from __future__ import annotations

from typing import Any

import jsonschema
import pytest

from workers.providers.mock import VOCABULARY
from workers.providers.mock_schema import sample

ORDER: dict[str, Any] = {
    "type": "object",
    "properties": {
        "unit": {"type": "string", "enum": ["celsius", "fahrenheit"]},
        "count": {"type": "integer", "minimum": 3, "maximum": 5},
        "ratio": {"type": "number", "exclusiveMinimum": 0, "exclusiveMaximum": 1},
        "even": {"type": "integer", "multipleOf": 2, "minimum": 11},
        "urgent": {"type": "boolean"},
        "note": {"type": ["string", "null"], "minLength": 12, "maxLength": 20},
        "kind": {"const": "order"},
        "tags": {"type": "array", "items": {"type": "string", "enum": ["a", "b", "c"]}, "minItems": 3,
                 "uniqueItems": True},
        "flags": {"type": "array", "items": {"type": "boolean"}, "minItems": 2, "maxItems": 2, "uniqueItems": True},
        "address": {"type": "object", "properties": {
            "city": {"type": "string"}, "zip": {"type": "string", "maxLength": 5},
            "geo": {"type": "object", "properties": {"lat": {"type": "number", "minimum": -90, "maximum": 90}},
                    "required": ["lat"], "additionalProperties": False}},
            "required": ["city", "geo"], "additionalProperties": False},
        "when": {"type": "string", "format": "date-time"},
        "nothing": {"type": "null"},
        "id": {"oneOf": [{"type": "null"}, {"type": "string", "format": "uuid"}, {"type": "integer"}]},
        "contact": {"anyOf": [{"type": "null"}, {"$ref": "#/$defs/person"}]},
        "team": {"type": "array", "items": {"$ref": "#/$defs/person"}},
        "both": {"allOf": [{"type": "object", "properties": {"a": {"type": "integer"}}, "required": ["a"]},
                           {"properties": {"b": {"type": "boolean"}}, "required": ["b"]}],
                 "unevaluatedProperties": False},
        "pair": {"type": "array", "prefixItems": [{"type": "integer"}, {"type": "string"}], "items": False},
    },
    "required": ["unit", "count", "ratio", "even", "urgent", "note", "kind", "tags", "flags", "address", "when",
                 "nothing", "id", "contact", "team", "both", "pair"],
    "additionalProperties": False,
    "$defs": {"person": {"type": "object", "properties": {
        "name": {"type": "string"}, "age": {"type": "integer", "minimum": 0, "maximum": 150},
        "manager": {"$ref": "#/$defs/person"}}, "required": ["name", "age"], "additionalProperties": False}},
}


def valid(value: Any, schema: Any) -> None:
    jsonschema.validate(value, schema, cls=jsonschema.Draft202012Validator,
                        format_checker=jsonschema.Draft202012Validator.FORMAT_CHECKER)


@pytest.mark.parametrize("seed", [f"seed {i}" for i in range(40)])
def test_arguments_validate_against_a_schema_using_every_keyword(seed: str) -> None:
    value = sample(ORDER, seed, VOCABULARY)
    valid(value, ORDER)
    assert value["kind"] == "order" and value["nothing"] is None
    assert "manager" in value["team"][0]  # a recursive $ref is followed, and ends


def test_enum_choices_vary_with_the_seed_and_repeat_with_it() -> None:
    units = {sample(ORDER, f"seed {i}", VOCABULARY)["unit"] for i in range(40)}
    assert units == {"celsius", "fahrenheit"}
    assert sample(ORDER, "same", VOCABULARY) == sample(ORDER, "same", VOCABULARY)


@pytest.mark.parametrize("schema", [
    {}, {"type": "object"}, {"type": "object", "properties": {}},
    {"type": "object", "properties": {"n": {"type": "integer", "exclusiveMaximum": -3}}, "required": ["n"]},
    {"type": "object", "properties": {"x": {"type": "number", "multipleOf": 0.5, "minimum": 1.2}}},
    {"type": "object", "minProperties": 2, "additionalProperties": {"type": "integer"}},
    {"type": "object", "properties": {"s": {"type": "string", "maxLength": 0}}},
    {"type": "object", "definitions": {"d": {"enum": [1, 2]}}, "properties": {"d": {"$ref": "#/definitions/d"}}},
    # Strict mode's recursion: every field required, the recursive one nullable.
    {"type": "object", "properties": {"next": {"anyOf": [{"$ref": "#"}, {"type": "null"}]}}, "required": ["next"],
     "additionalProperties": False},
    {"$ref": "#/$defs/node", "$defs": {"node": {"type": ["object", "null"], "required": ["next"],
                                                "properties": {"next": {"$ref": "#/$defs/node"}}}}},
])
def test_edge_schemas(schema: dict[str, Any]) -> None:
    for i in range(10):
        valid(sample(schema, f"s{i}", VOCABULARY), schema)
