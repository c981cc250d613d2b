"""``bus.projections``: start, watch, wait for, read and rebuild projections.

The manager keeps one :class:`Runner` per projection started in this process
(``_runner.py``) and starts each as a task in the bus's nursery. A rebuild
(``_rebuild.py``) is handed the runner as the live :class:`Leader` it swaps
with; the two meet in a ``Swap`` (``_swap.py``) and never import each other.
The original style's listener (:func:`start_projection_listener`) is here too.
"""

from __future__ import annotations

import functools
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from contextlib import asynccontextmanager, contextmanager
from typing import Protocol

import trio

from .._db import CLOSE_TIMEOUT, Connection
from .._errors import ClosedError, NotCaughtUp, ProjectionError
from .._nursery import check_run
from .._store import EventStore
from .._stream import EventStream
from .._values import EventFilter, is_number
from ._apply import literal, quote
from ._definition import (
    NAME_PATTERN,
    Projection,
    ProjectionConfig,
    ProjectionState,
    ProjectionStatus,
    Transaction,
    schema_of,
)
from ._operations import Operations
from ._partitioned import PartitionedRunner
from ._partitioned_rebuild import PartitionedRebuild
from ._rebuild import Progress, Rebuild
from ._runner import Runner

_log = logging.getLogger("eventbus.projections")

READER_TIMEOUT = 10.0
"""Seconds a ``reader`` with ``min_position`` waits, in all, for the read
model to reach that position."""

_CHECKPOINT_SQL = """
SELECT coalesce(
    (SELECT min(checkpoint) FROM eventbus.projection_leases WHERE projection = $1 AND partition < $2),
    (SELECT checkpoint FROM eventbus.projections WHERE name = $1)
)
"""
"""How far a projection's read model has applied, as the answering server
shows it: a partitioned projection's slowest partition (of the first $2,
its partitions where this process runs it), else its checkpoint."""


