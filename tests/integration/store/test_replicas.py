"""Reads from a hot standby, consistent with positions.

A real primary and a real hot standby (the ``replicated`` fixture: streaming
replication between two embedded servers). A read with ``min_position``
includes that position whatever the standby shows; what any read from the
standby shows is a prefix of the log; a standby that is stopped, paused or
far behind is skipped, the primary serves, and the standby comes back.
"""

from __future__ import annotations

import os
import time
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import psutil
import pytest
import trio

from eventbus import (
    Bus,
    Event,
    EventStore,
    InvalidFilter,
    InvalidOption,
    NotCaughtUp,
    Projection,
    ProjectionError,
    ReplicaState,
    ReplicaStatistics,
    StoreUnavailable,
    Transaction,
    create_filter,
    open_bus,
    open_event_store,
    testing,
)
from eventbus._store._replicas import HEALTH_INTERVAL, PROBE_TIMEOUT
from eventbus.testing import EmbeddedServer

from ...helpers import ReplicaDatabase

pytestmark = pytest.mark.replica

NOTED = "Noted"
EVERYTHING = create_filter([])
SETTLE = 30.0  # seconds: a bound for a standby to come back, never a wait
LOOK = 0.01  # seconds between looks at the statistics, which have no change notification
WAIT = 0.3  # seconds: replica_wait of the tests that make a standby lag


def replica(store: EventStore) -> ReplicaStatistics:
    [only] = store.statistics().replicas
    return only


async def until(condition: Callable[[], bool], what: str) -> None:
    """Look until ``condition()`` holds (bounded by ``SETTLE``)."""
    with trio.move_on_after(SETTLE):
        while not condition():
            await trio.sleep(LOOK)
        return
    raise AssertionError(f"not {what} after {SETTLE} s")


async def on_standby(db: ReplicaDatabase, sql: str) -> None:
    async with testing.open_loop():
        conn = await testing.connect(db.standby_dsn)
        try:
            await conn.execute(sql)
        finally:
            await conn.close()


async def standby_checkpoint_at(db: ReplicaDatabase, name: str, position: int) -> None:
    """Until the standby shows projection ``name``'s checkpoint at ``position``
    (bounded by ``SETTLE``)."""
    async with testing.open_loop():
        conn = await testing.connect(db.standby_dsn)
        try:
            with trio.fail_after(SETTLE):
                sql = "SELECT checkpoint FROM eventbus.projections WHERE name = $1"
                while (await conn.fetchval(sql, name) or 0) < position:
                    await trio.sleep(LOOK)
        finally:
            await conn.close()


@asynccontextmanager
async def replay_paused(db: ReplicaDatabase) -> AsyncIterator[None]:
    """The standby stops replaying the primary's WAL for the block."""
    await on_standby(db, "SELECT pg_wal_replay_pause()")
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await on_standby(db, "SELECT pg_wal_replay_resume()")


@asynccontextmanager
async def stopped(server: EmbeddedServer) -> AsyncIterator[None]:
    """The server is stopped for the block, and started again after it."""
    await trio.to_thread.run_sync(server.stop)
    try:
        yield
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.start)


async def note(bus: Bus | EventStore, task: int, i: int) -> int:
    store = bus.store if isinstance(bus, Bus) else bus
    [record] = await store.append([Event(NOTED, {"task": task, "i": i})])
    return record.sequence_number


# ------------------------------------------------------------------ min_position


