"""The events the event log keeps whole, deflated against a dictionary of what such events look like.

An event log (broker/queue/job_events.py) keeps most events as edits of the one before
(broker/queue/event_deltas.py), tens of bytes each; what it keeps whole is a stream's first event and
the few unlike the one before (a finish or usage chunk, a Responses lifecycle event). Those are most
of what an open stream holds in Redis: a chat stream's first chunk is some 250 bytes, a Responses
stream's `response.created` over a kilobyte. They are mostly the protocol's own field names and
constants, so raw deflate with a preset dictionary of them (RFC 1950 §2.2's FDICT, `zdict` in Python's
zlib) keeps about a quarter of their bytes: an id, a timestamp and a model name, mostly.

The dictionary is part of the log's format: an entry packed with it can only be read with it. So it is
never edited; a better one would be `DICTIONARY_2`, with its own Ext code, the old one kept for reading.
A 2 KB window (wbits 11) holds the dictionary, and a small one costs compressobj() little to set up
(about 6 µs an event, once a stream for chat; measured: memLevel 9 took 70 µs, most of it allocation).
"""

from __future__ import annotations

import zlib

import msgspec

EXT_DEFLATED_1 = 1  # msgpack Ext code of an event deflated against DICTIONARY_1
SMALLEST = 96  # bytes: shorter events are kept as they are, deflate's header and end would not pay

# What the events kept whole look like, in every dialect the log holds (api/dialects.py): OpenAI Chat
# chunks, OpenAI Responses events, Anthropic Messages events. Deflate finds matches nearer the end of
# the dictionary more cheaply, so the most frequent shapes (chat chunks) come last.
DICTIONARY_1 = (
    b'event: message_start\ndata: {"type":"message_start","message":{"type":"message","id":"msg_","model":"claude-'
    b'","content":[],"usage":{"input_tokens":,"cache_creation_input_tokens":0,"cache_read_input_tokens":0,'
    b'"output_tokens":0},"role":"assistant","stop_reason":null,"stop_sequence":null}}\n\n'
    b'event: content_block_start\ndata: {"type":"content_block_start","index":0,"content_block":{"type":"text",'
    b'"text":""}}\n\nevent: message_delta\ndata: {"type":"message_delta","delta":{"stop_reason":"end_turn",'
    b'"stop_sequence":null},"usage":{"output_tokens":}}\n\n'
    b'event: response.created\ndata: {"type":"response.created","response":{"id":"resp_","object":"response",'
    b'"created_at":,"status":"in_progress","completed_at":null,"error":null,"incomplete_details":null,'
    b'"instructions":null,"model":"","output":[],"parallel_tool_calls":true,"metadata":{},"tool_choice":"auto",'
    b'"tools":[],"temperature":null,"top_p":null,"max_output_tokens":null,"max_tool_calls":null,'
    b'"previous_response_id":null,"reasoning":null,"text":{"format":{"type":"text"}},"truncation":"disabled",'
    b'"background":false,"user":null,"usage":null},"sequence_number":0}\n\n'
    b'event: response.output_item.added\ndata: {"type":"response.output_item.added","output_index":0,"item":'
    b'{"id":"msg_","type":"message","status":"in_progress","content":[],"role":"assistant"},"sequence_number":'
    b'"usage":{"prompt_tokens":,"completion_tokens":,"total_tokens":,"prompt_tokens_details":{"cached_tokens":0},'
    b'"completion_tokens_details":{"reasoning_tokens":0}},"cost":'
    b'{"index":0,"delta":{},"finish_reason":"stop","logprobs":null}],"object":"chat.completion.chunk",'
    b'"system_fingerprint":"fp_"}'
    b'{"id":"chatcmpl-","created":,"model":"","choices":[{"index":0,"delta":{"role":"assistant","content":"",'
    b'"refusal":null},"finish_reason":null,"logprobs":null}],"object":"chat.completion.chunk"'
)
assert len(DICTIONARY_1) <= 1 << 11, "the dictionary must fit deflate's window"

_WBITS = -11  # raw deflate (no zlib header: the Ext code says what it is), a 2 KB window


def pack(event: bytes) -> bytes | msgspec.msgpack.Ext:
    """The event as the log keeps it whole: deflated when that is smaller."""
    if len(event) < SMALLEST:
        return event
    packer = zlib.compressobj(1, zlib.DEFLATED, _WBITS, 2, zlib.Z_DEFAULT_STRATEGY, DICTIONARY_1)
    deflated = packer.compress(event) + packer.flush()
    return msgspec.msgpack.Ext(EXT_DEFLATED_1, deflated) if len(deflated) < len(event) else event


def unpack(ext: msgspec.msgpack.Ext) -> bytes:
    if ext.code != EXT_DEFLATED_1:
        raise ValueError(f"an event packed in a way this release does not know (msgpack Ext {ext.code})")
    unpacker = zlib.decompressobj(_WBITS, DICTIONARY_1)
    event = unpacker.decompress(ext.data) + unpacker.flush()
    if not unpacker.eof:
        raise ValueError("a deflated event cut short")
    return event
