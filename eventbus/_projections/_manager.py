"""Projection actors: exactly-once read models, one leader per projection.

Each started projection runs as a supervised task. It opens a connection of
its own and takes a session advisory lock named after the projection: the
process holding it is the leader, the others stand by and try again every
``LEADER_RETRY`` seconds (a dead leader's connection closes, its lock goes
with it). The leader runs ``setup``, then subscribes from its checkpoint and
applies each batch in ONE transaction that also moves the checkpoint, on the
connection that holds the lock: after any crash the read model reflects
exactly the events up to its checkpoint, and no other process can apply
them meanwhile.

A rebuild replays every event into a shadow schema while the live read model
keeps serving reads and following new events; when the shadow has caught up,
the leader pauses, lets the shadow reach its own position, and swaps the two
schemas and the checkpoint in one transaction.
"""

from __future__ import annotations

import hashlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import trio

from .. import _db
from .._db import rollback
from .._errors import DatabaseError, HandlerFailed, ProjectionError, StoreUnavailable
from .._store import EventStore
from .._stream import EventStream, Subscription
from .._values import EventFilter, EventRecord
from ._apply import apply_records, literal, prepare_schema, quote
from ._definition import (
    NAME_PATTERN,
    Projection,
    ProjectionConfig,
    ProjectionState,
    ProjectionStatus,
    Transaction,
    schema_of,
)
from ._rebuild import Progress, Rebuild
from ._swap import Swap, swap_in

LEADER_RETRY = 1.0
"""Seconds between a standby's attempts to take the lead."""

IDLE_CHECKPOINT = 0.5
"""Seconds without events after which the checkpoint moves to the stream's position."""


_FOLLOWING = frozenset({ProjectionState.LIVE, ProjectionState.CATCHING_UP, ProjectionState.REBUILDING})
"""States in which the leader follows the stream (its subscription's position counts)."""


