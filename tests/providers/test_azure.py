"""Azure OpenAI beyond the shared suite (test_conformance.py runs it classic+Entra and v1+api-key):
every URL style with every auth, Entra ID tokens (cached, refreshed, shared, failing), content
filtering and 429s end to end, and the config.

The adapter tests call it over real HTTP against the fake; the end-to-end ones go through the
classic+Entra stack with the official SDK as the client.
"""

from __future__ import annotations

import re

import asyncio
import json
import time
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest
import yaml

from broker.config import AzureProvider, ConfigError, Deployment, EntraAuth, Secret, load, validate
from broker.errors import UpstreamError
from broker.money.pricing import SHIPPED, resolve
from broker.wire import chat_request_decoder, completion_request_decoder, embedding_request_decoder
from broker.wire.audio import TranscriptionRequest, Upload, speech_request_decoder
from tests.fakes.azure_upstream import FILTERED_ANSWER, FILTERED_PROMPT, PROMPT_SAFE, AzureServer
from tests.fakes.openai_legacy import vector
from tests.providers import AZURE
from tests.providers.azure_case import API_KEY, API_VERSION, CLIENT, TENANT
from tests.providers.case import last
from workers.providers.azure import AzureOpenAI

# The end-to-end tests' stack: the conformance suite's classic+Entra one.
E2E = pytest.mark.parametrize("provider", [AZURE], ids=["azure"], indirect=True, scope="package")
HELLO: Any = [{"role": "user", "content": "hello there"}]
SECRET = AZURE.key
README = Path(__file__).resolve().parents[2] / "README.md"


def settings(server: AzureServer, url_style: str, auth: str, **extra: Any) -> AzureProvider:
    given: dict[str, Any] = {
        "api_key": {"api_key": API_KEY},
        "entra": {"entra": {"tenant_id": TENANT, "client_id": CLIENT, "client_secret": SECRET,
                            "token_url": server.token_url}},
        "bearer": {"bearer_token": server.tenant.issue()},
    }[auth]
    version = "v1" if url_style == "v1" else "2024-10-21"
    config = validate({"providers": {"az": {"kind": "azure", "endpoint": server.endpoint, "api_version": version,
                                            "timeout_s": 5, **given, **extra}}}, source="test")
    provider = config.providers["az"]
    assert isinstance(provider, AzureProvider)
    return provider


@pytest.fixture
def server() -> Iterator[AzureServer]:
    """A fake of its own: these tests count its token calls and shorten its tokens' lives."""
    with AzureServer(api_key=API_KEY, tenant_id=TENANT, client_id=CLIENT, client_secret=SECRET) as fake:
        yield fake


@pytest.fixture
async def adapters() -> AsyncIterator[list[AzureOpenAI]]:
    made: list[AzureOpenAI] = []
    yield made
    for adapter in made:
        await adapter.aclose()


def adapter(made: list[AzureOpenAI], config: AzureProvider) -> AzureOpenAI:
    made.append(AzureOpenAI("az", config))
    return made[-1]


def chat(**body: Any) -> Any:
    return chat_request_decoder.decode(json.dumps({"model": "az", "messages": HELLO, **body}).encode())


def soon() -> float:
    return time.time() + 10


# ---------------------------------------------------------------- URL styles × auth modes


@pytest.mark.parametrize("auth", ["api_key", "entra", "bearer"])
@pytest.mark.parametrize("url_style", ["classic", "v1"])
async def test_every_url_style_with_every_auth_reaches_the_deployment(
    server: AzureServer, adapters: list[AzureOpenAI], url_style: str, auth: str
) -> None:
    az = adapter(adapters, settings(server, url_style, auth, responses_api=True))
    reply = await az.complete(chat(), model="fake-model", deadline=soon())
    assert reply.choices[0].message.content and reply.prompt_filter_results == PROMPT_SAFE
    sent = last(server)
    if url_style == "v1":
        assert sent.path == "/openai/v1/chat/completions"  # no api-version: the v1 API needs none
    else:
        assert sent.path == "/openai/deployments/fake-model/chat/completions?api-version=2024-10-21"
    assert sent.body["model"] == "fake-model"
    if auth == "api_key":
        assert sent.headers["api-key"] == API_KEY and "authorization" not in sent.headers
    else:
        assert server.tenant.valid(sent.headers["authorization"].removeprefix("Bearer ")) and "api-key" not in sent.headers
    # The other operations go to the same style's URLs.
    vectors = await az.embed(embedding_request_decoder.decode(b'{"model": "e", "input": ["a"], "dimensions": 8}'),
                             model="text-embedding-3-small", deadline=soon())
    assert vectors.vectors == [vector("a", 8)]
    text = await az.complete_text(completion_request_decoder.decode(b'{"model": "c", "prompt": "say", "max_tokens": 2}'),
                                  model="fake-model", deadline=soon())
    assert text.choices[0].text == "w0 w1" and text.prompt_filter_results == PROMPT_SAFE
    response = json.loads(await az.relay_responses(json.dumps({"model": "fake-model", "input": "hi"}).encode(),
                                                   deadline=soon()))
    assert response["object"] == "response" and response["status"] == "completed"
    paths = [r.path for r in list(server.requests)[-3:]]
    if url_style == "v1":
        assert paths == ["/openai/v1/embeddings", "/openai/v1/completions", "/openai/v1/responses"]
    else:
        assert paths == ["/openai/deployments/text-embedding-3-small/embeddings?api-version=2024-10-21",
                         "/openai/deployments/fake-model/completions?api-version=2024-10-21",
                         "/openai/responses?api-version=2024-10-21"]


