"""Every answer carries `x-request-id`, errors raised before any job exists too, and a client's own
`X-Client-Request-Id` comes back beside it (api/request_ids.py), through the real HTTP surface."""

from __future__ import annotations

import re

import httpx
import openai
import pytest

from tests.harness import TEST_KEY
from tests.stacks import StackFactory

OURS = re.compile(r"req_[0-9a-f]{32}")
AUTH = {"authorization": f"Bearer {TEST_KEY}"}
GOOD = {"model": "m", "messages": [{"role": "user", "content": "hi"}]}


@pytest.fixture(scope="module")
def base_url(module_stack_factory: StackFactory) -> str:
    stack = module_stack_factory({"mock": {"kind": "mock", "tokens": 3}}, {"m": [{"provider": "mock", "model": "m"}]})
    return str(stack.up("mock"))


def errors(base_url: str, headers: dict[str, str]) -> dict[str, httpx.Response]:
    """One error of each kind that is raised before a job exists."""
    chat = f"{base_url}/chat/completions"
    return {
        "404 unknown route": httpx.get(f"{base_url}/no-such-thing", headers={**AUTH, **headers}),
        "405 wrong method": httpx.put(chat, headers={**AUTH, **headers}),
        "401 bad key": httpx.post(chat, json=GOOD, headers={"authorization": "Bearer sk-wrong", **headers}),
        "400 invalid body": httpx.post(chat, json={"model": "m"}, headers={**AUTH, **headers}),
        "400 malformed JSON": httpx.post(chat, content=b"{", headers={**AUTH, **headers}),
        "404 unknown model": httpx.post(chat, json={**GOOD, "model": "nope"}, headers={**AUTH, **headers}),
        "404 unknown job": httpx.get(f"{base_url}/jobs/nope", headers={**AUTH, **headers}),
    }


def test_every_error_raised_before_a_job_exists_has_a_request_id_of_its_own(base_url: str) -> None:
    answers = errors(base_url, {})
    for what, resp in answers.items():
        assert f"{resp.status_code} " in what, (what, resp.status_code)
        assert set(resp.json()["error"]) == {"message", "type", "param", "code"}, what
        assert OURS.fullmatch(resp.headers.get("x-request-id", "")), (what, resp.headers)
    assert len({resp.headers["x-request-id"] for resp in answers.values()}) == len(answers)


def test_an_answer_keeps_the_id_of_its_job(base_url: str) -> None:
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0)
    raw = client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert OURS.fullmatch(raw.headers["x-request-id"])
    assert raw.parse()._request_id == raw.headers["x-request-id"]  # what the SDK shows its user


def test_the_clients_request_id_is_echoed_on_answers_and_errors(base_url: str) -> None:
    theirs = "order-42/retry 1 (eu)"
    client = openai.OpenAI(base_url=base_url, api_key=TEST_KEY, max_retries=0,
                           default_headers={"X-Client-Request-Id": theirs})
    raw = client.chat.completions.with_raw_response.create(model="m", messages=[{"role": "user", "content": "x"}])
    assert raw.headers["x-client-request-id"] == theirs and OURS.fullmatch(raw.headers["x-request-id"])
    with client.chat.completions.with_streaming_response.create(
            model="m", stream=True, messages=[{"role": "user", "content": "x"}]) as streamed:
        assert streamed.headers["x-client-request-id"] == theirs
    assert client.models.with_raw_response.list().headers["x-client-request-id"] == theirs
    for what, resp in errors(base_url, {"x-client-request-id": theirs}).items():
        assert resp.headers.get("x-client-request-id") == theirs, what
        assert OURS.fullmatch(resp.headers["x-request-id"]), what


@pytest.mark.parametrize(("given", "echoed"), [
    ("x" * 128, True), ("x" * 129, False), ("caf\xe9", False), ("tab\there", False), ("", False),
], ids=["128-chars", "too-long", "latin-1", "tab", "empty"])
def test_only_printable_ascii_up_to_128_characters_is_echoed_the_rest_ignored(base_url: str, given: str,
                                                                              echoed: bool) -> None:
    resp = httpx.post(f"{base_url}/chat/completions", json=GOOD,
                      headers={**AUTH, "x-client-request-id": given.encode("latin-1")})  # type: ignore[dict-item]
    assert resp.status_code == 200  # never refused for it
    assert resp.headers.get("x-client-request-id") == (given if echoed else None)
    assert OURS.fullmatch(resp.headers["x-request-id"])
