"""Where reads go: hot standbys first, the primary when none can serve them.

Without standbys every read goes to the primary's read pool, as it always
did. With them, a read goes to a standby that is ``up`` (round-robin,
preferring one that already showed the position the read asks for), and to
the primary when the standby fails, goes down under it, or does not show the
read's ``min_position`` within ``wait`` seconds. The primary holds every
committed event, so a read that ends there includes ``min_position`` too:
no read returns a result that misses it.
"""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Awaitable, Callable, Sequence
from contextlib import AsyncExitStack, asynccontextmanager
from typing import Any

import trio

from .. import _db
from .._errors import NotCaughtUp
from ._replicas import HEALTH_INTERVAL, Replica, poll
from ._standby_checks import PrimaryMark, ReplicaState, ReplicaStatistics

TRIM_INTERVAL = 30.0
"""Seconds between two looks for pooled connections unused for their lifetime."""

Check = Callable[[_db.Connection], Awaitable[bool]]
Prepare = Callable[[_db.Connection], Awaitable[None]]


class Reads:
    """The primary's read pool and the standbys, for the store's readers."""

    def __init__(self, primary: _db.Pool, replica_dsns: Sequence[str], pool_size: int, wait: float) -> None:
        self.primary = primary
        self.wait = wait
        self._mark = PrimaryMark()
        self.replicas = [Replica(dsn, pool_size, self._mark) for dsn in replica_dsns]
        self._turn = itertools.count()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Watch the standbys, and close the primary pool's connections that
        stay unused (``_db.Pool.trim``), until cancelled; started once each
        standby was checked once (concurrently; one that does not answer
        counts as down)."""
        if not self.replicas:
            task_status.started()
            while True:
                await trio.sleep(TRIM_INTERVAL)
                self.primary.trim()
        async with trio.open_nursery() as nursery:
            await self._mark.check(self.primary)
            async with trio.open_nursery() as starting:
                for replica in self.replicas:
                    starting.start_soon(nursery.start, replica.run)
            task_status.started()
            while True:
                await trio.sleep(HEALTH_INTERVAL)
                await self._mark.check(self.primary)
                self.primary.trim()

    def pick(self, min_position: int | None = None) -> Replica | None:
        """A standby that serves reads now, or None; never blocks."""
        up = [replica for replica in self.replicas if replica.state is ReplicaState.UP]
        if min_position:
            up = [replica for replica in up if replica.head >= min_position] or up
        if not up:
            return None
        return up[next(self._turn) % len(up)]

    async def fetch(
        self, sql: str, args: Sequence[Any], *, min_position: int | None = None, from_primary: bool = False
    ) -> list[Any]:
        """The rows of ``sql``: from a standby whose snapshot shows
        ``min_position`` (if given), else from the primary.

        Blocks for a round trip, plus up to ``wait`` seconds for a standby to
        show the position, plus a round trip to the primary if it did not.
        Cancellation abandons the read.

        Raises:
            StoreUnavailable: the primary could not be reached (a standby's
                failure only sends the read to the primary).
        """
        if not from_primary:
            replica = self.pick(min_position)
            if replica is not None:
                rows = await replica.fetch(sql, args, min_position, self.wait)
                if rows is not None:
                    return rows
                replica.fallbacks += 1
        return await self.primary.fetch(sql, *args)

    @asynccontextmanager
    async def connection(
        self,
        prepare: Prepare,
        reached: Check | None = None,
        *,
        min_position: int | None = None,
        timeout: float,
        what: str = "the read",
    ) -> AsyncIterator[_db.Connection]:
        """A pooled connection on which ``prepare(conn)`` ran (it begins a
        transaction) and ``reached(conn)`` says yes, for the block; the
        transaction is rolled back and the connection returned at its end.

        A standby's connection if one gets there within ``wait`` seconds, else
        the primary's, where ``reached`` is asked again (with a growing pause)
        until ``timeout`` seconds from the call.

        Raises:
            NotCaughtUp: ``reached`` did not say yes within ``timeout``
                (``what`` names the read in the message).
            StoreUnavailable: the primary could not be reached.
        """
        deadline = trio.current_time() + timeout
        replica = self.pick(min_position)
        if replica is not None:
            async with AsyncExitStack() as stack:
                wait = max(0.0, min(self.wait, deadline - trio.current_time()))
                conn = await replica.open(stack, prepare, reached, wait, min_position)
                if conn is not None:
                    yield conn
                    return
            replica.fallbacks += 1
        async with self.primary.acquire() as conn:
            try:
                await prepare(conn)
                if reached is not None and not await reached(conn):
                    with trio.move_on_at(deadline) as timer:
                        await poll(conn, reached)
                    if timer.cancelled_caught:
                        raise NotCaughtUp(
                            f"{what} has not reached position {min_position} within {timeout:g} s",
                            position=min_position or 0,
                        )
                yield conn
            finally:
                await _db.rollback(conn)

    def statistics(self) -> tuple[ReplicaStatistics, ...]:
        """Each standby's figures, in the order given; never blocks."""
        return tuple(replica.statistics() for replica in self.replicas)
