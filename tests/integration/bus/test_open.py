"""Opening and closing the store and the bus: errors come out as themselves."""

from __future__ import annotations

import pytest
import trio
import trio_asyncio

from eventbus import (
    Event,
    EventRecord,
    Projection,
    StoreUnavailable,
    Transaction,
    create_filter,
    open_bus,
    open_event_store,
)


class Boom(Exception):
    pass


async def test_an_error_in_the_callers_block_comes_out_as_itself(dsn: str) -> None:
    with pytest.raises(Boom):
        async with open_bus(dsn):
            raise Boom


async def test_an_unreachable_database_is_a_store_unavailable_error() -> None:
    with pytest.raises(StoreUnavailable):
        async with open_event_store("postgresql://nobody@127.0.0.1:1/nothing"):
            pass


async def test_the_bus_works_inside_a_trio_asyncio_loop_the_caller_opened(dsn: str) -> None:
    async with trio_asyncio.open_loop(), open_bus(dsn) as bus:
        records = await bus.store.append([Event("Opened", {"id": 1})])
        assert (await bus.store.query(create_filter(["Opened"]))).events == records


async def test_cancelling_the_bus_block_shuts_down_cleanly(dsn: str) -> None:
    with trio.fail_after(30), trio.CancelScope() as scope:
        async with open_bus(dsn) as bus, bus.subscribe(create_filter([])) as sub:
            await bus.store.append([Event("Opened", {"id": 1})])
            async for _ in sub:
                scope.cancel()  # with a batch half-received and the bus running
                await trio.sleep_forever()
    assert scope.cancelled_caught
    async with open_event_store(dsn) as store:
        assert await store.head() == 1


async def leave_after(scope: trio.CancelScope, delay: float) -> None:
    await trio.sleep(delay)  # a point in time to cancel at, not a wait for anything
    scope.cancel()


async def test_leaving_the_bus_while_reads_are_in_flight_raises_nothing(dsn: str) -> None:
    async def read_model(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS seen (n int)")

    async def on_ping(tx: Transaction, record: EventRecord) -> None:
        await tx.execute("INSERT INTO seen VALUES (1)")

    acknowledged = 0
    for round_ in range(12):
        with trio.CancelScope() as scope:
            async with open_bus(dsn) as bus, trio.open_nursery() as nursery:
                await bus.projections.start(Projection("pings", {"Ping": on_ping}, setup=read_model))

                async def query() -> None:
                    while True:
                        await bus.store.query(create_filter([], [{"id": 1}]))

                async def read() -> None:
                    while True:
                        async with bus.projections.reader("pings") as tx:
                            await tx.fetch("SELECT pg_sleep(0.001)")

                for _ in range(4):
                    nursery.start_soon(query)
                    nursery.start_soon(read)
                await bus.store.append([Event("Ping", {"id": 1})])
                acknowledged += 1
                # Leave with the reads and the projection's apply under way, at a different moment each round.
                nursery.start_soon(leave_after, scope, 0.002 * round_)
                await trio.sleep_forever()
    async with open_event_store(dsn) as store:
        assert await store.head() == acknowledged == 12
