"""Hot standbys that serve reads: their health, their lag, and waiting for a position.

Each standby (a *replica*) has a pool of its own and a monitor task. The
monitor asks it for the highest position it shows and the WAL it has
replayed, every ``HEALTH_INTERVAL`` (every ``WAIT_POLL`` while a read waits
for it), and keeps its state:

* ``up``: it answers, it is in recovery, and it lags the primary by at most
  ``MAX_LAG_BYTES`` of WAL. Only up replicas serve reads.
* ``behind``: it answers but lags more than that, or a read waited
  ``replica_wait`` for a position it did not show. It is up again once it
  shows that position and its lag is small.
* ``down``: it did not answer, answered with an error, or is not a standby
  of the primary: its identity (server and database) and its history (its
  event at its highest position, checked once a second at most) must be the
  primary's, which a promoted copy and its standbys' history is not.
  Tried again after a backoff (``BACKOFF_INITIAL`` doubling to
  ``BACKOFF_MAX``); reads under way on it are cut off and go to the primary.

Cutting off means terminating the connections, never cancelling their
statements: the driver answers a cancelled statement by asking the server to
cancel it and waiting for the reply, which a server that hangs never sends.

How a read knows what a standby holds: positions commit in order (every
appender takes one advisory lock in ``append_events``, and a commit's WAL
record is written before its locks are released), and a standby replays
commits in WAL order, so each of its snapshots shows a prefix of the log:
every committed position up to the highest it shows. The highest is one
descent of the primary key's index, and taken in the same statement as the
read (:func:`gated`) it speaks for the very snapshot the read sees. Neither
of the other candidates does as well: a standby's sequence runs ahead of
its rows (sequences are WAL-logged 32 values in advance), and comparing WAL
positions needs the primary's LSN after the append, which a caller that
holds only a position does not have.
"""

from __future__ import annotations

import logging
import math
import uuid
from collections.abc import Awaitable, Callable, Sequence
from contextlib import AsyncExitStack
from typing import Any

import trio

from .. import _db
from .._errors import DatabaseError, EventBusError, StoreUnavailable
from .._nursery import open_actor_nursery
from ._standby_checks import (
    PROBE_TIMEOUT,
    STANDBY_PROBE,
    PrimaryMark,
    ReplicaState,
    ReplicaStatistics,
)

_log = logging.getLogger("eventbus.replicas")

REPLICA_WAIT = 0.5
"""Seconds a read with ``min_position`` waits for a standby to show that
position before it goes to the primary."""

HEALTH_INTERVAL = 1.0
"""Seconds between health checks of a standby (and reads of the primary's
WAL position, for the lag)."""

WAIT_POLL = 0.002
"""Seconds between checks of a standby's position while a read waits for it."""

MAX_LAG_BYTES = 16 * 1024 * 1024
"""WAL bytes a standby may lag the primary by and still serve reads."""

BACKOFF_INITIAL = 0.1
BACKOFF_MAX = 5.0
"""Seconds before a down standby is tried again: doubling from the first to the second."""

FLAP_LINES = 4
"""Log lines a minute, at most, of a standby going between up and behind."""

HISTORY_RECHECK = 0.05
"""Seconds before the primary is asked again for a position its standby shows
and it did not (yet): a commit may show on a standby a moment first."""

POLL_INITIAL = 0.001
POLL_MAX = 0.02
"""Seconds between checks of a read's own condition (a read model's
checkpoint): doubling from the first to the second."""

_RECOVERY_CONFLICT = "40001"  # a standby cancelled the read to go on replaying


def gated(sql: str, args: Sequence[Any], min_position: int) -> tuple[str, list[Any]]:
    """``sql`` (a SELECT whose first column is never null) with the position
    the snapshot shows in front, run only when it shows ``min_position``.

    The result has no rows when the snapshot does not show ``min_position``;
    else the rows of ``sql`` with the position in front, or one row whose
    other columns are null when ``sql`` has none (see :func:`ungated`).
    """
    args = [*args, min_position]
    return (
        "SELECT h.head, q.* FROM (SELECT coalesce(max(sequence_number), 0) AS head FROM eventbus.events) h "
        f"LEFT JOIN LATERAL ({sql}) q ON true WHERE h.head >= ${len(args)} ORDER BY 2",
        args,
    )


def ungated(rows: Sequence[_db.Row]) -> list[tuple[Any, ...]]:
    """The rows of the query inside :func:`gated`'s (non-empty) result."""
    return [tuple(row)[1:] for row in rows if row[1] is not None]