async def test_every_read_with_min_position_through_the_standby_includes_that_position(
    replica_db: ReplicaDatabase,
) -> None:
    tasks, rounds = 8, 25
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn]) as bus:
        assert replica(bus.store).state is ReplicaState.UP
        seen: dict[int, list[list[int]]] = {}

        async def writer(task: int) -> None:
            mine: list[int] = []
            seen[task] = []
            for i in range(rounds):
                mine.append(await note(bus, task, i))
                result = await bus.store.query(create_filter([NOTED], [{"task": task}]), min_position=mine[-1])
                seen[task].append([record.sequence_number for record in result.events])

        async with trio.open_nursery() as nursery:
            for task in range(tasks):
                nursery.start_soon(writer, task)

        stats = replica(bus.store)
    for task in range(tasks):
        # Each read shows exactly the task's own appends so far: none missing.
        assert seen[task] == [sorted(seen[task][-1])[: i + 1] for i in range(rounds)]
    assert stats.reads + stats.fallbacks == tasks * rounds
    assert stats.reads > 0  # the standby served them (a fallback only when it lagged by seconds)


async def test_without_standbys_min_position_reads_the_primary_and_nothing_changes(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        position = await note(bus, 0, 0)
        result = await bus.store.query(EVERYTHING, min_position=position)
        assert [r.sequence_number for r in result.events] == [position]
        assert bus.store.statistics().replicas == ()


async def test_a_lagging_standby_makes_a_read_wait_then_go_to_the_primary_and_still_include_the_position(
    replica_db: ReplicaDatabase,
) -> None:
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn], replica_wait=WAIT) as bus:
        before = await note(bus, 0, 0)
        await bus.store.query(EVERYTHING, min_position=before)  # the standby shows it
        waited = replica(bus.store).waited
        async with replay_paused(replica_db):
            position = await note(bus, 0, 1)
            started = time.monotonic()
            result = await bus.store.query(EVERYTHING, min_position=position)
            took = time.monotonic() - started
            assert [r.sequence_number for r in result.events] == [before, position]
            assert WAIT <= took < WAIT + 2.0
            stats = replica(bus.store)
            assert (stats.state, stats.waited, stats.fallbacks) == (ReplicaState.BEHIND, waited + 1, 1)
            # Behind: the next read goes to the primary at once, also without min_position.
            started = time.monotonic()
            result = await bus.store.query(EVERYTHING)
            assert [r.sequence_number for r in result.events] == [before, position]
            assert time.monotonic() - started < WAIT
            assert replica(bus.store).reads == stats.reads
        # It comes back once it shows the position it missed.
        await until(lambda: replica(bus.store).state is ReplicaState.UP, "up again")
        served = replica(bus.store).reads
        result = await bus.store.query(EVERYTHING, min_position=position)
        assert [r.sequence_number for r in result.events] == [before, position]
        assert replica(bus.store).reads == served + 1


# ------------------------------------------------------------------ a prefix of the log


ROLLED_BACK_APPEND = """
BEGIN;
SELECT pg_advisory_xact_lock(7243049117);
INSERT INTO eventbus.events (sequence_number, event_id, event_type, payload, occurred_at)
SELECT s.last_value + k, gen_random_uuid(), 'Noted', '{"lost": true}', now()
FROM eventbus.event_position s, generate_series(1, 3) AS k;
SELECT setval('eventbus.event_position', (SELECT max(sequence_number) FROM eventbus.events));
ROLLBACK
"""
"""What ``append_events`` does for an append that then fails to commit: the
sequence (not transactional) keeps the positions it handed out, which stay
unused forever."""


