"""`POST /v1/moderations` (https://platform.openai.com/docs/api-reference/moderations/create).

`model` is optional, as in OpenAI's API: a request without one asks for `omni-moderation-latest`,
which the operator names as a public model to serve it.
"""

from __future__ import annotations

from typing import Annotated, Any, ClassVar

import msgspec
from msgspec import Meta

DEFAULT_MODEL = "omni-moderation-latest"

# A string, strings, or multi-modal parts ({"type": "text", "text"} / {"type": "image_url", "image_url"}).
# (One array type in a msgspec union: the items' kinds are checked in __post_init__.)
ModerationInput = (Annotated[str, Meta(min_length=1)]
                   | Annotated[list[str | dict[str, Any]], Meta(min_length=1, max_length=2048)])

# Every category OpenAI reports, and the inputs each applies to on omni models
# (https://platform.openai.com/docs/guides/moderation#content-classifications).
CATEGORIES: dict[str, tuple[str, ...]] = {
    "harassment": ("text",), "harassment/threatening": ("text",), "hate": ("text",),
    "hate/threatening": ("text",), "illicit": ("text",), "illicit/violent": ("text",),
    "self-harm": ("text", "image"), "self-harm/intent": ("text", "image"),
    "self-harm/instructions": ("text", "image"), "sexual": ("text", "image"), "sexual/minors": ("text",),
    "violence": ("text", "image"), "violence/graphic": ("text", "image"),
}


class ModerationRequest(msgspec.Struct, omit_defaults=True):
    input: ModerationInput
    model: str = DEFAULT_MODEL
    capability: ClassVar[str] = "moderations"

    def __post_init__(self) -> None:
        if isinstance(self.input, list):
            if len({type(item) for item in self.input}) > 1:
                raise ValueError("`input` must be strings or multi-modal parts, not both")
            for part in self.input:
                if isinstance(part, dict) and part.get("type") not in ("text", "image_url"):
                    raise ValueError("`input` parts must be of type `text` or `image_url`")

    def items(self) -> list[list[tuple[str, str]]]:
        """Each result's inputs as (kind, content): a string or string list gives one result per string;
        multi-modal parts are one input, one result."""
        if isinstance(self.input, str):
            return [[("text", self.input)]]
        if all(isinstance(item, str) for item in self.input):
            return [[("text", str(item))] for item in self.input]
        parts: list[tuple[str, str]] = []
        for part in self.input:
            assert isinstance(part, dict)
            if part.get("type") == "text":
                parts.append(("text", str(part.get("text", ""))))
            else:
                image = part.get("image_url")
                parts.append(("image", str(image.get("url", "") if isinstance(image, dict) else image)))
        return [parts]

    def prompt_chars(self) -> int:
        return sum(len(content) for item in self.items() for kind, content in item if kind == "text")


class ModerationResult(msgspec.Struct):
    flagged: bool
    categories: dict[str, bool]
    category_scores: dict[str, float]
    category_applied_input_types: dict[str, list[str]]


class ModerationResponse(msgspec.Struct):
    id: str
    model: str
    results: list[ModerationResult]


moderation_request_decoder = msgspec.json.Decoder(ModerationRequest)
