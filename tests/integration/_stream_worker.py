"""Appends numbered events from a process of its own, for the stream tests.

    python -m tests.integration._stream_worker DSN FIRST COUNT PER_APPEND PAUSE

Appends the events numbered FIRST to FIRST+COUNT-1, PER_APPEND to an append,
through a plain event store (no bus), pausing PAUSE seconds between appends
so that a run lasts long enough to be interrupted. Event ids come from the
numbers, so a retry after a lost connection never stores an event twice. While
the database is unavailable it retries, for up to ``RETRY_FOR`` seconds.

Prints ``appended N`` after each append (N: events appended so far by this
run) and ``done P R`` at the end (P: the position of the last event, R: the
times the store reconnected or an append was retried, for a lost database).
"""

from __future__ import annotations

import sys
import uuid

import trio

from eventbus import Event, EventRecord, EventStore, StoreUnavailable, open_event_store

NAMESPACE = uuid.UUID("6f0c3a52-8d0e-4a59-9b52-5d3f1f0c2b11")
RETRY_FOR = 60.0
RETRY_DELAY = 0.05


def event_id(number: int) -> uuid.UUID:
    """The id of the event numbered ``number``."""
    return uuid.uuid5(NAMESPACE, str(number))


def event(number: int) -> Event:
    """The event numbered ``number``: types and entities alternate."""
    kind = "B" if number % 2 else "A"
    return Event(kind, {"entity": f"e{number % 3}", "n": number}, event_id=event_id(number))


async def append_until_stored(store: EventStore, events: list[Event]) -> tuple[list[EventRecord], int]:
    """The records, and how many attempts failed first."""
    failed = 0
    with trio.fail_after(RETRY_FOR):
        while True:
            try:
                return await store.append(events), failed
            except StoreUnavailable:
                failed += 1
                await trio.sleep(RETRY_DELAY)


async def main(dsn: str, first: int, count: int, per_append: int, pause: float) -> None:
    async with open_event_store(dsn) as store:
        last = retried = 0
        for start in range(first, first + count, per_append):
            numbers = range(start, min(start + per_append, first + count))
            records, failed = await append_until_stored(store, [event(n) for n in numbers])
            last = records[-1].sequence_number
            retried += failed > 0
            print(f"appended {numbers[-1] + 1 - first}", flush=True)
            await trio.sleep(pause)
        print(f"done {last} {store.statistics().reconnects + retried}", flush=True)


if __name__ == "__main__":
    dsn, first, count, per_append, pause = sys.argv[1:]
    trio.run(main, dsn, int(first), int(count), int(per_append), float(pause))
