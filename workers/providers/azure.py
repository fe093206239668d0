"""Azure OpenAI: the OpenAI-compatible adapter with Azure's URLs, auth and error bodies.

Requests and answers are OpenAI's, so the adapter is `OpenAICompatible` given its seams
(azure_translate.py holds what differs):
- URLs: the v1 API (`{endpoint}/openai/v1/chat/completions`, the deployment in the body's
  `model`) or the classic one (`{endpoint}/openai/deployments/{deployment}/chat/completions
  ?api-version=...`; Responses at `/openai/responses?api-version=...` with the deployment in the
  body, https://learn.microsoft.com/azure/ai-foundry/openai/how-to/responses), by `api_version`;
- auth: the `api-key` header, a static bearer token, or Entra ID tokens (entra.py), which
  change, so they go on each request rather than on the pooled client;
- errors: Azure's bodies, a content filter's verdict kept for the client;
- streams: the prompt's filter results folded into the first chunk (PromptAnnotations).
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping

from broker.config.providers import AzureProvider as AzureSettings
from broker.errors import UpstreamError
from broker.routing.profiles import PROFILES
from broker.wire import ChatChunk, ChatRequest
from workers.providers import azure_translate as az
from workers.providers import openai_translate as tr
from workers.providers.entra import ClientCredentials
from workers.providers.openai import OpenAICompatible

class AzureOpenAI(OpenAICompatible):
    def __init__(self, name: str, settings: AzureSettings) -> None:
        headers = dict(settings.headers)
        if settings.api_key is not None:
            headers["api-key"] = settings.api_key.reveal()
        elif settings.bearer_token is not None:
            headers["authorization"] = f"Bearer {settings.bearer_token.reveal()}"
        self._connect(name, settings, az.base_url(settings.endpoint, v1=settings.v1), headers, PROFILES["azure"],
                      stream_usage=settings.stream_usage, responses_api=settings.responses_api)
        self.api_version = settings.api_version
        self._tokens: ClientCredentials | None = None
        if settings.entra is not None:
            self._tokens = ClientCredentials(name, settings.entra, timeout_s=settings.timeout_s,
                                             connect_timeout_s=settings.connect_timeout_s)
            self._auth = self._tokens.headers

    def _path(self, endpoint: str, model: str) -> str:
        if self.api_version == "v1":
            return f"/{endpoint}"
        return az.classic_path(endpoint, model, self.api_version)

    def _responses_path(self) -> str:
        return "/responses" if self.api_version == "v1" else f"/responses?api-version={self.api_version}"

    def _error(self, status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
        return az.error_from_response(status, body, headers)

    async def stream(self, req: ChatRequest, *, model: str, deadline: float) -> AsyncIterator[ChatChunk]:
        repair, annotations = tr.StreamRepair(), az.PromptAnnotations()
        events = self._events(self._path("chat/completions", model), self._shape(req, model, True), deadline,
                              lambda event: tr.chat_chunk(event.data))
        async for chunk in events:
            if (kept := annotations(chunk)) is not None:
                yield repair(kept)

    async def aclose(self) -> None:
        if self._tokens is not None:
            await self._tokens.aclose()
        await super().aclose()
