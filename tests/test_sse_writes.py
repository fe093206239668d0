"""A stream's replies that arrived together go out in one write; one that has not arrived is never waited for.

api/sse.py `stream_response` over a real Waiter (broker/queue/replies.py), fed as the reply router
feeds it: under load a burst's chunks and the answer's end come in one pub/sub read, and their SSE
bytes leave in one ASGI send; at c=1 each chunk leaves as soon as it is taken, the stream's body
iterator never waiting for the next reply before handing over what it has.
"""

from __future__ import annotations

import asyncio

from api.sse import stream_response
from broker.queue.jobs import Chunk, Final
from broker.queue.replies import Waiter


def test_replies_that_arrived_together_leave_in_one_write() -> None:
    async def run() -> list[bytes]:
        waiter = Waiter("j1", abandon=lambda: None)
        waiter.queue.put_nowait(Chunk("j1", 1, 0, [b'{"n":0}']))
        first = await waiter.next(1)  # as api/dispatch.py takes it, before the 200 (`first_reply`)
        for reply in (Chunk("j1", 1, 1, [b'{"n":1}']), Chunk("j1", 1, 2, [b'{"n":2}', b'{"n":3}']),
                      Final("j1", 1, 3, b"")):
            waiter.queue.put_nowait(reply)
        response = stream_response(waiter, first, keepalive_s=5, deadline=1e12, timeout_message="late")
        writes = [piece async for piece in response.body_iterator]  # type: ignore[union-attr]
        assert response.finished
        return writes

    writes = asyncio.run(run())
    assert writes == [b'id: 1.0\ndata: {"n":0}\n\nid: 1.1\ndata: {"n":1}\n\n'
                      b'id: 1.2\ndata: {"n":2}\n\nid: 1.3\ndata: {"n":3}\n\ndata: [DONE]\n\n']


def test_a_chunk_leaves_before_the_next_reply_arrives() -> None:
    async def run() -> None:
        waiter = Waiter("j2", abandon=lambda: None)
        waiter.queue.put_nowait(Chunk("j2", 1, 0, [b'{"n":0}']))
        response = stream_response(waiter, await waiter.next(1), keepalive_s=30, deadline=1e12,
                                   timeout_message="late")
        body = response.body_iterator.__aiter__()  # type: ignore[union-attr]
        # Nothing else has arrived: the first chunk is handed over at once, well inside the keep-alive.
        first = await asyncio.wait_for(body.__anext__(), 1)
        assert first == b'id: 1.0\ndata: {"n":0}\n\n'
        second = asyncio.ensure_future(body.__anext__())
        await asyncio.sleep(0.05)
        assert not second.done()  # waiting for the next reply, holding nothing back
        waiter.queue.put_nowait(Chunk("j2", 1, 1, [b'{"n":1}']))
        assert await asyncio.wait_for(second, 1) == b'id: 1.1\ndata: {"n":1}\n\n'
        waiter.queue.put_nowait(Final("j2", 1, 2, b""))
        assert await asyncio.wait_for(body.__anext__(), 1) == b"data: [DONE]\n\n"

    asyncio.run(run())
