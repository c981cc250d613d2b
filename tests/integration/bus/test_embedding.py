"""Every public call works from any task of the program that opened the bus.

Server frameworks run their handlers in a nursery of their own, started before
the bus; worker threads call in through ``trio.from_thread``. Neither has the
trio-asyncio loop that tasks started inside ``open_bus`` inherit. Each public
operation runs here from three places: the task inside the block, a task of an
outer nursery started before the bus, and a thread.
"""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import outcome
import pytest
import trio

from eventbus import (
    Bus,
    ClosedError,
    ConcurrencyError,
    Event,
    EventQuery,
    Projection,
    Transaction,
    create_filter,
    open_bus,
    open_event_store,
)

Op = Callable[[], Awaitable[Any]]
PLACES = ["inside", "outer", "thread"]


class OuterWorker:
    """A task of a nursery opened before the bus: it runs what it is sent."""

    def __init__(self) -> None:
        self.send, self._receive = trio.open_memory_channel[tuple[Op, trio.MemorySendChannel[outcome.Outcome[Any]]]](0)

    async def serve(self) -> None:
        async for op, reply in self._receive:
            await reply.send(await outcome.acapture(op))

    async def run(self, op: Op) -> Any:
        reply_send, reply_receive = trio.open_memory_channel[outcome.Outcome[Any]](1)
        await self.send.send((op, reply_send))
        return (await reply_receive.receive()).unwrap()


@asynccontextmanager
async def places(dsn: str) -> AsyncIterator[tuple[Bus, dict[str, Callable[[Op], Awaitable[Any]]]]]:
    worker = OuterWorker()
    async with trio.open_nursery() as outer:
        outer.start_soon(worker.serve)  # started before the bus, outside its block
        async with open_bus(dsn) as bus:

            async def inside(op: Op) -> Any:
                return await op()

            async def thread(op: Op) -> Any:
                return await trio.to_thread.run_sync(trio.from_thread.run, op)

            yield bus, {"inside": inside, "outer": worker.run, "thread": thread}
        outer.cancel_scope.cancel()


def deposit(account: str, amount: int = 1) -> Event:
    return Event("Deposited", {"account": account, "amount": amount})


@pytest.mark.parametrize("place", PLACES)
async def test_append_query_head_and_conditional_append_work_from(dsn: str, place: str) -> None:
    async with places(dsn) as (bus, at):
        run = at[place]
        account = uuid.uuid4().hex
        records = await run(lambda: bus.store.append([deposit(account)]))
        assert len(records) == 1
        assert await run(bus.store.head) == records[0].sequence_number
        mine = create_filter(["Deposited"], [{"account": account}])
        result = await run(lambda: bus.store.query(mine))
        assert [r.sequence_number for r in result.events] == [records[0].sequence_number]
        result = await run(lambda: bus.store.query(EventQuery([mine], limit=1)))
        assert len(result.events) == 1
        # Read, decide, append on the condition; a stale position conflicts.
        more = await run(lambda: bus.store.append([deposit(account, 2)], mine, result.max_sequence_number))
        assert more[0].sequence_number > records[0].sequence_number
        with pytest.raises(ConcurrencyError):
            await run(lambda: bus.store.append([deposit(account, 3)], mine, result.max_sequence_number))


@pytest.mark.parametrize("place", PLACES)
@pytest.mark.parametrize("after", [None, 0])
async def test_subscribe_works_from(dsn: str, place: str, after: int | None) -> None:
    async with places(dsn) as (bus, at):
        run = at[place]
        account = uuid.uuid4().hex
        first = await bus.store.append([deposit(account, 1)])

        async def subscribe() -> list[int]:
            async with bus.subscribe(create_filter(["Deposited"], [{"account": account}]), after=after) as sub:
                later = await bus.store.append([deposit(account, 2)])
                seen: list[int] = []
                async for batch in sub:
                    seen += [r.sequence_number for r in batch]
                    if seen and seen[-1] >= later[0].sequence_number:
                        return seen
            raise AssertionError("the subscription ended")

        seen = await run(subscribe)
        expected_first = [first[0].sequence_number] if after == 0 else []
        assert seen[: len(expected_first)] == expected_first and len(seen) == len(expected_first) + 1


async def setup(tx: Transaction) -> None:
    await tx.execute("CREATE TABLE IF NOT EXISTS totals (account text PRIMARY KEY, amount bigint NOT NULL)")


async def on_deposit(tx: Transaction, record: Any) -> None:
    await tx.execute(
        "INSERT INTO totals VALUES ($1, $2) ON CONFLICT (account) DO UPDATE SET amount = totals.amount + $2",
        record.payload["account"],
        record.payload["amount"],
    )


@pytest.mark.parametrize("place", PLACES)
async def test_projections_start_read_rebuild_and_report_from(dsn: str, place: str) -> None:
    async with places(dsn) as (bus, at):
        run = at[place]
        await bus.store.append([deposit("a", 2), deposit("b", 3), deposit("a", 5)])
        projection = Projection(name="totals", handlers={"Deposited": on_deposit}, setup=setup)
        await run(lambda: bus.projections.start(projection))
        await run(lambda: bus.projections.wait_until_caught_up("totals", timeout=30))

        async def read() -> dict[str, int]:
            async with bus.projections.reader("totals") as tx:
                rows = await tx.fetch("SELECT account, amount FROM totals ORDER BY account")
                return {row["account"]: row["amount"] for row in rows}

        assert await run(read) == {"a": 7, "b": 3}
        progress: list[tuple[int, int]] = []
        await run(lambda: bus.projections.rebuild("totals", lambda done, total: progress.append((done, total))))
        assert progress and progress[-1][0] == progress[-1][1]
        assert await run(read) == {"a": 7, "b": 3}
        status = await run(_async(bus.projections.status))
        assert status["totals"].state in ("live", "catching_up")
        stats = await run(_async(bus.statistics))
        assert stats.store.appends >= 1 and "totals" in stats.projections
        await run(lambda: bus.projections.stop("totals"))