async def test_an_unknown_deployment_is_azures_404(server: AzureServer, adapters: list[AzureOpenAI]) -> None:
    az = adapter(adapters, settings(server, "classic", "api_key"))
    with pytest.raises(UpstreamError) as info:
        await az.complete(chat(), model="no-such-deployment", deadline=soon())
    assert info.value.status == 404 and info.value.code == "DeploymentNotFound"


def test_the_fake_refuses_a_classic_call_without_api_version_as_azure_does(server: AzureServer) -> None:
    url = f"{server.endpoint}/openai/deployments/fake-model/chat/completions"
    resp = httpx.post(url, headers={"api-key": API_KEY}, json={"messages": HELLO})
    assert resp.status_code == 404 and resp.json() == {"error": {"code": "404", "message": "Resource not found"}}
    assert httpx.post(url + "?api-version=2024-10-21", json={"messages": HELLO}).status_code == 401  # no key


# ---------------------------------------------------------------- Entra ID tokens


async def test_a_token_is_reused_and_refreshed_once_it_nears_expiry(server: AzureServer,
                                                                      adapters: list[AzureOpenAI]) -> None:
    server.tenant.token_ttl_s = 2  # refreshed from half its life on: 1 s
    az = adapter(adapters, settings(server, "classic", "entra"))
    for _ in range(3):
        await az.complete(chat(), model="fake-model", deadline=soon())
    assert server.tenant.calls == 1
    first = last(server).headers["authorization"]
    await asyncio.sleep(1.1)
    await az.complete(chat(), model="fake-model", deadline=soon())
    assert server.tenant.calls == 2 and last(server).headers["authorization"] != first
    await az.complete(chat(), model="fake-model", deadline=soon())
    assert server.tenant.calls == 2


async def test_concurrent_requests_share_one_token_request(server: AzureServer, adapters: list[AzureOpenAI]) -> None:
    server.tenant.delay_s = 0.3
    az = adapter(adapters, settings(server, "v1", "entra"))
    replies = await asyncio.gather(*(az.complete(chat(), model="fake-model", deadline=soon()) for _ in range(20)))
    assert len(replies) == 20 and server.tenant.calls == 1
    assert len({r.headers["authorization"] for r in list(server.requests)[-20:]}) == 1


async def test_a_refused_secret_is_a_502_naming_entras_answer_never_the_secret(
    server: AzureServer, adapters: list[AzureOpenAI]
) -> None:
    entra = EntraAuth(tenant_id=TENANT, client_id=CLIENT, client_secret=Secret("wrong-secret-31337"),
                      token_url=server.token_url)
    az = adapter(adapters, AzureProvider(endpoint=server.endpoint, api_version="2024-10-21", entra=entra))
    for _ in range(3):  # the failure is remembered for a moment: Entra is asked once
        with pytest.raises(UpstreamError) as info:
            await az.complete(chat(), model="fake-model", deadline=soon())
        err = info.value
        assert err.status == 502 and err.upstream_status == 401 and not err.retryable
        assert "invalid_client" in err.message and "AADSTS7000215" in err.message
        assert "31337" not in str(err) and "Trace ID" not in err.message
    assert server.tenant.calls == 1
    assert not any(r.path.startswith("/openai") for r in server.requests)  # never called Azure without a token