async def test_what_a_standby_shows_is_always_a_prefix_of_the_log(replica_db: ReplicaDatabase) -> None:
    """Writers append while appends that roll back leave gaps; reads on the
    standby never show a position without every committed position below it."""
    writers, rounds = 4, 60
    views: list[list[int]] = []
    stop = trio.Event()
    async with (
        open_bus(replica_db.primary_dsn) as writer_bus,
        open_event_store(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn]) as reader,
    ):

        async def write(task: int) -> None:
            for i in range(rounds):
                await writer_bus.store.append([Event(NOTED, {"task": task, "i": i, "k": k}) for k in range(1 + i % 3)])

        async def roll_back() -> None:
            conn = await testing.connect(replica_db.primary_dsn)
            try:
                for _ in range(rounds // 4):
                    await conn.run_script(ROLLED_BACK_APPEND)
                    await trio.sleep(0)
            finally:
                await conn.close()

        async def read() -> None:
            while not stop.is_set():
                result = await reader.query(EVERYTHING)
                views.append([r.sequence_number for r in result.events])

        async with trio.open_nursery() as nursery:
            nursery.start_soon(read)
            async with trio.open_nursery() as writing:
                writing.start_soon(roll_back)
                for task in range(writers):
                    writing.start_soon(write, task)
            stop.set()
        stats = replica(reader)
        log = [r.sequence_number for r in (await writer_bus.store.query(EVERYTHING)).events]
    assert stats.reads == len(views) and stats.fallbacks == 0
    assert log[-1] > len(log)  # rolled-back appends left gaps
    assert len({view[-1] for view in views if view}) > 5  # the standby moved while it was read
    for view in views:
        top = view[-1] if view else 0
        assert view == [position for position in log if position <= top]


# ------------------------------------------------------------------ down and back


async def test_a_stopped_standby_is_skipped_and_comes_back_when_started(replica_db: ReplicaDatabase) -> None:
    standby = replica_db.servers.standby
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn]) as bus:
        first = await note(bus, 0, 0)
        await bus.store.query(EVERYTHING, min_position=first)
        assert replica(bus.store).reads == 1
        async with stopped(standby):
            position = await note(bus, 0, 1)
            result = await bus.store.query(EVERYTHING, min_position=position)
            assert [r.sequence_number for r in result.events] == [first, position]
            result = await bus.store.query(EVERYTHING)
            assert [r.sequence_number for r in result.events] == [first, position]
            stats = replica(bus.store)
            assert stats.state is ReplicaState.DOWN
            assert stats.reads == 1 and stats.failures >= 1 and stats.last_error
        await until(lambda: replica(bus.store).state is ReplicaState.UP, "up again")
        result = await bus.store.query(EVERYTHING, min_position=position)
        assert [r.sequence_number for r in result.events] == [first, position]
        assert replica(bus.store).reads == 2


async def test_a_standby_down_at_the_start_does_not_stop_the_bus_and_joins_later(
    replica_db: ReplicaDatabase,
) -> None:
    standby = replica_db.servers.standby
    async with stopped(standby), open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn]) as bus:
        assert replica(bus.store).state is ReplicaState.DOWN
        position = await note(bus, 0, 0)
        result = await bus.store.query(EVERYTHING, min_position=position)
        assert [r.sequence_number for r in result.events] == [position]
        await trio.to_thread.run_sync(standby.start)
        await until(lambda: replica(bus.store).state is ReplicaState.UP, "up")
        result = await bus.store.query(EVERYTHING, min_position=position)
        assert [r.sequence_number for r in result.events] == [position]
        assert replica(bus.store).reads == 1


async def test_a_standby_that_cannot_be_reached_is_down_and_its_password_shows_nowhere(dsn: str) -> None:
    hidden = "s3cret-pw"
    unreachable = f"postgresql://someone:{hidden}@/nowhere?host=/nonexistent-eventbus-socket&port=5432"
    async with open_bus(dsn, replica_dsns=[unreachable]) as bus:
        position = await note(bus, 0, 0)
        result = await bus.store.query(EVERYTHING, min_position=position)
        assert [r.sequence_number for r in result.events] == [position]
        stats = replica(bus.store)
    assert stats.state is ReplicaState.DOWN and stats.last_error
    assert hidden not in repr(stats) and "***" in stats.dsn


@pytest.mark.parametrize(
    "options",
    [{"write_connections": 0}, {"write_connections": "2"}, {"write_connections": True}, {"read_pool_size": -1},
     {"read_pool_size": 2.5}, {"reconnect_timeout": -1}, {"reconnect_timeout": float("nan")},
     {"reconnect_timeout": "5"}, {"max_payload_bytes": None}, {"max_payload_bytes": "1048576"},
     {"max_payload_bytes": 0}, {"max_payload_bytes": -1}, {"max_payload_bytes": 1.5}, {"max_payload_bytes": True}],
)  # fmt: skip
async def test_connection_options_are_checked_before_anything_opens(dsn: str, options: dict[str, object]) -> None:
    (name,) = options
    for opener in (open_bus, open_event_store):
        with pytest.raises(InvalidOption, match=name):
            async with opener(dsn, **options):  # type: ignore[arg-type]
                pass


