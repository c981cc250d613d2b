"""What operators see of this process's projections, and what they ask of it.

The ``eventbus`` command line runs in a process of its own and cannot see
into this one; it reads and writes two tables instead. One task per bus with
projections (started with the first one) looks every ``OPERATIONS_INTERVAL``
seconds:

* at its runners: when one's state, lead, restarts or last error changed (or
  ``HEARTBEAT`` seconds passed), it writes them to
  ``eventbus.projection_runners``, one row per projection and bus (and drops
  the rows of buses gone for a minute, and requests answered a day ago);
* at ``eventbus.projection_requests`` addressed to this bus (by its origin):
  it takes each pending one and carries it out in a task of its own (a
  rebuild, a resume, dead letters applied again), writing progress and the
  outcome to the request's row.

Database errors only delay it to the next look: it never ends the bus.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
from collections.abc import Awaitable, Callable, Mapping
from typing import Any

import trio

from .. import _db, _telemetry
from .._errors import EventBusError, ProjectionError
from .._nursery import open_actor_nursery
from .._values import EventRecord
from ._apply import _run_handlers, begin
from ._definition import ProjectionState, ProjectionStatus
from ._partitioned import PartitionedRunner
from ._rebuild import Progress
from ._runner import Runner

AnyRunner = Runner | PartitionedRunner

OPERATIONS_INTERVAL = 0.5
"""Seconds between looks at the runners' state and at new requests."""

HEARTBEAT = 20.0
"""Seconds after which the runners' rows are written again, changed or not."""

PROGRESS_INTERVAL = 0.5
"""Seconds between writes of a rebuild's progress to its request."""

STUCK_AFTER = _db.CLOSE_TIMEOUT + 3.0
"""Seconds past its ``handler_timeout`` after which a batch still running is
published as ``stuck``: its cancellation (and the bounded rollback after it)
did not end it, so a handler does not give way."""

RESUME_WAIT = 30.0
"""Seconds a resume waits to see the projection past its failure before it reports."""

_log = logging.getLogger("eventbus.projections")

_PUBLISH = """
WITH answered AS (
    DELETE FROM eventbus.projection_requests q
    WHERE q.state IN ('done', 'failed', 'withdrawn') AND q.updated_at < now() - interval '1 day'
), orphaned AS (
    UPDATE eventbus.projection_requests q
    SET state = 'failed', message = 'the process it was asked of stopped before it was done', updated_at = now()
    WHERE q.state IN ('pending', 'running') AND q.updated_at < now() - interval '1 minute' AND NOT EXISTS (
        SELECT FROM eventbus.listeners l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.origin = q.origin)
    RETURNING q.id, q.projection, q.action, q.origin
), gone AS (
    DELETE FROM eventbus.projection_runners r
    WHERE (r.origin = $1 AND r.projection <> ALL ($2::text[]))
       OR (r.origin <> $1 AND r.updated_at < now() - interval '1 minute' AND NOT EXISTS (
            SELECT FROM eventbus.listeners l JOIN pg_stat_activity a ON a.pid = l.pid WHERE l.origin = r.origin))
), published AS (
    INSERT INTO eventbus.projection_runners AS r
        (projection, origin, host, pid, state, leader, restarts, last_error, poison, updated_at)
    SELECT m.projection, $1, $8, $9, m.state, m.leader, m.restarts, m.last_error, m.poison, now()
    FROM unnest($2::text[], $3::text[], $4::boolean[], $5::integer[], $6::text[], $7::bigint[])
        AS m(projection, state, leader, restarts, last_error, poison)
    ON CONFLICT (projection, origin) DO UPDATE SET
        state = excluded.state, leader = excluded.leader, restarts = excluded.restarts,
        last_error = excluded.last_error, poison = excluded.poison, updated_at = excluded.updated_at
)
SELECT id, projection, action, origin FROM orphaned ORDER BY id
"""
"""Publish this bus's projections; drop answered requests a day old, and
runners of processes that are gone; fail the requests such processes left
(the rows: those requests)."""

_TAKE = """
UPDATE eventbus.projection_requests SET state = 'running', updated_at = now()
WHERE origin = $1 AND state = 'pending'
RETURNING id, projection, action, skip_poison, dead_letters
"""

_FINISH = "UPDATE eventbus.projection_requests SET state = $2, message = $3, updated_at = now() WHERE id = $1"
_PROGRESS = "UPDATE eventbus.projection_requests SET done = $2, total = $3, updated_at = now() WHERE id = $1"

Rebuilder = Callable[[str, Progress], Awaitable[None]]


