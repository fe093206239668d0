"""What only Bedrock has: SigV4 credentials (static, session tokens, the AWS chain, API keys), event-stream
frames, inference profiles, guardrails and Claude's thinking on Bedrock, against the fake over real HTTP.

What every provider shares is the conformance suite's (test_conformance.py, test_failures.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator
from typing import Any

import httpx
import msgspec
import openai
import pytest
from botocore.auth import SigV4Auth
from botocore.awsrequest import AWSRequest
from botocore.credentials import Credentials
from botocore.eventstream import ChecksumMismatch, EventStreamBuffer

from broker.config import BedrockProvider, default_config
from broker.config.types import Secret
from broker.errors import UpstreamError
from broker.ops.redaction import redact, remember, secrets_of
from broker.wire import ChatRequest
from tests.fakes.bedrock_upstream import BLOCKED, REGION, BedrockServer
from tests.fakes.bedrock_sigv4 import Keys
from tests.fakes.bedrock_wire import event, exception, frame
from tests.fakes.server import FakeServer
from tests.providers import BEDROCK
from tests.providers.bedrock_case import PROFILE
from tests.providers.case import last, text_of
from workers.providers.bedrock import BedrockConverse

# On the suite's Bedrock fake and stack (tests that start a fake of their own go without).
on_fake = pytest.mark.parametrize("provider", [BEDROCK], ids=["bedrock"], indirect=True, scope="package")

HELLO: Any = [{"role": "user", "content": "hello there"}]
PNG = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mP8z8BQDwAEhQGAhKmMIQAAAABJRU5ErkJggg=="
TEMPORARY = ("ASIAEXAMPLETEMPORARY", "temporary/secret/key/EXAMPLE0123456789", "FwoGZXIvYXdzEXAMPLEsessiontoken0123")


def settings(values: dict[str, Any]) -> BedrockProvider:
    """As the config loader decodes a provider (secrets as `Secret`)."""
    return msgspec.convert(values, BedrockProvider, dec_hook=lambda typ, obj: Secret(obj) if typ is Secret else obj)


def chat(**body: Any) -> ChatRequest:
    return msgspec.json.decode(json.dumps({"model": "m", "messages": HELLO, **body}), type=ChatRequest)


def adapter(upstream: FakeServer, **values: Any) -> BedrockConverse:
    return BedrockConverse("bedrock", settings({"region": REGION, "endpoint_url": upstream.base_url, **values}))


async def answer(provider: BedrockConverse, model: str = PROFILE) -> str:
    try:
        reply = await provider.complete(chat(), model=model, deadline=time.time() + 10)
    finally:
        await provider.aclose()
    return reply.choices[0].message.content or ""


# ---------------------------------------------------------------- frames


def test_the_fakes_frames_parse_through_botocore_and_a_bad_crc_is_refused() -> None:
    stream = event("contentBlockDelta", {"contentBlockIndex": 0, "delta": {"text": "héllo"}}) \
        + exception("throttlingException", "Too many requests")
    buffer = EventStreamBuffer()
    for i in range(0, len(stream), 7):  # any slicing of the body
        buffer.add_data(stream[i:i + 7])
    first, second = list(buffer)
    assert first.headers == {":event-type": "contentBlockDelta", ":content-type": "application/json",
                             ":message-type": "event"}
    assert json.loads(first.payload)["delta"] == {"text": "héllo"}
    assert second.headers[":exception-type"] == "throttlingException"
    damaged = bytearray(frame({":message-type": "event"}, b"{}"))
    damaged[-1] ^= 1
    buffer = EventStreamBuffer()
    buffer.add_data(bytes(damaged))
    with pytest.raises(ChecksumMismatch):
        list(buffer)


# ---------------------------------------------------------------- signing and credentials


@on_fake
async def test_a_wrong_secret_is_refused_by_the_fakes_signature_check(upstream: FakeServer) -> None:
    with pytest.raises(UpstreamError) as info:
        await answer(adapter(upstream, access_key_id=BEDROCK.access_key_id, secret_access_key="not-the-secret"))
    assert info.value.upstream_status == 403 and info.value.status == 502 and not info.value.retryable
    assert "InvalidSignatureException" in info.value.message and "Canonical String" not in info.value.message


@on_fake
def test_a_body_changed_after_signing_is_refused(upstream: FakeServer) -> None:
    url = f"{upstream.base_url}/model/amazon.nova-lite-v1%3A0/converse"
    body = json.dumps({"messages": [{"role": "user", "content": [{"text": "hi"}]}]}).encode()
    request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
    SigV4Auth(Credentials(BEDROCK.access_key_id, BEDROCK.key), "bedrock", REGION).add_auth(request)
    headers = dict(request.headers.items())
    assert httpx.post(url, content=body, headers=headers).status_code == 200
    refused = httpx.post(url, content=body.replace(b"hi", b"ho"), headers=headers)
    assert refused.status_code == 403
    assert refused.headers["x-amzn-errortype"].startswith("InvalidSignatureException:")
    assert "signature we calculated does not match" in refused.json()["message"]
    # Signed for another region, or another service: refused before the signature is even compared.
    for region, service in (("eu-west-1", "bedrock"), (REGION, "s3")):
        request = AWSRequest(method="POST", url=url, data=body, headers={"content-type": "application/json"})
        SigV4Auth(Credentials(BEDROCK.access_key_id, BEDROCK.key), service, region).add_auth(request)
        refused = httpx.post(url, content=body, headers=dict(request.headers.items()))
        assert refused.status_code == 403 and "Credential should be scoped" in refused.json()["message"]


async def test_a_session_token_is_sent_signed_and_never_shown() -> None:
    key_id, secret, token = TEMPORARY
    async with BedrockServer(Keys(REGION, {key_id: (secret, token)})) as server:
        assert await answer(adapter(server, access_key_id=key_id, secret_access_key=secret, session_token=token))
        assert last(server).headers["x-amz-security-token"] == token
        assert "x-amz-security-token" in last(server).headers["authorization"]  # signed
        with pytest.raises(UpstreamError) as info:  # the fake's answer quotes the token in its canonical request
            await answer(adapter(server, access_key_id=key_id, secret_access_key="wrong", session_token=token))
        assert "InvalidSignatureException" in info.value.message and token not in info.value.message
        with pytest.raises(UpstreamError) as info:
            await answer(adapter(server, access_key_id=key_id, secret_access_key=secret, session_token="expired"))
        assert "UnrecognizedClientException" in info.value.message and info.value.upstream_status == 403


@on_fake
async def test_without_keys_in_the_config_the_aws_chain_is_used(upstream: FakeServer,
                                                                monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", BEDROCK.access_key_id)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", BEDROCK.key)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    assert await answer(adapter(upstream)) == "You said: hello there"
    assert f"Credential={BEDROCK.access_key_id}/" in last(upstream).headers["authorization"]


@on_fake
async def test_no_credentials_anywhere_is_a_clear_error(upstream: FakeServer, monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_SESSION_TOKEN", "AWS_PROFILE",
                 "AWS_WEB_IDENTITY_TOKEN_FILE", "AWS_CONTAINER_CREDENTIALS_RELATIVE_URI"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_SHARED_CREDENTIALS_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_EC2_METADATA_DISABLED", "true")
    before = len(upstream.requests)
    with pytest.raises(UpstreamError) as info:
        await answer(adapter(upstream))
    assert "no AWS credentials" in info.value.message and info.value.upstream_status == 403
    assert len(upstream.requests) == before


async def test_a_bedrock_api_key_goes_as_a_bearer_token() -> None:
    async with BedrockServer(Keys(REGION, {}, api_keys=("ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl",))) as server:
        assert await answer(adapter(server, api_key="ABSKQmVkcm9ja0FQSUtleS1leGFtcGxl"))
        with pytest.raises(UpstreamError) as info:
            await answer(adapter(server, api_key="ABSKwrong"))
        assert "UnrecognizedClientException" in info.value.message


def test_the_config_takes_one_source_of_credentials() -> None:
    for given, says in (({"access_key_id": "AKIA"}, "both"), ({"session_token": "t"}, "goes with"),
                        ({"access_key_id": "a", "secret_access_key": "s", "profile": "p"}, "one of")):
        with pytest.raises(msgspec.ValidationError, match=says):
            settings({"region": REGION, **given})
    config = settings({"region": "eu-central-1", "secret_access_key": "s", "access_key_id": "a"})
    assert config.base_url == "https://bedrock-runtime.eu-central-1.amazonaws.com"
    assert isinstance(config.secret_access_key, Secret) and "'s'" not in repr(config)


# ---------------------------------------------------------------- models and answers


@on_fake
@pytest.mark.parametrize("model", ["plain-id", "chat", "nova", "llama"])
def test_model_ids_and_inference_profiles_go_in_the_path_encoded(client: openai.OpenAI, upstream: FakeServer,
                                                                model: str) -> None:
    reply = client.chat.completions.create(model=model, messages=HELLO)
    assert text_of(reply) == "You said: hello there"
    path = last(upstream).path
    assert path == f"/model/{BEDROCK.models[model].replace(':', '%3A')}/converse" and ":" not in path


@on_fake
def test_an_inline_image_goes_as_bytes_and_an_image_url_goes_to_a_deployment_that_fetches(
    client: openai.OpenAI, upstream: FakeServer
) -> None:
    content: Any = [{"type": "text", "text": "What is in this image?"},
                    {"type": "image_url", "image_url": {"url": f"data:image/png;base64,{PNG}"}}]
    reply = client.chat.completions.create(model="chat", messages=[{"role": "user", "content": content}])
    assert text_of(reply) == "I see 1 image(s). You said: What is in this image?"
    assert last(upstream).body["messages"][0]["content"][1] == {"image": {"format": "png", "source": {"bytes": PNG}}}
    chunks = list(client.chat.completions.create(model="chat", messages=[{"role": "user", "content": content}],
                                                 stream=True))
    assert text_of(chunks) == text_of(reply)
    content[1]["image_url"]["url"] = "https://example.com/cat.png"
    before = len(upstream.requests)
    raw = client.chat.completions.with_raw_response.create(model="chat-or-mock",
                                                           messages=[{"role": "user", "content": content}])
    assert raw.headers["x-llm-broker-deployment"] == "mock/m" and len(upstream.requests) == before


@on_fake
@pytest.mark.parametrize(("model", "text"), [("filtered", ""), ("guardrail", BLOCKED)])
def test_filtered_answers_finish_with_content_filter_and_keep_a_guardrails_words(client: openai.OpenAI,
                                                                                 model: str, text: str) -> None:
    reply = client.chat.completions.create(model=model, messages=HELLO)
    assert reply.choices[0].finish_reason == "content_filter" and reply.choices[0].message.content == text
    chunks = list(client.chat.completions.create(model=model, messages=HELLO, stream=True))
    assert [c.choices[0].finish_reason for c in chunks if c.choices][-1] == "content_filter"


@on_fake
def test_a_damaged_frame_ends_the_stream_with_an_error(client: openai.OpenAI) -> None:
    with pytest.raises(openai.APIError) as info:
        list(client.chat.completions.create(model="corrupt", messages=HELLO, stream=True))
    assert "damaged event stream frame" in info.value.message


@on_fake
def test_a_model_not_ready_is_a_retryable_429(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="not-ready", messages=HELLO)
    assert "ModelNotReadyException" in info.value.message


@on_fake
def test_a_models_own_refusal_of_a_forced_tool_is_its_400(client: openai.OpenAI) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="llama", messages=HELLO, tools=tools, tool_choice="required")
    assert "doesn't support the toolConfig.toolChoice.any field" in info.value.message


@on_fake
def test_reasoning_effort_turns_on_claudes_thinking_and_the_answer_is_the_text(client: openai.OpenAI,
                                                                              upstream: FakeServer) -> None:
    reply = client.chat.completions.create(model="thinking", messages=HELLO, reasoning_effort="low",
                                           temperature=0.5, max_completion_tokens=500)
    assert text_of(reply) == "You said: hello there"
    body = last(upstream).body
    assert body["additionalModelRequestFields"] == {"thinking": {"type": "enabled", "budget_tokens": 2048}}
    assert body["inferenceConfig"] == {"maxTokens": 2548}  # the answer's 500 on top of the budget; no temperature
    chunks = list(client.chat.completions.create(model="thinking", messages=HELLO, reasoning_effort="low", stream=True))
    assert text_of(chunks) == "You said: hello there"
    # Other families have no such field: the effort is not sent to them.
    client.chat.completions.create(model="nova", messages=HELLO, reasoning_effort="low")
    assert "additionalModelRequestFields" not in last(upstream).body


@pytest.fixture
async def plain(upstream: FakeServer) -> AsyncIterator[BedrockConverse]:
    provider = adapter(upstream, access_key_id=BEDROCK.access_key_id, secret_access_key=BEDROCK.key)
    yield provider
    await provider.aclose()


@on_fake
async def test_tool_choice_none_sends_no_tools_unless_the_conversation_holds_tool_blocks(
    plain: BedrockConverse, upstream: FakeServer
) -> None:
    tools: Any = [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
    reply = await plain.complete(chat(tools=tools, tool_choice="none",
                                      messages=[{"role": "user", "content": "weather?"}]),
                                 model=PROFILE, deadline=time.time() + 10)
    assert "toolConfig" not in last(upstream).body and reply.choices[0].finish_reason == "stop"


def test_the_configs_aws_secrets_are_redacted_as_api_keys_are() -> None:
    key_id, secret, token = TEMPORARY
    config = msgspec.structs.replace(default_config(), providers={"b": settings(
        {"region": REGION, "access_key_id": key_id, "secret_access_key": secret, "session_token": token})})
    assert {secret, token} <= set(secrets_of(config))
    remember(secrets_of(config))
    assert redact(f"token {token} secret {secret}") == "token *** secret ***"
