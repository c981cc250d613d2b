"""The store when PostgreSQL fails: a crashed server, killed connections, appends in doubt.

Tests that stop the server use a server of their own (``embedded_server``).
Where a test waits for the server to reach a state (a backend waiting on a
lock, say), it polls ``pg_stat_activity`` with a deadline: that state is the
server's, and nothing in this process can await it.
"""

from __future__ import annotations

import functools
import re
import sys
import uuid
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from urllib.parse import urlsplit

import pytest
import trio

from eventbus import (
    DuplicateEventId,
    Event,
    EventRecord,
    EventStore,
    StoreUnavailable,
    create_filter,
    open_event_store,
    testing,
)
from eventbus.testing import EmbeddedServer, schema_sql

from ...helpers import ROOT

RECONNECT_TIMEOUT = 0.5
"""How long the stores here try to settle an append in doubt: short, so an
outage is seen as StoreUnavailable within the test."""

CLIENT_BACKOFF = 0.005
"""How long a writer waits after StoreUnavailable before its next append."""

BACKEND = "SELECT pid FROM pg_stat_activity WHERE application_name = 'eventbus-store' AND datname = $1"


def database_of(dsn: str) -> str:
    return urlsplit(dsn).path.lstrip("/")


def append_lock_key() -> int:
    """The advisory lock ``append_events`` takes (see _schema.sql)."""
    match = re.search(r"pg_advisory_xact_lock\((\d+)\)", schema_sql().split("FUNCTION eventbus.append_events", 1)[1])
    assert match is not None
    return int(match.group(1))


async def new_database(server: EmbeddedServer, name: str = "events") -> str:
    await testing.create_database(server.dsn(), name)
    return server.dsn(name)


async def everything(store: EventStore) -> list[EventRecord]:
    return (await store.query(create_filter([]))).events


async def wait_for_backend(admin: testing.Connection, database: str, wait_event: str, *, other_than: int = 0) -> int:
    """The pid of a store write connection waiting on ``wait_event``; polls the server."""
    sql = BACKEND + " AND wait_event = $2 AND pid <> $3"
    with trio.fail_after(10):
        for _ in range(2000):
            pid = await admin.fetchval(sql, database, wait_event, other_than)
            if pid is not None:
                return int(pid)
            await trio.sleep(0.005)
    raise AssertionError(f"no store connection waited on {wait_event}")


async def terminate_store_connections(admin: testing.Connection, database: str) -> int:
    """Kill every write connection of the stores on ``database``; how many there were."""
    sql = f"SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM ({BACKEND}) AS store"
    return int(await admin.fetchval(sql, database))


# ---------------------------------------------------------------- time passing


async def test_the_store_keeps_serving_after_its_connect_timeout_has_passed(dsn: str) -> None:
    # Each connection attempt leaves an asyncio timer behind (cancelled once
    # connected) that comes due after the connect timeout; the loop under the
    # store must go on serving Trio when it does. In a process of its own: a
    # loop that stopped serving Trio could not time itself out.
    with trio.fail_after(30):
        done = await trio.run_process(
            [sys.executable, "-m", "tests.integration._store_worker", "linger", dsn, "0.5"],
            capture_stdout=True,
            cwd=ROOT,
        )
    assert done.stdout.decode().split() == ["ok"]
    async with open_event_store(dsn) as store:
        assert [r.event_type for r in await everything(store)] == ["Tick"]


# ---------------------------------------------------------------- appending under load


