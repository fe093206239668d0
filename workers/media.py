"""Handlers of OpenAI's media endpoints: images, moderations, transcriptions (and translations), speech.

The upstream's answer goes to the client as it came (it is already OpenAI's shape); the handler reads
from it only what the job is billed by, in the endpoint's own units (broker/money/pricing.py): images,
audio seconds, input characters. Speech is relayed as raw audio bytes while they arrive, in pieces of
at most PIECE_BYTES, over the same reply path as chat's stream chunks.
"""

from __future__ import annotations

from collections.abc import Callable

import msgspec

from broker.errors import InvalidRequest, UpstreamError
from broker.money import pricing
from broker.queue import spool
from broker.queue.jobs import Job
from broker.queue.payloads import ImagePayload, ModerationPayload, SpeechPayload, TranscriptionPayload
from broker.wire import Usage
from broker.wire.images import images_response_decoder
from workers.meter import Meter
from workers.providers import Provider
from workers.providers.base import ImagesProvider, ModerationsProvider, SpeechProvider, TranscriptionsProvider

Emit = Callable[[bytes], None]
Outcome = tuple[bytes, Usage | None]

PIECE_BYTES = 64 * 1024  # one reply event at most: the outbox and the API hold a few of these per stream
# When an upstream does not say how long the audio was (text/srt/vtt answers carry no usage), it is
# estimated from the file's size at 128 kbit/s (a common MP3 rate), and the charge flagged estimated.
ESTIMATED_AUDIO_BYTES_PER_S = 16_000


def _lacks(job: Job, what: str) -> InvalidRequest:
    return InvalidRequest(f"provider {job.provider!r} has no {what} endpoint", param="model",
                          code="unsupported_capability")


async def images(provider: Provider, job: Job, payload: ImagePayload, emit: Emit, meter: Meter) -> Outcome:
    if not isinstance(provider, ImagesProvider):
        raise _lacks(job, "image generation")
    req = payload.request
    body = await provider.generate_images(req, payload.body, model=job.upstream_model, deadline=job.deadline)
    try:
        answer = images_response_decoder.decode(body)
    except (msgspec.DecodeError, msgspec.ValidationError):
        raise UpstreamError(f"upstream {job.provider} answered an image request with something else",
                            retryable=True) from None
    usage, tokens = Usage(0, 0, 0), None
    if not isinstance(answer.usage, msgspec.UnsetType):
        reported = answer.usage
        details = reported.input_tokens_details if isinstance(reported.input_tokens_details, dict) else {}
        image_in = details.get("image_tokens", 0)
        image_in = image_in if isinstance(image_in, int) else 0
        tokens = (reported.input_tokens - image_in, image_in, reported.output_tokens)
        usage = Usage(reported.input_tokens, reported.output_tokens, reported.total_tokens)
    quality = answer.quality if isinstance(answer.quality, str) else req.quality
    size = answer.size if isinstance(answer.size, str) else req.size
    nanos = pricing.image_nanos(meter.price, job.upstream_model, images=len(answer.data) or req.images(),
                                quality=quality if isinstance(quality, str) else None,
                                size=size if isinstance(size, str) else None, tokens=tokens)
    return body, meter.bill(usage, nanos)


async def moderations(provider: Provider, job: Job, payload: ModerationPayload, emit: Emit,
                      meter: Meter) -> Outcome:
    if not isinstance(provider, ModerationsProvider):
        raise _lacks(job, "moderations")
    body = await provider.moderate(payload.request, payload.body, model=job.upstream_model, deadline=job.deadline)
    # OpenAI's moderations are free (https://platform.openai.com/docs/guides/moderation).
    return body, meter.bill(Usage(0, 0, 0), 0)


async def transcriptions(provider: Provider, job: Job, payload: TranscriptionPayload, emit: Emit,
                         meter: Meter) -> Outcome:
    req = payload.request
    if not isinstance(provider, TranscriptionsProvider):
        raise _lacks(job, "audio transcription")
    if not spool.present(req.file):
        raise InvalidRequest("The uploaded audio is no longer available (the request outlived it).", param="file")
    result = await provider.transcribe(req, model=job.upstream_model, deadline=job.deadline)
    seconds, estimated = result.seconds, False
    if seconds is None and result.tokens is None:
        seconds, estimated = req.file.bytes / ESTIMATED_AUDIO_BYTES_PER_S, True
    given, made = result.tokens or (0, 0)
    nanos = pricing.transcription_nanos(meter.price, job.upstream_model, seconds=seconds, tokens=result.tokens)
    usage = meter.bill(Usage(given, made, given + made), nanos, estimated=estimated)
    if job.async_ttl_s:  # nobody waits for an async job's end at the API, which removes the others' uploads
        spool.discard(req.file)
    return result.body, usage


async def speech(provider: Provider, job: Job, payload: SpeechPayload, emit: Emit, meter: Meter) -> Outcome:
    if not isinstance(provider, SpeechProvider):
        raise _lacks(job, "text-to-speech")
    req = payload.request
    async for piece in provider.speak(req, payload.body, model=job.upstream_model, deadline=job.deadline):
        for start in range(0, len(piece), PIECE_BYTES):
            emit(piece[start:start + PIECE_BYTES])
    nanos = pricing.speech_nanos(meter.price, job.upstream_model, characters=len(req.input))
    estimated = pricing.media_stem(pricing.SPEECH_TOKEN_USD, job.upstream_model) is not None
    return b"", meter.bill(Usage(0, 0, 0), nanos, estimated=estimated)
