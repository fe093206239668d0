"""A protocol-faithful fake of Azure OpenAI, in front of the OpenAI fake (openai_upstream.py).

Azure OpenAI is OpenAI's wire behind Azure's own door, and so is this fake: it checks what
Azure checks, answers Azure's errors in Azure's shapes, and hands every request it lets in to
the OpenAI fake's app (ASGI, in-process, streaming and disconnects included), whose answers it
annotates as Azure does. What it checks:

- URLs. Classic (https://learn.microsoft.com/azure/ai-foundry/openai/reference):
  `/openai/deployments/{deployment}/{chat/completions|completions|embeddings}?api-version=...`
  and `/openai/responses?api-version=...`; without `api-version`: 404 "Resource not found"
  (MicrosoftDocs/azure-docs#114602). v1 (https://learn.microsoft.com/azure/ai-foundry/openai/
  api-version-lifecycle): `/openai/v1/{operation}`, the deployment in the body's `model`.
- The deployment exists: else 404 DeploymentNotFound.
- Auth: the `api-key` header, or `Authorization: Bearer` with a token this fake's own Entra token
  endpoint (`POST /{tenant}/oauth2/v2.0/token`) issued and that has not expired. That endpoint
  checks the form as Entra does (grant_type client_credentials, tenant, client id and secret,
  scope `https://cognitiveservices.azure.com/.default`) and answers Entra's errors (AADSTS codes).
- Content filtering: `prompt_filter_results` and `content_filter_results` on every chat answer
  and stream (the prompt's on a first chunk of no choices, as Azure streams them).
- Audio: `audio/transcriptions`, `audio/translations` (multipart) and `audio/speech` (JSON in, audio
  streamed out) under both URL forms, behind the same auth and deployment checks (for v1 the
  deployment is the form's or body's `model`), served by the OpenAI fake's media handlers
  (openai_media.py) as they are: the upload streamed through, never parsed here first.

Deployments (name → the OpenAI fake's model behind it, which picks its behaviour): the OpenAI
fake's ids themselves (fake-model, fail-400, fail-500, fail-503, midstream-error, slow,
text-embedding-3-small), and Azure's own cases:

    filtered-prompt   400 code content_filter, the verdict in innererror.content_filter_result
    filtered-answer   200, finish_reason content_filter, a filtered category in content_filter_results
    limited           429 with Azure's body, retry-after: 2 and retry-after-ms: 1200
    annotated         fake-model, its stream closed by an asynchronous filter's annotation (no delta)
"""

from __future__ import annotations

import asyncio
import collections
import itertools
import secrets
import time
from collections.abc import Awaitable, Callable
from typing import Any

import msgspec
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from tests.fakes.openai_media import media_routes
from tests.fakes.openai_upstream import create_app
from tests.fakes.server import EventStream, FakeServer, RecordedRequest

SCOPE = "https://cognitiveservices.azure.com/.default"
INNER_KEY = "sk-inner-openai-fake"  # between this fake and the OpenAI fake behind it, never seen outside
PASSED_THROUGH = ("fake-model", "fail-400", "fail-500", "fail-503", "midstream-error", "slow", "text-embedding-3-small")
DEPLOYMENTS = {**{m: m for m in PASSED_THROUGH}, "filtered-prompt": "fake-model", "filtered-answer": "fake-model",
               "limited": "fake-model", "annotated": "fake-model"}
OPERATIONS = ("chat/completions", "completions", "embeddings")
AUDIO = ("audio/transcriptions", "audio/translations", "audio/speech")

_encoder = msgspec.json.Encoder()
_ids = itertools.count()

SAFE = {"hate": {"filtered": False, "severity": "safe"}, "self_harm": {"filtered": False, "severity": "safe"},
        "sexual": {"filtered": False, "severity": "safe"}, "violence": {"filtered": False, "severity": "safe"}}
PROMPT_SAFE = [{"prompt_index": 0, "content_filter_results": {**SAFE, "jailbreak": {"filtered": False, "detected": False}}}]
FILTERED_ANSWER = {**SAFE, "violence": {"filtered": True, "severity": "medium"}}
FILTERED_PROMPT = {**SAFE, "hate": {"filtered": True, "severity": "high"},
                   "jailbreak": {"filtered": False, "detected": False}}
