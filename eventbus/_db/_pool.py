"""The read pool: connections lent to Trio tasks one statement (or one
transaction) at a time, kept on the Trio side.

asyncpg's own pool runs every borrowed statement as an asyncio task (its
``acquire`` and ``release`` need one), so each read crossed into asyncio and
back: on this project's 2-core machine a ``SELECT 1`` through it took 820 us
of processor time against 150 us for the same statement driven on a
connection (:mod:`._loop`'s ``drive``). Here a free connection is taken
from a list, its statement is driven in the calling task, and it goes back
to the list: no asyncio task, no crossing, for a read that finds a free
connection.
"""

from __future__ import annotations

import time
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from .._errors import ClosedError
from ._connections import CLOSE_TIMEOUT, Connection, Row, connect_on, rollback
from ._dsn import check_dsn
from ._loop import current_loop

IDLE_LIFETIME = 300.0
"""Seconds a connection may sit unused in the pool before it is closed (as
asyncpg's pool does by default), so a pool that was busy once does not hold
its peak number of server connections for ever."""

Connector = Callable[[], Awaitable[Connection]]


@attrs.define(eq=False)
class _Idle:
    conn: Connection
    generation: int
    since: float


class Pool:
    """Up to ``max_size`` connections for reads, used from Trio.

    Each :meth:`fetch` or :meth:`fetchval` borrows a connection for one
    statement; :meth:`acquire` lends one for a block. Calls run concurrently up
    to the pool's size; beyond that they wait (first come, first served) for
    a connection to come back. A connection is opened when a call finds none
    free and the pool is below its size. A connection comes back once a
    statement cancelled on it has ended on the server (or is dropped if it
    does not within ``CLOSE_TIMEOUT``), rolled back if a transaction was left
    open; a connection that was lost is dropped when it comes back, or when
    it is found lost in the pool.
    """

    def __init__(self, connector: Connector, max_size: int) -> None:
        self._connector = connector
        self.max_size = max_size
        self._slots = trio.Semaphore(max_size)
        self._idle: list[_Idle] = []  # the most recently used last
        self._lent: dict[Connection, int] = {}  # a lent connection and its generation
        self._returned = trio.Event()  # set when the last lent connection comes back
        self._generation = 0
        self._closed = False

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run a query on a pooled connection; return all its rows.

        Blocks for a free connection (or a new one's connect), then one round
        trip. Cancellation cancels the statement; the connection goes back
        to the pool, to be used once the server has ended the statement.
        """
        async with self.acquire() as conn:
            return await conn.fetch(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run a query on a pooled connection; return one value (as :meth:`fetch`)."""
        async with self.acquire() as conn:
            return await conn.fetchval(sql, *args)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """Borrow a connection for the block.

        Blocks while all ``max_size`` connections are lent, and for a
        connect when none is free. When the block ends, a statement cancelled
        in it is waited for until the server has ended it, and a transaction
        it left open is rolled back (each shielded, within ``CLOSE_TIMEOUT``;
        a connection that does not get there is dropped).

        Raises:
            ClosedError: the pool is closed.
            StoreUnavailable: a new connection could not be opened.
        """
        self._check_open()
        async with self._slots:
            self._check_open()
            conn, generation = self._take() or (await self._connector(), self._generation)
            if self._closed:  # closed during the connect
                conn.terminate()
                self._check_open()
            self._lent[conn] = generation
            try:
                yield conn
            finally:
                del self._lent[conn]
                await self._give_back(conn, generation)
                if not self._lent:
                    self._returned.set()
                    self._returned = trio.Event()

    def _take(self) -> tuple[Connection, int] | None:
        """The most recently used free connection that is still open, if any."""
        while self._idle:
            idle = self._idle.pop()
            if not idle.conn.is_closed():
                return idle.conn, idle.generation
        return None

    async def _give_back(self, conn: Connection, generation: int) -> None:
        if self._closed or generation != self._generation or not await conn.settle():
            conn.terminate()
            return
        if conn.in_transaction():
            await rollback(conn)  # terminates a connection that cannot
            if conn.is_closed():
                return
        self.trim()
        self._idle.append(_Idle(conn, generation, time.monotonic()))

    def trim(self) -> None:
        """Close the free connections unused for ``IDLE_LIFETIME`` seconds; never blocks.

        Runs whenever a connection comes back; the store also calls it at
        intervals, for a pool that has fallen quiet.
        """
        now = time.monotonic()
        # The least recently used are first.
        while self._idle and now - self._idle[0].since > IDLE_LIFETIME:
            self._idle.pop(0).conn.terminate()

    async def fill(self, count: int) -> None:
        """Open connections until ``count`` are free (or the pool is full).

        Raises:
            StoreUnavailable: a connection could not be opened.
        """
        while len(self._idle) < count and len(self._idle) + len(self._lent) < self.max_size:
            conn = await self._connector()
            self._idle.append(_Idle(conn, self._generation, time.monotonic()))

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the read pool is closed")

    def statistics(self) -> tuple[int, int]:
        """How many connections are lent and how many wait free; never blocks."""
        return len(self._lent), len(self._idle)

    async def expire(self) -> None:
        """Make the pool replace every connection it holds before their next use
        (after the server was lost: they may be dead). Never waits for queries:
        free connections are dropped now, lent ones when they come back."""
        self._generation += 1
        idle, self._idle = self._idle, []
        for entry in idle:
            entry.conn.terminate()

    async def close(self) -> None:
        """Close every connection: free ones gracefully, lent ones when they
        come back. Shielded, and bounded by ``CLOSE_TIMEOUT``: what is still
        open then is terminated. Calls afterwards raise ``ClosedError``."""
        self._closed = True
        for _ in range(self._slots.statistics().tasks_waiting):
            self._slots.release()  # each waiter wakes to find the pool closed
        idle, self._idle = self._idle, []
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            async with trio.open_nursery() as nursery:
                for entry in idle:
                    nursery.start_soon(entry.conn.close)
            while self._lent:
                await self._returned.wait()
        for entry in idle:
            entry.conn.terminate()
        for conn in list(self._lent):
            conn.terminate()


async def create_pool(dsn: str, *, max_size: int, min_size: int = 1, application_name: str = "eventbus-read") -> Pool:
    """Open a pool of up to ``max_size`` connections (``min_size`` opened at once:
    with 0 nothing connects until the first use, and a server that is down
    fails that use, not this call). Its connections live on the calling
    task's asyncio loop, whichever task uses them later.

    Raises:
        InvalidDSN: ``dsn`` cannot be read (nothing of it is shown).
        StoreUnavailable: the server cannot be reached.
    """
    check_dsn(dsn)
    loop = current_loop()

    async def connector() -> Connection:
        return await connect_on(loop, dsn, application_name=application_name)

    pool = Pool(connector, max_size)
    try:
        await pool.fill(min_size)
    except BaseException:
        await pool.close()
        raise
    return pool
