"""Bad input gets an OpenAI-shaped error with the right status, through the real HTTP surface."""

from __future__ import annotations

from typing import Any

import httpx
import msgspec
import openai
import pytest

from api.decode import decode_body
from broker.errors import InvalidRequest
from tests.harness import TEST_KEY
from tests.stacks import StackFactory

PROVIDERS = {"mock": {"kind": "mock", "tokens": 4}, "idle": {"kind": "mock"},
             "slowpoke": {"kind": "mock", "first_token_delay_s": 5}}
MODELS = {
    "mock-chat": [{"provider": "mock", "model": "m"}],
    "unserved": [{"provider": "idle", "model": "m"}],  # no worker runs for `idle`
    "slow": [{"provider": "slowpoke", "model": "m"}],  # answers after the 1.5 s deadline
}


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory) -> str:
    # drain_timeout_s 0: the 504 tests leave slowpoke's 5 s jobs running, which SIGTERM need not wait for.
    stack = module_stack_factory(PROVIDERS, MODELS, server={"request_timeout_s": 1.5, "max_body_bytes": 64 * 1024},
                                 queue={"drain_timeout_s": 0})
    return str(stack.up("mock", "slowpoke"))


def post(base_url: str, body: Any, key: str | None = TEST_KEY, raw: bytes | None = None) -> httpx.Response:
    headers = {"content-type": "application/json"}
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    if raw is not None:
        return httpx.post(f"{base_url}/chat/completions", content=raw, headers=headers)
    return httpx.post(f"{base_url}/chat/completions", json=body, headers=headers)


def error_of(resp: httpx.Response) -> dict[str, Any]:
    body = resp.json()
    assert set(body) == {"error"}
    assert set(body["error"]) == {"message", "type", "param", "code"}
    return dict(body["error"])


GOOD = {"model": "mock-chat", "messages": [{"role": "user", "content": "hi"}]}


def test_missing_key_is_401(base_url: str) -> None:
    resp = post(base_url, GOOD, key=None)
    assert resp.status_code == 401
    assert error_of(resp)["code"] == "invalid_api_key"


def test_wrong_key_is_401_and_not_echoed(base_url: str) -> None:
    resp = post(base_url, GOOD, key="sk-wrong-secret-value")
    assert resp.status_code == 401
    assert "sk-wrong-secret-value" not in resp.text
    with pytest.raises(openai.AuthenticationError):
        openai.OpenAI(base_url=base_url, api_key="sk-wrong", max_retries=0).models.list()


def test_unknown_model_is_404_model_not_found(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.NotFoundError) as info:
        client.chat.completions.create(model="gpt-99", messages=[{"role": "user", "content": "x"}])
    assert info.value.code == "model_not_found"
    assert info.value.param == "model"


@pytest.mark.parametrize(
    ("body", "param"),
    [
        ({"messages": [{"role": "user", "content": "x"}]}, "model"),
        ({"model": "mock-chat"}, "messages"),
        ({"model": "mock-chat", "messages": []}, "messages"),
        ({"model": "mock-chat", "messages": [{"role": "robot", "content": "x"}]}, "messages[0].role"),
        ({"model": "mock-chat", "messages": [{"role": "tool", "content": "x"}]}, "messages[0]"),
        ({**GOOD, "temperature": 3}, "temperature"),
        ({**GOOD, "max_tokens": "lots"}, "max_tokens"),
        ({**GOOD, "n": 0}, "n"),
        ({**GOOD, "stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({**GOOD, "tools": [{"type": "function", "function": {"name": "bad name!"}}]}, "tools[0].function.name"),
        # Shapes inside pass-through objects that every adapter reads (they crashed the worker: a 500).
        ({**GOOD, "tools": [{"type": "function", "function": {"name": "f"}}],
          "tool_choice": {"type": "function", "function": "f"}}, "tool_choice.function"),
        ({**GOOD, "tool_choice": {"type": "function", "function": {"name": 5}}}, "tool_choice.function"),
        ({**GOOD, "response_format": {"type": "json_schema", "json_schema": "x"}}, "response_format.json_schema"),
        ([1, 2, 3], None),
    ],
)
def test_invalid_body_is_400_naming_the_field(base_url: str, body: Any, param: str | None) -> None:
    resp = post(base_url, body)
    assert resp.status_code == 400
    error = error_of(resp)
    assert error["type"] == "invalid_request_error"
    assert error["param"] == param
    if param:
        assert param in error["message"]


BIG = 123456789012345678901234567890  # beyond 64 bits: the Job's msgpack cannot carry it
TOOL = {"type": "function", "function": {"name": "f", "parameters": {"type": "object"}}}


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/chat/completions", {**GOOD, "seed": BIG}, "seed"),
        ("/chat/completions", {**GOOD, "max_tokens": BIG}, "max_tokens"),
        ("/chat/completions", {**GOOD, "max_completion_tokens": BIG}, "max_completion_tokens"),
        ("/chat/completions", {**GOOD, "logit_bias": {"42": BIG}}, "logit_bias"),
        ("/chat/completions", {**GOOD, "tools": [{**TOOL, "function": {**TOOL["function"], "parameters": {
            "type": "object", "properties": {"n": {"type": "integer", "maximum": BIG}}}}}]},
         "tools[0].function.parameters.properties.n.maximum"),
        ("/chat/completions", {**GOOD, "response_format": {"type": "json_object", "x": BIG}}, "response_format.x"),
        ("/chat/completions", {**GOOD, "unmodelled_extension": [1, {"deep": BIG}]}, "unmodelled_extension[1].deep"),
        ("/completions", {"model": "mock-chat", "prompt": [1, 2, BIG]}, "prompt[2]"),
        ("/completions", {"model": "mock-chat", "prompt": "x", "seed": BIG}, "seed"),
        ("/embeddings", {"model": "mock-chat", "input": "x", "dimensions": BIG}, "dimensions"),
        ("/embeddings", {"model": "mock-chat", "input": [[1, BIG]]}, "input[0][1]"),
    ],
)
def test_integers_beyond_64_bits_are_a_400_naming_the_field(base_url: str, path: str, body: Any,
                                                             param: str) -> None:
    resp = httpx.post(f"{base_url}{path}", json=body, headers={"authorization": f"Bearer {TEST_KEY}"})
    assert resp.status_code == 400, resp.text
    assert error_of(resp)["param"] == param


