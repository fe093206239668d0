"""A bounded fuzz pass over the three job endpoints: whatever a client sends, never a 5xx, and every
error is OpenAI-shaped with a 4xx status.

Deterministic (fixed values, and hypothesis with derandomize) so CI sees the same cases every run:
- every field of each request Struct (read from the Struct, so new fields are fuzzed too), and an
  unknown extra field, set to wrong types, extreme numbers, deep nesting and a huge string;
- raw bodies: invalid UTF-8, truncated or non-object JSON, deep top-level nesting, NUL bytes;
- random JSON values (hypothesis) in random fields, and random tool schemas with a forced tool
  call (the mock builds arguments from them);
- schemathesis bodies, valid and invalid, from the schemas the broker serves at /openapi.json;
- every place a value can go, read from each Struct's JSON schema (top-level fields, an unknown field,
  and nested ones: token-id arrays, logit_bias values, tool parameters, message parts), set to what
  schemathesis never generates: integers beyond 64 bits, 10,000-level nesting, invalid UTF-8 and
  multi-megabyte strings.
"""

from __future__ import annotations

import json
import re
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import httpx
import msgspec
import pytest
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import strategies as st
from schemathesis.core import NOT_SET

from broker.wire import ChatRequest, CompletionRequest, EmbeddingRequest
from tests.harness import TEST_KEY
from tests.stacks import StackFactory

GOOD: dict[str, dict[str, Any]] = {
    "/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "fuzz"}]},
    "/completions": {"model": "m", "prompt": "fuzz"},
    "/embeddings": {"model": "m", "input": "fuzz"},
}
STRUCTS = {"/chat/completions": ChatRequest, "/completions": CompletionRequest, "/embeddings": EmbeddingRequest}


