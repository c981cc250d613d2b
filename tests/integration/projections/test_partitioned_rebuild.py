"""Rebuilding a partitioned projection, and resuming one past a poison event.

The rebuild builds a copy while the partitions' owners go on, then swaps it
in with one transaction that holds every owner still and moves every
partition to the copy's position under a new epoch. The read model counts
the applications of each event (``applications``), so an event applied
twice, or not at all, across the swap shows.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import attrs
import pytest
import trio

from eventbus import (
    Bus,
    EventRecord,
    Projection,
    ProjectionError,
    RestartPolicy,
    Transaction,
    create_filter,
    open_bus,
)
from eventbus._projections._leases import HEARTBEAT, LEASE_TTL
from eventbus._projections._partitioned_rebuild import CLAIM_TTL

from .._projection_worker import (
    PARTITIONS,
    TYPES,
    account_events,
    apply_event_counted,
    create_counted_tables,
    partitioned_projection,
    read_applications,
    read_model,
    replay,
)
from .test_projections_processes import append_in_chunks, open_worker, poll_until

REBALANCE_TIMEOUT = LEASE_TTL + 4 * HEARTBEAT + 2.0
SCHEMA_OID = "SELECT oid FROM pg_namespace WHERE nspname = 'projection_accounts'"


async def assert_each_event_applied_once(bus: Bus) -> None:
    """The read model equals a replay, and holds each event exactly once."""
    records = (await bus.store.query(create_filter(list(TYPES)))).events
    async with bus.projections.reader("accounts") as tx:
        model = await read_model(tx)
        applications = await read_applications(tx)
    assert applications == {record.sequence_number: 1 for record in records}
    assert model == replay(records)


async def rebuild_leftovers(bus: Bus) -> tuple[bool, int]:
    """Whether the copy's schema exists, and how many rebuild claims there are."""
    shadow = await bus.store.pool.fetchval(
        "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = 'projection_accounts$shadow')"
    )
    claims = await bus.store.pool.fetchval("SELECT count(*) FROM eventbus.projection_rebuilds")
    return bool(shadow), int(claims)


async def copied(bus: Bus) -> int:
    """How many events the copy under construction holds (0 without one)."""
    try:
        sql = 'SELECT coalesce(sum(times), 0) FROM "projection_accounts$shadow".applications'
        return int(await bus.store.pool.fetchval(sql) or 0)
    except Exception:
        return 0


# ------------------------------------------------------------------ one process


@pytest.mark.parametrize("by_field", [False, True])  # a key function; the payload field "account"
async def test_a_partitioned_projection_is_rebuilt_under_writes_and_each_event_is_applied_once(
    dsn: str, by_field: bool
) -> None:
    events = list(account_events(9000, seed=21))
    async with open_bus(dsn) as bus:
        await append_in_chunks(bus.store, events[:4000], 500)
        await bus.projections.start(partitioned_projection(by_field=by_field))
        await bus.projections.wait_until_caught_up("accounts", timeout=60)
        before = await bus.store.pool.fetchval(SCHEMA_OID)
        seen: list[int] = []
        progress: list[tuple[int, int]] = []
        shown: set[str] = set()  # the projection's state, as status() shows it during the rebuild

        def follow(done: int, total: int) -> None:
            progress.append((done, total))
            shown.add(bus.projections.status()["accounts"].state)

        async with trio.open_nursery() as nursery:

            async def write() -> None:
                for start in range(4000, len(events), 100):
                    await bus.store.append(events[start : start + 100])
                    await trio.sleep(0.01)

            async def read() -> None:
                # The old read model until the swap, the new one after: never less than before.
                while True:
                    async with bus.projections.reader("accounts") as tx:
                        seen.append((await read_model(tx)).tally)
                    await trio.sleep(0.02)

            nursery.start_soon(write)
            nursery.start_soon(read)
            await bus.projections.rebuild("accounts", follow)
            nursery.cancel_scope.cancel()
        assert shown == {"rebuilding"}
        assert bus.projections.status()["accounts"].state != "rebuilding"  # once it has returned
        await append_in_chunks(bus.store, events[len(events) - 50 :], 50)  # after the swap too
        await bus.projections.wait_until_caught_up("accounts", timeout=60)
        await assert_each_event_applied_once(bus)
        assert await bus.store.pool.fetchval(SCHEMA_OID) not in (None, before)  # the copy took its place
        assert await rebuild_leftovers(bus) == (False, 0)
        assert seen == sorted(seen) and len(seen) > 1
        assert progress and progress[-1][0] >= 4000
        status = bus.projections.status()["accounts"]
        assert status.state == "live" and status.lag == 0 and status.restarts == 0