def _leader_key(name: str) -> int:
    """The advisory lock key of a projection's lead: 64 bits of its name's hash."""
    digest = hashlib.blake2b(f"eventbus projection {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_log = logging.getLogger("eventbus.projections")


class Runner:
    """One projection in this process: its supervised task and its state."""

    def __init__(self, projection: Projection, manager: ProjectionManager) -> None:
        self.projection = projection
        self._manager = manager
        self.state: ProjectionState = ProjectionState.STARTING
        self.applied = 0
        self.restarts = 0
        self.failures = 0
        self.dead_letters = 0
        self.last_error: str | None = None
        self.leader = False
        self.sub: Subscription | None = None
        self.changed = trio.Event()
        self.swap: Swap | None = None
        self._wait_scope: trio.CancelScope | None = None
        self.scope = trio.CancelScope()
        self.resume = trio.Event()
        self._busy = False  # a batch is being applied

    def _count_dead_letter(self) -> None:
        self.dead_letters += 1

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def position(self) -> int:
        """The position up to which the read model reflects every event."""
        sub = self.sub
        if sub is not None and sub.buffered == 0 and not self._busy and self.state in _FOLLOWING:
            return max(self.applied, sub.position)
        return self.applied

    def status(self, stream_position: int) -> ProjectionStatus:
        checkpoint = self.position()
        return ProjectionStatus(
            state=self.state,
            checkpoint=checkpoint,
            lag=max(0, stream_position - checkpoint),
            restarts=self.restarts,
            last_error=self.last_error,
            dead_letters=self.dead_letters,
            leader=self.leader,
        )

    # ------------------------------------------------------------ supervision

    async def run(self) -> None:
        policy = self.projection.restart
        with self.scope:
            while True:
                try:
                    await self._lead()
                except (StoreUnavailable, DatabaseError) as exc:
                    # The database, not the handlers: retry, without counting toward failure.
                    self.last_error = str(exc)
                    self._mark_restarting()
                    await trio.sleep(policy.delay(min(self.failures + 1, 4)))
                except Exception as exc:
                    # A handler (HandlerFailed), or anything else this projection
                    # raised: its own failure, never the bus's.
                    self.last_error = str(exc) if isinstance(exc, HandlerFailed) else f"{type(exc).__name__}: {exc}"
                    self.failures += 1
                    if policy.gives_up(self.failures):
                        self.state = ProjectionState.FAILED
                        _log.error("projection %s failed: %s", self.projection.name, self.last_error)
                        self.notify()
                        await self.resume.wait()
                        self.resume = trio.Event()
                        self.failures = 0
                        continue
                    self._mark_restarting()
                    await trio.sleep(policy.delay(self.failures))

    def _mark_restarting(self) -> None:
        self.state = ProjectionState.RESTARTING
        self.restarts += 1
        self.leader = False
        self.notify()

    async def _lead(self) -> None:
        manager = self._manager
        name = self.projection.name
        conn = await _db.connect(manager.dsn, application_name=f"eventbus-projection {name}")
        try:
            self.state = ProjectionState.STANDBY
            self.notify()
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _leader_key(name)):
                applied = int(
                    await conn.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", name) or 0
                )
                if applied != self.applied:
                    self.applied = applied
                    self.notify()  # wait_until_caught_up here follows the leader
                await trio.sleep(LEADER_RETRY)
            self.leader = True
            self.state = ProjectionState.STARTING
            await prepare_schema(conn, self.projection, self.projection.schema)
            await conn.execute("INSERT INTO eventbus.projections (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
            checkpoint = int(await conn.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", name))
            self.applied = checkpoint
            self.notify()
            while True:
                checkpoint = await self._follow(conn, checkpoint)
        finally:
            self.leader = False
            self.sub = None
            await conn.close()  # closing the session lets go of the lead

    async def _follow(self, conn: _db.Connection, checkpoint: int) -> int:
        """Apply batches from ``checkpoint`` on; return the checkpoint after a swap."""
        projection = self.projection
        manager = self._manager
        sub = manager.stream.subscribe(
            projection.filter,
            after=checkpoint,
            max_batch=projection.batch_size,
            buffer=projection.batch_size * 4,
            name=f"projection {projection.name}",
        )
        async with sub:
            self.sub = sub
            sub.on_move = self.notify
            while True:
                if self.swap is not None:
                    return await self._swap(conn, checkpoint)
                state = ProjectionState.REBUILDING if manager.rebuilding(projection.name) else _state_of(sub)
                if state != self.state:
                    self.state = state
                    self.notify()
                batch: list[EventRecord] | None = None
                with trio.move_on_after(IDLE_CHECKPOINT) as self._wait_scope:
                    try:
                        batch = await sub.__anext__()
                    except StopAsyncIteration:
                        await trio.sleep_forever()  # the bus is closing: cancellation follows
                self._wait_scope = None
                if batch is None:
                    position = sub.position
                    if position > checkpoint and self.swap is None:
                        # Nothing to apply up to there: the checkpoint may move on.
                        await conn.execute("SELECT eventbus.advance_checkpoint($1, $2, $3)",
                                           projection.name, checkpoint, position)  # fmt: skip
                        checkpoint = self.applied = position
                        self.notify()
                    continue
                self._busy = True
                try:
                    checkpoint = await apply_records(conn, projection, batch, checkpoint, self._count_dead_letter)
                finally:
                    self._busy = False
                self.applied = checkpoint
                self.failures = 0
                self.notify()

    def interrupt(self) -> None:
        """Wake the apply loop from its wait (a swap is asked for)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def _swap(self, conn: _db.Connection, checkpoint: int) -> int:
        """Pause at ``checkpoint`` for the rebuild's copy, then swap it in;
        the checkpoint after."""
        swap = self.swap
        assert swap is not None
        self.swap = None
        swapped = await swap_in(conn, self.projection, checkpoint, swap)
        if swapped is None:
            return checkpoint
        self.applied = swapped
        self.notify()
        return swapped


def _state_of(sub: Subscription) -> ProjectionState:
    return ProjectionState.LIVE if sub.state == "live" else ProjectionState.CATCHING_UP


class ProjectionManager:
    """``bus.projections``: start, watch, wait for and rebuild projections."""

    def __init__(self, dsn: str, store: EventStore, stream: EventStream, nursery: trio.Nursery) -> None:
        self.dsn = dsn
        self.store = store
        self.stream = stream
        self._nursery = nursery
        self._runners: dict[str, Runner] = {}
        self._rebuilding: set[str] = set()

    def rebuilding(self, name: str) -> bool:
        return name in self._rebuilding

    def _runner(self, name: str) -> Runner:
        try:
            return self._runners[name]
        except KeyError:
            raise ProjectionError(f"no projection named {name!r} was started here") from None

    async def start(self, projection: Projection) -> None:
        """Start ``projection`` as a supervised task in the bus's nursery.

        Returns at once; the projection then takes the lead (or stands by) and
        catches up on its own. Never blocks beyond a checkpoint.

        Raises:
            ProjectionError: a projection of that name was started already, or
                ``projection`` is not a Projection.
        """
        await trio.lowlevel.checkpoint()
        if not isinstance(projection, Projection):
            raise ProjectionError(f"start takes a Projection, not {projection!r}")
        if projection.name in self._runners:
            raise ProjectionError(f"projection {projection.name!r} is started already")
        runner = Runner(projection, self)
        self._runners[projection.name] = runner
        self._nursery.start_soon(runner.run, name=f"projection {projection.name}")

    async def stop(self, name: str) -> None:
        """Stop projection ``name`` here (its state stays in the database).

        Returns without waiting for its task to end: a batch under way is
        rolled back, and a rebuild of it under way fails with ``ProjectionError``.
        """
        runner = self._runner(name)
        runner.scope.cancel()
        runner.state = ProjectionState.STOPPED
        del self._runners[name]
        await trio.lowlevel.checkpoint()

    def restart(self, name: str) -> None:
        """Let a ``failed`` projection try again (after a fix to its data).

        Does nothing to a projection that has not failed.
        """
        runner = self._runner(name)
        if runner.state != ProjectionState.FAILED:
            return  # a resume kept for later would skip its next failure
        # Restarting from now on, not once its task runs: a wait_until_caught_up
        # right after this call must not see the old failure.
        runner._mark_restarting()
        runner.resume.set()

    def status(self) -> dict[str, ProjectionStatus]:
        """Every projection started here, by name; never blocks."""
        position = self.stream.position
        return {name: runner.status(position) for name, runner in self._runners.items()}

    async def wait_until_caught_up(self, name: str, timeout: float | None = None) -> None:
        """Block until projection ``name`` reflects every event committed
        before the call.

        Raises:
            ProjectionError: unknown name, or the projection is ``failed``.
            TimeoutError: not caught up within ``timeout`` seconds.
        """
        runner = self._runner(name)
        target = await self.store.head()
        with trio.move_on_after(math.inf if timeout is None else timeout):
            while runner.position() < target:
                if runner.state == ProjectionState.FAILED:
                    raise ProjectionError(f"projection {name!r} failed: {runner.last_error}")
                await runner.changed.wait()
            return
        raise TimeoutError(f"projection {name!r} is not at position {target} after {timeout} s")

    @asynccontextmanager
    async def reader(self, name: str) -> AsyncIterator[Transaction]:
        """A read-only transaction on projection ``name``'s schema, for queries
        with unqualified table names. Waits for a free pooled connection, then
        for shared locks on all the model's tables, held until the block ends
        so that no swap replaces the tables under it: a swap in progress holds
        the block's start for a moment, and a block held open for long makes a
        rebuild's swap give way (``SWAP_LOCK_TIMEOUT`` per attempt). Cancelling
        it rolls the transaction back and returns the connection to the pool.

        Raises:
            ProjectionError: ``name`` is not a projection name.
        """
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ProjectionError(f"{name!r} is not a projection name")
        schema = schema_of(name)
        async with self.store.pool.acquire() as conn:
            await conn.run_script(
                f"BEGIN READ ONLY; SET LOCAL search_path TO {quote(schema)}, public;"
                f" SELECT eventbus.lock_read_model({literal(schema)}, false)"
            )
            try:
                yield Transaction(conn)
            finally:
                await rollback(conn)

    async def rebuild(self, name: str, progress: Progress | None = None) -> None:
        """Rebuild projection ``name`` from position 0, without downtime.

        A fresh copy is built in a shadow schema while the live read model
        keeps serving reads and following new events; when the copy has
        caught up, the two are swapped with the checkpoint in one transaction.
        ``progress(done, total)`` is called after each batch, in positions.
        Blocks until the swap; cancelling it abandons the copy.

        Raises:
            ProjectionError: unknown name, a rebuild already running, this
                process does not lead the projection (or stops leading it, or
                the projection is stopped, before the swap), or the swap could
                not get its locks. The shadow copy is dropped.
            HandlerFailed: a handler failed on the copy (the live model stays).
        """
        runner = self._runner(name)
        if name in self._rebuilding:
            raise ProjectionError(f"projection {name!r} is being rebuilt already")
        if not runner.leader:
            raise ProjectionError(f"projection {name!r} is led by another process (or not yet): rebuild it there")
        self._rebuilding.add(name)
        try:
            await Rebuild(self, runner, progress).run()
        finally:
            self._rebuilding.discard(name)
            runner.interrupt()  # its state is worked out again


# ------------------------------------------------------------------ the original's style


class HasProjections(Protocol):
    """Anything with a projection manager: a bus."""

    @property
    def projections(self) -> ProjectionManager: ...


async def start_projection_listener(bus: HasProjections, config: ProjectionConfig) -> Callable[[], Awaitable[None]]:
    """Run the original style's handlers on live events; return ``stop``.

    Each event of ``config.event_types`` committed from now on is passed to
    its handler, in order, once, in this process; a handler that raises is
    logged and the listener goes on. For read models that must survive
    restarts, use :class:`Projection` instead. ``await stop()`` ends it.
    """
    if not isinstance(config, ProjectionConfig):
        raise ProjectionError(f"start_projection_listener takes a ProjectionConfig, not {config!r}")
    manager = bus.projections
    sub = manager.stream.subscribe(EventFilter(list(config.event_types)), name="listener")
    await sub.__aenter__()
    scope = trio.CancelScope()
    finished = trio.Event()

    async def listen() -> None:
        try:
            with scope:
                async for batch in sub:
                    for record in batch:
                        handler = config.handlers.get(record.event_type)
                        if handler is None:
                            continue
                        try:
                            await handler(record)
                        except Exception:
                            _log.exception("listener handler for %s failed", record.event_type)
        finally:
            sub.close()
            finished.set()

    manager._nursery.start_soon(listen)

    async def stop() -> None:
        scope.cancel()
        await finished.wait()

    return stop