async def test_an_entra_outage_is_retryable_and_a_current_token_outlives_a_failed_refresh(
    server: AzureServer, adapters: list[AzureOpenAI]
) -> None:
    server.tenant.token_ttl_s = 2
    az = adapter(adapters, settings(server, "classic", "entra"))
    await az.complete(chat(), model="fake-model", deadline=soon())
    server.tenant.failing = 503
    await asyncio.sleep(1.1)  # past the refresh point, before the token's end: it still serves
    await az.complete(chat(), model="fake-model", deadline=soon())
    assert server.tenant.calls == 2
    await asyncio.sleep(1.5)  # past its end, and past the remembered failure: a request meets the outage
    with pytest.raises(UpstreamError) as info:
        await az.complete(chat(), model="fake-model", deadline=soon())
    assert info.value.retryable and info.value.status == 503 and "503" in info.value.message


async def test_an_unreachable_token_endpoint_is_a_retryable_error(server: AzureServer,
                                                                   adapters: list[AzureOpenAI]) -> None:
    entra = EntraAuth(tenant_id=TENANT, client_id=CLIENT, client_secret=Secret(SECRET),
                      token_url="http://127.0.0.1:9/t/oauth2/v2.0/token")  # nothing listens on port 9
    az = adapter(adapters, AzureProvider(endpoint=server.endpoint, entra=entra, connect_timeout_s=1))
    with pytest.raises(UpstreamError) as info:
        await az.complete(chat(), model="fake-model", deadline=soon())
    assert info.value.retryable and "Entra ID token endpoint" in info.value.message


# ---------------------------------------------------------------- end to end: filters and 429s


@E2E
@pytest.mark.parametrize("stream", [False, True], ids=["whole", "stream"])
def test_a_filtered_prompt_is_a_400_that_keeps_the_filters_verdict(client: openai.OpenAI, stream: bool) -> None:
    with pytest.raises(openai.BadRequestError) as info:
        client.chat.completions.create(model="filtered-prompt", messages=HELLO, stream=stream)
    err = info.value
    assert err.code == "content_filter" and err.param == "prompt" and "content management policy" in err.message
    assert isinstance(err.body, dict)
    assert err.body["innererror"] == {"code": "ResponsibleAIPolicyViolation", "content_filter_result": FILTERED_PROMPT}


@E2E
def test_a_filtered_answer_reaches_the_client_with_its_verdicts(client: openai.OpenAI) -> None:
    reply = client.chat.completions.create(model="filtered-answer", messages=HELLO)
    assert reply.choices[0].finish_reason == "content_filter" and reply.choices[0].message.content is None
    assert reply.model_extra and reply.model_extra["prompt_filter_results"] == PROMPT_SAFE
    assert reply.choices[0].model_extra == {"content_filter_results": FILTERED_ANSWER}
    chunks = list(client.chat.completions.create(model="filtered-answer", messages=HELLO, stream=True))
    assert all(c.choices for c in chunks)  # no chunk a `choices[0]` reader would stumble on
    assert chunks[0].model_extra and chunks[0].model_extra["prompt_filter_results"] == PROMPT_SAFE
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == "Once"
    assert chunks[-1].choices[0].finish_reason == "content_filter"
    assert (chunks[-1].choices[0].model_extra or {})["content_filter_results"] == FILTERED_ANSWER


@E2E
def test_an_asynchronous_filters_late_annotation_passes_without_a_delta(client: openai.OpenAI) -> None:
    whole = client.chat.completions.create(model="annotated", messages=HELLO)
    chunks = list(client.chat.completions.create(model="annotated", messages=HELLO, stream=True))
    assert "".join(c.choices[0].delta.content or "" for c in chunks) == whole.choices[0].message.content
    assert (chunks[-1].choices[0].model_extra or {})["content_filter_offsets"]["end_offset"] == 60
    with client.chat.completions.stream(model="annotated", messages=HELLO) as stream:
        final = stream.get_final_completion()
    assert final.choices[0].message.content == whole.choices[0].message.content


@E2E
def test_a_429s_retry_after_ms_reaches_the_client_and_the_next_deployment_answers(client: openai.OpenAI) -> None:
    with pytest.raises(openai.RateLimitError) as info:
        client.chat.completions.create(model="limited", messages=HELLO)
    assert info.value.response.headers["retry-after-ms"] == "1200"  # Azure's, not its rounded retry-after
    raw = client.chat.completions.with_raw_response.create(model="limited-or-mock", messages=HELLO)
    assert raw.headers["x-llm-broker-deployment"] == "mock/m" and raw.parse().choices[0].message.content
    # The deployment cools down for Azure's 1.2 s; the stack is shared, and the next test to call `limited`
    # (test_failures.py) must meet the upstream's 429 again, not the broker's own for the cooldown.
    time.sleep(1.3)