async def test_one_rebuild_at_a_time_across_buses_and_a_cancelled_one_leaves_nothing(dsn: str) -> None:
    async with open_bus(dsn) as first, open_bus(dsn) as second:
        await append_in_chunks(first.store, account_events(300, seed=22), 100)
        for bus in (first, second):
            await bus.projections.start(partitioned_projection(slow=True))  # a copy that takes seconds
        await first.projections.wait_until_caught_up("accounts", timeout=60)
        async with first.projections.reader("accounts") as tx:
            before = await read_model(tx)
        async with trio.open_nursery() as nursery:
            nursery.start_soon(first.projections.rebuild, "accounts")
            await poll_until(lambda: _copying(first), timeout=30)
            with pytest.raises(ProjectionError, match="being rebuilt by another process"):
                await second.projections.rebuild("accounts")
            with pytest.raises(ProjectionError, match="being rebuilt already"):
                await first.projections.rebuild("accounts")
            nursery.cancel_scope.cancel()
        assert await rebuild_leftovers(first) == (False, 0)
        async with first.projections.reader("accounts") as tx:
            assert await read_model(tx) == before
        await first.projections.wait_until_caught_up("accounts", timeout=60)
        await assert_each_event_applied_once(first)


async def _copy_exists(bus: Bus) -> bool:
    return (await rebuild_leftovers(bus))[0]


async def _copying(bus: Bus) -> bool:
    return await copied(bus) > 0


async def apply_event_in_a_long_statement(tx: Transaction, record: EventRecord) -> None:
    await tx.execute("SELECT pg_sleep(0.1)")  # a cancellation lands in a statement, not between two
    await apply_event_counted(tx, record)


@pytest.mark.parametrize("partitions", [1, PARTITIONS])
async def test_a_rebuild_cancelled_inside_a_statement_of_its_copy_leaves_no_copy_behind(
    dsn: str, partitions: int
) -> None:
    async with open_bus(dsn) as bus:
        await append_in_chunks(bus.store, account_events(30, seed=24), 30)
        projection = attrs.evolve(
            partitioned_projection(),
            handlers=dict.fromkeys(TYPES, apply_event_in_a_long_statement),
            partitions=partitions,
        )
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("accounts", timeout=60)
        async with bus.projections.reader("accounts") as tx:
            before = await read_model(tx)
        for delay in (0.15, 0.23, 0.31):  # cancelled at points inside the copy's statements
            async with trio.open_nursery() as nursery:
                nursery.start_soon(bus.projections.rebuild, "accounts")
                await poll_until(lambda: _copy_exists(bus), timeout=30)
                await trio.sleep(delay)
                nursery.cancel_scope.cancel()
            assert await rebuild_leftovers(bus) == (False, 0)
        async with bus.projections.reader("accounts") as tx:
            assert await read_model(tx) == before


# ------------------------------------------------------------------ processes, a kill -9 mid-rebuild