async def _bounded(conn: _db.Connection, sql: str, timeout: float) -> list[_db.Row]:
    """``conn.fetch(sql)``, the connection terminated if it takes longer than
    ``timeout`` (then StoreUnavailable): see the module's text."""
    expired = False

    async def watch() -> None:
        nonlocal expired
        await trio.sleep(timeout)
        expired = True
        conn.terminate()

    try:
        async with open_actor_nursery() as nursery:
            nursery.start_soon(watch)
            rows = await conn.fetch(sql)
            nursery.cancel_scope.cancel()
    except EventBusError:
        if expired:
            raise StoreUnavailable(f"no answer within {timeout:g} s") from None
        raise
    return rows


async def poll(conn: _db.Connection, reached: Callable[[_db.Connection], Awaitable[bool]]) -> None:
    """Ask ``reached(conn)`` until it says yes, with a growing pause
    (``POLL_INITIAL`` to ``POLL_MAX``). Bound it with a cancel scope."""
    pause = POLL_INITIAL
    while not await reached(conn):
        await trio.sleep(pause)
        pause = min(pause * 2, POLL_MAX)


class Replica:
    """One standby: its pool, its state, and the reads it serves.

    ``run`` is its monitor (a task of the store). ``fetch`` and ``open`` serve
    reads; each returns None when the standby could not serve the read (in
    time), and the caller goes to the primary.
    """

    def __init__(self, dsn: str, pool_size: int, primary: PrimaryMark) -> None:
        self.dsn = dsn
        self.name = _db.redact_dsn(dsn)
        self._pool_size = pool_size
        self._pool: _db.Pool | None = None
        self._primary = primary
        self.state = ReplicaState.DOWN
        self.head = 0
        self._replay_lsn: int | None = None
        self._verified = 0  # the highest position whose event was found to be the primary's
        self._served = False  # it has been up
        self._said_down = False  # its being down is logged
        self._said_since, self._said, self._not_said = -math.inf, 0, 0  # (the log's lines of up and behind)
        self._verified_at = -math.inf  # when (at most once a HEALTH_INTERVAL while up)
        self._needs = 0  # a position a read waited for in vain: behind until shown
        self._needs_since = -math.inf
        self._backoff = BACKOFF_INITIAL
        self._stale = False  # the pool's idle connections may be dead
        self._check_conn: _db.Connection | None = None
        self._conns: set[_db.Connection] = set()  # serving reads now
        self._waiting = 0
        self._poke = trio.Event()  # a read started waiting: check now
        self._moved = trio.Event()  # the head or the state changed
        self._reads: set[trio.CancelScope] = set()
        self.reads = 0
        self.waited = 0
        self.fallbacks = 0
        self.failures = 0
        self.last_error: str | None = None

    # ------------------------------------------------------------ the monitor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Check the standby (and trim its pool) until cancelled; started after
        the first check. Opening the pool connects nowhere: a standby that is
        down at the start is ``down``, and the store opens all the same."""
        self._pool = await _db.create_pool(
            self.dsn, max_size=self._pool_size, min_size=0, application_name="eventbus-replica"
        )
        try:
            await self._check()
            task_status.started()
            while True:
                await self._pause()
                await self._check()
                self._pool.trim()
        finally:
            self.state = ReplicaState.DOWN  # closed: no reads come, nothing to log
            self._wake()
            self._cut_off()
            await self._pool.close()

    async def _pause(self) -> None:
        if self.state is ReplicaState.DOWN:
            await trio.sleep(self._backoff)
            self._backoff = min(self._backoff * 2, BACKOFF_MAX)
        elif self._waiting:
            await trio.sleep(WAIT_POLL)
        else:
            with trio.move_on_after(HEALTH_INTERVAL):
                await self._poke.wait()

    async def _probe(self) -> list[_db.Row]:
        """The health check's one statement, on a connection of its own
        (never waiting for the pool), within ``PROBE_TIMEOUT``."""
        assert self._pool is not None
        if self._stale:
            await self._pool.expire()
            self._stale = False
        if self._check_conn is None or self._check_conn.is_closed():
            self._check_conn = None
            with trio.move_on_after(PROBE_TIMEOUT):
                self._check_conn = await _db.connect(self.dsn, application_name="eventbus-replica")
            if self._check_conn is None:
                raise StoreUnavailable(f"no connection within {PROBE_TIMEOUT:g} s")
        return await _bounded(self._check_conn, STANDBY_PROBE, PROBE_TIMEOUT)

    async def _check(self) -> None:
        self._poke = trio.Event()
        try:
            rows = await self._probe()
        except (EventBusError, ValueError, OSError) as exc:
            self.mark_down(f"health check failed: {exc}")
            return
        head, recovering, lsn = int(rows[0][0]), bool(rows[0][1]), int(rows[0][2])
        if not recovering:
            self.mark_down("not a hot standby (pg_is_in_recovery() is false): it may hold what the primary does not")
            return
        identity = (int(rows[0][3]), int(rows[0][4]))
        if identity != self._primary.identity:
            self.mark_down(f"not a standby of this store's database (server and database {identity}; the primary's:"
                           f" {self._primary.identity or 'not known yet'})")  # fmt: skip
            return
        # (not at every check while a read waits: one more round trip, to the primary, each time)
        due = self.state is ReplicaState.DOWN or trio.current_time() - self._verified_at >= HEALTH_INTERVAL
        if head and head != self._verified and due and not await self._same_history(head, rows[0][5]):
            return
        self.head, self._replay_lsn = head, lsn
        lag = self.lag_bytes()
        if self._primary.head is not None and self._primary.at > self._needs_since:  # a position past the head
            self._needs = min(self._needs, self._primary.head)  # (read since) would keep it out for good
        if head < self._needs or (lag is not None and lag > MAX_LAG_BYTES):
            self._set(ReplicaState.BEHIND)
        else:
            self._needs = 0
            self._set(ReplicaState.UP)
        self._backoff = BACKOFF_INITIAL
        self._wake()

    async def _same_history(self, head: int, event_id: uuid.UUID | None) -> bool:
        """Whether the standby's event at its highest position, ``head``, is
        the primary's (else it is marked down: it follows another copy of the
        database, such as a promoted standby). The primary may show a commit a
        moment after its standby: it is read twice, ``HISTORY_RECHECK`` apart."""
        try:
            primary = await self._primary.event_at(head)
            if primary is None:
                await trio.sleep(HISTORY_RECHECK)
                primary = await self._primary.event_at(head)
        except (EventBusError, trio.TooSlowError):
            return False  # the primary cannot be read: the writes see it, and the next check looks again
        if primary is None or primary != event_id:
            what = "has no event" if primary is None else f"has event {primary}"
            self.mark_down(
                f"not a standby of this store's primary: its event at position {head} is {event_id}, and the primary"
                f" {what} there (a promoted copy of the database, or a standby of one?)"
            )
            return False
        self._verified, self._verified_at = head, trio.current_time()
        return True

    def _set(self, state: ReplicaState) -> None:
        """Change the state, and log the change: a standby down from the start
        too (once), and at most ``FLAP_LINES`` changes between up and behind a
        minute (a tight ``replica_wait`` can make it go back and forth)."""
        if state is self.state:
            if state is ReplicaState.DOWN and not self._said_down and self.last_error is not None:
                self._said_down = True  # down since the start: said once, as a change would be
                _log.warning("standby %s is down (%s); reads go elsewhere", self.name, self.last_error)
            return
        if state is ReplicaState.DOWN:
            self._said_down = self.last_error is not None
            if self._said_down:
                _log.warning("standby %s is down (%s); reads go elsewhere", self.name, self.last_error)
        elif self._may_say():
            if state is ReplicaState.UP:
                again = " again" if self._served else ""
                _log.info("standby %s serves reads%s (at position %d)%s", self.name, again, self.head, self._unsaid())
            else:
                _log.warning("standby %s is behind (at position %d); reads go elsewhere%s", self.name, self.head,
                             self._unsaid())  # fmt: skip
        self._served = self._served or state is ReplicaState.UP
        self.state = state
        self._wake()

    def _may_say(self) -> bool:
        now = trio.current_time()
        if now - self._said_since >= 60.0:
            self._said_since, self._said = now, 0
        self._said += 1
        if self._said > FLAP_LINES:
            self._not_said += 1
            return False
        return True

    def _unsaid(self) -> str:
        count, self._not_said = self._not_said, 0
        return f" ({count} changes between up and behind before this were not logged)" if count else ""

    def _wake(self) -> None:
        moved, self._moved = self._moved, trio.Event()
        moved.set()

    def mark_down(self, reason: str) -> None:
        """Take the standby out of service: reads under way on it are cut off
        (they go to the primary; a ``reader`` block under way on it fails
        with ``StoreUnavailable``), and the monitor tries it again after its
        backoff. Never blocks."""
        self.failures += 1
        self.last_error = _db.scrub(reason, self.dsn)
        self._stale = True
        self._set(ReplicaState.DOWN)
        self._cut_off()

    def _cut_off(self) -> None:
        for conn in [*self._conns, *([self._check_conn] if self._check_conn is not None else [])]:
            conn.terminate()
        self._check_conn = None
        for scope in self._reads:
            scope.cancel()  # those still waiting for a connection

    def _fell_behind(self, position: int) -> None:
        if self.state is ReplicaState.UP:
            self._needs = max(self._needs, position)
            self._needs_since = trio.current_time()
            self._set(ReplicaState.BEHIND)

    def lag_bytes(self) -> int | None:
        """WAL bytes between the primary and this standby at their latest checks."""
        if self._primary.lsn is None or self._replay_lsn is None:
            return None
        return max(0, self._primary.lsn - self._replay_lsn)

    def statistics(self) -> ReplicaStatistics:
        """The standby's figures now; never blocks."""
        head = self._primary.head
        return ReplicaStatistics(
            dsn=self.name,
            state=self.state,
            head=self.head,
            lag_positions=None if head is None or self._replay_lsn is None else max(0, head - self.head),
            lag_bytes=self.lag_bytes(),
            reads=self.reads,
            waited=self.waited,
            fallbacks=self.fallbacks,
            failures=self.failures,
            last_error=self.last_error,
        )

    async def wait_head(self, position: int) -> None:
        """Block until the standby showed ``position`` at a check, or is no
        longer up. Cancelling it only ends the wait."""
        self._waiting += 1
        self._poke.set()
        try:
            while self.head < position and self.state is ReplicaState.UP:
                await self._moved.wait()
        finally:
            self._waiting -= 1

    # ------------------------------------------------------------ reads

    def _failed(self, exc: StoreUnavailable | DatabaseError) -> None:
        if self.state is ReplicaState.DOWN:
            return  # cut off: the reason is known already
        if isinstance(exc, StoreUnavailable):
            self.mark_down(f"a read failed: {exc}")
        else:  # refused here (a recovery conflict, ...): the primary is asked instead
            self.failures += 1
            self.last_error = _db.scrub(f"a read failed: {exc}", self.dsn)

    async def fetch(self, sql: str, args: Sequence[Any], min_position: int | None, wait: float) -> list[Any] | None:
        """The rows of ``sql`` from this standby, in a snapshot that shows
        ``min_position`` if given; None if it could not serve them (it failed,
        was cut off, or did not show the position within ``wait`` seconds,
        which makes it ``behind``).

        Blocks for one round trip, plus the wait for the position.
        """
        assert self._pool is not None
        scope = trio.CancelScope()
        self._reads.add(scope)
        try:
            with scope:
                if not min_position:
                    rows: list[Any] = await self._fetch(sql, args)
                    self.reads += 1
                    return rows
                return await self._fetch_at(sql, args, min_position, wait)
            return None  # cut off: the standby went down
        except (StoreUnavailable, DatabaseError) as exc:
            self._failed(exc)
            return None
        finally:
            self._reads.discard(scope)

    async def _fetch(self, sql: str, args: Sequence[Any]) -> list[_db.Row]:
        assert self._pool is not None
        async with self._pool.acquire() as conn:
            self._conns.add(conn)
            try:
                return await conn.fetch(sql, *args)
            finally:
                self._conns.discard(conn)

    async def _fetch_at(self, sql: str, args: Sequence[Any], min_position: int, wait: float) -> list[Any] | None:
        assert self._pool is not None
        gated_sql, gated_args = gated(sql, args, min_position)
        deadline = trio.current_time() + wait  # for the standby to show the position, not for the reads
        rows = await self._fetch(gated_sql, gated_args)
        if not rows:
            self.waited += 1
        while not rows:
            with trio.move_on_at(deadline):
                await self.wait_head(min_position)
            if self.state is not ReplicaState.UP:
                return None
            if trio.current_time() >= deadline:
                self._fell_behind(min_position)
                return None
            rows = await self._fetch(gated_sql, gated_args)
        self.head = max(self.head, int(rows[0][0]))
        self.reads += 1
        return ungated(rows)

    async def open(
        self,
        stack: AsyncExitStack,
        prepare: Callable[[_db.Connection], Awaitable[None]],
        reached: Callable[[_db.Connection], Awaitable[bool]] | None,
        wait: float,
        min_position: int | None,
    ) -> _db.Connection | None:
        """A connection of this standby on which ``prepare`` ran and
        ``reached`` said yes within ``wait`` seconds, its release and a
        rollback pushed on ``stack``; None if the standby could not serve it
        (``stack`` is then closed)."""
        assert self._pool is not None
        scope = trio.CancelScope()  # cancelled when the standby is cut off
        self._reads.add(scope)
        try:
            with scope:
                conn = await stack.enter_async_context(self._pool.acquire())
                stack.push_async_callback(_db.rollback, conn)
                self._conns.add(conn)  # for the whole block: cut off with the standby
                stack.callback(self._conns.discard, conn)
                await prepare(conn)
                if reached is not None and not await reached(conn):
                    self.waited += 1
                    with trio.move_on_after(wait) as timer:
                        await poll(conn, reached)
                    if timer.cancelled_caught:
                        if min_position:
                            self._fell_behind(min_position)
                        await stack.aclose()
                        return None
                self.reads += 1
                return conn
        except (StoreUnavailable, DatabaseError) as exc:
            self._failed(exc)
        finally:
            self._reads.discard(scope)
        await stack.aclose()
        return None