def nested(depth: int) -> str:
    return "[" * depth + "]" * depth


@pytest.mark.parametrize(
    "raw",
    [
        '{"model": "mock-chat", "messages": [{"role": "user", "content": "x"}], "extension": %s}' % nested(10_000),
        '{"model": "mock-chat", "messages": [{"role": "user", "content": "x"}], "tools": [{"type": "function", '
        '"function": {"name": "f", "parameters": {"type": "object", "x": %s}}}]}' % nested(10_000),
        '{"model": "mock-chat", "messages": [{"role": "user", "content": "x"}], "extension": %s}' % nested(100),
        nested(10_000),
    ],
    ids=["extra-field", "tool-parameters", "just-too-deep", "top-level-array"],
)
def test_deep_nesting_is_a_400(base_url: str, raw: str) -> None:
    resp = post(base_url, None, raw=raw.encode())
    assert resp.status_code == 400, resp.text
    assert error_of(resp)["type"] == "invalid_request_error"


def test_invalid_utf8_inside_a_string_is_a_400(base_url: str) -> None:
    resp = post(base_url, None, raw=b'{"model": "mock-chat", "messages": [{"role": "user", "content": "caf\xe9 \xff"}]}')
    assert resp.status_code == 400, resp.text
    assert "UTF-8" in error_of(resp)["message"]


def test_invalid_utf8_outside_a_string_is_a_400_saying_where(base_url: str) -> None:
    resp = post(base_url, None, raw=b'{"model": "mock-chat", \xff "messages": []}')
    assert resp.status_code == 400, resp.text
    assert "UTF-8" in error_of(resp)["message"] and "byte 23" in error_of(resp)["message"]


@pytest.mark.parametrize("raised", [msgspec.DecodeError("some future wording"), UnicodeDecodeError(
    "utf-8", b"\xff", 0, 1, "invalid start byte")], ids=["DecodeError", "UnicodeDecodeError"])
def test_the_cause_of_an_undecodable_body_is_read_off_the_bytes_not_the_exception(raised: Exception) -> None:
    class Refusing:  # a decoder signalling the failure in a way msgspec might in some release
        def decode(self, body: bytes) -> None:
            raise raised

    def message(body: bytes) -> str:
        with pytest.raises(InvalidRequest) as caught:
            decode_body(body, Refusing())  # type: ignore[arg-type]
        assert caught.value.status == 400
        return str(caught.value)

    assert "UTF-8" in message('{"a": "café"}'.encode("latin-1"))
    assert "levels deep" in message(b"[" * 100 + b"]" * 100)
    assert "valid JSON" in message(b'{"a": ')


def test_brackets_inside_strings_are_no_nesting(base_url: str) -> None:
    assert post(base_url, {**GOOD, "messages": [{"role": "user", "content": "[" * 500 + "{" * 500}]}).status_code == 200


def test_malformed_json_is_400(base_url: str) -> None:
    resp = post(base_url, None, raw=b'{"model": "mock-chat", "messages": [')
    assert resp.status_code == 400
    assert "JSON" in error_of(resp)["message"]


def test_empty_body_is_400(base_url: str) -> None:
    resp = post(base_url, None, raw=b"")
    assert resp.status_code == 400