# ---------------------------------------------------------------- config and prices


def test_config_needs_exactly_one_auth_and_a_known_api_version_style() -> None:
    base = {"kind": "azure", "endpoint": "https://res.openai.azure.com"}
    with pytest.raises(ConfigError, match="exactly one of `api_key`, `bearer_token` or `entra` \\(got api_key and "
                                          "bearer_token\\)"):
        validate({"providers": {"az": {**base, "api_key": "k", "bearer_token": "t"}}}, source="t")
    with pytest.raises(ConfigError, match="exactly one"):
        validate({"providers": {"az": base}}, source="t")
    with pytest.raises(ConfigError, match="api_version"):
        validate({"providers": {"az": {**base, "api_key": "k", "api_version": "2024-10"}}}, source="t")
    for version in ("v1", "2024-10-21", "2025-04-01-preview"):
        validate({"providers": {"az": {**base, "api_key": "k", "api_version": version}}}, source="t")


def test_an_old_openai_kind_with_the_azure_profile_is_read_as_kind_azure(caplog: pytest.LogCaptureFixture) -> None:
    config = validate({"providers": {"az": {"kind": "openai", "profile": "azure", "base_url": "https://r.openai.azure.com",
                                            "api_key": "k", "api_version": "2024-10-21"}}}, source="t")
    provider = config.providers["az"]
    assert isinstance(provider, AzureProvider)
    assert (provider.endpoint, provider.api_version, provider.api_key) == ("https://r.openai.azure.com", "2024-10-21", "k")
    assert "now `kind: azure`" in caplog.text
    with pytest.raises(ConfigError, match="api_version"):  # it needed one then; v1 would change its URLs silently
        validate({"providers": {"az": {"kind": "openai", "profile": "azure", "base_url": "https://r", "api_key": "k"}}},
                 source="t")


def test_a_deployment_is_priced_by_the_model_it_runs() -> None:
    provider = AzureProvider(endpoint="https://r", api_key=Secret("k"), base_models={"prod-chat": "gpt-4o-2024-08-06"})
    assert resolve(Deployment(provider="az", model="prod-chat"), provider) == SHIPPED["gpt-4o"]
    assert resolve(Deployment(provider="az", model="gpt-4o-mini"), provider) == SHIPPED["gpt-4o-mini"]
    assert resolve(Deployment(provider="az", model="my-custom-name"), provider) is None


def test_the_readmes_azure_examples_load_as_written(tmp_path: Path) -> None:
    block = README.read_text().split("## Configuration", 1)[1].split("```yaml\n", 1)[1].split("```", 1)[0]
    providers = {name: entry for name, entry in yaml.safe_load(block)["providers"].items() if entry["kind"] == "azure"}
    assert set(providers) == {"azure-east", "azure-west"}
    # Written as in the README, unquoted dates included (YAML would make `2024-10-21` a date).
    text = "providers:\n" + "\n".join(line for line in block.split("providers:", 1)[1].splitlines()
                                        if line.startswith("  ")).split("  mock:")[0]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    # Every variable the README's providers name, whichever kinds they configure.
    env = {name: f"value-of-{name}" for name in re.findall(r"\$\{(\w+)\}", text)}
    config = load(path, env)
    east, west = config.providers["azure-east"], config.providers["azure-west"]
    assert isinstance(east, AzureProvider) and isinstance(west, AzureProvider)
    assert east.v1 and east.api_key == "value-of-AZURE_OPENAI_API_KEY"
    assert west.api_version == "2024-10-21" and west.entra is not None
    assert west.entra.endpoint() == "https://login.microsoftonline.com/value-of-AZURE_TENANT_ID/oauth2/v2.0/token"


def test_every_azure_credential_is_redacted_from_what_leaves_the_broker(server: AzureServer) -> None:
    from broker.ops.redaction import secrets_of

    config = validate({"providers": {
        "key": {"kind": "azure", "endpoint": "https://r", "api_key": "azure-api-key-123456"},
        "bearer": {"kind": "azure", "endpoint": "https://r", "bearer_token": "eyJ-static-token-123456"},
        "entra": {"kind": "azure", "endpoint": "https://r", "entra": {"tenant_id": "t", "client_id": "c",
                                                                      "client_secret": "entra-secret-123456"}}}},
        source="t")
    assert set(secrets_of(config)) == {"azure-api-key-123456", "eyJ-static-token-123456", "entra-secret-123456"}