class ProjectionManager:
    """``bus.projections``: start, watch, wait for, read and rebuild projections.

    Each projection started here runs as a task in the bus's nursery, which
    ends with the bus. The state of a projection (its checkpoint, its read
    model, its dead letters) lives in the database, not in the manager.

    A call under way in a task outside the bus's block when the bus closes
    (``rebuild``, ``wait_until_caught_up``) is cancelled, cleans up, and
    raises ``ClosedError``; a call after that raises it at once.
    """

    def __init__(self, dsn: str, store: EventStore, stream: EventStream, nursery: trio.Nursery) -> None:
        self.dsn = dsn
        self.store = store
        self.stream = stream
        self._nursery = nursery
        self._runners: dict[str, Runner | PartitionedRunner] = {}
        self._rebuilding: set[str] = set()
        self._operations: Operations | None = None  # started with the first projection
        self._closed = False
        self._calls: set[trio.CancelScope] = set()  # of the calls under way that end with the bus
        self._drained = trio.Event()  # set once the bus closed and those calls have ended
        self._run = trio.lowlevel.current_trio_token()  # the bus's run

    async def run(self) -> None:
        """In the bus's nursery: wait until the bus closes, then :meth:`aclose`."""
        try:
            await trio.sleep_forever()
        finally:
            with trio.CancelScope(shield=True):
                await self.aclose()

    async def aclose(self) -> None:
        """End the calls under way (they raise ``ClosedError`` once they have
        cleaned up); later calls raise it at once. Blocks, shielded, until
        those calls have ended, ``CLOSE_TIMEOUT`` at most (each one's own
        clean-up is bounded too)."""
        self._closed = True
        if not self._calls:
            return
        for scope in list(self._calls):
            scope.cancel()
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            await self._drained.wait()

    @contextmanager
    def _until_closed(self, what: str) -> Iterator[None]:
        """Run the block as a call that the bus's closing ends: ``ClosedError``
        then, once the block has cleaned up after its cancellation."""
        if self._closed:
            raise ClosedError(f"{what}: the bus is closed")
        check_run(self._run, "the bus")
        scope = trio.CancelScope()
        self._calls.add(scope)
        try:
            with scope:
                yield
        finally:
            self._calls.discard(scope)
            if self._closed and not self._calls:
                self._drained.set()
        if scope.cancelled_caught:
            raise ClosedError(f"{what}: the bus closed before it was done")

    def rebuilding(self, name: str) -> bool:
        """Whether a rebuild of projection ``name`` is under way here; never blocks."""
        return name in self._rebuilding

    def _runner(self, name: str) -> Runner | PartitionedRunner:
        try:
            return self._runners[name]
        except KeyError:
            raise ProjectionError(f"no projection named {name!r} was started here") from None

    async def start(self, projection: Projection) -> None:
        """Start ``projection`` as a supervised task in the bus's nursery.

        Returns at once; the projection then takes the lead (or stands by) and
        catches up on its own; a partitioned one (``partitions > 1``) takes
        its share of the partitions instead (see ``_partitioned.py``). Blocks only for a checkpoint; cancelled there,
        it starts nothing. Its subscription buffers up to
        ``SUBSCRIPTION_BATCHES`` batches of ``batch_size`` events; a projection
        further behind reads from the store instead, and never holds up the
        writers or the other subscribers.

        Raises:
            ProjectionError: a projection of that name was started already, or
                ``projection`` is not a Projection.
            ClosedError: the bus is closed.
        """
        await trio.lowlevel.checkpoint()
        if not isinstance(projection, Projection):
            raise ProjectionError(f"start takes a Projection, not {projection!r}")
        if self._closed:
            raise ClosedError(f"projection {projection.name!r} cannot start: the bus is closed")
        check_run(self._run, "the bus")
        if projection.name in self._runners:
            raise ProjectionError(f"projection {projection.name!r} is started already")
        runner: Runner | PartitionedRunner
        rebuilding = functools.partial(self.rebuilding, projection.name)
        if projection.partitions > 1:
            runner = PartitionedRunner(projection, dsn=self.dsn, stream=self.stream, rebuilding=rebuilding)
        else:
            runner = Runner(projection, dsn=self.dsn, stream=self.stream, rebuilding=rebuilding)
        try:
            self._nursery.start_soon(runner.run, name=f"projection {projection.name}")
        except RuntimeError:  # the bus's nursery is closing or closed
            raise ClosedError(f"projection {projection.name!r} cannot start: the bus is closed") from None
        self._runners[projection.name] = runner
        if self._operations is None:
            self._operations = Operations(
                self.store.pool, self.store.origin, lambda: self._runners, self.rebuild, self.status, self.rebuilding
            )
            self._nursery.start_soon(self._operations.run, name="projection operations")

    async def stop(self, name: str) -> None:
        """Stop projection ``name`` here (its state stays in the database).

        Returns without waiting for its task to end: a batch under way is
        rolled back, and a rebuild of it under way fails with ``ProjectionError``.
        Blocks only for a checkpoint, after the projection is stopped: a
        cancelled call has stopped it all the same.

        Raises:
            ProjectionError: no projection of that name was started here.
            WrongTrioRun: called from outside the bus's Trio run.
        """
        check_run(self._run, "the bus")
        runner = self._runner(name)
        runner.stop()
        del self._runners[name]
        await trio.lowlevel.checkpoint()

    def restart(self, name: str, *, skip_poison: bool = False) -> None:
        """Let a ``failed`` projection try again (after a fix to its data).

        Does nothing to a projection that has not failed. Never blocks: the
        projection is ``restarting`` when the call returns. With
        ``skip_poison``, the event it failed on goes to the dead letters if it
        fails again (as under ``on_error="skip"``), and the projection moves on.

        A partitioned projection fails as a whole in this process (it lets
        go of its partitions); with ``skip_poison`` the event is skipped by
        its partition once this process holds it again.

        Raises:
            ProjectionError: no projection of that name was started here.
            WrongTrioRun: called from outside the bus's Trio run (another
                run, or a thread not through ``trio.from_thread``).
        """
        check_run(self._run, "the bus")  # (before anything changes: from elsewhere nothing would wake it)
        self._runner(name).restart(skip_poison=skip_poison)

    def status(self) -> dict[str, ProjectionStatus]:
        """Every projection started here, by name; never blocks."""
        position = self.stream.position
        return {name: runner.status(position) for name, runner in self._runners.items()}

    async def wait_until_caught_up(self, name: str, timeout: float | None = None) -> None:
        """Block until projection ``name`` reflects every event committed
        before the call.

        Blocks for one read of the store's head, then until the projection's
        checkpoint (as applied here, or as read from the leader when this
        process stands by) reaches it. Buffers nothing; cancelling it only
        ends the wait, the projection goes on.

        Raises:
            ProjectionError: unknown name, ``timeout`` not None nor a number
                of seconds >= 0, or the projection is ``failed`` (or is
                stopped while this waits).
            NotCaughtUp: not caught up within ``timeout`` seconds (a
                ``TimeoutError``).
            StoreUnavailable: the store's head could not be read.
            ClosedError: the bus is closed, or closed during the wait.
        """
        if timeout is not None and (not is_number(timeout) or not timeout >= 0):
            raise ProjectionError(f"timeout must be None or a number of seconds >= 0, not {timeout!r}")
        timeout = None if timeout is None else _forever_past_floats(timeout)
        runner = self._runner(name)
        with self._until_closed(f"waiting for projection {name!r}"):
            target = await self.store.head()
            with trio.move_on_after(math.inf if timeout is None else timeout):
                while runner.position() < target or runner.state == ProjectionState.FAILED:
                    if runner.state == ProjectionState.FAILED:
                        raise ProjectionError(f"projection {name!r} failed: {runner.last_error}")
                    if runner.state == ProjectionState.STOPPED:
                        raise ProjectionError(f"projection {name!r} was stopped while this waited for it")
                    await runner.wait_changed()
                return
        raise NotCaughtUp(f"projection {name!r} is not at position {target} after {timeout} s", position=target)

    @asynccontextmanager
    async def reader(
        self, name: str, *, min_position: int | None = None, timeout: float = READER_TIMEOUT
    ) -> AsyncIterator[Transaction]:
        """A read-only transaction on projection ``name``'s schema, for queries
        with unqualified table names. Waits for a free pooled connection, then
        for shared locks on all the model's tables, held until the block ends
        so that no swap replaces the tables under it: a swap in progress holds
        the block's start for a moment, and a block held open for long makes a
        rebuild's swap give way (``SWAP_LOCK_TIMEOUT`` per attempt). Cancelling
        it rolls the transaction back and returns the connection to the pool.

        With hot standbys (``replica_dsns``) the transaction runs on one of
        them. ``min_position=P`` makes the read model include every event up
        to P: the block starts once the projection's checkpoint (a partitioned
        projection's slowest partition), as the answering server shows it,
        has reached P. A standby gets
        ``replica_wait`` seconds to show it, then the primary the rest of
        ``timeout`` (the projection may still be applying P). On a standby,
        a block held open while the primary's rebuild swaps the tables is
        cancelled by the standby after its ``max_standby_streaming_delay``
        (``DatabaseError``).

        Raises:
            ProjectionError: ``name`` is not a projection name, ``min_position``
                or ``timeout`` is not a number >= 0, or the projection
                failed in this process while the block waited for it.
            NotCaughtUp: the checkpoint did not reach ``min_position`` within
                ``timeout`` seconds.
        """
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ProjectionError(f"{name!r} is not a projection name")
        if min_position is not None and (type(min_position) is not int or not 0 <= min_position < 2**63):
            raise ProjectionError(
                f"min_position must be None or a position (a whole number >= 0), not {min_position!r}"
            )
        if not is_number(timeout) or not timeout >= 0:
            raise ProjectionError(f"timeout must be a number of seconds >= 0, not {timeout!r}")
        timeout = _forever_past_floats(timeout)
        check_run(self._run, "the bus")
        schema = schema_of(name)

        async def prepare(conn: Connection) -> None:
            await conn.run_script(
                f"BEGIN READ ONLY; SET LOCAL search_path TO {quote(schema)}, public;"
                f" SELECT eventbus.lock_read_model({literal(schema)}, false)"
            )

        async def reached(conn: Connection) -> bool:
            runner = self._runners.get(name)
            if runner is not None and runner.state == ProjectionState.FAILED:
                raise ProjectionError(f"projection {name!r} failed: {runner.last_error}")
            partitions = runner.projection.partitions if runner is not None else 2**31 - 1
            checkpoint = await conn.fetchval(_CHECKPOINT_SQL, name, partitions)
            return checkpoint is not None and checkpoint >= (min_position or 0)

        async with self.store.reads.connection(
            prepare,
            reached if min_position else None,
            min_position=min_position,
            timeout=timeout,
            what=f"projection {name!r}",
        ) as conn:
            tx = Transaction(conn)
            try:
                yield tx
            finally:
                tx._end()  # (a transaction kept past the block would use a connection lent to another)

    async def rebuild(self, name: str, progress: Progress | None = None) -> None:
        """Rebuild projection ``name`` from position 0, without downtime.

        A fresh copy is built in a shadow schema while the live read model
        keeps serving reads and following new events; when the copy has
        caught up, the two are swapped with the checkpoint in one transaction.
        ``progress(done, total)``, a plain function, is called in the
        rebuild's task after each batch, in positions.

        Blocks until the swap: while the copy is built (one transaction per
        batch, on a connection of its own; its subscription buffers up to
        ``SUBSCRIPTION_BATCHES`` batches), then while the leader pauses
        between two batches and takes the live tables' locks (up to
        ``SWAP_ATTEMPTS`` tries of ``SWAP_LOCK_TIMEOUT`` seconds each: a long
        ``reader`` block holds it up). Cancelling it abandons the copy: the
        shadow schema is dropped (shielded and bounded; by the leader once
        the copy is handed over), and the live read model goes on untouched.

        A partitioned projection is rebuilt by any process that runs it,
        whether it holds partitions or not (``_partitioned_rebuild.py``): the
        copy is built here, in position order, while the owners of the
        partitions (here and in other processes) go on; once it has caught
        up, one transaction swaps it in and sets every partition's
        checkpoint to its position under a new epoch. The owners hold still
        only for that transaction (their batches under way finish first,
        those that start wait), and take their partitions up again on the
        new tables from the copy's position within a heartbeat. One rebuild
        at a time across all processes; one whose process is killed leaves
        the live model as it was, and the next rebuild (after ``CLAIM_TTL``
        seconds) drops what it left. Cancelled in its swap's transaction, it
        may have swapped all the same.

        Raises:
            ProjectionError: unknown name, a rebuild already running (of a
                partitioned projection: in any process), this process does
                not lead the projection (or stops leading it, or the
                projection is stopped, before the swap), or the swap could
                not get its locks. The shadow copy is dropped.
            HandlerFailed: a handler failed on the copy (the live model stays).
            ClosedError: the bus is closed, or closed before the swap (the
                copy is abandoned as on cancellation).
        """
        runner = self._runner(name)
        if name in self._rebuilding:
            raise ProjectionError(f"projection {name!r} is being rebuilt already")
        with self._until_closed(f"the rebuild of projection {name!r}"):
            if isinstance(runner, PartitionedRunner):
                await self._rebuild_partitioned(runner, progress)
                return
            if not runner.leader:
                raise ProjectionError(f"projection {name!r} is led by another process (or not yet): rebuild it there")
            try:
                await self._logged_rebuild(name, self._rebuild_led(runner, progress))
            finally:
                runner.interrupt()  # its state is worked out again

    async def _rebuild_led(self, runner: Runner, progress: Progress | None) -> int:
        await Rebuild(runner.projection, runner, self.dsn, self.store, self.stream, progress).run()
        return runner.applied

    async def _rebuild_partitioned(self, runner: PartitionedRunner, progress: Progress | None) -> None:
        name = runner.projection.name
        rebuild = PartitionedRebuild(
            runner.projection,
            runner.member,
            lambda: self._runners.get(name) is runner,
            self.dsn,
            self.store,
            self.stream,
            progress,
        )
        await self._logged_rebuild(name, rebuild.run())

    async def _logged_rebuild(self, name: str, rebuild: Awaitable[int]) -> None:
        """Await ``rebuild`` (it returns the position swapped in) with ``name``
        marked as rebuilding, and log its start and how it ended."""
        self._rebuilding.add(name)
        _log.info("projection %s: rebuild started", name)
        try:
            position = await rebuild
            _log.info("projection %s: rebuild swapped in at position %d", name, position)
        except Exception as exc:
            _log.error("projection %s: rebuild failed: %s", name, exc, exc_info=exc)
            raise
        except BaseException:
            _log.info("projection %s: rebuild abandoned", name)
            raise
        finally:
            self._rebuilding.discard(name)


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
    restarts, use :class:`Projection` instead.

    Blocks for one read of the store's head (where "from now on" starts);
    cancelled there, it starts nothing. The handlers run one at a time in a
    task in the bus's nursery; while one is slow, up to the stream's default
    buffer of events wait for it, and beyond that the listener reads from
    the store later, losing none. ``await stop()`` cancels the listener (a
    handler under way included) and blocks until it has ended; cancelling
    ``stop`` only ends that wait.

    Raises:
        ProjectionError: ``config`` is not a ProjectionConfig.
        ClosedError: the bus is closed.
        StoreUnavailable: the store's head could not be read.
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


def _forever_past_floats(timeout: float) -> float:
    """A timeout, as seconds Trio can count: a whole number past what a float holds is for ever."""
    return math.inf if isinstance(timeout, int) and timeout > 2**53 else timeout
