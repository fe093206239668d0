"""A bounded fuzz pass over the three job endpoints: whatever a client sends, never a 5xx, and every
error is OpenAI-shaped with a 4xx status.

Deterministic (fixed values, and hypothesis with derandomize) so CI sees the same cases every run:
- every field of each request Struct (read from the Struct, so new fields are fuzzed too), and an
  unknown extra field, set to wrong types, extreme numbers, deep nesting and a huge string;
- raw bodies: invalid UTF-8, truncated or non-object JSON, deep top-level nesting, NUL bytes;
- random JSON values (hypothesis) in random fields, and random tool schemas with a forced tool
  call (the mock builds arguments from them).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from typing import Any

import httpx
import msgspec
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from broker.wire import ChatRequest, CompletionRequest, EmbeddingRequest
from tests.conftest import TEST_KEY

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
def http(module_stack_factory: Any) -> Iterator[httpx.Client]:
    stack = module_stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]},
                                 server={"max_body_bytes": 4 * 1024 * 1024})
    stack.worker("mock")
    with httpx.Client(base_url=stack.api(), timeout=30,
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
    return problem(http.post(path, content=body))


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
