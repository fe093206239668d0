"""Serving a /v1/responses job: the provider answers its Chat form; the answer becomes a Response.

Translation is broker/inbound/responses.py's. A stream's opening events (`response.created`,
`response.in_progress`) go out with the first chunk's, not before the upstream answered: until a
first event is sent, a failed call still fails over to the next deployment unseen. Its closing
events (the completed Response) are held back as the job's final body: the API stores the response
before its client sees it complete (api/responses_store.py).
"""

from __future__ import annotations

from collections.abc import Callable

from broker.errors import BrokerError
from broker.inbound.responses_output import to_response
from broker.inbound.responses_stream import ResponsesStream
from broker.queue.jobs import Job
from broker.queue.payloads import ResponsesPayload
from broker.wire import Usage
from broker.wire.responses import encoder, responses_request_decoder
from workers.meter import Meter
from workers.providers import Provider

Emit = Callable[[bytes], None]  # as workers/handlers.py's, which registers `serve`
Outcome = tuple[bytes, Usage | None]


async def serve(provider: Provider, job: Job, payload: ResponsesPayload, emit: Emit, meter: Meter) -> Outcome:
    request = responses_request_decoder.decode(payload.body)
    created = int(job.created)
    if not payload.streams:
        result = await provider.complete(payload.request, model=job.upstream_model, deadline=job.deadline)
        usage = meter.answered(result)
        response = to_response(result, request, response_id=payload.response_id, created_at=created)
        return encoder.encode(response), usage
    stream = ResponsesStream(request, payload.response_id, created)
    opening = stream.start()
    reported: Usage | None = None
    try:
        async for chunk in provider.stream(payload.request, model=job.upstream_model, deadline=job.deadline):
            if isinstance(chunk.usage, Usage):
                reported = chunk.usage
            if chunk.choices:
                meter.saw(chunk)
            events = stream.on_chunk(chunk)
            if events:
                for event in [*opening, *events]:
                    emit(event)
                opening = []
    except BrokerError as failure:
        if not opening:  # past the first event: the stream says it failed, then the error goes on as usual
            for event in stream.failed(failure.code or failure.type, failure.message, error_type=failure.type):
                emit(event)
        raise
    if reported is not None:
        meter.stamp(reported)
    return b"".join([*opening, *stream.finish(reported)]), reported