async def test_an_expired_bearer_token_is_azures_401_without_the_token(server: AzureServer,
                                                                       adapters: list[AzureOpenAI]) -> None:
    token = server.tenant.issue(ttl_s=-1)
    az = adapter(adapters, AzureProvider(endpoint=server.endpoint, bearer_token=Secret(token)))
    with pytest.raises(UpstreamError) as info:
        await az.complete(chat(), model="fake-model", deadline=soon())
    assert info.value.status == 502 and info.value.upstream_status == 401 and info.value.code == "upstream_error"
    assert "Access token is missing, invalid" in info.value.message and token not in str(info.value)


# ---------------------------------------------------------------- audio (transcriptions, translations, speech)


@E2E
def test_audio_reaches_azures_audio_urls_with_an_entra_token(client: openai.OpenAI, upstream: AzureServer,
                                                            tmp_path: Path) -> None:
    audio = tmp_path / "hello.wav"
    audio.write_bytes(b"RIFF" + bytes(31_996))  # 32,000 bytes: 2 s as the fake counts
    with audio.open("rb") as file:
        heard = client.audio.transcriptions.create(model="chat", file=file)
    assert heard.text.startswith("heard 32000 bytes sha256 ") and heard.text.endswith(" transcribe")
    sent = last(upstream)
    assert sent.path == f"/openai/deployments/fake-model/audio/transcriptions?api-version={API_VERSION}"
    assert upstream.tenant.valid(sent.headers["authorization"].removeprefix("Bearer "))
    assert sent.body["file"]["filename"] == "hello.wav" and sent.body["file"]["bytes"] == 32_000  # whole
    with audio.open("rb") as file:
        translated = client.audio.translations.create(model="chat", file=file, response_format="text")
    assert str(translated).strip().endswith(" translate")
    assert last(upstream).path.startswith("/openai/deployments/fake-model/audio/translations?api-version=")
    with client.audio.speech.with_streaming_response.create(model="chat", voice="alloy", input="hello there",
                                                            response_format="wav") as spoken:
        assert spoken.headers["content-type"] == "audio/wav"
        wav = spoken.read()
    assert wav[:4] == b"RIFF" and wav[8:12] == b"WAVE"
    sent = last(upstream)
    assert sent.path == f"/openai/deployments/fake-model/audio/speech?api-version={API_VERSION}"
    assert upstream.tenant.valid(sent.headers["authorization"].removeprefix("Bearer "))
    assert sent.body == {"model": "fake-model", "voice": "alloy", "input": "hello there", "response_format": "wav"}


@pytest.mark.parametrize("auth", ["entra", "api_key"])
async def test_v1_audio_goes_to_openai_v1_audio_with_each_calls_own_auth(server: AzureServer,
                                                                         adapters: list[AzureOpenAI],
                                                                         auth: str) -> None:
    az = adapter(adapters, settings(server, "v1", auth))
    speech = speech_request_decoder.decode(b'{"model": "tts", "input": "hi", "voice": "alloy", "response_format": "wav"}')
    wav = b"".join([piece async for piece in az.speak(speech, b'{"model": "tts", "input": "hi", "voice": "alloy", '
                                                              b'"response_format": "wav"}', model="fake-model",
                                                      deadline=soon())])
    assert wav[:4] == b"RIFF"
    sent = last(server)
    assert sent.path == "/openai/v1/audio/speech" and sent.body["model"] == "fake-model"
    if auth == "entra":
        assert server.tenant.valid(sent.headers["authorization"].removeprefix("Bearer "))
    else:
        assert sent.headers["api-key"] == API_KEY
    # A deployment Azure does not have: its 404 in Azure's words, through the Azure error mapping.
    with pytest.raises(UpstreamError) as info:
        async for _ in az.speak(speech, b'{"model": "tts", "input": "hi", "voice": "alloy"}', model="no-such",
                                deadline=soon()):
            pass
    assert info.value.upstream_status == 404 and "deployment for this resource does not exist" in info.value.message


async def test_an_expired_token_is_azures_401_for_an_upload_too(server: AzureServer, adapters: list[AzureOpenAI],
                                                                tmp_path: Path) -> None:
    token = server.tenant.issue(ttl_s=-1)
    az = adapter(adapters, AzureProvider(endpoint=server.endpoint, bearer_token=Secret(token)))
    audio = tmp_path / "a.wav"
    audio.write_bytes(bytes(1600))
    request = TranscriptionRequest(model="whisper", file=Upload(str(audio), "a.wav", "audio/wav", 1600))
    with pytest.raises(UpstreamError) as info:
        await az.transcribe(request, model="fake-model", deadline=soon())
    assert info.value.upstream_status == 401 and "Access token is missing, invalid" in info.value.message
    assert token not in str(info.value)
