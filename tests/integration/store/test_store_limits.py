"""A batch is bounded in bytes: appends that fit alone never fail together.

PostgreSQL refuses a message over 1 GB and a batch is one message. The tests
use a small ``max_batch_bytes``: the batches a store ran are read back from
the database, where every event of one batch has the batch's commit time.
"""

from __future__ import annotations

import itertools
import json
import re

import pytest
import trio

from eventbus import Event, InvalidEvent, create_filter, open_bus, open_event_store
from eventbus._store import BATCH_BYTES_CEILING

LIMIT = 10_000
PAYLOAD = 3_000  # bytes of JSON per append: three fit in a batch, four do not


def payload(n: int, size: int = PAYLOAD) -> dict[str, object]:
    body = {"n": n, "pad": ""}
    body["pad"] = "x" * (size - len(json.dumps(body)))
    return body


async def test_concurrent_appends_past_the_limit_together_all_succeed_in_batches_within_it(dsn: str) -> None:
    appends = 60
    async with open_event_store(dsn, max_batch_bytes=LIMIT) as store:
        results: dict[int, int] = {}

        async def append(n: int) -> None:
            [record] = await store.append([Event("Padded", payload(n))])
            results[n] = record.sequence_number

        async with trio.open_nursery() as nursery:
            for n in range(appends):
                nursery.start_soon(append, n)
        assert sorted(results) == list(range(appends))
        events = (await store.query(create_filter([]))).events
    assert len(events) == appends
    batches = [list(group) for _, group in itertools.groupby(events, key=lambda record: record.occurred_at)]
    sizes = [sum(len(json.dumps(record.payload)) for record in batch) for batch in batches]
    assert max(sizes) <= LIMIT
    assert max(len(batch) for batch in batches) == 3  # batched, up to the limit and no further


async def test_an_append_over_the_limit_is_refused_with_its_size_and_its_batch_mates_succeed(dsn: str) -> None:
    async with open_event_store(dsn, max_batch_bytes=LIMIT) as store:
        stored: list[int] = []
        refused: list[InvalidEvent] = []

        async def append(n: int, size: int) -> None:
            try:
                await store.append([Event("Padded", payload(n, size))])
            except InvalidEvent as exc:
                refused.append(exc)
            else:
                stored.append(n)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(append, n, 2 * LIMIT if n == 7 else 100)
        assert sorted(stored) == [n for n in range(20) if n != 7]
        [error] = refused
        assert re.fullmatch(
            rf"this append is 20[01][0-9]{{2}} bytes encoded \(1 event\), over the limit of {LIMIT} bytes for one "
            r"batch \(max_batch_bytes\): split it into smaller appends",
            str(error),
        )
        assert await store.head() == 19


async def test_an_append_of_many_events_is_measured_as_a_whole(dsn: str) -> None:
    async with open_event_store(dsn, max_batch_bytes=LIMIT) as store:
        with pytest.raises(InvalidEvent, match=r"this append is 1[0-9]{4} bytes encoded \(4 events\)"):
            await store.append([Event("Padded", payload(n)) for n in range(4)])
        assert len(await store.append([Event("Padded", payload(n)) for n in range(3)])) == 3


@pytest.mark.parametrize("bad", [0, -1, BATCH_BYTES_CEILING + 1, 2**40, 1.5, "10", True, None])
async def test_a_batch_limit_out_of_range_is_refused_at_open(dsn: str, bad: object) -> None:
    with pytest.raises(InvalidEvent, match="max_batch_bytes must be a whole number"):
        async with open_event_store(dsn, max_batch_bytes=bad):  # type: ignore[arg-type]
            pass
    with pytest.raises(InvalidEvent, match="max_batch_bytes must be a whole number"):
        async with open_bus(dsn, max_batch_bytes=bad):  # type: ignore[arg-type]
            pass


async def test_the_bus_passes_its_batch_limit_to_its_store(dsn: str) -> None:
    async with open_bus(dsn, max_batch_bytes=LIMIT) as bus:
        with pytest.raises(InvalidEvent, match=f"over the limit of {LIMIT} bytes"):
            await bus.store.append([Event("Padded", payload(0, 2 * LIMIT))])
