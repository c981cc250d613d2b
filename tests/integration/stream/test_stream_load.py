"""A stalled subscriber under a sustained write load.

While 100k events are appended by several tasks, one subscriber reads
nothing. The writers and the other subscribers do not wait for it; it holds no
more than its buffer; when it resumes it receives every event exactly once,
in order.
"""

from __future__ import annotations

import pytest
import trio

from eventbus import Event, EventRecord, create_filter, open_bus
from eventbus._stream._hub import RING_SIZE

from .test_stream import EVERYTHING, Log, assert_well_formed, follow, keys, receive_through

WRITERS = 4
APPENDS = 250  # per writer
PER_APPEND = 100  # events: WRITERS * APPENDS * PER_APPEND = 100_000
BUFFER = 1000
SOME = create_filter(["B"], [{"entity": "e3"}])


def event(writer: int, number: int) -> Event:
    kind = "B" if number % 2 else "A"
    return Event(kind, {"entity": f"e{number % 5}", "writer": writer, "n": number})


@pytest.mark.slow
async def test_a_stalled_subscriber_slows_nobody_and_receives_all_100k_events_when_it_resumes(dsn: str) -> None:
    written: list[EventRecord] = []
    most_buffered = 0
    largest_ring = 0
    everything, some = Log(), Log()
    async with (
        open_bus(dsn) as bus,
        bus.subscribe(EVERYTHING, max_batch=100, buffer=BUFFER, name="stalled") as stalled,
        bus.subscribe(EVERYTHING, name="everything") as everything_sub,
        bus.subscribe(SOME, name="some") as some_sub,
    ):

        async def write(writer: int) -> None:
            nonlocal most_buffered, largest_ring
            for index in range(APPENDS):
                numbers = range(index * PER_APPEND, (index + 1) * PER_APPEND)
                written.extend(await bus.store.append([event(writer, n) for n in numbers]))
                most_buffered = max(most_buffered, stalled.statistics().buffered)
                largest_ring = max(largest_ring, bus.stream.statistics().ring)

        with trio.fail_after(120):
            async with trio.open_nursery() as readers:
                readers.start_soon(follow, everything_sub, everything)
                readers.start_soon(follow, some_sub, some)
                async with trio.open_nursery() as writers:
                    for writer in range(WRITERS):
                        writers.start_soon(write, writer)
                written.sort(key=lambda record: record.sequence_number)
                # The others reach the end while the stalled one has read nothing.
                await everything.position.wait_for(written[-1].sequence_number)
                await some.position.wait_for([r for r in written if SOME.matches(r)][-1].sequence_number)
                readers.cancel_scope.cancel()

            stats = stalled.statistics()
            # Detached once, when its buffer filled; its catch-up waits for room.
            assert (stats.state, stats.buffered, stats.delivered, stats.detaches) == ("catching_up", BUFFER, 0, 1)
            assert stats.lag == len(written)

            batches = await receive_through(stalled, written[-1].sequence_number)
            assert stalled.statistics().state == "live"

    assert len(written) == WRITERS * APPENDS * PER_APPEND
    assert most_buffered == BUFFER
    assert largest_ring == RING_SIZE
    assert_well_formed(batches, 100)
    assert keys([r for batch in batches for r in batch]) == keys(written)
    assert keys(everything.records) == keys(written)
    assert keys(some.records) == keys([r for r in written if SOME.matches(r)])