PROMPT_FILTERED_SAYS = ("The response was filtered due to the prompt triggering Azure OpenAI's content management "
                        "policy. Please modify your prompt and retry.")
KEY_REFUSED_SAYS = ("Access denied due to invalid subscription key or wrong API endpoint. Make sure to provide a "
                    "valid key for an active subscription and use a correct regional API endpoint for your resource.")
TOKEN_REFUSED_SAYS = ("Unauthorized. Access token is missing, invalid, audience is incorrect "
                      "(https://cognitiveservices.azure.com), or have expired.")


def azure_error(http_status: int, code: str, message: str, headers: dict[str, str] | None = None,
                **extra: Any) -> Response:
    body = {"error": {"code": code, "message": message, **extra}}
    return Response(_encoder.encode(body), http_status, {"apim-request-id": f"apim-{next(_ids)}", **(headers or {})},
                    media_type="application/json")


def entra_error(status: int, error: str, aadsts: int, description: str) -> Response:
    body = {"error": error, "error_description": f"AADSTS{aadsts}: {description}\r\nTrace ID: 0000\r\n"
                                                 "Correlation ID: 0000\r\nTimestamp: 2026-01-01 00:00:00Z",
            "error_codes": [aadsts], "timestamp": "2026-01-01 00:00:00Z", "trace_id": "0000", "correlation_id": "0000"}
    return Response(_encoder.encode(body), status, media_type="application/json")


class Tenant:
    """The fake's Entra ID side: one app registration, the tokens it issued."""

    def __init__(self, tenant_id: str, client_id: str, client_secret: str, token_ttl_s: float) -> None:
        self.tenant_id, self.client_id, self.client_secret = tenant_id, client_id, client_secret
        self.token_ttl_s = token_ttl_s
        self.tokens: dict[str, float] = {}  # token → expiry (time.time())
        self.calls = 0  # token requests, granted or not
        self.delay_s = 0.0  # before answering one: concurrent requests meet a refresh in flight
        self.failing: int | None = None  # a status every token request gets, as an Entra outage would

    def issue(self, ttl_s: float | None = None) -> str:
        token = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9." + secrets.token_urlsafe(24)
        self.tokens[token] = time.time() + (self.token_ttl_s if ttl_s is None else ttl_s)
        return token

    def valid(self, token: str) -> bool:
        return self.tokens.get(token, 0.0) > time.time()

    async def token(self, request: Request) -> Response:
        self.calls += 1
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        if self.failing is not None:
            return entra_error(self.failing, "temporarily_unavailable", 50196, "The server is temporarily unavailable.")
        if request.path_params["tenant"] != self.tenant_id:
            return entra_error(400, "invalid_request", 90002, f"Tenant '{request.path_params['tenant']}' not found.")
        if request.headers.get("content-type", "").split(";")[0] != "application/x-www-form-urlencoded":
            return entra_error(400, "invalid_request", 900144, "The request body must contain the following "
                                                                 "parameter: 'grant_type'.")
        form = await request.form()
        if form.get("grant_type") != "client_credentials":
            return entra_error(400, "unsupported_grant_type", 70003, "The app requested an unsupported grant type.")
        if form.get("client_id") != self.client_id:
            return entra_error(400, "unauthorized_client", 700016, f"Application with identifier "
                               f"'{form.get('client_id')}' was not found in the directory.")
        if form.get("client_secret") != self.client_secret:
            return entra_error(401, "invalid_client", 7000215, "Invalid client secret provided. Ensure the secret "
                               "being sent in the request is the client secret value, not the client secret ID.")
        if form.get("scope") != SCOPE:
            return entra_error(400, "invalid_scope", 1002012, f"The provided value for scope {form.get('scope')} "
                               "is not valid.")
        token = self.issue()
        ttl = int(self.token_ttl_s) if self.token_ttl_s >= 1 else self.token_ttl_s
        return Response(_encoder.encode({"token_type": "Bearer", "expires_in": ttl, "ext_expires_in": ttl,
                                         "access_token": token}), media_type="application/json")


class AudioForward(Response):
    """Hands the request, body unread, to the media app under OpenAI's path; the media handlers' guard
    and record read Azure's path and deployment from the scope."""

    def __init__(self, app: ASGIApp, path: str, azure_path: str, deployment: str | None) -> None:
        self.app, self.path, self.azure_path, self.deployment = app, path, azure_path, deployment
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        inner = {**scope, "path": self.path, "raw_path": self.path.encode(), "query_string": b"",
                 "azure_path": self.azure_path, "azure_deployment": self.deployment}
        await self.app(inner, receive, send)


