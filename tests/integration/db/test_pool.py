"""The read pool lends connections on the Trio side: never more than its size,
the same connection again when one is free, a cancelled or unfinished
borrower's connection cleaned before the next one gets it, lost and expired
connections replaced, and nothing left open on the server once it is closed."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio

from eventbus import ClosedError, StoreUnavailable, _db
from eventbus._db import _pool

from ...helpers import counting_scheduler


@asynccontextmanager
async def pool_of(dsn: str, size: int, name: str, min_size: int = 1) -> AsyncIterator[_db.Pool]:
    async with _db.open_loop():
        pool = await _db.create_pool(dsn, max_size=size, min_size=min_size, application_name=name)
        try:
            yield pool
        finally:
            await pool.close()


async def server_side(dsn: str, name: str) -> list[tuple[int, str, str]]:
    """The server's connections of application ``name``: pid, state and query."""
    conn = await _db.connect(dsn, application_name="test-observer")
    try:
        rows = await conn.fetch(
            "SELECT pid, state, query FROM pg_stat_activity WHERE application_name = $1 ORDER BY pid", name
        )
    finally:
        await conn.close()
    return [(row["pid"], row["state"], row["query"]) for row in rows]


async def test_many_tasks_share_at_most_size_connections_and_a_free_one_is_used_again(dsn: str) -> None:
    async with pool_of(dsn, 3, "pool-size") as pool:
        pids: list[int] = []

        async def read(k: int) -> None:
            row = (await pool.fetch("SELECT pg_backend_pid() AS pid, $1::int AS k, pg_sleep(0.005)", k))[0]
            assert row["k"] == k
            pids.append(row["pid"])

        async with trio.open_nursery() as nursery:
            for k in range(60):
                nursery.start_soon(read, k)
        assert len(pids) == 60
        assert 1 <= len(set(pids)) <= 3
        assert pool.statistics()[0] == 0
        assert len(await server_side(dsn, "pool-size")) == len(set(pids))
        one_at_a_time = {await pool.fetchval("SELECT pg_backend_pid()") for _ in range(20)}
        assert len(one_at_a_time) == 1


async def test_a_cancelled_read_stops_on_the_server_and_its_connection_serves_the_next(dsn: str) -> None:
    async with pool_of(dsn, 2, "pool-cancel") as pool:
        for _ in range(10):
            with trio.move_on_after(0.05) as scope:
                await pool.fetchval("SELECT pg_sleep(30)")
            assert scope.cancelled_caught
            with trio.fail_after(10):
                assert await pool.fetchval("SELECT 41 + 1") == 42
        assert pool.statistics() == (0, 1)
        ((_, state, query),) = await server_side(dsn, "pool-cancel")
        assert state == "idle" and "pg_sleep" not in query


async def test_a_storm_of_cancelled_reads_loses_no_slot_and_no_answer(dsn: str) -> None:
    rng = random.Random(7)
    answered = 0
    async with pool_of(dsn, 4, "pool-storm") as pool:

        async def read(k: int) -> None:
            nonlocal answered
            with trio.move_on_after(rng.choice([0, 0.0005, 0.002, 0.01, 1])):
                assert await pool.fetchval("SELECT $1::int FROM pg_sleep(0.002)", k) == k
                answered += 1

        with trio.fail_after(60):
            async with trio.open_nursery() as nursery:
                for k in range(300):
                    nursery.start_soon(read, k)
            lent, free = pool.statistics()
            assert lent == 0 and 1 <= free <= 4
            async with trio.open_nursery() as nursery:  # all four slots still serve
                for k in range(8):
                    nursery.start_soon(read, k)
        assert answered >= 8
        assert len(await server_side(dsn, "pool-storm")) <= 4


async def test_a_transaction_left_open_is_rolled_back_before_the_next_borrower(dsn: str) -> None:
    async with pool_of(dsn, 1, "pool-tx") as pool:
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("SET LOCAL statement_timeout = '1234ms'")
            assert conn.in_transaction()
        async with pool.acquire() as again:
            assert again is conn
            assert not again.in_transaction()
            assert await again.fetchval("SHOW statement_timeout") != "1234ms"


async def test_expired_connections_are_replaced_the_lent_one_when_it_comes_back(dsn: str) -> None:
    async with pool_of(dsn, 2, "pool-expire") as pool:
        before = await pool.fetchval("SELECT pg_backend_pid()")
        async with pool.acquire() as lent:
            await pool.expire()
            assert await lent.fetchval("SELECT pg_backend_pid()") == before  # a lent one serves on
        assert pool.statistics() == (0, 0)
        after = await pool.fetchval("SELECT pg_backend_pid()")
        assert after != before
        assert [pid for pid, _, _ in await server_side(dsn, "pool-expire")] == [after]


