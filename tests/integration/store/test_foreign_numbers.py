"""A number longer than Python converts to an int, written by someone else
(jsonb takes any), reads as an exact Decimal: the stream, the reads and the
projections go on (the store itself refuses such a number in an append)."""

from __future__ import annotations

import decimal

import trio

from eventbus import Event, EventRecord, Projection, Transaction, create_filter, open_bus


async def test_a_foreign_event_with_a_huge_number_is_read_and_the_bus_goes_on(dsn: str) -> None:
    applied: list[int] = []

    async def apply(tx: Transaction, record: EventRecord) -> None:
        applied.append(record.sequence_number)

    async with open_bus(dsn, poll_interval=0.05) as bus:
        await bus.projections.start(Projection("deps", {"Dep": apply}))
        async with bus.subscribe(create_filter(["Dep"]), name="deps") as sub:
            [first] = await bus.store.append([Event("Dep", {"account": "a"})])
            await bus.store.pool.fetchval(  # as another program would write them, in order
                "INSERT INTO eventbus.events (sequence_number, event_id, event_type, payload, occurred_at)"
                " SELECT $1 + o, gen_random_uuid(), t, '{\"n\": 1e5000, \"account\": \"b\"}'::jsonb, now()"
                " FROM unnest(ARRAY['SomethingElse', 'Dep']) WITH ORDINALITY AS u (t, o)",
                first.sequence_number,
            )
            await bus.store.pool.fetchval("SELECT setval('eventbus.event_position', $1)", first.sequence_number + 2)
            [last] = await bus.store.append([Event("Dep", {"account": "c"})])
            seen: list[EventRecord] = []
            with trio.fail_after(30):
                async for batch in sub:
                    seen.extend(batch)
                    if seen[-1].sequence_number == last.sequence_number:
                        break
            await bus.projections.wait_until_caught_up("deps", timeout=30)
        result = await bus.store.query(create_filter(["SomethingElse"]))
    assert [r.sequence_number for r in seen] == [first.sequence_number, first.sequence_number + 2, last.sequence_number]
    assert applied == [first.sequence_number, first.sequence_number + 2, last.sequence_number]
    [foreign] = result.events
    assert foreign.payload["n"] == decimal.Decimal("1e5000")  # exact: a 1 and 5,000 zeros
    assert foreign.payload["account"] == "b"