class Load:
    """Tasks appending one event at a time, keeping every append's outcome."""

    MAX_APPENDS = 100_000  # per writer: a bound, never reached

    def __init__(self, store: EventStore) -> None:
        self.store = store
        self.acknowledged: list[EventRecord] = []
        self.refused: list[Event] = []  # StoreUnavailable, known not stored
        self.in_doubt: list[Event] = []  # StoreUnavailable, outcome unknown
        self.unavailable = trio.Event()
        self._progress = trio.Event()
        self._stopping = False

    def start(self, nursery: trio.Nursery, writers: int) -> None:
        for writer in range(writers):
            nursery.start_soon(self._write, writer)

    def stop(self) -> None:
        """Let every writer finish its current append, then end."""
        self._stopping = True

    async def _write(self, writer: int) -> None:
        for number in range(self.MAX_APPENDS):
            if self._stopping:
                return
            event = Event("Tick", {"writer": writer, "n": number}, event_id=uuid.uuid4())
            try:
                [record] = await self.store.append([event])
            except StoreUnavailable as exc:
                (self.refused if exc.outcome_known else self.in_doubt).append(event)
                self.unavailable.set()
                await trio.sleep(CLIENT_BACKOFF)
            else:
                self.acknowledged.append(record)
                self._progress.set()
                self._progress = trio.Event()

    async def wait_acknowledged(self, count: int) -> None:
        """Wait until ``count`` appends in all were acknowledged."""
        while len(self.acknowledged) < count:
            await self._progress.wait()

    async def wait_more_acknowledged(self, more: int) -> None:
        await self.wait_acknowledged(len(self.acknowledged) + more)

    async def check_stored(self) -> None:
        """Every acknowledged append is stored, as acknowledged; no refused one
        is; a retry of each append in doubt tells its outcome; nothing twice."""
        stored = {r.event_id: r for r in await everything(self.store)}
        for record in self.acknowledged:
            assert stored.get(record.event_id) == record
        assert not any(event.event_id in stored for event in self.refused)
        for event in self.in_doubt:
            [record] = await self.store.append([event])
            if event.event_id in stored:
                assert record == stored[event.event_id]
        final = await everything(self.store)
        expected = {r.event_id for r in self.acknowledged} | {e.event_id for e in self.in_doubt}
        assert len(final) == len(expected)
        assert {r.event_id for r in final} == expected


async def test_acknowledged_appends_survive_a_server_crash_and_the_same_store_recovers(
    embedded_server: EmbeddedServer,
) -> None:
    async with testing.open_loop():
        dsn = await new_database(embedded_server)
        async with open_event_store(dsn, reconnect_timeout=RECONNECT_TIMEOUT) as store:
            load = Load(store)
            async with trio.open_nursery() as nursery:
                load.start(nursery, writers=16)
                with trio.fail_after(10):
                    await load.wait_acknowledged(100)
                reconnects = store.statistics().reconnects
                await trio.to_thread.run_sync(functools.partial(embedded_server.stop, mode="immediate"))
                with trio.fail_after(10):
                    await load.unavailable.wait()
                # An outage longer than the store waits to settle the appends in flight.
                await trio.sleep(2 * RECONNECT_TIMEOUT)
                acknowledged_in_outage = len(load.acknowledged)
                await trio.to_thread.run_sync(embedded_server.start)
                with trio.fail_after(20):
                    await load.wait_more_acknowledged(100)
                load.stop()

            assert len(load.refused) + len(load.in_doubt) > 0
            assert len(load.acknowledged) >= acknowledged_in_outage + 100
            await load.check_stored()
            assert store.statistics().reconnects > reconnects
            assert store.statistics().connected


async def test_a_store_nobody_appends_to_reconnects_its_lost_write_connections_by_itself(
    dsn: str, admin_dsn: str
) -> None:
    database = database_of(dsn)
    async with testing.open_loop():
        admin = await testing.connect(admin_dsn)
        try:
            async with open_event_store(dsn) as store:
                for _ in range(2):
                    assert await terminate_store_connections(admin, database) >= 1
                    with trio.fail_after(10):
                        while store.statistics().connected:  # it learns of the loss...
                            await trio.sleep(0.02)
                        while not store.statistics().connected:  # ...and comes back, with no append to make
                            await trio.sleep(0.05)
                assert store.statistics().reconnects >= 2
                assert await store.append([Event("Noted", {"n": 1})])
        finally:
            await admin.close()