async def test_a_connection_lost_while_free_is_replaced(dsn: str) -> None:
    async with pool_of(dsn, 1, "pool-lost") as pool:
        lost = await pool.fetchval("SELECT pg_backend_pid()")
        killer = await _db.connect(dsn, application_name="test-killer")
        try:
            assert await killer.fetchval("SELECT pg_terminate_backend($1)", lost)
        finally:
            await killer.close()
        failures = 0
        with trio.fail_after(10):
            while True:  # the first read may find the connection dead before its end was read
                try:
                    pid = await pool.fetchval("SELECT pg_backend_pid()")
                    break
                except StoreUnavailable:
                    failures += 1
        assert pid != lost and failures <= 1


async def test_a_free_connection_unused_for_its_lifetime_is_closed(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(_pool, "IDLE_LIFETIME", 0.0)
    async with pool_of(dsn, 2, "pool-idle") as pool:
        first_back = trio.Event()
        async with trio.open_nursery() as nursery:

            async def borrow_and_wait(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
                async with pool.acquire():
                    task_status.started()
                    await first_back.wait()

            await nursery.start(borrow_and_wait)
            async with pool.acquire() as first:
                await first.fetchval("SELECT 1")
                assert pool.statistics() == (2, 0)
            first_back.set()  # the other comes back after it: the first is then older than 0 s
        assert pool.statistics() == (0, 1)
        assert len(await server_side(dsn, "pool-idle")) == 1


async def test_close_waits_for_a_lent_connection_then_nothing_is_left_and_calls_raise_closed(dsn: str) -> None:
    async with _db.open_loop():
        pool = await _db.create_pool(dsn, max_size=3, application_name="pool-close")
        await pool.fetchval("SELECT 1")
        release = trio.Event()
        holding = trio.Event()

        async def hold() -> None:
            async with pool.acquire() as conn:
                holding.set()
                await release.wait()
                assert await conn.fetchval("SELECT 2") == 2

        async with trio.open_nursery() as nursery:
            nursery.start_soon(hold)
            await holding.wait()
            closed = trio.Event()

            async def close() -> None:
                await pool.close()
                closed.set()

            nursery.start_soon(close)
            await trio.testing.wait_all_tasks_blocked()
            assert not closed.is_set()
            release.set()
        assert await server_side(dsn, "pool-close") == []
        with pytest.raises(ClosedError):
            await pool.fetchval("SELECT 1")
        with pytest.raises(ClosedError):
            async with pool.acquire():
                pass


async def test_a_pool_that_connects_lazily_opens_on_a_server_that_is_down_and_its_use_fails() -> None:
    async with _db.open_loop():
        with trio.socket.socket() as probe:
            await probe.bind(("127.0.0.1", 0))
            port = probe.getsockname()[1]
        pool = await _db.create_pool(f"postgresql://nobody@127.0.0.1:{port}/none", max_size=2, min_size=0)
        try:
            with pytest.raises(StoreUnavailable):
                await pool.fetchval("SELECT 1")
            assert pool.statistics() == (0, 0)
        finally:
            await pool.close()
        with pytest.raises(StoreUnavailable):
            await _db.create_pool(f"postgresql://nobody@127.0.0.1:{port}/none", max_size=2)


async def test_a_pooled_read_runs_in_the_calling_task_without_a_step_of_the_asyncio_loop(dsn: str) -> None:
    """A read that finds a free connection drives its statement in the caller:
    asyncpg's own pool needed an asyncio task for each (a step of the loop's
    task or more per read, and 820 us of processor time against 150 us)."""
    async with pool_of(dsn, 2, "pool-steps") as pool:
        await pool.fetchval("SELECT 1")
        with counting_scheduler() as count:
            for n in range(50):
                assert await pool.fetchval("SELECT $1::int", n) == n
    # asyncpg's pool took 302 steps of the loop's task for these 50 reads; the
    # bus's timers may take a few on a slow machine.
    assert count.steps_of("_main_loop") <= 12, count.steps


async def test_a_block_cancelled_as_its_transaction_begins_gives_the_next_borrower_a_clean_connection(dsn: str) -> None:
    """The cancelled statement's end comes from the server after the block has
    ended: the pool waits for it before it looks for a transaction to roll
    back, so the next borrower's write is not made inside it (and lost)."""
    rng = random.Random(11)
    async with pool_of(dsn, 1, "pool-begin") as pool:
        await pool.fetchval("CREATE TABLE pool_writes (v int)")
        for attempt in range(400):
            with trio.move_on_after(rng.choice([0.00001, 0.00002, 0.00005, 0.0001, 0.0003])):
                async with pool.acquire() as conn:
                    await conn.execute("BEGIN")
                    await conn.execute("SET LOCAL search_path = pg_catalog")
            async with pool.acquire() as conn:
                assert not conn.in_transaction()
                assert await conn.fetchval("INSERT INTO public.pool_writes VALUES ($1) RETURNING v", attempt) == attempt
        observer = await _db.connect(dsn, application_name="test-observer")
        try:
            assert await observer.fetchval("SELECT count(DISTINCT v) FROM pool_writes") == 400
        finally:
            await observer.close()


async def test_a_connection_terminated_under_a_statement_fails_it_with_store_unavailable(dsn: str) -> None:
    """asyncpg forgets its protocol when a connection is terminated: a statement
    under way (or starting) then fails inside the driver's own code."""
    rng = random.Random(5)
    outcomes: dict[str, int] = {}
    async with pool_of(dsn, 1, "pool-cut") as pool:
        for k in range(600):
            async with pool.acquire() as conn, trio.open_nursery() as nursery:

                async def read(conn: _db.Connection = conn, k: int = k) -> None:
                    try:
                        await conn.fetch(f"SELECT {k}::int AS v, $1::text AS w", "x")  # a new statement each time
                        outcomes["ok"] = outcomes.get("ok", 0) + 1
                    except StoreUnavailable:
                        outcomes["unavailable"] = outcomes.get("unavailable", 0) + 1

                async def cut(conn: _db.Connection = conn) -> None:
                    for _ in range(rng.randrange(6)):
                        await trio.lowlevel.checkpoint()
                    conn.terminate()

                nursery.start_soon(read)
                nursery.start_soon(cut)
        assert sum(outcomes.values()) == 600, outcomes
        assert await pool.fetchval("SELECT 1") == 1


async def test_a_cancelled_statement_that_the_server_does_not_end_costs_the_next_reader_nothing(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend stopped under a cancelled read never acknowledges the cancel:
    its connection is dropped when the wait for it runs out, not lent again
    to hang the next reader."""
    import os
    import signal

    monkeypatch.setattr(_db._connections, "CLOSE_TIMEOUT", 0.5)
    async with pool_of(dsn, 2, "pool-stuck") as pool:
        stuck = await pool.fetchval("SELECT pg_backend_pid()")
        os.kill(stuck, signal.SIGSTOP)
        try:
            with trio.move_on_after(0.3):
                await pool.fetchval("SELECT 1")
            for _ in range(3):
                with trio.fail_after(5):
                    assert await pool.fetchval("SELECT pg_backend_pid()") != stuck
        finally:
            os.kill(stuck, signal.SIGCONT)


async def test_closing_wakes_every_task_waiting_for_a_connection_with_closed_error(dsn: str) -> None:
    async with _db.open_loop():
        pool = await _db.create_pool(dsn, max_size=2, application_name="pool-waiters")
        release = trio.Event()
        errors: list[BaseException] = []
        all_refused = trio.Event()

        async def hold(task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
            async with pool.acquire():
                task_status.started()
                await release.wait()

        async def wait_for_one() -> None:
            try:
                await pool.fetchval("SELECT 1")
            except ClosedError as exc:
                errors.append(exc)
                if len(errors) == 20:
                    all_refused.set()

        async with trio.open_nursery() as nursery:
            await nursery.start(hold)
            await nursery.start(hold)
            for _ in range(20):
                nursery.start_soon(wait_for_one)
            await trio.testing.wait_all_tasks_blocked()
            with trio.fail_after(1):  # the holders are still in their blocks: close waits for them up to CLOSE_TIMEOUT
                async with trio.open_nursery() as closing:
                    closing.start_soon(pool.close)
                    with trio.fail_after(0.5):
                        await all_refused.wait()
                    release.set()
        assert len(errors) == 20


async def test_a_store_closes_the_read_connections_that_stay_unused(dsn: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from eventbus import open_event_store
    from eventbus._store import _reads

    monkeypatch.setattr(_pool, "IDLE_LIFETIME", 0.2)
    monkeypatch.setattr(_reads, "TRIM_INTERVAL", 0.1)
    async with open_event_store(dsn, read_pool_size=4) as store:
        async with trio.open_nursery() as nursery:
            for _ in range(4):
                nursery.start_soon(store.pool.fetchval, "SELECT pg_sleep(0.05)")
        assert store.pool.statistics() == (0, 4)
        with trio.fail_after(5):
            while store.pool.statistics() != (0, 0):
                await trio.sleep(0.05)
        assert await store.head() == 0
