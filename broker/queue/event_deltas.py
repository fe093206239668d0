"""A stream's events as what changed since the event before: how the event log keeps them small.

Consecutive events of one stream are nearly the same bytes. Two chat chunks differ in the content
delta; two Responses `response.output_text.delta` events in `sequence_number` and `delta`; two
Anthropic `content_block_delta` events in `delta.text`. So an event is kept as an *edit* of the one
before it: at most two holes, `[copy, skip, insert, copy, skip, insert]` (bytes copied from the
previous event, bytes of it skipped, bytes put in their place; the rest of it copied after the last
hole). Nothing here parses JSON or knows a dialect: an event whose edit is not smaller than itself
(the first of a stream, a finish or usage chunk, an error) is kept whole. An edit rebuilds its event
byte for byte by construction: the holes lie between runs the two events share, found by exact
comparison (tests/test_event_deltas.py checks it on real streams of every dialect and on random bytes).

A run of events therefore decodes only in order from a whole one; `compact` starts each run it is
given with `previous=None` when the reader cannot have what came before (broker/queue/job_events.py).
"""

from __future__ import annotations

Edit = list[int | bytes]
Item = bytes | Edit  # an event kept whole, or as an edit of the one before

ANCHOR = 8  # bytes after a first hole that must match for a second hole to be tried
MAX_FIRST_HOLE = 8  # the first hole of a two-hole edit: a counter's digits, not text
EDIT_OVERHEAD = 8  # msgpack's array and integer headers, roughly: an edit must save more than this
TWO_HOLES_FROM = 48  # bytes a one-hole insert must exceed before a second hole is looked for


def _prefix(a: bytes, b: bytes) -> int:
    """Length of the common prefix: the first differing byte is the highest one set in the two read as
    big-endian integers and XORed, one pass in C (a byte loop in Python, or a binary search of slices,
    which copies them, cost the worker a fifth of its time on long events)."""
    n = min(len(a), len(b))
    differ = int.from_bytes(a[:n], "big") ^ int.from_bytes(b[:n], "big")
    return n - (differ.bit_length() + 7) // 8


def _suffix(a: bytes, b: bytes, limit: int) -> int:
    """Length of the common suffix, at most `limit` (as `_prefix`, read little-endian: the last bytes
    weigh most)."""
    n = min(len(a), len(b), limit)
    if n <= 0:
        return 0
    differ = int.from_bytes(a[len(a) - n:], "little") ^ int.from_bytes(b[len(b) - n:], "little")
    return n if differ == 0 else n - 1 - (differ.bit_length() - 1) // 8


def _two_holes(ref: bytes, ev: bytes) -> Edit | None:
    """`ev` from `ref` (both without the common prefix and suffix) as a short first hole, a common
    run, and a second hole: a sequence number, then a delta."""
    for skip in range(1, min(MAX_FIRST_HOLE, len(ref) - ANCHOR) + 1):
        at = ev.find(ref[skip:skip + ANCHOR], 0, skip + 2 * MAX_FIRST_HOLE + ANCHOR)
        if at >= 0:
            rest_ref, rest_ev = ref[skip:], ev[at:]
            copy = _prefix(rest_ref, rest_ev)
            return [0, skip, ev[:at], copy, len(rest_ref) - copy, rest_ev[copy:]]
    return None


def delta(ref: bytes, ev: bytes) -> Edit:
    """The smallest edit of `ref` into `ev` with at most two holes that this finds."""
    head = _prefix(ref, ev)
    tail = _suffix(ref, ev, min(len(ref), len(ev)) - head)
    mid_ref, mid_ev = ref[head:len(ref) - tail], ev[head:len(ev) - tail]
    edit: Edit = [head, len(mid_ref), mid_ev]
    # A second hole only where the run it would copy between the two is long: a Responses text delta's
    # text and sequence number are 33 bytes apart, and searching for the second hole cost a worker
    # serving Responses streams 5% of its time for those 33 bytes an event.
    # And only between events alike enough for an edit to pay (a lifecycle event after a delta is not).
    if len(mid_ref) > ANCHOR and TWO_HOLES_FROM < len(mid_ev) < len(ev) * 2 // 3:
        two = _two_holes(mid_ref, mid_ev)
        if two is not None and _size(two) < _size(edit):
            two[0] = head
            edit = two
    return edit


def apply(ref: bytes, edit: Edit) -> bytes:
    out: list[bytes] = []
    at = 0
    for i in range(0, len(edit), 3):
        copy, skip, insert = edit[i], edit[i + 1], edit[i + 2]
        if not isinstance(copy, int) or not isinstance(skip, int) or not isinstance(insert, bytes):
            raise ValueError("not an event edit")
        out += (ref[at:at + copy], insert)
        at += copy + skip
    if at > len(ref):
        raise ValueError("an event edit past its reference")
    out.append(ref[at:])
    return b"".join(out)


def _size(edit: Edit) -> int:
    """What an edit adds to the log: its inserts' bytes and about two bytes a number."""
    size = 0
    for part in edit:
        size += len(part) if isinstance(part, bytes) else 2
    return size


def compact(previous: bytes | None, events: list[bytes]) -> list[Item]:
    """`events`, each whole or as an edit of the one before (`previous` before the first; None: none)."""
    items: list[Item] = []
    for event in events:
        item: Item = event
        if previous is not None:
            edit = delta(previous, event)
            if _size(edit) + EDIT_OVERHEAD < len(event):
                item = edit
        items.append(item)
        previous = event
    return items


def expand(previous: bytes | None, items: list[Item]) -> list[bytes]:
    """The events `compact` was given, from its items and the same `previous`."""
    events: list[bytes] = []
    for item in items:
        if isinstance(item, list):
            if previous is None:
                raise ValueError("an event edit without the event before it")
            item = apply(previous, item)
        events.append(item)
        previous = item
    return events
