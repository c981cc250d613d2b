"""A handler that ends its own transaction, or keeps it past its handler (or
a reader block past its end), is told so; nothing is applied twice or lost
without a word.

A handler's COMMIT commits what it wrote before without the checkpoint, and
its ROLLBACK throws away the batch's earlier events while the checkpoint
would still move past them: either way the projection fails at once, naming
the event, whatever its restart policy (trying the batch again could apply
events twice)."""

from __future__ import annotations

import pytest
import trio
import trio.testing

from eventbus import (
    Bus,
    Event,
    EventRecord,
    Projection,
    ProjectionError,
    RestartPolicy,
    Transaction,
    WrongTrioRun,
    open_bus,
)


async def create_applied(tx: Transaction) -> None:
    await tx.execute("CREATE TABLE IF NOT EXISTS applied (position bigint PRIMARY KEY)")


def ending(statement: str, partitions: int = 1) -> Projection:
    async def apply(tx: Transaction, record: EventRecord) -> None:
        await tx.execute("INSERT INTO applied VALUES ($1)", record.sequence_number)
        if record.payload["n"] == 6:
            await tx.execute(statement)

    return Projection(
        "ledger", {"Noted": apply}, setup=create_applied, restart=RestartPolicy(max_restarts=5, initial=0.01),
        partitions=partitions, partition_key="n" if partitions > 1 else None,
    )  # fmt: skip


async def failed(bus: Bus) -> str:
    with trio.fail_after(20):
        while (status := bus.projections.status()["ledger"]).state != "failed":
            await trio.sleep(0.02)
    return status.last_error or ""


async def applied(bus: Bus) -> list[int]:
    async with bus.projections.reader("ledger") as tx:
        return [row[0] for row in await tx.fetch("SELECT position FROM applied ORDER BY position")]


@pytest.mark.parametrize("statement", ["COMMIT", "ROLLBACK", "ABORT"])
@pytest.mark.parametrize("partitions", [1, 3])
async def test_a_handler_that_ends_its_transaction_fails_the_projection_at_once(
    dsn: str, statement: str, partitions: int
) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Noted", {"n": n}) for n in range(10)])
        await bus.projections.start(ending(statement, partitions))
        error = await failed(bus)
        assert "at position 7 ended the batch's transaction itself" in error, error
        assert bus.projections.status()["ledger"].restarts == 0  # not tried again: it could apply events twice
        rows = await applied(bus)
        assert len(rows) == len(set(rows)), rows
        assert (7 in rows) == (statement == "COMMIT"), rows  # committed by the handler, or rolled back by it


async def test_a_transaction_kept_past_its_handler_or_reader_block_is_refused(dsn: str) -> None:
    kept: list[Transaction] = []

    async def keep(tx: Transaction, record: EventRecord) -> None:
        kept.append(tx)
        await tx.execute("INSERT INTO applied VALUES ($1)", record.sequence_number)

    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Noted", {"n": 0})])
        await bus.projections.start(Projection("ledger", {"Noted": keep}, setup=create_applied))
        await bus.projections.wait_until_caught_up("ledger", timeout=20)
        with pytest.raises(ProjectionError, match="this transaction is over"):
            await kept[0].execute("INSERT INTO applied VALUES (99)")
        async with bus.projections.reader("ledger") as tx:
            assert await tx.fetchval("SELECT count(*) FROM applied") == 1
        with pytest.raises(ProjectionError, match="this transaction is over"):
            await tx.fetchval("SELECT count(*) FROM applied")
        assert await applied(bus) == [1]


@pytest.mark.parametrize(
    "options",
    [{"restart": None}, {"restart": 5}, {"handler_timeout": 10**400}, {"handler_timeout": 86_401}],
)
def test_a_projection_with_a_mistyped_option_is_refused_when_defined(options: dict[str, object]) -> None:
    with pytest.raises(ProjectionError, match=next(iter(options))):
        Projection("ledger", {"Noted": create_applied}, **options)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "options", [{"max_restarts": -1}, {"max_restarts": "3"}, {"initial": 0}, {"initial": float("nan")},
                {"maximum": 10**400}, {"initial": True}],
)  # fmt: skip
def test_a_restart_policy_with_a_mistyped_value_is_refused(options: dict[str, object]) -> None:
    with pytest.raises(ProjectionError, match=f"RestartPolicy: {next(iter(options))}"):
        RestartPolicy(**options)  # type: ignore[arg-type]


async def test_restart_and_stop_from_outside_the_run_are_refused_and_change_nothing(dsn: str) -> None:
    async def refuse(tx: Transaction, record: EventRecord) -> None:
        raise RuntimeError("poison")

    projection = Projection("ledger", {"Noted": refuse}, setup=create_applied,
                            restart=RestartPolicy(max_restarts=0, initial=0.01))  # fmt: skip
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Noted", {"n": 0})])
        await bus.projections.start(projection)
        await failed(bus)
        for call in (lambda: bus.projections.restart("ledger"), lambda: trio.run(bus.projections.stop, "ledger")):
            with pytest.raises(WrongTrioRun):
                await trio.to_thread.run_sync(call)
        assert bus.projections.status()["ledger"].state == "failed"  # as it was: nothing half done
        bus.projections.restart("ledger")  # from the run: it tries again (and fails again)
        assert bus.projections.status()["ledger"].state == "restarting"


async def test_a_wait_for_a_projection_that_is_stopped_ends_with_a_clear_error(dsn: str) -> None:
    hold = trio.Event()

    async def slow(tx: Transaction, record: EventRecord) -> None:
        await hold.wait()

    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Noted", {"n": 0})])
        await bus.projections.start(Projection("ledger", {"Noted": slow}, setup=create_applied))
        async with trio.open_nursery() as nursery:
            outcome: list[BaseException] = []

            async def wait() -> None:
                try:
                    await bus.projections.wait_until_caught_up("ledger", timeout=10**400)  # (for ever)
                except ProjectionError as exc:
                    outcome.append(exc)

            nursery.start_soon(wait)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(10):
                await bus.projections.stop("ledger")
        assert "was stopped while this waited" in str(outcome[0])
