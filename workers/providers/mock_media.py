"""The mock's media: real files, made deterministically from the request, small and quick.

- Images: a PNG (zlib + struct, https://www.w3.org/TR/png/) of the asked size (capped at MAX_SIDE),
  bands of colours from the prompt's hash; RGBA when the background is transparent.
- Speech: a WAV (RIFF, 24 kHz 16-bit mono PCM, as OpenAI's `wav`), raw `pcm` samples, or an MP3 of
  silent MPEG-1 Layer III frames; a tone from the text's hash, DURATION_PER_CHAR_S per character.
- Transcripts: words from the audio's hash (its first READ_BYTES and size), the duration its size
  gives at 16 kB/s, segments every SEGMENT_S.
- Moderations: scores from each input's hash, high only for a category whose trigger word it contains.
"""

from __future__ import annotations

import base64
import hashlib
import math
import struct
import zlib
from collections.abc import Callable, Iterator

from broker.errors import InvalidRequest
from broker.wire.audio import DurationUsage, Segment, Transcript, TranscriptionRequest, Word, render
from broker.wire.moderations import CATEGORIES, ModerationResult

MAX_SIDE = 2048
SAMPLE_RATE = 24_000
DURATION_PER_CHAR_S = 0.02
READ_BYTES = 64 * 1024
BYTES_PER_S = 16_000
SEGMENT_S = 5.0
TRIGGERS = {"kill": "violence", "blood": "violence/graphic", "hate": "hate", "stupid": "harassment",
            "steal": "illicit", "hurt myself": "self-harm", "nude": "sexual"}


def _digest(*parts: str | bytes) -> bytes:
    h = hashlib.blake2b(digest_size=32)
    for part in parts:
        h.update(part.encode() if isinstance(part, str) else part)
    return h.digest()


# ---- images


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def png(seed: str, width: int, height: int, *, alpha: bool = False) -> bytes:
    """A valid PNG: horizontal bands whose colours come from `seed`."""
    colours = _digest(seed)
    rows = []
    for band in range(8):
        r, g, b = colours[band * 3: band * 3 + 3]
        pixel = bytes((r, g, b, 160)) if alpha else bytes((r, g, b))
        rows.append(b"\x00" + pixel * width)  # filter type 0 (none)
    raw = b"".join(rows[min(y * 8 // height, 7)] for y in range(height))
    header = struct.pack(">IIBBBBB", width, height, 8, 6 if alpha else 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(raw, 6)) + _chunk(b"IEND", b"")


def image_size(size: str | None) -> tuple[int, int]:
    if size is None or size == "auto":
        return 1024, 1024
    width, _, height = size.partition("x")
    return min(int(width), MAX_SIDE), min(int(height), MAX_SIDE)


def image_b64(prompt: str, index: int, size: str | None, *, alpha: bool) -> str:
    width, height = image_size(size)
    return base64.b64encode(png(f"{prompt}#{index}", width, height, alpha=alpha)).decode()


# ---- speech


def _samples(text: str) -> Iterator[bytes]:
    """16-bit samples of a tone from `text`'s hash, DURATION_PER_CHAR_S a character, in 0.1 s blocks."""
    total = max(int(len(text) * DURATION_PER_CHAR_S * SAMPLE_RATE), SAMPLE_RATE // 10)
    pitch = 220 + _digest(text)[0] * 2
    block = SAMPLE_RATE // 10
    for start in range(0, total, block):
        count = min(block, total - start)
        yield struct.pack(f"<{count}h", *(int(8000 * math.sin(2 * math.pi * pitch * (start + i) / SAMPLE_RATE))
                                          for i in range(count)))


def sample_bytes(text: str) -> int:
    return 2 * max(int(len(text) * DURATION_PER_CHAR_S * SAMPLE_RATE), SAMPLE_RATE // 10)


def wav_header(data_bytes: int) -> bytes:
    return (b"RIFF" + struct.pack("<I", 36 + data_bytes) + b"WAVE"
            + b"fmt " + struct.pack("<IHHIIHH", 16, 1, 1, SAMPLE_RATE, SAMPLE_RATE * 2, 2, 16)
            + b"data" + struct.pack("<I", data_bytes))


# MPEG-1 Layer III, 128 kbit/s, 44.1 kHz, mono, no CRC: 417-byte frames; an all-zero side info and
# main data decode as silence (ISO/IEC 11172-3), so a run of them is a valid MP3 of that length.
_MP3_FRAME = b"\xff\xfb\x90\xc4" + bytes(413)
_MP3_FRAME_S = 1152 / 44_100


def speech(text: str, response_format: str) -> Iterator[bytes]:
    """The audio of `text` in pieces (~0.1 s each)."""
    if response_format == "mp3":
        frames = max(int(len(text) * DURATION_PER_CHAR_S / _MP3_FRAME_S), 1)
        for start in range(0, frames, 4):
            yield _MP3_FRAME * min(4, frames - start)
        return
    if response_format not in ("wav", "pcm"):
        raise InvalidRequest(f"The mock speaks mp3, wav and pcm, not {response_format!r}.", param="response_format")
    if response_format == "wav":
        yield wav_header(sample_bytes(text))
    yield from _samples(text)


# ---- transcripts


def transcript(req: TranscriptionRequest, mock_words: Callable[[str, int], list[str]]) -> tuple[bytes, float]:
    """The mock's transcript of the upload in the request's format (its words from `mock_words`), and the
    audio's duration."""
    with open(req.file.path, "rb") as audio:
        head = audio.read(READ_BYTES)
    duration = round(max(req.file.bytes / BYTES_PER_S, 0.1), 2)
    language = "english" if req.translate else (req.language if isinstance(req.language, str) else "english")
    seed = _digest(head, str(req.file.bytes), "translate" if req.translate else language,
                   req.prompt if isinstance(req.prompt, str) else "").hex()
    count = max(min(int(duration * 2), 200), 3)
    words = mock_words(seed, count)
    spans = max(math.ceil(duration / SEGMENT_S), 1)
    per_span = math.ceil(count / spans)
    segments, timed = [], []
    for i in range(spans):
        chunk = words[i * per_span:(i + 1) * per_span]
        if not chunk:
            break
        start, end = i * SEGMENT_S, min((i + 1) * SEGMENT_S, duration)
        segments.append(Segment(i, int(start * 100), start, end, " " + " ".join(chunk),
                                [len(w) for w in chunk]))
        step = (end - start) / len(chunk)
        timed += [Word(w, round(start + j * step, 2), round(start + (j + 1) * step, 2)) for j, w in enumerate(chunk)]
    text = " ".join(words)
    result = Transcript(text, "translate" if req.translate else "transcribe", language, duration, segments, timed,
                        DurationUsage(math.ceil(duration)))
    granular = req.timestamp_granularities or ["segment"]
    return render(result, req.response_format, words="word" in granular, segments="segment" in granular), duration


# ---- moderations


def moderation(parts: list[tuple[str, str]], *, omni: bool) -> ModerationResult:
    kinds = {kind for kind, _ in parts}
    text = " ".join(content for kind, content in parts if kind == "text").lower()
    digest = _digest(*(content for _, content in parts))
    scores = {name: round(digest[i] / 255 * 0.02, 6) for i, name in enumerate(CATEGORIES)}
    for word, category in TRIGGERS.items():
        if word in text:
            scores[category] = 0.97
    flags = {name: score > 0.5 for name, score in scores.items()}
    applied = {name: [k for k in applies if k in kinds] if omni else ["text"] for name, applies in CATEGORIES.items()}
    return ModerationResult(any(flags.values()), flags, scores, applied)