class Forward(Response):
    """Hands the request to the OpenAI fake's app under OpenAI's path; `annotate` rewrites each answer
    (a whole JSON body, or one SSE event) as Azure would have sent it."""

    def __init__(self, app: ASGIApp, path: str, body: dict[str, Any], annotate: Callable[[dict[str, Any]], None],
                 opening: bytes = b"", closing: bytes = b"") -> None:
        self.app, self.path, self.body, self.annotate = app, path, _encoder.encode(body), annotate
        self.opening, self.closing = opening, closing
        self.background = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        headers = [(k, v) for k, v in scope["headers"] if k not in (b"api-key", b"authorization", b"content-length")]
        headers += [(b"authorization", f"Bearer {INNER_KEY}".encode()), (b"content-length", str(len(self.body)).encode())]
        inner = {**scope, "path": self.path, "raw_path": self.path.encode(), "query_string": b"", "headers": headers}
        delivered = False

        async def inner_receive() -> Message:
            nonlocal delivered
            if not delivered:
                delivered = True
                return {"type": "http.request", "body": self.body, "more_body": False}
            return await receive()  # the client leaving reaches the OpenAI fake's stalls

        await self.app(inner, inner_receive, self._rewriting(send))

    def _rewriting(self, send: Send) -> Callable[[Message], Awaitable[None]]:
        start: Message = {}
        buffered: list[bytes] = []
        streaming = False

        async def inner_send(message: Message) -> None:
            nonlocal start, streaming
            if message["type"] == "http.response.start":
                start = message
                streaming = any(k == b"content-type" and v.startswith(b"text/event-stream") for k, v in message["headers"])
                if streaming:
                    await send(message)
                    if self.opening:
                        await send({"type": "http.response.body", "body": self.opening, "more_body": True})
                return
            data = message.get("body", b"")
            if streaming:
                if data.startswith(b"data: [DONE]") and self.closing:
                    await send({"type": "http.response.body", "body": self.closing, "more_body": True})
                await send({**message, "body": self._event(data)})
                return
            buffered.append(data)
            if message.get("more_body"):
                return
            whole = b"".join(buffered)
            if start["status"] == 200:
                answer = msgspec.json.decode(whole)
                self.annotate(answer)
                whole = _encoder.encode(answer)
            heads = [(k, v) for k, v in start["headers"] if k != b"content-length"]
            await send({**start, "headers": [*heads, (b"content-length", str(len(whole)).encode())]})
            await send({"type": "http.response.body", "body": whole, "more_body": False})

        return inner_send

    def _event(self, data: bytes) -> bytes:
        if not data.startswith(b"data: {"):
            return data
        event = msgspec.json.decode(data[6:].strip())
        if "error" in event:
            return data
        self.annotate(event)
        return b"data: " + _encoder.encode(event) + b"\n\n"


def annotate(answer: dict[str, Any]) -> None:
    """What Azure adds to an OpenAI answer whose prompt and output passed its filters."""
    if answer.get("object") in ("chat.completion", "text_completion") and "choices" in answer:
        answer["prompt_filter_results"] = PROMPT_SAFE
    for choice in answer.get("choices", []):
        choice["content_filter_results"] = {} if choice.get("delta", {}).get("role") else SAFE


def sse(chunk: dict[str, Any]) -> bytes:
    return b"data: " + _encoder.encode(chunk) + b"\n\n"


PROMPT_ANNOTATIONS = sse({"choices": [], "created": 0, "id": "", "model": "", "object": "",
                          "prompt_filter_results": PROMPT_SAFE})
# An asynchronous filter's verdict on text already sent: offsets, results, no delta.
LATE_ANNOTATION = sse({"choices": [{"index": 0, "finish_reason": None, "content_filter_results": SAFE,
                                    "content_filter_offsets": {"check_offset": 0, "start_offset": 0, "end_offset": 60}}],
                       "created": 0, "id": "", "model": "", "object": ""})


