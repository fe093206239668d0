"""`POST /v1/images/generations` (https://platform.openai.com/docs/api-reference/images/create).

The Struct declares what the broker reads (routing, pricing, the mock's output); the job also carries
the body as the client sent it, so parameters newer than this module (`moderation`, `partial_images`,
...) still reach an upstream that knows them.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

from broker.wire.chat import Int64


class ImageRequest(msgspec.Struct, omit_defaults=True):
    model: str
    prompt: Annotated[str, Meta(min_length=1, max_length=32_000)]
    n: Annotated[int, Meta(ge=1, le=10)] | UnsetType = UNSET
    size: str | UnsetType = UNSET  # "1024x1024", "auto", ...
    quality: str | UnsetType = UNSET  # low/medium/high/auto (GPT image), standard/hd (DALL·E 3)
    # Lenient where the broker only passes a value on: the SDK adds values (output_format gif, svg) upstreams
    # may know before this module does. `response_format` decides what the client reads, so it is checked.
    style: str | UnsetType = UNSET  # vivid/natural (DALL·E 3)
    response_format: Literal["url", "b64_json"] | UnsetType = UNSET
    background: str | UnsetType = UNSET  # transparent/opaque/auto
    output_format: str | UnsetType = UNSET  # png/webp/jpeg/...
    stream: bool | UnsetType = UNSET
    user: str | UnsetType = UNSET
    capability: ClassVar[str] = "images"

    def __post_init__(self) -> None:
        if self.stream is True:
            raise ValueError("`stream` is not supported for image generation here; omit it")
        if isinstance(self.size, str) and self.size != "auto":
            width, x, height = self.size.partition("x")
            if not (x and width.isdigit() and height.isdigit()):
                raise ValueError(f"`size` must be WIDTHxHEIGHT or auto, got {self.size!r}")

    def images(self) -> int:
        return self.n if isinstance(self.n, int) else 1

    def prompt_chars(self) -> int:
        return len(self.prompt)


class ImageData(msgspec.Struct, omit_defaults=True):
    b64_json: str | UnsetType = UNSET
    url: str | UnsetType = UNSET
    revised_prompt: str | UnsetType = UNSET


class ImageUsage(msgspec.Struct, omit_defaults=True):
    """GPT image models' token usage (absent for DALL·E)."""

    input_tokens: Int64 = 0
    output_tokens: Int64 = 0
    total_tokens: Int64 = 0
    input_tokens_details: dict[str, Any] | UnsetType = UNSET


class ImagesResponse(msgspec.Struct, omit_defaults=True):
    created: Int64
    data: list[ImageData] = []
    background: str | UnsetType = UNSET
    output_format: str | UnsetType = UNSET
    quality: str | UnsetType = UNSET
    size: str | UnsetType = UNSET
    usage: ImageUsage | UnsetType = UNSET


image_request_decoder = msgspec.json.Decoder(ImageRequest)
images_response_decoder = msgspec.json.Decoder(ImagesResponse)