class Operations:
    """The task that publishes this bus's projections and serves requests for them.

    Args:
        pool: where it reads and writes (the store's read pool).
        origin: this bus's name (its store's origin, as the listener registers it).
        runners: the projections started here, by name, as they are now.
        rebuild: the manager's rebuild.
        status: the manager's status.
        rebuilding: whether a rebuild of a projection is under way here.
    """

    def __init__(
        self,
        pool: _db.Pool,
        origin: str,
        runners: Callable[[], Mapping[str, AnyRunner]],
        rebuild: Rebuilder,
        status: Callable[[], Mapping[str, ProjectionStatus]],
        rebuilding: Callable[[str], bool] = lambda _name: False,
    ) -> None:
        self._pool = pool
        self._origin = origin
        self._runners = runners
        self._rebuild = rebuild
        self._status = status
        self._rebuilding = rebuilding
        self._published: list[tuple[Any, ...]] | None = None
        self._published_at = -HEARTBEAT
        self._stuck: set[str] = set()  # projections whose batch here runs on past its deadline
        self._host = socket.gethostname()

    async def run(self) -> None:
        """Look, take, publish until cancelled; then delete this bus's rows
        (shielded, bounded). Reports the projections' lag meanwhile."""
        _telemetry.watch("projection", self, Operations._lags)
        try:
            async with trio.open_nursery() as nursery:
                while True:
                    try:
                        await self._publish()
                        for request in await self._pool.fetch(_TAKE, self._origin):
                            nursery.start_soon(self._carry_out, *request)
                    except EventBusError as exc:
                        _log.debug("projection operations: %s; trying again", exc)
                        self._published = None
                    await trio.sleep(OPERATIONS_INTERVAL)
        finally:
            _telemetry.unwatch("projection", self)
            with trio.move_on_after(_db.CLOSE_TIMEOUT, shield=True), contextlib.suppress(EventBusError, RuntimeError):
                await self._pool.fetch("DELETE FROM eventbus.projection_runners WHERE origin = $1", self._origin)

    def _lags(self) -> list[tuple[float, dict[str, str]]]:
        return [(status.lag, {"projection": name}) for name, status in self._status().items()]

    def _row(self, name: str, runner: AnyRunner, status: ProjectionStatus | None) -> tuple[Any, ...]:
        """What ``eventbus status`` reads of one projection here: its state and
        last error, or ``stuck`` while a batch runs on past its deadline."""
        state, error = str(runner.state), runner.last_error
        timeout = runner.projection.handler_timeout
        running = None if status is None else status.batch_running
        if timeout is not None and running is not None and running > timeout + STUCK_AFTER:
            state = "stuck"
            error = (
                f"a batch has run past its handler_timeout of {timeout:g} s and its cancellation did not stop it:"
                " a handler does not give way (does it catch trio.Cancelled, shield itself, or block without a"
                " checkpoint?)"
            )
            if name not in self._stuck:
                _log.warning("projection %s: %s", name, error)
                self._stuck.add(name)
        else:
            self._stuck.discard(name)
        return (name, state, runner.leader, runner.restarts, error, runner.poison)

    async def _publish(self) -> None:
        statuses = self._status()
        rows = [self._row(name, r, statuses.get(name)) for name, r in sorted(self._runners().items())]
        now = trio.current_time()
        if rows == self._published and now - self._published_at < HEARTBEAT:
            return
        columns = [list(column) for column in zip(*rows, strict=True)] if rows else [[]] * 6
        orphaned = await self._pool.fetch(_PUBLISH, self._origin, *columns, self._host, os.getpid())
        self._published, self._published_at = rows, now
        for request, name, action, origin in orphaned:
            _log.warning(
                "projection %s: %s (request %d) marked failed: the process it was asked of (%s) stopped before it"
                " was done", name, action, request, origin,
            )  # fmt: skip

    async def _carry_out(
        self, request: int, name: str, action: str, skip_poison: bool, dead_letters: list[int] | None
    ) -> None:
        """One request, start to end; its outcome written to its row, also when
        cancelled (the bus closes) or failed."""
        state, message = "failed", "the bus closed before it was done"
        _log.info("projection %s: %s asked for by an operator (request %d)", name, action, request)
        try:
            if action == "rebuild":
                message = await self._do_rebuild(request, name)
            elif action == "resume":
                message = await self._do_resume(name, skip_poison)
            else:
                message = await self._do_retry(name, dead_letters)
            state = "done"
        except EventBusError as exc:
            message = str(exc)
        except Exception as exc:  # an operator's request never takes the bus down
            _log.exception("projection %s: %s failed", name, action)
            message = f"{type(exc).__name__}: {exc}"
        finally:
            with trio.move_on_after(_db.CLOSE_TIMEOUT, shield=True), contextlib.suppress(EventBusError, RuntimeError):
                await self._pool.fetch(_FINISH, request, state, message)
        _log.info("projection %s: %s %s: %s", name, action, state, message)

    def _runner(self, name: str) -> AnyRunner:
        runner = self._runners().get(name)
        if runner is None:
            raise ProjectionError(f"projection {name!r} is no longer started in this process")
        return runner

    async def _do_rebuild(self, request: int, name: str) -> str:
        runner = self._runner(name)
        progress: list[int] = [0, 0]

        def note(done: int, total: int) -> None:
            progress[:] = [done, total]

        async def report() -> None:
            written: list[int] = []
            while True:
                if progress != written:
                    written = list(progress)
                    with contextlib.suppress(EventBusError):
                        await self._pool.fetch(_PROGRESS, request, *written)
                await trio.sleep(PROGRESS_INTERVAL)

        async with open_actor_nursery() as nursery:  # the rebuild's error comes out as itself
            nursery.start_soon(report)
            await self._rebuild(name, note)
            nursery.cancel_scope.cancel()
        return f"rebuilt {name}; swapped in at position {runner.position()}"

    async def _do_resume(self, name: str, skip_poison: bool) -> str:
        runner = self._runner(name)
        if runner.state != ProjectionState.FAILED:
            return f"{name} is not failed here ({runner.state}): nothing to resume"
        poison = runner.poison
        unnamed = " (its failure named no event: nothing was skipped)" if skip_poison and poison is None else ""
        runner.restart(skip_poison=skip_poison)
        with trio.move_on_after(RESUME_WAIT):
            while True:
                if runner.state == ProjectionState.FAILED:
                    raise ProjectionError(f"{name} failed again: {runner.last_error}{unnamed}")
                if poison is not None and runner.position() >= poison:
                    skipped = " (sent to the dead letters if it failed again)" if skip_poison else ""
                    return f"resumed {name}: past the event at position {poison}{skipped}"
                if poison is None and runner.state == ProjectionState.LIVE:
                    return f"resumed {name}: live{unnamed}"
                await runner.wait_changed()
        return f"resumed {name}: {runner.state} at position {runner.position()} after {RESUME_WAIT:.0f} s{unnamed}"

    async def _do_retry(self, name: str, ids: list[int] | None) -> str:
        """Apply the projection's dead letters (or those of ``ids``) again, each
        in a transaction that also deletes it: applied once, also when two
        retries race.

        Refused while a rebuild of the projection is under way (here, or a
        partitioned one's anywhere): its copy leaves the dead letters out and
        replaces the tables a retry would apply them to. Each letter's
        transaction looks once it holds the letter: a rebuild that starts
        meanwhile reads the dead letters after it (``dead_letters_of``)."""
        runner = self._runner(name)
        if not runner.leader:
            raise ProjectionError(f"this process no longer leads {name}: ask again")
        await self._check_no_rebuild(self._pool, name)
        letters = await self._pool.fetch(
            "SELECT d.id, e.sequence_number, e.event_id, e.event_type, e.payload, e.metadata, e.occurred_at"
            " FROM eventbus.dead_letters d JOIN eventbus.events e USING (sequence_number)"
            " WHERE d.projection = $1 AND ($2::bigint[] IS NULL OR d.id = ANY ($2)) AND d.copy_of IS NULL"
            " ORDER BY d.sequence_number",
            name,
            ids,
        )
        if not letters:
            raise ProjectionError(f"no dead letters of {name} to retry")
        projection = runner.projection
        applied = 0
        errors: list[str] = []
        for letter_id, *columns in letters:
            record = EventRecord(*columns)
            async with self._pool.acquire() as conn:
                tx = await begin(conn, projection.schema)
                committed = False
                try:
                    if await conn.fetchval("DELETE FROM eventbus.dead_letters WHERE id = $1 RETURNING id", letter_id):
                        try:
                            await self._check_no_rebuild(conn, name)
                        except ProjectionError as exc:
                            raise ProjectionError(f"{applied} of {len(letters)} applied again, then: {exc}") from None
                        try:
                            failure = await _run_handlers(tx, projection, [record], 0, 1)
                        finally:
                            tx._end()
                        if failure is None:
                            await conn.execute("COMMIT")
                            committed = True
                            applied += 1
                        else:
                            errors.append(f"position {record.sequence_number}: {failure.error!r}")
                finally:
                    if not committed:
                        await _db.rollback(conn)
        if errors:
            raise ProjectionError(f"{applied} applied again; {len(errors)} failed again: {'; '.join(errors)}")
        return f"{applied} dead letters of {name} applied again"

    async def _check_no_rebuild(self, db: _db.Pool | _db.Connection, name: str) -> None:
        claimed = (
            "SELECT EXISTS (SELECT FROM eventbus.projection_rebuilds WHERE projection = $1 AND expires_at > now())"
        )
        if self._rebuilding(name) or await db.fetchval(claimed, name):
            raise ProjectionError(
                f"a rebuild of {name} is under way: retry its dead letters once it is done (its copy leaves them"
                " out, and replaces the tables a retry now would apply them to)"
            )