def test_unknown_fields_are_ignored_not_rejected(base_url: str) -> None:
    resp = post(base_url, {**GOOD, "some_future_sdk_field": {"x": 1}})
    assert resp.status_code == 200


def test_unknown_route_is_openai_shaped_404(base_url: str) -> None:
    resp = httpx.get(f"{base_url}/no-such-thing", headers={"authorization": f"Bearer {TEST_KEY}"})
    assert resp.status_code == 404
    error_of(resp)


def test_provider_without_live_workers_is_503_with_retry_after(base_url: str) -> None:
    resp = post(base_url, {"model": "unserved", "messages": [{"role": "user", "content": "x"}]})
    assert resp.status_code == 503
    assert int(resp.headers["retry-after"]) >= 1
    assert "x-should-retry" not in resp.headers  # worth retrying: the SDK's default stands
    assert "idle" in error_of(resp)["message"]  # names the provider nobody serves


def test_job_past_its_deadline_is_a_clear_504(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    with pytest.raises(openai.InternalServerError) as info:
        client.chat.completions.create(model="slow", messages=[{"role": "user", "content": "x"}])
    assert info.value.status_code == 504
    assert info.value.code == "timeout"
    assert "slowpoke" in info.value.message  # names the provider it waited for
    # Its own deadline ran out: the SDK (which retries 5xx by default) is told not to try again.
    assert info.value.response.headers["x-should-retry"] == "false"


def test_stream_past_its_deadline_before_the_first_byte_is_a_504(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    # The hold (2s default) outlasts the 1.5s deadline, so the error still comes as an HTTP status.
    with pytest.raises(openai.APIStatusError) as info:
        list(client.chat.completions.create(
            model="slow", stream=True, messages=[{"role": "user", "content": "x"}]
        ))
    assert info.value.status_code == 504


def test_request_timeout_and_priority_headers_are_validated(base_url: str) -> None:
    resp = httpx.post(f"{base_url}/chat/completions", json=GOOD,
                      headers={"authorization": f"Bearer {TEST_KEY}", "x-request-timeout": "soon"})
    assert resp.status_code == 400 and error_of(resp)["param"] == "X-Request-Timeout"
    resp = httpx.post(f"{base_url}/chat/completions", json=GOOD,
                      headers={"authorization": f"Bearer {TEST_KEY}", "x-priority": "urgent"})
    assert resp.status_code == 400 and error_of(resp)["param"] == "X-Priority"


def test_an_oversized_body_is_413_whether_its_length_is_declared_or_not(base_url: str) -> None:
    big = {"model": "mock-chat", "messages": [{"role": "user", "content": "x" * 100_000}]}
    declared = post(base_url, big)
    assert declared.status_code == 413
    assert error_of(declared)["code"] == "request_too_large"

    def chunks() -> Any:  # no Content-Length: sent chunked, counted as it arrives
        for _ in range(100):
            yield b" " * 1024
    chunked = httpx.post(f"{base_url}/chat/completions", content=chunks(),
                         headers={"authorization": f"Bearer {TEST_KEY}", "content-type": "application/json"})
    assert chunked.status_code == 413
    assert error_of(chunked)["type"] == "invalid_request_error"
    # Just under the limit is served.
    fits = {"model": "mock-chat", "messages": [{"role": "user", "content": "x" * 60_000}]}
    assert post(base_url, fits).status_code == 200


@pytest.mark.parametrize(
    "head",
    [
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-note: a\x00b\r\n",  # NUL in a header value
        b"POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-note: a\rb\r\n",  # a bare CR
        "POST /v1/chat/completions HTTP/1.1\r\nhost: x\r\nx-n\u00f6te: 1\r\n".encode(),  # non-ASCII name
        b"POST /v1/chat completions HTTP/1.1\r\nhost: x\r\n",  # a space in the target
        b"GARBAGE\r\n",
    ],
    ids=["nul-in-value", "bare-cr", "non-ascii-name", "bad-request-line", "garbage"],
)
def test_a_request_that_is_not_valid_http_gets_an_openai_shaped_400(base_url: str, head: bytes) -> None:
    import json
    import re
    import socket

    port = httpx.URL(base_url).port
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        sock.sendall(head + b"content-length: 2\r\n\r\n{}")
        received = b""
        while data := sock.recv(65536):
            received += data
    status_line, _, rest = received.partition(b"\r\n")
    headers, _, body = rest.partition(b"\r\n\r\n")
    assert status_line == b"HTTP/1.1 400 Bad Request", received
    assert b"content-type: application/json" in headers.lower()
    assert re.search(rb"\r\nx-request-id: req_[0-9a-f]{32}\r\n", b"\r\n" + headers + b"\r\n"), headers
    error = json.loads(body)["error"]
    assert set(error) == {"message", "type", "param", "code"}
    assert (error["type"], error["code"]) == ("invalid_request_error", "invalid_http_request")