async def test_replica_options_are_checked(dsn: str) -> None:
    with pytest.raises(InvalidOption, match="a list of connection strings"):
        async with open_bus(dsn, replica_dsns=dsn):  # type: ignore[arg-type]
            pass
    with pytest.raises(InvalidOption, match=r"replica_dsns\[1\]"):
        async with open_event_store(dsn, replica_dsns=[dsn, ""]):
            pass
    for wait in (-1, float("nan"), "1"):
        with pytest.raises(InvalidOption, match="replica_wait"):
            async with open_event_store(dsn, replica_wait=wait):  # type: ignore[arg-type]
                pass
    async with open_bus(dsn) as bus:
        for bad in (-1, 1.5, "3", True, 2**63):
            with pytest.raises(InvalidFilter, match="min_position"):
                await bus.store.query(EVERYTHING, min_position=bad)  # type: ignore[arg-type]
            with pytest.raises(ProjectionError, match="min_position"):
                async with bus.projections.reader("notes", min_position=bad):  # type: ignore[arg-type]
                    pass


# ------------------------------------------------------------------ subscriptions


async def test_a_subscription_catches_up_from_the_standby_and_from_the_primary_when_it_lags(
    replica_db: ReplicaDatabase,
) -> None:
    count = 3000
    async with open_bus(replica_db.primary_dsn) as writer:
        for start in range(0, count, 500):
            await writer.store.append([Event(NOTED, {"i": i}) for i in range(start, start + 500)])
        expected = [r.sequence_number for r in (await writer.store.query(EVERYTHING)).events]

    async def catch_up(bus: Bus) -> list[int]:
        got: list[int] = []
        with trio.move_on_after(SETTLE):
            async with bus.subscribe(EVERYTHING, after=0, max_batch=100) as sub:
                async for batch in sub:
                    got += [r.sequence_number for r in batch]
                    if len(got) >= count:
                        break
        return got

    options = {"replica_dsns": [replica_db.standby_dsn], "replica_wait": WAIT}
    async with open_bus(replica_db.primary_dsn, **options) as bus:  # type: ignore[arg-type]
        assert await catch_up(bus) == expected
        assert replica(bus.store).reads > 0 and replica(bus.store).fallbacks == 0
    async with replay_paused(replica_db), open_bus(replica_db.primary_dsn, **options) as bus:  # type: ignore[arg-type]
        async with open_bus(replica_db.primary_dsn) as writer:
            await writer.store.append([Event(NOTED, {"i": count})])
        count += 1
        expected.append(expected[-1] + 1)
        assert await catch_up(bus) == expected
        assert replica(bus.store).fallbacks >= 1


# ------------------------------------------------------------------ read models


async def create_notes(tx: Transaction) -> None:
    await tx.execute("CREATE TABLE IF NOT EXISTS notes (position bigint PRIMARY KEY)")


async def apply_note(tx: Transaction, record: object) -> None:
    await tx.execute("INSERT INTO notes (position) VALUES ($1)", record.sequence_number)  # type: ignore[attr-defined]


async def test_a_reader_with_min_position_sees_the_read_model_at_that_position(replica_db: ReplicaDatabase) -> None:
    rounds = 30
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn]) as bus:
        await bus.projections.start(Projection("notes", {NOTED: apply_note}, create_notes, batch_size=10))
        positions: list[int] = []
        for i in range(rounds):
            positions.append(await note(bus, 0, i))
            async with bus.projections.reader("notes", min_position=positions[-1]) as tx:
                rows = await tx.fetch("SELECT position FROM notes ORDER BY position")
            assert [row["position"] for row in rows] == positions
        stats = replica(bus.store)
        assert stats.reads + stats.fallbacks == rounds and stats.reads > 0
        # A position the projection never reaches: a clear error within the timeout.
        started = time.monotonic()
        with pytest.raises(NotCaughtUp, match=rf"projection 'notes' has not reached position {positions[-1] + 100}"):
            async with bus.projections.reader("notes", min_position=positions[-1] + 100, timeout=0.5):
                pass
        assert 0.5 <= time.monotonic() - started < 2.5