async def test_a_rebuild_killed_midway_leaves_the_owners_going_and_the_next_one_swaps_with_each_event_once(
    dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "workers.log"
    events = list(account_events(16_000, seed=23))
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await append_in_chunks(bus.store, events[:10_000], 1000)
        async with (
            open_worker(dsn, "parts", log) as doomed,
            open_worker(dsn, "parts", log) as second,
            open_worker(dsn, "parts", log) as third,
        ):
            for worker in (doomed, second, third):
                with trio.fail_after(120):
                    assert await worker.ask("caught_up") == "caught_up"
            async with trio.open_nursery() as nursery:
                written = trio.Event()

                async def write() -> None:
                    for start in range(10_000, len(events), 100):
                        await bus.store.append(events[start : start + 100])
                        await trio.sleep(0.05)
                    written.set()

                nursery.start_soon(write)
                await doomed._stdin.send_all(b"rebuild\n")
                await poll_until(lambda: _copying(bus), timeout=60)
                async with bus.projections.reader("accounts") as tx:
                    old = await read_model(tx)
                assert old.tally >= 10_000  # readers see the old model meanwhile, not the copy
                await doomed.kill()  # mid-rebuild
                assert (await rebuild_leftovers(bus))[0]  # its copy, left behind
                # The owners carry on without it; its partitions go to the others.
                await poll_until(lambda: _owners_are(bus, {second.pid, third.pid}), timeout=REBALANCE_TIMEOUT)
                # The next rebuild waits for the claim to expire, drops the copy left, and swaps.
                with trio.fail_after(CLAIM_TTL + 180):
                    while (answer := await second.ask("rebuild")) != "rebuilt":
                        assert answer.startswith("rebuild_failed") and "being rebuilt by another" in answer, answer
                        await trio.sleep(0.5)
                await written.wait()
            for worker in (second, third):
                with trio.fail_after(120):
                    assert await worker.ask("caught_up") == "caught_up"
            assert await bus.store.head() == len(events)
            await assert_each_event_applied_once(bus)
            assert await rebuild_leftovers(bus) == (False, 0)
            async with bus.projections.reader("accounts") as tx:
                copy = await tx.fetchval("SELECT first_position FROM appliers WHERE pid = $1", second.pid)
            assert copy == 1  # the model is the copy the second built, from the first event on


async def _owners_are(bus: Bus, pids: set[int]) -> bool:
    rows = await bus.store.pool.fetch(
        "SELECT DISTINCT owner FROM eventbus.projection_leases WHERE projection = 'accounts'"
        " AND owner IS NOT NULL AND expires_at > now()"
    )
    held = await bus.store.pool.fetchval(
        "SELECT count(*) FROM eventbus.projection_leases WHERE projection = 'accounts'"
        " AND owner IS NOT NULL AND expires_at > now()"
    )
    return {int(row["owner"].split(":")[-2]) for row in rows} == pids and held == PARTITIONS


# ------------------------------------------------------------------ resume past a poison event


POISON_ACCOUNT = "poison"


async def poisoned(tx: Transaction, record: EventRecord) -> None:
    if record.payload["account"] == POISON_ACCOUNT:
        raise ValueError("an account nobody may open")
    await apply_event_counted(tx, record)


def poisoned_projection() -> Projection:
    return Projection(
        "accounts",
        dict.fromkeys(TYPES, poisoned),
        create_counted_tables,
        100,
        restart=RestartPolicy(max_restarts=1, initial=0.05, maximum=0.05),
        partitions=4,
        partition_key=_account,
    )


def _account(record: EventRecord) -> Any:
    return record.payload["account"]


async def test_resume_with_skip_poison_moves_a_failed_partitioned_projection_past_its_poison_event(dsn: str) -> None:
    from eventbus import Event

    events = list(account_events(600, seed=24))
    async with open_bus(dsn) as bus:
        await bus.store.append(events[:300])
        [poison] = await bus.store.append([Event(TYPES[0], {"account": POISON_ACCOUNT})])
        await bus.store.append(events[300:])
        await bus.projections.start(poisoned_projection())
        with pytest.raises(ProjectionError, match="an account nobody may open"):
            await bus.projections.wait_until_caught_up("accounts", timeout=30)
        status = bus.projections.status()["accounts"]
        assert status.state == "failed" and status.partitions == {}
        bus.projections.restart("accounts")  # without the skip: the same event again
        with pytest.raises(ProjectionError, match="an account nobody may open"):
            await bus.projections.wait_until_caught_up("accounts", timeout=30)
        bus.projections.restart("accounts", skip_poison=True)
        await bus.projections.wait_until_caught_up("accounts", timeout=30)
        status = bus.projections.status()["accounts"]
        assert status.state == "live" and status.dead_letters == 1
        letters = await bus.store.pool.fetch("SELECT sequence_number, error FROM eventbus.dead_letters")
        assert [row["sequence_number"] for row in letters] == [poison.sequence_number]
        assert "an account nobody may open" in letters[0]["error"]
        records = [r for r in (await bus.store.query(create_filter(list(TYPES)))).events if r != poison]
        async with bus.projections.reader("accounts") as tx:
            assert await read_applications(tx) == {record.sequence_number: 1 for record in records}
            assert await read_model(tx) == replay(records)
        # The copy of a rebuild leaves the dead letter out, as the live model did.
        await bus.projections.rebuild("accounts")
        assert await rebuild_leftovers(bus) == (False, 0)
        async with bus.projections.reader("accounts") as tx:
            assert await read_applications(tx) == {record.sequence_number: 1 for record in records}
            assert await read_model(tx) == replay(records)
        # Only that one event was skipped: a new poison fails the projection again.
        await bus.store.append([Event(TYPES[1], {"account": POISON_ACCOUNT, "amount": 1})])
        with pytest.raises(ProjectionError, match="an account nobody may open"):
            await bus.projections.wait_until_caught_up("accounts", timeout=30)


async def test_the_eventbus_command_resumes_a_failed_partitioned_projection_past_its_poison(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from eventbus import Event

    from ..admin.test_admin_cli import cli, published

    monkeypatch.setattr("eventbus._projections._operations.OPERATIONS_INTERVAL", 0.05)
    events = list(account_events(400, seed=25))
    async with open_bus(dsn) as bus:
        await bus.store.append(events[:200])
        [poison] = await bus.store.append([Event(TYPES[0], {"account": POISON_ACCOUNT})])
        await bus.store.append(events[200:])
        await bus.projections.start(poisoned_projection())
        await published(dsn, "accounts", "failed")
        run = await cli(dsn, "projections", "resume", "accounts", "--skip-poison")
        assert run.status == 0, run.err
        assert f"past the event at position {poison.sequence_number}" in run.out
        await bus.projections.wait_until_caught_up("accounts", timeout=30)
        records = [r for r in (await bus.store.query(create_filter(list(TYPES)))).events if r != poison]
        async with bus.projections.reader("accounts") as tx:
            assert await read_applications(tx) == {record.sequence_number: 1 for record in records}
        assert await bus.store.pool.fetchval("SELECT count(*) FROM eventbus.dead_letters") == 1


async def test_the_eventbus_command_rebuilds_a_partitioned_projection(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ..admin.test_admin_cli import cli, published

    monkeypatch.setattr("eventbus._projections._operations.OPERATIONS_INTERVAL", 0.05)
    async with open_bus(dsn) as bus:
        await append_in_chunks(bus.store, account_events(2000, seed=26), 500)
        await bus.projections.start(partitioned_projection())
        await bus.projections.wait_until_caught_up("accounts", timeout=60)
        await published(dsn, "accounts", "live")
        before = await bus.store.pool.fetchval(SCHEMA_OID)
        run = await cli(dsn, "projections", "rebuild", "accounts")
        assert run.status == 0, run.err
        assert run.out.startswith("rebuilt accounts; swapped in at position ")
        assert await bus.store.pool.fetchval(SCHEMA_OID) not in (None, before)  # the copy took its place
        await bus.projections.wait_until_caught_up("accounts", timeout=30)
        await assert_each_event_applied_once(bus)
