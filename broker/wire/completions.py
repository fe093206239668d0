"""Legacy `POST /v1/completions`: prompt in, text out; chunks have the same shape.

https://platform.openai.com/docs/api-reference/completions/create
"""

from __future__ import annotations

from typing import Annotated, Any

import msgspec
from msgspec import UNSET, Meta, UnsetType

from broker.wire.chat import (
    Int64,
    LogitBias,
    Penalty,
    PositiveInt,
    StreamOptions,
    Temperature,
    TokenId,
    Usage,
)

# string | string[] | token ids | arrays of token ids. msgspec allows one array
# type per union, so the list's items are a union, checked for sameness below.
Prompt = str | list[str | TokenId | list[TokenId]]


def check_homogeneous(items: list[str | int | list[int]], field: str) -> None:
    if not items:
        raise ValueError(f"`{field}` must not be empty")
    kinds = {type(item) for item in items}
    if len(kinds) > 1:
        raise ValueError(f"`{field}` must be a string, a list of strings, a list of token ids or a list of those lists")
    if list in kinds and any(isinstance(ids, list) and not ids for ids in items):
        raise ValueError(f"`{field}` token-id lists must not be empty")


def as_texts(value: str | list[str | int | list[int]]) -> list[str]:
    """Prompts/inputs as texts; token-id inputs are rendered as space-separated ids."""
    if isinstance(value, str):
        return [value]
    if value and isinstance(value[0], int):
        return [" ".join(str(token) for token in value)]
    return [item if isinstance(item, str) else " ".join(map(str, item)) for item in value if not isinstance(item, int)]


class CompletionRequest(msgspec.Struct, omit_defaults=True):
    model: str
    prompt: Prompt
    stream: bool = False
    stream_options: StreamOptions | None | UnsetType = UNSET
    max_tokens: PositiveInt | None | UnsetType = UNSET
    temperature: Temperature | None | UnsetType = UNSET
    top_p: Annotated[float, Meta(ge=0, le=1)] | None | UnsetType = UNSET
    n: Annotated[int, Meta(ge=1, le=128)] | None | UnsetType = UNSET
    best_of: Annotated[int, Meta(ge=1, le=20)] | None | UnsetType = UNSET
    stop: str | Annotated[list[str], Meta(max_length=4)] | None | UnsetType = UNSET
    echo: bool | None | UnsetType = UNSET
    suffix: str | None | UnsetType = UNSET
    logprobs: Annotated[int, Meta(ge=0, le=5)] | None | UnsetType = UNSET  # an int here, not a bool
    logit_bias: LogitBias | None | UnsetType = UNSET
    presence_penalty: Penalty | None | UnsetType = UNSET
    frequency_penalty: Penalty | None | UnsetType = UNSET
    seed: Int64 | None | UnsetType = UNSET
    user: str | UnsetType = UNSET
    extra_body: dict[str, Any] | UnsetType = UNSET  # as ChatRequest.extra_body

    def __post_init__(self) -> None:
        if isinstance(self.prompt, list):
            check_homogeneous(self.prompt, "prompt")

    def output_limit(self) -> int | None:
        return self.max_tokens if isinstance(self.max_tokens, int) else None

    def wants_usage_chunk(self) -> bool:
        return isinstance(self.stream_options, StreamOptions) and self.stream_options.include_usage is True

    def prompts(self) -> list[str]:
        return as_texts(self.prompt)


class TextChoice(msgspec.Struct):
    index: Int64
    text: str
    finish_reason: str | None = None
    logprobs: dict[str, Any] | None = None
    content_filter_results: dict[str, Any] | UnsetType = UNSET  # Azure OpenAI, as on chat choices


class TextCompletion(msgspec.Struct):
    """The response and, with `stream: true`, every chunk (same object type, text pieces)."""

    id: str
    created: Int64
    model: str
    choices: list[TextChoice]
    object: str = "text_completion"
    usage: Usage | None | UnsetType = UNSET
    system_fingerprint: str | None | UnsetType = UNSET
    prompt_filter_results: list[dict[str, Any]] | UnsetType = UNSET  # Azure OpenAI, as on chat


completion_request_decoder = msgspec.json.Decoder(CompletionRequest)

__all__ = ["CompletionRequest", "Prompt", "as_texts", "check_homogeneous", "TextChoice", "TextCompletion", "completion_request_decoder"]