async def test_a_reader_with_min_position_goes_to_the_primary_when_the_standby_lags(
    replica_db: ReplicaDatabase,
) -> None:
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn], replica_wait=WAIT) as bus:
        await bus.projections.start(Projection("notes", {NOTED: apply_note}, create_notes))
        first = await note(bus, 0, 0)
        await bus.projections.wait_until_caught_up("notes", timeout=SETTLE)
        async with replay_paused(replica_db):
            position = await note(bus, 0, 1)
            async with bus.projections.reader("notes", min_position=position) as tx:
                rows = await tx.fetch("SELECT position FROM notes ORDER BY position")
            assert [row["position"] for row in rows] == [first, position]
            assert replica(bus.store).fallbacks == 1


@asynccontextmanager
async def hung(server: EmbeddedServer) -> AsyncIterator[None]:
    """Every process of the server is stopped (SIGSTOP) for the block: it
    accepts connections and answers nothing."""
    postmaster = psutil.Process(server.pid())
    processes = [postmaster, *postmaster.children(recursive=True)]
    for process in processes:
        process.suspend()
    try:
        yield
    finally:
        for process in processes:
            process.resume()


async def test_reads_under_way_on_a_standby_that_hangs_go_to_the_primary(replica_db: ReplicaDatabase) -> None:
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn], read_pool_size=2) as bus:
        position = await note(bus, 0, 0)
        await bus.store.query(EVERYTHING, min_position=position)  # every pooled connection has served
        results: list[list[int]] = []

        async def read() -> None:
            result = await bus.store.query(EVERYTHING)
            results.append([r.sequence_number for r in result.events])

        async with hung(replica_db.servers.standby):
            started = time.monotonic()
            with trio.move_on_after(SETTLE):
                async with trio.open_nursery() as nursery:
                    for _ in range(6):  # more than the pool holds
                        nursery.start_soon(read)
            took = time.monotonic() - started
            stats = replica(bus.store)
        assert results == [[position]] * 6
        assert took < PROBE_TIMEOUT + HEALTH_INTERVAL + 1.0
        assert stats.state is ReplicaState.DOWN and stats.fallbacks == 6
        assert stats.last_error == f"health check failed: no answer within {PROBE_TIMEOUT:g} s"
        await until(lambda: replica(bus.store).state is ReplicaState.UP, "up again")
        await bus.store.query(EVERYTHING)
        assert replica(bus.store).reads == stats.reads + 1


async def test_reads_cancelled_while_they_wait_for_a_standby_leave_it_serving(replica_db: ReplicaDatabase) -> None:
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn], replica_wait=SETTLE) as bus:
        before = await note(bus, 0, 0)
        await bus.store.query(EVERYTHING, min_position=before)
        async with replay_paused(replica_db):
            position = await note(bus, 0, 1)
            cancelled = 0

            async def read(delay: float) -> None:
                nonlocal cancelled
                with trio.move_on_after(delay) as scope:
                    await bus.store.query(EVERYTHING, min_position=position)
                cancelled += scope.cancelled_caught

            started = time.monotonic()
            async with trio.open_nursery() as nursery:
                for k in range(8):
                    nursery.start_soon(read, 0.01 * k)
            assert cancelled == 8
            assert time.monotonic() - started < 1.0
            stats = replica(bus.store)
            assert (stats.state, stats.fallbacks) == (ReplicaState.UP, 0)  # the callers gave up, not the standby
        result = await bus.store.query(EVERYTHING, min_position=position)
        assert [r.sequence_number for r in result.events] == [before, position]
        assert replica(bus.store).reads == stats.reads + 1