def filtered_answer(body: dict[str, Any]) -> Response:
    """The model's output stopped by the filter: finish_reason content_filter and why."""
    created, cid = int(time.time()), f"chatcmpl-az{next(_ids)}"
    usage = {"prompt_tokens": 5, "completion_tokens": 2, "total_tokens": 7}
    base = {"id": cid, "created": created, "model": "gpt-4o-2024-08-06", "system_fingerprint": "fp_az"}
    if not body.get("stream"):
        return Response(_encoder.encode({**base, "object": "chat.completion", "usage": usage,
                                         "prompt_filter_results": PROMPT_SAFE, "choices": [{
                                             "index": 0, "finish_reason": "content_filter", "logprobs": None,
                                             "message": {"role": "assistant", "content": None, "refusal": None},
                                             "content_filter_results": FILTERED_ANSWER}]}),
                        media_type="application/json")
    chunk = {**base, "object": "chat.completion.chunk"}

    async def events() -> Any:
        yield PROMPT_ANNOTATIONS
        yield sse({**chunk, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""},
                                         "finish_reason": None, "content_filter_results": {}}]})
        yield sse({**chunk, "choices": [{"index": 0, "delta": {"content": "Once"}, "finish_reason": None,
                                         "content_filter_results": SAFE}]})
        yield sse({**chunk, "choices": [{"index": 0, "delta": {}, "finish_reason": "content_filter",
                                         "content_filter_results": FILTERED_ANSWER}]})
        if (body.get("stream_options") or {}).get("include_usage"):
            yield sse({**chunk, "choices": [], "usage": usage})
        yield b"data: [DONE]\n\n"

    return EventStream(events())


class Azure:
    """The fake's state and its routes."""

    def __init__(self, api_key: str, tenant: Tenant, chunks: int) -> None:
        self.api_key = api_key
        self.tenant = tenant
        self.openai = create_app(api_key=INNER_KEY, chunks=chunks)
        self.requests: collections.deque[RecordedRequest] = collections.deque(maxlen=1000)
        # The OpenAI fake's media handlers behind Azure's door (`_guard_audio`), given the request untouched.
        self.audio = Starlette(routes=media_routes(self._record_audio, self._guard_audio, EventStream))

    def _denied(self, request: Request) -> Response | None:
        if (key := request.headers.get("api-key")) is not None:
            return None if key == self.api_key else azure_error(401, "401", KEY_REFUSED_SAYS)
        scheme, _, token = request.headers.get("authorization", "").partition(" ")
        if scheme.lower() == "bearer" and token:
            if self.tenant.valid(token):
                return None
            return Response(_encoder.encode({"statusCode": 401, "message": TOKEN_REFUSED_SAYS}), 401,
                            media_type="application/json")
        return azure_error(401, "401", KEY_REFUSED_SAYS)

    async def _admit(self, request: Request, operation: str, deployment: str | None,
                     api_version: str) -> tuple[dict[str, Any], str, Response | None]:
        """The body for the OpenAI fake, the deployment, and Azure's refusal if it has one; `deployment`
        None: the body names it (v1, Responses)."""
        raw = await request.body()
        try:
            body = msgspec.json.decode(raw) if raw else {}
        except msgspec.DecodeError:
            body = None
        query = f"?{request.url.query}" if request.url.query else ""
        self.requests.append(RecordedRequest(request.method, request.url.path + query, dict(request.headers), body))
        if (denied := self._denied(request)) is not None:
            return {}, "", denied
        if not isinstance(body, dict):
            return {}, "", azure_error(400, "BadRequest", "Could not parse the JSON body of your request.")
        name = deployment if deployment is not None else str(body.get("model", ""))
        if name not in DEPLOYMENTS:
            return {}, name, azure_error(404, "DeploymentNotFound", "The API deployment for this resource does not "
                                   "exist. If you created the deployment within the last 5 minutes, please wait "
                                   "a moment and try again.")
        if name == "filtered-prompt" and operation != "embeddings":
            return {}, name, azure_error(400, "content_filter", PROMPT_FILTERED_SAYS, param="prompt", type=None, status=400,
                                   innererror={"code": "ResponsibleAIPolicyViolation",
                                               "content_filter_result": FILTERED_PROMPT})
        if name == "limited":
            return {}, name, azure_error(429, "429", f"Requests to the ChatCompletions_Create Operation under Azure "
                                   f"OpenAI API version {api_version} have exceeded token rate limit of your "
                                   "current OpenAI S0 pricing tier. Please retry after 2 seconds.",
                                   headers={"retry-after": "2", "retry-after-ms": "1200",
                                            "x-ratelimit-remaining-requests": "0"})
        if name == "filtered-answer" and operation == "chat/completions":
            return body, name, filtered_answer(body)
        return {**body, "model": DEPLOYMENTS[name]}, name, None

    def _forward(self, operation: str, body: dict[str, Any], deployment: str) -> Response:
        chat = operation == "chat/completions"
        return Forward(self.openai, f"/v1/{operation}", body, annotate if operation != "embeddings" else _keep,
                       opening=PROMPT_ANNOTATIONS if chat else b"",
                       closing=LATE_ANNOTATION if chat and deployment == "annotated" else b"")

    # ---- audio: the request goes to the media handlers as it came, auth and deployment checked there

    def _record_audio(self, request: Request, body: Any) -> None:
        self.requests.append(RecordedRequest(request.method, request.scope["azure_path"], dict(request.headers), body))

    def _guard_audio(self, request: Request, body: Any) -> Response | None:
        if (denied := self._denied(request)) is not None:
            return denied
        name = request.scope["azure_deployment"] or str(body.get("model", ""))
        if name not in DEPLOYMENTS:
            return azure_error(404, "DeploymentNotFound", "The API deployment for this resource does not exist.")
        return None

    def _audio(self, request: Request, operation: str, deployment: str | None) -> Response:
        query = f"?{request.url.query}" if request.url.query else ""
        return AudioForward(self.audio, f"/v1/{operation}", request.url.path + query, deployment)

    async def classic(self, request: Request) -> Response:
        operation = request.path_params["operation"]
        if operation in AUDIO and _dated(request.query_params.get("api-version")):
            return self._audio(request, operation, request.path_params["deployment"])
        if operation not in OPERATIONS or not _dated(request.query_params.get("api-version")):
            return azure_error(404, "404", "Resource not found")
        body, name, refused = await self._admit(request, operation, request.path_params["deployment"],
                                                request.query_params["api-version"])
        return refused or self._forward(operation, body, name)

    async def classic_responses(self, request: Request) -> Response:
        if not _dated(request.query_params.get("api-version")):
            return azure_error(404, "404", "Resource not found")
        body, _, refused = await self._admit(request, "responses", None, request.query_params["api-version"])
        return refused or Forward(self.openai, "/v1/responses", body, _keep)

    async def v1(self, request: Request) -> Response:
        operation = request.path_params["operation"]
        if operation in AUDIO:
            return self._audio(request, operation, None)
        if operation not in (*OPERATIONS, "responses"):
            return azure_error(404, "404", "Resource not found")
        body, name, refused = await self._admit(request, operation, None, "v1")
        if refused:
            return refused
        if operation == "responses":
            return Forward(self.openai, "/v1/responses", body, _keep)
        return self._forward(operation, body, name)