async def test_terminated_write_connections_are_replaced_and_every_append_succeeds(dsn: str, admin_dsn: str) -> None:
    database = database_of(dsn)
    async with testing.open_loop():
        admin = await testing.connect(admin_dsn)
        try:
            async with open_event_store(dsn, reconnect_timeout=RECONNECT_TIMEOUT) as store:
                load = Load(store)
                async with trio.open_nursery() as nursery:
                    load.start(nursery, writers=16)
                    with trio.fail_after(20):
                        for _ in range(10):
                            await load.wait_more_acknowledged(30)
                            assert await terminate_store_connections(admin, database) >= 1
                        await load.wait_more_acknowledged(50)
                    load.stop()

                # The server stayed up: every append learned its outcome.
                assert load.refused == []
                assert load.in_doubt == []
                await load.check_stored()
                assert store.statistics().reconnects >= 10
        finally:
            await admin.close()


# ---------------------------------------------------------------- one append in flight


@asynccontextmanager
async def append_lock_held(admin: testing.Connection) -> AsyncIterator[None]:
    """Hold the append lock: every batch waits in the database, uncommitted."""
    await admin.execute("SELECT pg_advisory_lock($1)", append_lock_key())
    try:
        yield
    finally:
        if not admin.is_closed():
            await admin.execute("SELECT pg_advisory_unlock($1)", append_lock_key())


async def wait_commits_forever(server: EmbeddedServer, dsn: str) -> None:
    """Restart the server with every commit waiting for a standby that does not exist.

    A transaction then commits (durably, and visibly once its connection
    dies) but its client never hears so: the append is in doubt after commit.
    """
    admin = await testing.connect(dsn)
    try:
        await admin.execute("ALTER SYSTEM SET synchronous_standby_names = 'nobody'")
    finally:
        await admin.close()
    await trio.to_thread.run_sync(server.restart)


async def test_an_append_whose_connection_dies_before_commit_is_run_again_once(dsn: str, admin_dsn: str) -> None:
    database = database_of(dsn)
    event = Event("Tick", {"n": 1}, event_id=uuid.uuid4())
    outcome: list[list[EventRecord]] = []
    async with testing.open_loop():
        admin = await testing.connect(admin_dsn)
        locker = await testing.connect(dsn)  # advisory locks are per database
        try:
            async with open_event_store(dsn, reconnect_timeout=RECONNECT_TIMEOUT) as store:
                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery, append_lock_held(locker):

                        async def append() -> None:
                            outcome.append(await store.append([event]))

                        nursery.start_soon(append)
                        first = await wait_for_backend(admin, database, "advisory")
                        assert await terminate_store_connections(admin, database) >= 1
                        # Not stored: the store runs it again, and it waits for the lock again.
                        await wait_for_backend(admin, database, "advisory", other_than=first)
                        # Longer than the store tries to settle: running it again is not settling.
                        await trio.sleep(4 * RECONNECT_TIMEOUT)
                [[record]] = outcome
                assert record.event_id == event.event_id
                assert await everything(store) == [record]
                assert await store.append([event]) == [record]
        finally:
            await locker.close()
            await admin.close()


@pytest.mark.parametrize("with_new_id", [False, True], ids=["every id stored", "the first id stored"])
async def test_an_append_reusing_a_stored_id_whose_connection_dies_is_refused_not_acknowledged(
    dsn: str, admin_dsn: str, with_new_id: bool
) -> None:
    database = database_of(dsn)
    stored_id = uuid.uuid4()
    reuse = [Event("Tick", {"n": 2}, event_id=stored_id)] + ([Event("Tick", {"n": 3})] if with_new_id else [])
    async with testing.open_loop():
        admin = await testing.connect(admin_dsn)
        locker = await testing.connect(dsn)
        try:
            async with open_event_store(dsn, reconnect_timeout=RECONNECT_TIMEOUT) as store:
                [first] = await store.append([Event("Tick", {"n": 1}, event_id=stored_id)])
                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery, append_lock_held(locker):

                        async def append() -> None:
                            with pytest.raises(DuplicateEventId):
                                await store.append(reuse)

                        nursery.start_soon(append)
                        await wait_for_backend(admin, database, "advisory")
                        assert await terminate_store_connections(admin, database) >= 1
                assert await everything(store) == [first]
                assert (await store.append([Event("Tick", {"n": 4})]))[0].sequence_number == 2  # still serving
        finally:
            await locker.close()
            await admin.close()