async def test_a_standby_far_behind_serves_no_reads_until_it_catches_up(
    replica_db: ReplicaDatabase, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("eventbus._store._replicas.MAX_LAG_BYTES", 1024 * 1024)
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn]) as bus:
        await note(bus, 0, 0)
        async with replay_paused(replica_db):
            for i in range(8):  # 3 MB of WAL or more: incompressible payloads
                await bus.store.append([Event(NOTED, {"blob": os.urandom(200_000).hex(), "i": i})])
            await until(lambda: replica(bus.store).state is ReplicaState.BEHIND, "behind")
            assert (replica(bus.store).lag_bytes or 0) > 1024 * 1024
            served = replica(bus.store).reads
            result = await bus.store.query(EVERYTHING)  # no min_position: the primary all the same
            assert len(result.events) == 9
            assert replica(bus.store).reads == served
        await until(lambda: replica(bus.store).state is ReplicaState.UP, "up again")
        result = await bus.store.query(EVERYTHING)
        assert len(result.events) == 9 and replica(bus.store).reads == served + 1


async def test_with_no_time_to_wait_a_standby_that_shows_the_position_still_serves_it(
    replica_db: ReplicaDatabase,
) -> None:
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn], replica_wait=0) as bus:
        await bus.projections.start(Projection("notes", {NOTED: apply_note}, create_notes))
        position = await note(bus, 0, 0)
        await bus.projections.wait_until_caught_up("notes", timeout=SETTLE)
        await standby_checkpoint_at(replica_db, "notes", position)
        result = await bus.store.query(EVERYTHING, min_position=position)
        assert [r.sequence_number for r in result.events] == [position]
        async with bus.projections.reader("notes", min_position=position, timeout=0) as tx:
            rows = await tx.fetch("SELECT position FROM notes")
        assert [row["position"] for row in rows] == [position]
        stats = replica(bus.store)
        assert (stats.state, stats.reads, stats.fallbacks) == (ReplicaState.UP, 2, 0)
    async with open_bus(replica_db.primary_dsn) as bus:  # the primary alone, no time either
        async with bus.projections.reader("notes", min_position=position, timeout=0) as tx:
            rows = await tx.fetch("SELECT position FROM notes")
        assert [row["position"] for row in rows] == [position]


async def test_a_reader_block_on_a_standby_that_hangs_fails_with_store_unavailable(replica_db: ReplicaDatabase) -> None:
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn]) as bus:
        await bus.projections.start(Projection("notes", {NOTED: apply_note}, create_notes))
        position = await note(bus, 0, 0)
        await bus.projections.wait_until_caught_up("notes", timeout=SETTLE)
        await standby_checkpoint_at(replica_db, "notes", position)
        with pytest.raises(StoreUnavailable):
            async with bus.projections.reader("notes", min_position=position) as tx:
                assert replica(bus.store).reads == 1  # the block runs on the standby
                async with hung(replica_db.servers.standby):
                    await tx.fetch("SELECT position FROM notes")  # cut off with the standby
        await until(lambda: replica(bus.store).state is ReplicaState.UP, "up again")
        async with bus.projections.reader("notes", min_position=position) as tx:
            rows = await tx.fetch("SELECT position FROM notes")
        assert [row["position"] for row in rows] == [position]


async def test_events_of_other_processes_reach_a_subscription_live_while_the_standby_lags(
    replica_db: ReplicaDatabase,
) -> None:
    async with (
        replay_paused(replica_db),
        open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn], poll_interval=0.2) as bus,
        bus.subscribe(EVERYTHING) as sub,
        open_bus(replica_db.primary_dsn) as other,
    ):
        position = await note(other, 1, 0)
        with trio.fail_after(SETTLE):
            batch = await sub.__anext__()
        assert [r.sequence_number for r in batch] == [position]  # read from the primary, not the paused standby
