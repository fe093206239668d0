"""Google Vertex AI: Gemini and Claude served from a Google Cloud project, with Google's OAuth tokens.

The protocols are the publishers' own, so the translations are reused whole; what Vertex changes is
the host, the path and the credentials (https://cloud.google.com/vertex-ai/docs/reference/rest/v1/projects.locations.publishers.models):

    POST {root}/projects/{project}/locations/{location}/publishers/google/models/{model}:generateContent
                                                                           ...:streamGenerateContent?alt=sse
                                                                           ...:predict (vertex_embeddings.py)
    POST {root}/projects/{project}/locations/{location}/publishers/anthropic/models/{model}:rawPredict
                                                                           ...:streamRawPredict
                                                  .../publishers/anthropic/models/count-tokens:rawPredict

Every call carries `Authorization: Bearer <access token>` (google_tokens.py). For Claude the body is
Anthropic's Messages request without `model` (it is in the path) and with `"anthropic_version":
"vertex-2023-10-16"` in the body instead of a header
(https://docs.anthropic.com/en/api/claude-on-vertex-ai); the answer and its event stream are Anthropic's.
Errors come in two shapes: Vertex's own front (credentials, quota, an unknown model) answers Google's
`{"error": {code, message, status}}`, Claude itself Anthropic's `{"type": "error", ...}`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from typing import TYPE_CHECKING

import msgspec

from broker.config.providers import VertexProvider
from broker.errors import InvalidRequest, UpstreamError
from broker.wire import ChatRequest, EmbeddingRequest, ImageUrlPart
from workers.providers import anthropic_translate
from workers.providers import vertex_embeddings as embeddings
from workers.providers.anthropic import MessagesClient
from workers.providers.base import EmbeddingsResult, Provider
from workers.providers.gemini import GenerateContent, error_from_response
from workers.providers.http import UpstreamHTTP

if TYPE_CHECKING:
    from workers.providers.google_tokens import TokenSource


def api_root(location: str) -> str:
    """The regional host, or the global and multi-region ones, which have no location prefix
    (https://cloud.google.com/vertex-ai/generative-ai/docs/learn/locations)."""
    if location == "global":
        return "https://aiplatform.googleapis.com/v1"
    if location in ("us", "eu"):
        return f"https://aiplatform.{location}.rep.googleapis.com/v1"
    return f"https://{location}-aiplatform.googleapis.com/v1"


class _Vertex:
    """What both publishers' adapters share: the pool to the project's host, its tokens and its path."""

    def __init__(self, name: str, config: VertexProvider, publisher: str) -> None:
        # Here: google-auth takes half a second to import, which workers of other kinds need not pay.
        from workers.providers.google_tokens import TokenSource

        self.config = config
        self.http = UpstreamHTTP(name, config.base_url or api_root(config.location), headers=config.headers,
                                 max_connections=config.concurrency, timeout_s=config.timeout_s,
                                 connect_timeout_s=config.connect_timeout_s)
        self.tokens: TokenSource = TokenSource(name, config.credentials_file, timeout_s=config.connect_timeout_s + 10)
        self.models = f"/projects/{config.project}/locations/{config.location}/publishers/{publisher}/models"

    async def auth(self) -> dict[str, str]:
        return {"authorization": f"Bearer {await self.tokens.token()}"}

    def refused(self, err: UpstreamError) -> UpstreamError:
        if err.upstream_status == 401:  # the token was revoked, or our clock runs behind Google's
            self.tokens.forget()
        return err


class VertexGemini(GenerateContent):
    upstream = "Vertex AI"

    def __init__(self, name: str, config: VertexProvider) -> None:
        self._vertex = _Vertex(name, config, "google")
        super().__init__(name, self._vertex.http)

    def _path(self, model: str, method: str) -> str:
        return f"{self._vertex.models}/{model}:{method}"

    async def _auth(self) -> Mapping[str, str] | None:
        return await self._vertex.auth()

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return self._vertex.refused(super()._error(status, body, headers))

    async def embed(self, req: EmbeddingRequest, *, model: str, deadline: float) -> EmbeddingsResult:
        if req.is_token_input():
            raise InvalidRequest("Vertex AI embeds text only, not token ids", param="input")
        texts, size = req.texts(), embeddings.batch_size(model)
        dimensions = req.dimensions if isinstance(req.dimensions, int) else None
        batches = [texts[i:i + size] for i in range(0, len(texts), size)]
        results = await asyncio.gather(*(self._predict(batch, model, dimensions, deadline) for batch in batches))
        return EmbeddingsResult([v for vectors, _ in results for v in vectors], sum(tokens for _, tokens in results))

    async def _predict(self, texts: list[str], model: str, dimensions: int | None,
                       deadline: float) -> tuple[list[list[float]], int]:
        body = embeddings.to_predict(texts, dimensions)
        async with self._http.post(self._path(model, "predict"), body, deadline=deadline,
                                   headers=await self._auth()) as resp:
            content = await resp.read()
        if resp.status >= 400:
            raise self._error(resp.status, content, resp.headers)
        return embeddings.from_predict(content, len(texts))


class _ErrorShape(msgspec.Struct):
    type: str = ""  # "error" in Anthropic's bodies; Google's have no `type`


_fields = msgspec.json.Decoder(dict[str, msgspec.Raw])
_shape = msgspec.json.Decoder(_ErrorShape)
_encoder = msgspec.json.Encoder()


def error_from_vertex(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Claude's errors as Anthropic writes them; the rest (Vertex's front) as Google writes them."""
    try:
        anthropic = _shape.decode(body).type == "error"
    except msgspec.DecodeError:
        anthropic = False
    if anthropic:
        return anthropic_translate.error_from_response(status, body, headers)
    return error_from_response(status, body, headers, upstream="Vertex AI")


def for_vertex(body: bytes, version: str) -> tuple[str, bytes]:
    """A Messages body that names its model → that model, and the body as Vertex takes it: no `model`, an
    `anthropic_version`. Every other value keeps its bytes (msgspec.Raw), as a relayed body must."""
    fields = _fields.decode(body)
    model = msgspec.json.decode(fields.pop("model", msgspec.Raw(b'""')), type=str)
    fields["anthropic_version"] = msgspec.Raw(_encoder.encode(version))
    return model, _encoder.encode(fields)


class VertexClaude(MessagesClient):
    def __init__(self, name: str, config: VertexProvider) -> None:
        self._vertex = _Vertex(name, config, "anthropic")
        self._version = config.anthropic_version
        super().__init__(name, self._vertex.http, default_max_tokens=config.default_max_tokens)

    def _request(self, body: bytes, *, stream: bool) -> tuple[str, bytes]:
        model, body = for_vertex(body, self._version)
        if not model:
            raise InvalidRequest("model: Field required", param="model")
        return f"{self._vertex.models}/{model}:{'streamRawPredict' if stream else 'rawPredict'}", body

    def _count_request(self, body: bytes) -> tuple[str, bytes]:
        # The one Vertex method that keeps the model in the body: the path names no model.
        fields = _fields.decode(body)
        fields["anthropic_version"] = msgspec.Raw(_encoder.encode(self._version))
        return f"{self._vertex.models}/count-tokens:rawPredict", _encoder.encode(fields)

    async def _auth(self) -> dict[str, str]:
        return await self._vertex.auth()

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return self._vertex.refused(error_from_vertex(status, body, headers))

    def _check(self, req: ChatRequest) -> None:
        # Claude on Vertex refuses URL image sources ("URL sources are not supported"), and a worker
        # fetching client-given URLs to inline them would be a server-side request forgery hole.
        for i, message in enumerate(req.messages):
            for j, part in enumerate(message.content if isinstance(message.content, list) else []):
                if isinstance(part, ImageUrlPart) and part.image_url.url.lower().startswith(("http://", "https://")):
                    raise InvalidRequest("Claude on Vertex AI takes images as base64 data: URLs only, not URLs "
                                         "to fetch", param=f"messages[{i}].content[{j}].image_url.url")


def vertex(name: str, config: VertexProvider) -> Provider:
    """The `vertex` kind's adapter: its publisher's protocol (config says which: see VertexProvider)."""
    return VertexClaude(name, config) if config.publisher == "anthropic" else VertexGemini(name, config)
