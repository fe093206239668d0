"""The mock's values for a JSON Schema (workers/providers/mock_schema.py): tool-call arguments, and
structured outputs that the official SDK's `chat.completions.parse` turns into Pydantic models, through
a broker stack serving the mock."""

from __future__ import annotations

import enum
import json
from datetime import datetime
from typing import Any, Literal

import httpx
import jsonschema
import openai
import pytest
from pydantic import BaseModel, Field

from tests.harness import TEST_KEY
from tests.stacks import StackFactory
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


def test_a_reference_to_the_root_that_holds_it_ends() -> None:
    # hypothesis found it (test_fuzz.py): the `$ref` was followed again at every anyOf merge, forever. No
    # validator can judge this schema (jsonschema recurses on it as well); the choice's branch is what counts.
    schema = {"type": "object", "properties": {}, "items": {"type": "string"}, "anyOf": [{"type": "string"}], "$ref": ""}
    assert all(isinstance(sample(schema, f"s{i}", VOCABULARY), str) for i in range(10))


# ---------------------------------------------------------------- structured outputs through the broker


class Unit(enum.Enum):
    CELSIUS = "celsius"
    FAHRENHEIT = "fahrenheit"


class Reading(BaseModel):
    at: datetime
    value: float
    unit: Unit


class Location(BaseModel):
    lat: float = Field(ge=-90, le=90)
    lon: float = Field(ge=-180, le=180)


class Station(BaseModel):
    name: str
    kind: Literal["manual", "automatic"]
    location: Location
    readings: list[Reading]
    tags: list[str]
    elevation_m: int | None
    backup: Station | None  # recursive: the SDK's strict schema makes it required, so only null ends it


ASK: Any = [{"role": "user", "content": "Describe a weather station."}]


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory) -> str:
    stack = module_stack_factory({"mock": {"kind": "mock"}}, {"mock": [{"provider": "mock", "model": "m"}]})
    return str(stack.up("mock"))


@pytest.fixture
def sent() -> list[dict[str, Any]]:
    return []


@pytest.fixture
def client(base_url: str, sent: list[dict[str, Any]]) -> openai.OpenAI:
    """The SDK, keeping each request body it sends (to check answers against the exact schema sent)."""
    def keep(request: httpx.Request) -> None:
        sent.append(json.loads(request.content))
    return openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0,
                         http_client=httpx.Client(event_hooks={"request": [keep]}))


def test_parse_fills_a_pydantic_model_with_nested_models_enums_and_lists(
        client: openai.OpenAI, sent: list[dict[str, Any]]) -> None:
    reply = client.chat.completions.parse(model="mock", messages=ASK, response_format=Station)
    message = reply.choices[0].message
    assert reply.choices[0].finish_reason == "stop" and isinstance(message.parsed, Station)
    schema = sent[-1]["response_format"]["json_schema"]["schema"]
    assert "$defs" in schema and schema["additionalProperties"] is False  # the SDK's strict schema
    valid(json.loads(message.content or ""), schema)
    station = message.parsed
    assert station.readings and isinstance(station.readings[0].unit, Unit) and station.backup is not None
    again = client.chat.completions.parse(model="mock", messages=ASK, response_format=Station)
    assert again.choices[0].message.content == message.content  # the same prompt, the same answer
    other = client.chat.completions.parse(model="mock", messages=[{"role": "user", "content": "Another one."}],
                                          response_format=Station)
    assert other.choices[0].message.parsed != station
    assert reply.usage is not None and reply.usage.completion_tokens == len((message.content or "").split())


def test_a_streamed_structured_answer_joins_into_the_same_document(client: openai.OpenAI) -> None:
    whole = client.chat.completions.parse(model="mock", messages=ASK, response_format=Station).choices[0].message
    with client.chat.completions.stream(model="mock", messages=ASK, response_format=Station) as stream:
        pieces = [e.delta for e in stream if e.type == "content.delta"]
        final = stream.get_final_completion().choices[0].message
    assert len(pieces) > 1 and "".join(pieces) == whole.content and final.parsed == whole.parsed


def test_a_hand_written_schema_and_json_mode(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="mock", messages=ASK, n=2, response_format={
        "type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}})
    documents = [json.loads(c.message.content or "") for c in reply.choices]
    for document in documents:
        valid(document, ORDER)
    assert documents[0] != documents[1]  # each choice its own, as the mock's text is
    asked: Any = {"model": "mock", "messages": ASK, "response_format": {"type": "json_object"}}
    document = json.loads(client.chat.completions.create(**asked).choices[0].message.content or "")
    streamed = "".join(c.choices[0].delta.content or "" for c in client.chat.completions.create(**asked, stream=True)
                       if c.choices)
    assert isinstance(document, dict) and json.loads(streamed) == document


def test_max_tokens_cuts_a_structured_answer_short_as_openai_does(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="mock", messages=ASK, max_tokens=3, response_format={
        "type": "json_schema", "json_schema": {"name": "order", "schema": ORDER}})
    assert reply.choices[0].finish_reason == "length" and len((reply.choices[0].message.content or "").split()) == 3
    with pytest.raises(openai.LengthFinishReasonError):
        client.chat.completions.parse(model="mock", messages=ASK, max_tokens=3, response_format=Station)
