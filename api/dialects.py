"""Each inbound protocol's way of writing a stream, by the name its payload gives (broker/queue/payloads.py).

- `openai`: Chat and legacy completions, `data:` lines and `[DONE]` (api/sse.py).
- `anthropic`: /v1/messages, `event:` + `data:` blocks, no terminator, `ping` keep-alives (api/anthropic.py).
- `responses`: /v1/responses, `event:` + `data:` blocks with `sequence_number`, then `[DONE]`
  (https://platform.openai.com/docs/api-reference/responses-streaming); keep-alives are comments, as
  on Chat, which the SDK skips.
- `audio`: /v1/audio/speech, the audio's bytes as the worker relays them.
"""

from __future__ import annotations

from api import anthropic, sse
from broker.errors import BrokerError
from broker.wire.responses_events import error_event as responses_error_event


def _responses_error(err: BrokerError) -> bytes:
    # Only the API ends a stream this way (a deadline, a lost reply); it does not know how many events
    # the worker numbered, and the SDK does not check an error's place. [DONE] follows.
    event = responses_error_event(err.code or err.type, err.message, sequence_number=0, error_type=err.type,
                                  param=err.param)
    return event + sse.DONE


RESPONSES = sse.Dialect(sse.frame_blocks_with_ids, sse.frame_blocks, sse.DONE, _responses_error, sse.KEEPALIVE,
                        sse.KEEPALIVE_AFTER_IDS)


class AudioCut(Exception):
    """A speech stream failed after its first bytes: the connection is dropped rather than ended, so the
    client sees a truncated body (httpx: `RemoteProtocolError`), never a short file passing for whole."""


def _audio_error(err: BrokerError) -> bytes:
    raise AudioCut(err.message)


def _raw(events: list[bytes], _attempt: int = 0, _index: int = 0) -> bytes:
    return b"".join(events)


# `audio`: /v1/audio/speech, raw bytes as they come, no framing, no keep-alive bytes (an empty write).
AUDIO = sse.Dialect(_raw, _raw, b"", _audio_error, b"", b"")
DIALECTS: dict[str, sse.Dialect] = {"openai": sse.OPENAI, "anthropic": anthropic.STREAM, "responses": RESPONSES,
                                    "audio": AUDIO}


def dialect(name: str) -> sse.Dialect:
    """A stream's dialect; an unknown name (a job from a newer release) is written as OpenAI's."""
    return DIALECTS.get(name, sse.OPENAI)