def deep(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = [value]
    return value


BAD_VALUES: list[Any] = [
    None, True, "x", "", -1, 0, 1.5, -1e308, 1e308, 2**63, -(2**63) - 1, 2**64, 10**40, [], {}, [None],
    {"a": {"b": [1, "2", None]}}, deep(70), "\u0000\ud7ff\U0010ffff", "x" * 20_000,
]


@pytest.fixture(scope="module")
def http(module_stack_factory: StackFactory) -> Iterator[httpx.Client]:
    stack = module_stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                                 server={"max_body_bytes": 4 * 1024 * 1024})
    with httpx.Client(base_url=stack.up("mock"), timeout=30,
                      headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"}) as client:
        yield client


def problem(resp: httpx.Response) -> str | None:
    """Why this answer breaks the contract, or None."""
    if resp.status_code >= 500:
        return f"{resp.status_code}: {resp.text[:200]}"
    if resp.status_code < 400:
        return None
    try:
        error = resp.json()["error"]
    except (ValueError, KeyError, TypeError):
        return f"{resp.status_code} not OpenAI-shaped: {resp.text[:200]}"
    if not (isinstance(error.get("message"), str) and isinstance(error.get("type"), str)
            and "param" in error and "code" in error):
        return f"{resp.status_code} error lacks fields: {error}"
    return None


def send(http: httpx.Client, path: str, body: bytes) -> str | None:
    try:
        return problem(http.post(path, content=body))
    except httpx.TransportError as exc:  # a dropped connection is a failure to list, not to stop at
        return f"no answer: {exc!r}"



def encode(value: Any) -> bytes:
    return json.dumps(value, ensure_ascii=False).encode("utf-8", "surrogatepass")


@pytest.mark.parametrize("path", list(GOOD))
def test_every_field_with_every_bad_value(http: httpx.Client, path: str) -> None:
    fields = [f.encode_name for f in msgspec.structs.fields(STRUCTS[path])] + ["unmodelled_extension"]
    failures = []
    for field in fields:
        for value in BAD_VALUES:
            body = {**GOOD[path], field: value}
            if (why := send(http, path, encode(body))) is not None:
                failures.append(f"{path} {field}={json.dumps(value)[:60]} -> {why}")
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("path", list(GOOD))
def test_raw_bodies_that_are_not_what_they_claim(http: httpx.Client, path: str) -> None:
    good = encode(GOOD[path])
    raw = [
        b"", b"null", b"[]", b"1e999", b'"text"', b"{", good[:-1], good + b"garbage", b"\x00" * 10,
        good.replace(b"fuzz", b"fu\xffzz"), good.replace(b"fuzz", b"\xed\xa0\x80"),  # bad UTF-8, a lone surrogate
        b"[" * 10_000 + b"]" * 10_000, b'{"model": "m", "x": ' + b"[" * 10_000 + b"]" * 10_000 + b"}",
        b'{"model": "m", "x": ' + b'{"a":' * 5_000 + b"1" + b"}" * 5_000 + b"}",
        good.replace(b"fuzz", b"\\ud800"), good.replace(b'"fuzz"', b"NaN"),
        good[:-1] + b', "big": ' + b"9" * 5_000 + b"}",
        good[:-1] + b', "pad": "' + b"x" * (3 * 1024 * 1024) + b'"}',
        b'{"fu\xffzz": 1, ' + good[1:],  # bad UTF-8 in a key
    ]
    failures = [f"{path} {body[:60]!r}... -> {why}" for body in raw if (why := send(http, path, body)) is not None]
    assert not failures, "\n".join(failures)


@pytest.mark.parametrize("field", ["tool_choice", "response_format"])
def test_bad_values_inside_the_objects_adapters_read(http: httpx.Client, field: str) -> None:
    """`tool_choice.function` and `response_format.json_schema` are read by the adapters, not passed through."""
    tools = [{"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}]
    inner = "function" if field == "tool_choice" else "json_schema"
    failures = []
    for value in [*BAD_VALUES, {"name": None}, {"name": 5}, {"schema": "x"}]:
        body = {**GOOD["/chat/completions"], "tools": tools, field: {"type": inner, inner: value}}
        if (why := send(http, "/chat/completions", encode(body))) is not None:
            failures.append(f"{field}.{inner}={json.dumps(value)[:60]} -> {why}")
    assert not failures, "\n".join(failures)


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=30),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)


@settings(max_examples=150, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(path=st.sampled_from(list(GOOD)), data=st.data())
def test_random_values_in_random_fields(http: httpx.Client, path: str, data: st.DataObject) -> None:
    fields = [f.encode_name for f in msgspec.structs.fields(STRUCTS[path])]
    body = dict(GOOD[path])
    for field in data.draw(st.lists(st.sampled_from(fields), max_size=3)):
        body[field] = data.draw(json_values)
    assert send(http, path, encode(body)) is None, body


schemas = st.recursive(
    st.fixed_dictionaries({"type": st.sampled_from(["string", "integer", "number", "boolean", "null", "bogus"])},
                          optional={"enum": st.lists(json_values, max_size=3), "minimum": st.integers(),
                                    "maximum": st.integers(), "minLength": st.integers(-5, 50)}),
    lambda children: st.fixed_dictionaries(
        {"type": st.sampled_from(["object", "array"])},
        optional={"properties": st.dictionaries(st.text(min_size=1, max_size=6), children, max_size=3),
                  "items": children, "required": st.lists(st.text(max_size=6), max_size=3),
                  "anyOf": st.lists(children, max_size=2), "$ref": st.text(max_size=12)}),
    max_leaves=8,
)


@settings(max_examples=60, derandomize=True, deadline=None, database=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(schema=schemas | json_values)
def test_random_tool_schemas_with_a_forced_call(http: httpx.Client, schema: Any) -> None:
    body = {**GOOD["/chat/completions"], "tool_choice": "required",
            "tools": [{"type": "function", "function": {"name": "f", "parameters": schema}}]}
    assert send(http, "/chat/completions", encode(body)) is None, schema


# ------------------------------------------------------------------ schemathesis, from the served schemas

def test_the_served_openapi_document_resolves_every_reference(http: httpx.Client) -> None:
    # The request bodies' schemas were msgspec's `#/$defs/...`, which nothing in an OpenAPI document
    # resolves: schemathesis (and any client generator) then saw no body at all.
    doc = http.get(http.base_url.join("/openapi.json")).json()
    refs = set(re.findall(r'"\$ref": ?"([^"]+)"', json.dumps(doc)))
    assert refs and all(ref.startswith("#/components/schemas/") for ref in refs), refs
    assert {ref.rsplit("/", 1)[1] for ref in refs} <= set(doc["components"]["schemas"])
    assert doc["paths"]["/v1/chat/completions"]["post"]["requestBody"]["content"]["application/json"]["schema"] == {
        "$ref": "#/components/schemas/ChatRequest"}


@pytest.fixture(scope="module")
def served_schema(http: httpx.Client) -> Any:
    return schemathesis.openapi.from_dict(http.get(http.base_url.join("/openapi.json")).json())


@pytest.mark.parametrize("mode", [schemathesis.GenerationMode.POSITIVE, schemathesis.GenerationMode.NEGATIVE],
                         ids=["valid", "invalid"])
@pytest.mark.parametrize("path", list(GOOD))
def test_schemathesis_bodies_from_the_served_schema(http: httpx.Client, served_schema: Any, path: str,
                                                    mode: schemathesis.GenerationMode) -> None:
    failures: list[str] = []

    # Failures are collected rather than raised, so hypothesis neither shrinks nor stops early: the
    # run is the same fixed set of bodies every time, and the report lists every bad one.
    # 50 bodies per endpoint and mode keep the suite within its time budget; bench/ or a local run
    # with more examples is where a long fuzz belongs.
    @settings(max_examples=50, derandomize=True, database=None, deadline=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=served_schema[f"/v1{path}"]["POST"].as_strategy(generation_mode=mode))
    def run(case: schemathesis.Case) -> None:
        body = case.body
        if isinstance(body, dict):
            if isinstance(body.get("model"), str):
                body["model"] = "m"  # a served model, so valid bodies reach the worker
            if isinstance(body.get("dimensions"), int) and body["dimensions"] > 64:
                body["dimensions"] = 64  # valid up to 2**31 - 1, but the mock would build the whole vector
            for field, most in (("max_tokens", 32), ("max_completion_tokens", 32), ("n", 2), ("best_of", 2)):
                if isinstance(body.get(field), int) and body[field] > most:
                    body[field] = most  # valid, but the mock would write every token of every choice
        raw = b"" if body is NOT_SET else body if isinstance(body, bytes) else encode(body)
        if (why := send(http, path, raw)) is not None:
            failures.append(f"{path} {mode.value} {raw[:120]!r} -> {why}")

    run()
    assert not failures, "\n".join(dict.fromkeys(failures))


# ------------------------------------------------------------------ what schemathesis never generates

HOLE = "@@fuzz-hole@@"  # where a raw extreme is spliced into an encoded body
MB = 1024 * 1024
EXTREMES: dict[str, bytes] = {
    "2**64": b"18446744073709551616",
    "-(2**63)-1": b"-9223372036854775809",
    "10**40": b"1" + b"0" * 40,
    "5000 digits": b"9" * 5_000,
    "1e999": b"1e999",
    "10,000 nested arrays": b"[" * 10_000 + b"]" * 10_000,
    "10,000 nested objects": b'{"a":' * 10_000 + b"1" + b"}" * 10_000,
    "invalid UTF-8": b'"fu\xffzz"',
    "UTF-8 surrogate": b'"\xed\xa0\x80"',
    "truncated UTF-8": b'"\xe2\x82"',
    "escaped lone surrogate": b'"\\ud800"',
    "2 MB string": b'"' + b"x" * (2 * MB) + b'"',
    "2 MB of escapes": b'"' + b"\\u00e9" * (MB // 3) + b'"',
}


def _minimal(schema: dict[str, Any], defs: dict[str, Any]) -> Any:
    """A small value the schema accepts, for the required siblings of a place being fuzzed."""
    if "$ref" in schema:
        return _minimal(defs[schema["$ref"].rsplit("/", 1)[-1]], defs)
    if "enum" in schema:
        return "user" if "user" in schema["enum"] else schema["enum"][0]
    if "anyOf" in schema:
        return _minimal(schema["anyOf"][0], defs)
    kind = schema.get("type")
    if kind == "object":
        return {name: _minimal(schema["properties"][name], defs) for name in schema.get("required", [])}
    if kind == "array":
        return [_minimal(schema.get("items", {}), defs)] * schema.get("minItems", 0)
    return {"string": "f", "integer": schema.get("minimum", 1), "number": 0, "boolean": False}.get(kind)


def _places(schema: dict[str, Any], defs: dict[str, Any], seen: frozenset[str] = frozenset()) -> Iterator[tuple[str, Any]]:
    """(path, value with HOLE there) for this place and every place inside it the schema describes."""
    if "$ref" in schema:
        name = schema["$ref"].rsplit("/", 1)[-1]
        if name not in seen:  # a recursive type is walked once
            yield from _places(defs[name], defs, seen | {name})
        return
    yield "", HOLE
    for branch in schema.get("anyOf", []):
        yield from _places(branch, defs, seen)
    kind = schema.get("type")
    if kind == "array":
        for path, value in _places(schema.get("items", {}), defs, seen):
            yield f"[0]{path}", [value]
    elif kind == "object":
        base = _minimal(schema, defs)
        for name, sub in schema.get("properties", {}).items():
            for path, value in _places(sub, defs, seen):
                yield f".{name}{path}", {**base, name: value}
        # dict[str, X] (logit_bias, tool parameters, response_format): a key of its own
        extra = schema.get("additionalProperties", {} if "properties" not in schema else None)
        if isinstance(extra, dict):
            for path, value in _places(extra, defs, seen):
                yield f'["42"]{path}', {**base, "42": value}


def places(path: str) -> dict[str, bytes]:
    """Every place in a request to `path`, from its Struct (so new fields are fuzzed too), as an encoded
    body with HOLE at that place; the rest of the body is valid, so the hole is what gets judged."""
    schema = msgspec.json.schema(STRUCTS[path])
    defs = schema["$defs"]
    bodies = {"unmodelled_extension": {**GOOD[path], "unmodelled_extension": HOLE}}
    for field in msgspec.structs.fields(STRUCTS[path]):
        sub = defs[STRUCTS[path].__name__]["properties"].get(field.encode_name, {})
        for where, value in _places(sub, defs):
            bodies.setdefault(f"{field.encode_name}{where}", {**GOOD[path], field.encode_name: value})
    return {where: encode(body) for where, body in bodies.items()}


@pytest.mark.parametrize("path", list(GOOD))
def test_every_place_with_what_schemathesis_never_generates(http: httpx.Client, path: str) -> None:
    cases = [(f"{path} {where} = {label}", body.replace(f'"{HOLE}"'.encode(), extreme))
             for where, body in places(path).items() for label, extreme in EXTREMES.items()]
    # A few at a time, so the client's work overlaps the API's (the API parses most of these megabytes).
    with ThreadPoolExecutor(4) as pool:
        answers = list(pool.map(lambda case: send(http, path, case[1]), cases))
    failures = [f"{name} -> {why}" for (name, _), why in zip(cases, answers) if why is not None]
    assert not failures, f"{len(failures)} bad answers:\n" + "\n".join(failures)