def _dated(version: str | None) -> bool:
    return version is not None and len(version) >= 10 and version[:4].isdigit() and version[4] == "-"


def _keep(answer: dict[str, Any]) -> None:
    pass


def create_azure_app(*, api_key: str, tenant_id: str, client_id: str, client_secret: str,
                     token_ttl_s: float = 3599, chunks: int = 8) -> Starlette:
    azure = Azure(api_key, Tenant(tenant_id, client_id, client_secret, token_ttl_s), chunks)
    app = Starlette(routes=[
        Route("/{tenant}/oauth2/v2.0/token", azure.tenant.token, methods=["POST"]),
        Route("/openai/deployments/{deployment}/{operation:path}", azure.classic, methods=["POST"]),
        Route("/openai/responses", azure.classic_responses, methods=["POST"]),
        Route("/openai/v1/{operation:path}", azure.v1, methods=["POST"]),
    ])
    app.state.requests = azure.requests
    app.state.azure = azure
    return app


class AzureServer(FakeServer):
    """The Azure fake, served: `endpoint` is the resource's, `token_url` its tenant's token endpoint."""

    def __init__(self, **app_kwargs: Any) -> None:
        super().__init__(create_azure_app(**app_kwargs))
        self.endpoint = f"http://127.0.0.1:{self.port}"
        self.tenant: Tenant = self.app.state.azure.tenant
        self.token_url = f"{self.endpoint}/{self.tenant.tenant_id}/oauth2/v2.0/token"
