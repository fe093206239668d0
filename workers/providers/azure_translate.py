"""Pure translation for Azure OpenAI where it differs from OpenAI's: URLs, error bodies, the stream's
prompt annotations. Requests and answers are OpenAI's (workers/providers/openai_translate.py).

No I/O here, so tests check it from recorded payloads.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any
from urllib.parse import quote

import msgspec
from msgspec import UNSET, UnsetType

from broker.errors import UpstreamError, redact
from broker.wire import ChatChunk
from workers.providers.openai_translate import retry_after_s

CONTENT_FILTER = "content_filter"


def base_url(endpoint: str, *, v1: bool) -> str:
    """`https://res.openai.azure.com` → its API root; an endpoint pasted with `/openai` or `/openai/v1`
    (as Azure's portal shows it) means the same resource."""
    root = endpoint.rstrip("/").removesuffix("/openai/v1").removesuffix("/openai")
    return f"{root}/openai/v1" if v1 else f"{root}/openai"


def classic_path(operation: str, deployment: str, api_version: str) -> str:
    """Classic API: the deployment in the path, the version in the query
    (https://learn.microsoft.com/azure/ai-foundry/openai/reference)."""
    return f"/deployments/{quote(deployment, safe='')}/{operation}?api-version={api_version}"


# ---------------------------------------------------------------- errors


class AzureErrorBody(msgspec.Struct):
    message: str = ""
    code: str | int | None = None  # Azure's own ("DeploymentNotFound", "429", "content_filter") or OpenAI's
    param: str | None = None
    # content_filter: {code: ResponsibleAIPolicyViolation, content_filter_result: {hate: {...}, ...}}
    innererror: dict[str, Any] | None = None


class AzureErrorEnvelope(msgspec.Struct):
    error: AzureErrorBody | None = None
    message: str | None = None  # the gateway's own 401 for a bad bearer token: {statusCode, message}


_error = msgspec.json.Decoder(AzureErrorEnvelope)


def error_from_response(status: int, body: bytes, headers: Mapping[str, str]) -> UpstreamError:
    """Azure's error → ours: OpenAI's codes kept, Azure's numeric ones dropped, 429's the OpenAI code,
    and a content filter's verdict kept whole for the client (`innererror`), as Azure gives it."""
    message, code, param, inner = f"HTTP {status}", None, None, None
    try:
        envelope = _error.decode(body)
    except msgspec.DecodeError:
        envelope = AzureErrorEnvelope()
    if envelope.error is not None:
        detail = envelope.error
        message = detail.message or message
        param = detail.param
        given = detail.code if isinstance(detail.code, str) else None
        if given == CONTENT_FILTER:
            code, inner = given, detail.innererror
        elif given and not given.isdigit() and status not in (401, 403):
            code = given  # context_length_exceeded, DeploymentNotFound: the client may act on them
    elif envelope.message:
        message = envelope.message
    if status == 429:
        code = "rate_limit_exceeded"
    return UpstreamError.for_status(status, f"Azure OpenAI error ({status}): {redact(message)}", param=param,
                                    code=code, retry_after_s=retry_after_s(headers), innererror=inner)


# ---------------------------------------------------------------- streams


class PromptAnnotations:
    """Azure opens a chat stream with a chunk of no choices that carries only `prompt_filter_results`
    (https://learn.microsoft.com/azure/ai-foundry/openai/concepts/content-streaming). OpenAI clients
    read `chunk.choices[0]` of every chunk, so the results ride on the first chunk that has choices
    instead: they reach the client intact without a chunk it would stumble on."""

    def __init__(self) -> None:
        self._held: list[dict[str, Any]] | UnsetType = UNSET

    def __call__(self, chunk: ChatChunk) -> ChatChunk | None:
        if not chunk.choices:
            if chunk.prompt_filter_results is not UNSET and chunk.usage in (UNSET, None):
                self._held = chunk.prompt_filter_results
                return None
            return chunk
        if self._held is not UNSET:
            chunk.prompt_filter_results, self._held = self._held, UNSET
        return chunk
