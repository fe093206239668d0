"""Audio: `POST /v1/audio/transcriptions`, `/v1/audio/translations` and `/v1/audio/speech`
(https://platform.openai.com/docs/api-reference/audio).

A transcription arrives as multipart form data; its audio is spooled to disk by the API
(broker/queue/spool.py) and the request carries only an `Upload` reference to it, so no audio
sits in Redis. The other form fields are typed here; fields this module does not know go up as
they came (`extra`). Formats are rendered by pure functions (`render`), for the mock and tests.
"""

from __future__ import annotations

from typing import Annotated, ClassVar, Literal

import msgspec
from msgspec import UNSET, Meta, UnsetType

TranscriptFormat = Literal["json", "text", "srt", "verbose_json", "vtt"]
TRANSCRIPT_FORMATS: tuple[str, ...] = ("json", "text", "srt", "verbose_json", "vtt")
# What the client gets each format as (OpenAI sends the text formats as text/plain).
TRANSCRIPT_MEDIA_TYPES = {"json": "application/json", "verbose_json": "application/json",
                          "text": "text/plain; charset=utf-8", "srt": "text/plain; charset=utf-8",
                          "vtt": "text/plain; charset=utf-8"}

SpeechFormat = Literal["mp3", "opus", "aac", "flac", "wav", "pcm"]
# https://platform.openai.com/docs/guides/text-to-speech#supported-output-formats
SPEECH_MEDIA_TYPES = {"mp3": "audio/mpeg", "opus": "audio/ogg", "aac": "audio/aac", "flac": "audio/flac",
                      "wav": "audio/wav", "pcm": "audio/pcm"}


class Upload(msgspec.Struct, array_like=True, frozen=True):
    """An uploaded file, by reference: where the API spooled it, and what the client called it."""

    path: str
    filename: str
    content_type: str
    bytes: int


class TranscriptionRequest(msgspec.Struct, omit_defaults=True, kw_only=True):
    model: str
    file: Upload
    translate: bool = False  # /v1/audio/translations: into English
    response_format: TranscriptFormat = "json"
    language: str | UnsetType = UNSET
    prompt: str | UnsetType = UNSET
    temperature: Annotated[float, Meta(ge=0, le=1)] | UnsetType = UNSET
    timestamp_granularities: list[Literal["word", "segment"]] = []
    extra: list[tuple[str, str]] = []  # other form fields, passed through as sent
    capability: ClassVar[str] = "transcriptions"

    @property
    def endpoint(self) -> str:
        return "audio/translations" if self.translate else "audio/transcriptions"

    def prompt_chars(self) -> int:
        return len(self.prompt) if isinstance(self.prompt, str) else 0


class SpeechRequest(msgspec.Struct, omit_defaults=True):
    model: str
    input: Annotated[str, Meta(min_length=1, max_length=4096)]
    voice: str | dict[str, str]
    instructions: str | UnsetType = UNSET
    response_format: SpeechFormat = "mp3"
    speed: Annotated[float, Meta(ge=0.25, le=4.0)] | UnsetType = UNSET
    stream_format: Literal["audio"] | UnsetType = UNSET  # "sse" (base64 deltas) is not served
    capability: ClassVar[str] = "speech"

    def prompt_chars(self) -> int:
        return len(self.input)


# ---- transcripts, as OpenAI writes each format


class Segment(msgspec.Struct):
    id: int
    seek: int
    start: float
    end: float
    text: str
    tokens: list[int]
    temperature: float = 0.0
    avg_logprob: float = -0.2
    compression_ratio: float = 1.0
    no_speech_prob: float = 0.0


class Word(msgspec.Struct):
    word: str
    start: float
    end: float


class DurationUsage(msgspec.Struct):
    seconds: float
    type: str = "duration"


class Transcript(msgspec.Struct, omit_defaults=True):
    """verbose_json: text, language, duration, segments, words (if asked), usage."""

    text: str
    task: str
    language: str
    duration: float
    segments: list[Segment] | UnsetType = UNSET
    words: list[Word] | UnsetType = UNSET
    usage: DurationUsage | UnsetType = UNSET


class _Reported(msgspec.Struct):
    """What an upstream's JSON transcript says it cost: `duration` (verbose_json) or `usage`
    (`{"type": "duration", "seconds"}` or `{"type": "tokens", "input_tokens", "output_tokens"}`)."""

    duration: float | None = None
    usage: dict[str, object] | None = None


_reported_decoder = msgspec.json.Decoder(_Reported)


def reported_usage(body: bytes) -> tuple[float | None, tuple[int, int] | None]:
    """(seconds, (input tokens, output tokens)) as far as a JSON transcript reports them."""
    try:
        found = _reported_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        return None, None
    seconds, tokens = found.duration, None
    usage = found.usage or {}
    if usage.get("type") == "duration" and isinstance(usage.get("seconds"), int | float):
        seconds = float(usage["seconds"])  # type: ignore[arg-type]
    if usage.get("type") == "tokens":
        given, made = usage.get("input_tokens"), usage.get("output_tokens")
        if isinstance(given, int) and isinstance(made, int):
            tokens = (given, made)
    return seconds, tokens


def _clock(seconds: float, separator: str) -> str:
    millis = round(seconds * 1000)
    hours, millis = divmod(millis, 3_600_000)
    minutes, millis = divmod(millis, 60_000)
    secs, millis = divmod(millis, 1000)
    return f"{hours:02d}:{minutes:02d}:{secs:02d}{separator}{millis:03d}"


_encoder = msgspec.json.Encoder()


def render(transcript: Transcript, response_format: str, *, words: bool = False, segments: bool = True) -> bytes:
    """The transcript in `response_format`, as OpenAI writes it (srt: numbered cues with `,` millis;
    vtt: a WEBVTT header and `.` millis)."""
    match response_format:
        case "text":
            return (transcript.text + "\n").encode()
        case "json":
            return _encoder.encode({"text": transcript.text, "usage": transcript.usage})
        case "srt":
            cues = [f"{i + 1}\n{_clock(s.start, ',')} --> {_clock(s.end, ',')}\n{s.text.strip()}\n"
                    for i, s in enumerate(transcript.segments or [])]
            return ("\n".join(cues) + "\n").encode()
        case "vtt":
            cues = [f"{_clock(s.start, '.')} --> {_clock(s.end, '.')}\n{s.text.strip()}\n"
                    for s in transcript.segments or []]
            return ("WEBVTT\n\n" + "\n".join(cues) + "\n").encode()
    shown = msgspec.structs.replace(transcript, segments=transcript.segments if segments else UNSET,
                                    words=transcript.words if words else UNSET)
    return _encoder.encode(shown)


speech_request_decoder = msgspec.json.Decoder(SpeechRequest)