def _async(fn: Callable[[], Any]) -> Op:
    async def call() -> Any:
        return fn()

    return call


async def test_two_buses_opened_by_sibling_tasks_serve_an_outer_task_each_on_its_own_loop(dsn: str) -> None:
    worker = OuterWorker()
    buses: list[Bus] = []
    ready = trio.Event()
    done = trio.Event()

    async def hold_bus() -> None:
        async with open_bus(dsn) as bus:  # each sibling task opens a loop of its own
            buses.append(bus)
            if len(buses) == 2:
                ready.set()
            await done.wait()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(worker.serve)
        nursery.start_soon(hold_bus)
        nursery.start_soon(hold_bus)
        await ready.wait()
        first = await worker.run(lambda: buses[0].store.append([deposit("x")]))
        second = await worker.run(lambda: buses[1].store.append([deposit("y")]))
        assert second[0].sequence_number == first[0].sequence_number + 1
        for bus in buses:
            assert await worker.run(bus.store.head) == second[0].sequence_number
            result = await worker.run(lambda bus=bus: bus.store.query(create_filter(["Deposited"])))
            assert len(result.events) == 2
        done.set()
        nursery.cancel_scope.cancel()


async def slow_deposit(tx: Transaction, record: Any) -> None:
    await trio.sleep(0.2)  # a rebuild or a wait that is still under way when the bus closes
    await on_deposit(tx, record)


async def schemas_like(dsn: str, pattern: str) -> list[str]:
    async with open_event_store(dsn) as store:
        rows = await store.pool.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1", pattern)
    return sorted(row["nspname"] for row in rows)


@pytest.mark.parametrize("call", ["rebuild", "wait", "wait without a timeout"])
async def test_a_projection_call_from_an_outer_task_under_way_as_the_bus_closes_ends_with_closed_error(
    dsn: str, call: str
) -> None:
    ended: list[BaseException | None] = []
    took: list[float] = []

    async def caller(bus: Bus, started: trio.Event) -> None:
        began = trio.current_time()
        try:
            with trio.fail_after(30):
                started.set()
                if call == "rebuild":
                    await bus.projections.rebuild("totals")
                else:
                    await bus.projections.wait_until_caught_up("totals", None if "without" in call else 60)
            ended.append(None)
        except BaseException as exc:  # what ends it is the finding
            ended.append(exc)
        took.append(trio.current_time() - began)

    async with trio.open_nursery() as outer:
        async with open_bus(dsn, listen=False) as bus:
            await bus.store.append([deposit(f"a{n}", 1) for n in range(30)])  # 6 s of a slow handler
            await bus.projections.start(Projection(name="totals", handlers={"Deposited": slow_deposit}, setup=setup))
            with trio.fail_after(30):
                while not bus.projections.status()["totals"].leader:
                    await trio.sleep(0.05)
            started = trio.Event()
            outer.start_soon(caller, bus, started)
            await started.wait()
            await trio.sleep(0.5)  # well into the call
        closed_at = trio.current_time()
        with trio.fail_after(10):
            while not ended:
                await trio.sleep(0.05)
        assert isinstance(ended[0], ClosedError), repr(ended[0])
        assert "the bus closed" in str(ended[0])
        assert trio.current_time() - closed_at < 5 and took[0] < 10
        with pytest.raises(ClosedError):
            await bus.projections.start(Projection(name="late", handlers={"Deposited": on_deposit}))
        with pytest.raises(ClosedError):
            await bus.projections.wait_until_caught_up("totals", timeout=1)
        assert "late" not in bus.projections.status()
    assert await schemas_like(dsn, "projection_totals%shadow%") == []  # the abandoned copy was dropped


async def test_a_call_from_another_trio_run_is_refused_at_once_and_the_bus_goes_on(dsn: str) -> None:
    ledger = Projection(name="totals", handlers={"Deposited": on_deposit}, setup=setup)
    async with open_bus(dsn, listen=False) as bus:
        await bus.projections.start(ledger)
        calls: dict[str, Callable[[], Awaitable[Any]]] = {
            "append": lambda: bus.store.append([deposit("x", 1)]),
            "query": lambda: bus.store.query(create_filter(["Deposited"])),
            "head": bus.store.head,
            "subscribe": lambda: bus.subscribe(create_filter(["Deposited"])).__aenter__(),
            "start": lambda: bus.projections.start(Projection(name="other", handlers={"Deposited": on_deposit})),
            "wait": lambda: bus.projections.wait_until_caught_up("totals", timeout=5),
            "rebuild": lambda: bus.projections.rebuild("totals"),
            "reader": lambda: bus.projections.reader("totals").__aenter__(),
        }

        def in_another_run() -> dict[str, str]:
            async def each() -> dict[str, str]:
                got: dict[str, str] = {}
                for what, call in calls.items():
                    with trio.move_on_after(5):
                        try:
                            await call()
                            got[what] = "returned"
                        except Exception as exc:
                            got[what] = type(exc).__name__
                        continue
                    got[what] = "hung"
                return got

            return trio.run(each)

        with trio.fail_after(60):
            got = await trio.to_thread.run_sync(in_another_run)
        assert got == dict.fromkeys(calls, "WrongTrioRun")
        assert "other" not in bus.projections.status()
        # The bus's own run is untouched.
        [record] = await bus.store.append([deposit("y", 2)])
        await bus.projections.wait_until_caught_up("totals", timeout=30)
        assert record.sequence_number == await bus.store.head()
