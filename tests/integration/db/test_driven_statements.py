"""A connection's statements run their driver's coroutine in the calling Trio
task (``_db._loop.drive``): what asyncio's task would do must still happen.
A statement cancelled mid-way is cancelled on the server and raises
``trio.Cancelled``; the connection serves the next statement (which first
waits for the cancellation to be acknowledged, through an asyncio task);
errors arrive translated; many connections used at once keep their answers apart."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

import pytest
import trio
import trio_asyncio

from eventbus import ClosedError, DatabaseError, _db, open_bus

from ...helpers import counting_scheduler


@asynccontextmanager
async def connection(dsn: str) -> AsyncIterator[_db.Connection]:
    """A connection of its own for the block, closed after (a bus open around it keeps the loop)."""
    conn = await _db.connect(dsn)
    try:
        yield conn
    finally:
        await conn.close()


async def test_a_statement_cancelled_midway_stops_on_the_server_and_the_connection_serves_the_next(dsn: str) -> None:
    async with open_bus(dsn) as bus, connection(dsn) as conn:
        for _ in range(3):
            started = trio.current_time()
            with trio.move_on_after(0.2) as scope:
                await conn.fetchval("SELECT pg_sleep(30)")
            assert scope.cancelled_caught and trio.current_time() - started < 10
            assert await conn.fetchval("SELECT 41 + 1") == 42  # waits for the cancellation's acknowledgement
        with trio.fail_after(10):
            while await bus.store.pool.fetchval(
                "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
            ):
                await trio.sleep(0.05)  # the server's own view: nothing sleeps on


async def test_a_cancellation_racing_the_answer_leaves_the_connection_in_step(dsn: str) -> None:
    async with open_bus(dsn), connection(dsn) as conn:
        for delay in [i * 0.0001 for i in range(40)]:  # cancelled before, during and after the round trip
            with trio.move_on_after(delay):
                await conn.fetchval("SELECT 1")
            assert await conn.fetchval("SELECT $1::int", 7) == 7  # never a stale answer


async def test_an_error_arrives_translated_and_the_connection_goes_on(dsn: str) -> None:
    async with open_bus(dsn), connection(dsn) as conn:
        with pytest.raises(DatabaseError) as raised:
            await conn.fetchval("SELECT 1 / 0")
        assert raised.value.sqlstate == "22012"
        await conn.run_script("BEGIN; SELECT 1; COMMIT")
        assert await conn.fetchrow("SELECT 1 AS a, 2 AS b") == (1, 2)


async def test_many_tasks_on_many_connections_each_get_their_own_answers(dsn: str) -> None:
    async with open_bus(dsn):
        conns = [await _db.connect(dsn) for _ in range(8)]
        try:
            wrong: list[tuple[int, int]] = []

            async def ask(conn: _db.Connection, task: int) -> None:
                for n in range(50):
                    value = await conn.fetchval("SELECT $1::int * 1000 + $2::int", task, n)
                    if value != task * 1000 + n:
                        wrong.append((task, n))

            async with trio.open_nursery() as nursery:
                for task, conn in enumerate(conns):
                    nursery.start_soon(ask, conn, task)
            assert wrong == []
        finally:
            for conn in conns:
                await conn.close()


async def test_a_task_started_outside_the_bus_block_runs_and_cancels_statements(dsn: str) -> None:
    answers: list[int] = []
    done = trio.Event()
    # The outer nursery's tasks inherit no asyncio loop of their own.
    async with trio.open_nursery() as outside, open_bus(dsn), connection(dsn) as conn:

        async def ask() -> None:
            answers.append(await conn.fetchval("SELECT 6 * 7"))
            with trio.move_on_after(0.1):
                await conn.fetchval("SELECT pg_sleep(30)")
            answers.append(await conn.fetchval("SELECT 1"))
            done.set()

        outside.start_soon(ask)
        with trio.fail_after(10):
            await done.wait()
    assert answers == [42, 1]


async def test_a_reply_wakes_the_statement_without_a_round_of_the_loops_task(dsn: str) -> None:
    """The server's reply is read by the socket's task, which wakes the waiting
    statement itself: the asyncio loop's own task has nothing to run, and the
    reader does not wait for it (before, every reply took a step of each)."""
    async with open_bus(dsn), connection(dsn) as conn:
        await conn.fetchval("SELECT 1")
        with counting_scheduler() as count:
            for n in range(50):
                assert await conn.fetchval("SELECT $1::int", n) == n
    # Before, each reply took a step of the loop's task (56 for 50). The bus's
    # own timers and its listener may still take a few while this runs on a
    # slow machine (5 were seen in CI), never one per reply.
    assert count.steps_of("_main_loop") <= 12, count.steps
    # Two steps of the reader per reply before; the bus's other connections
    # (its listener's) may add a few.
    assert 50 <= count.steps_of("_serve_fd") <= 75, count.steps


async def test_a_statement_of_an_outer_task_ends_with_closed_error_when_the_bus_closes(dsn: str) -> None:
    """A task of an outer nursery waiting on a statement when the bus's block
    ends gets ClosedError at once (it waited for ever, and cancelling it
    raised 'Event loop is closed' in the task that cancelled)."""
    ended: list[BaseException] = []
    async with trio.open_nursery() as outer:
        async with open_bus(dsn) as bus:
            conn = await _db.connect(dsn)

            async def ask() -> None:
                try:
                    await conn.fetchval("SELECT pg_sleep(30)")
                except ClosedError as exc:
                    ended.append(exc)

            outer.start_soon(ask)
            with trio.fail_after(10):
                while not await bus.store.pool.fetchval(
                    "SELECT count(*) FROM pg_stat_activity WHERE query = 'SELECT pg_sleep(30)' AND state = 'active'"
                ):
                    await trio.sleep(0.02)  # the server's own view: the statement runs
        with trio.fail_after(5):
            while not ended:
                await trio.sleep(0.01)
    assert isinstance(ended[0], ClosedError)
    with pytest.raises(ClosedError):  # and a statement after that fails at once too
        await conn.fetchval("SELECT 1")


async def test_a_cancellation_is_never_lost_on_a_loop_the_program_opened(dsn: str) -> None:
    """On a trio-asyncio loop of the program's own (used as it is), a
    cancellation that came just after a reply had completed the statement's
    first step was lost, and the statement ran to its end (2 s)."""
    slow = []
    async with trio_asyncio.open_loop(), open_bus(dsn):
        conn = await _db.connect(dsn)
        try:
            for n in range(200):
                delay = random.Random(n).uniform(0, 0.0015)
                started = trio.current_time()
                with trio.move_on_after(delay):
                    await conn.fetchval(f"SELECT pg_sleep(2), {n}::int /* a statement of its own: prepared afresh */")
                if trio.current_time() - started > 1.8:  # a lost one waits out pg_sleep(2)
                    slow.append((n, delay))
                with trio.fail_after(10):
                    assert await conn.fetchval("SELECT $1::int", n) == n
        finally:
            await conn.close()
    assert not slow