async def test_an_append_whose_connection_dies_after_commit_returns_the_stored_records(
    embedded_server: EmbeddedServer,
) -> None:
    event = Event("Tick", {"n": 1}, event_id=uuid.uuid4())
    outcome: list[list[EventRecord]] = []
    async with testing.open_loop():
        dsn = await new_database(embedded_server)
        async with open_event_store(dsn):
            pass  # the schema, installed while commits still return
        await wait_commits_forever(embedded_server, dsn)
        admin = await testing.connect(dsn)
        try:
            async with open_event_store(dsn, reconnect_timeout=RECONNECT_TIMEOUT) as store:
                with trio.fail_after(10):
                    async with trio.open_nursery() as nursery:

                        async def append() -> None:
                            outcome.append(await store.append([event]))

                        nursery.start_soon(append)
                        await wait_for_backend(admin, "events", "SyncRep")
                        assert await terminate_store_connections(admin, "events") >= 1
                [[record]] = outcome
                assert record.event_id == event.event_id
                assert await everything(store) == [record]
                assert await store.append([event]) == [record]
        finally:
            await admin.close()


@pytest.mark.parametrize("committed", [False, True], ids=["not committed", "committed"])
async def test_an_append_in_flight_when_the_server_stays_down_is_in_doubt_until_retried(
    embedded_server: EmbeddedServer, committed: bool
) -> None:
    event = Event("Tick", {"n": 1}, event_id=uuid.uuid4())
    caught: list[StoreUnavailable] = []
    async with testing.open_loop():
        dsn = await new_database(embedded_server)
        async with open_event_store(dsn):
            pass  # the schema
        if committed:
            await wait_commits_forever(embedded_server, dsn)
        admin = await testing.connect(dsn)  # advisory locks are per database
        try:
            async with open_event_store(dsn, reconnect_timeout=RECONNECT_TIMEOUT) as store:
                with trio.fail_after(20):
                    if not committed:
                        await admin.execute("SELECT pg_advisory_lock($1)", append_lock_key())
                    async with trio.open_nursery() as nursery:

                        async def append() -> None:
                            with pytest.raises(StoreUnavailable) as info:
                                await store.append([event])
                            caught.append(info.value)

                        nursery.start_soon(append)
                        await wait_for_backend(admin, "events", "SyncRep" if committed else "advisory")
                        if committed:  # for the next start
                            await admin.execute("ALTER SYSTEM RESET synchronous_standby_names")
                        await trio.to_thread.run_sync(functools.partial(embedded_server.stop, mode="immediate"))
                    [error] = caught
                    assert error.outcome_known is False

                    await trio.to_thread.run_sync(embedded_server.start)
                    # The truth the caller could not learn: stored iff committed.
                    stored = await everything(store)
                    assert [r.event_id for r in stored] == ([event.event_id] if committed else [])
                    for _ in range(100):  # the store's reconnection may still be backing off
                        try:
                            [record] = await store.append([event])
                            break
                        except StoreUnavailable:
                            await trio.sleep(0.05)
                    else:
                        raise AssertionError("the store did not come back")
                if committed:
                    assert [record] == stored
                assert await everything(store) == [record]
                assert await store.append([event]) == [record]
        finally:
            await admin.close()
