"""A projection's runner: exactly-once read models, one leader per projection.

Each started projection runs as a supervised task. It opens a connection of
its own and takes a session advisory lock named after the projection: the
process holding it is the leader, the others stand by and try again every
``LEADER_RETRY`` seconds (a dead leader's connection closes, its lock goes
with it). The leader runs ``setup``, then subscribes from its checkpoint and
applies each batch in ONE transaction that also moves the checkpoint, on the
connection that holds the lock: after any crash the read model reflects
exactly the events up to its checkpoint, and no other process can apply
them meanwhile.

Every way a batch fails counts toward the restart limit: a handler that
raises, a commit that fails, a batch past the projection's
``handler_timeout`` (cancelled and rolled back). A projection that gives up
lets go of the lead, so that another process may try. One whose tables are
gone while its checkpoint says it has applied events fails at once and keeps
the lead, for a rebuild here to build them again.

A rebuild (``_rebuild.py``) asks the leader for a swap through
:meth:`Runner.ask_swap`; the leader pauses at its checkpoint between two
batches and takes its part of the swap (``_swap.py``). The runner knows
nothing of the rebuild beyond the :class:`Swap` it is handed.
"""

from __future__ import annotations

import logging
from collections.abc import Callable

import trio

from .. import _db, _telemetry
from .._errors import DatabaseError, HandlerFailed, PartitionsDiffer, StoreUnavailable
from .._stream import EventStream, Subscription
from .._values import EventRecord
from . import _leases
from ._apply import apply_in_time, prepare_schema
from ._definition import SUBSCRIPTION_BATCHES, Projection, ProjectionState, ProjectionStatus
from ._skip import apply_skipping
from ._swap import Swap, swap_in

LEADER_RETRY = 1.0
"""Seconds between a standby's attempts to take the lead."""

IDLE_CHECKPOINT = 0.5
"""Seconds without events after which the checkpoint moves to the stream's position."""

_FOLLOWING = frozenset({ProjectionState.LIVE, ProjectionState.CATCHING_UP, ProjectionState.REBUILDING})
"""States in which the leader follows the stream (its subscription's position counts)."""

_log = logging.getLogger("eventbus.projections")


class Runner:
    """One projection in this process: its supervised task and its state.

    Others read its state (``state``, ``applied``, ``leader``, ``last_error``)
    and change it only through its methods.

    Args:
        projection: what it runs.
        dsn: where its own connection goes.
        stream: what it subscribes to.
        rebuilding: whether a rebuild of the projection is under way (its
            state is then ``rebuilding`` while it follows the stream).
    """

    def __init__(
        self, projection: Projection, *, dsn: str, stream: EventStream, rebuilding: Callable[[], bool]
    ) -> None:
        self.projection = projection
        self._dsn = dsn
        self._stream = stream
        self._rebuilding = rebuilding
        self.state: ProjectionState = ProjectionState.STARTING
        self.applied = 0
        self.restarts = 0
        self.dead_letters = 0
        self.last_error: str | None = None
        self._differ = False  # standing by: the projection's partitions are stored
        self.poison: int | None = None  # the position of the event the latest failure was in
        self._skip: int | None = None  # that event goes to the dead letters if it fails again
        self.leader = False
        self._failures = 0
        self._sub: Subscription | None = None
        self._changed = trio.Event()
        self._swap: Swap | None = None  # asked for by a rebuild, not yet taken
        self._wait_scope: trio.CancelScope | None = None
        self._scope = trio.CancelScope()
        self._resume = trio.Event()
        self._batch_started: float | None = None  # trio's clock, while a batch is being applied

    # ------------------------------------------------------------ what others see

    def position(self) -> int:
        """The position up to which the read model reflects every event."""
        sub = self._sub
        if sub is not None and sub.buffered == 0 and self._batch_started is None and self.state in _FOLLOWING:
            return max(self.applied, sub.position)
        return self.applied

    def status(self, stream_position: int) -> ProjectionStatus:
        """The projection's status, ``stream_position`` being the stream's."""
        checkpoint = self.position()
        started = self._batch_started
        return ProjectionStatus(
            state=self.state,
            checkpoint=checkpoint,
            lag=max(0, stream_position - checkpoint),
            restarts=self.restarts,
            last_error=self.last_error,
            dead_letters=self.dead_letters,
            leader=self.leader,
            batch_running=None if started is None else trio.current_time() - started,
        )

    async def wait_changed(self) -> None:
        """Block until the state or the position changes."""
        await self._changed.wait()

    # ------------------------------------------------------------ what others ask

    def stop(self) -> None:
        """Cancel the task (a batch under way is rolled back); state ``stopped``."""
        self._scope.cancel()
        self.state = ProjectionState.STOPPED
        self._notify()  # (a wait_until_caught_up learns of it)

    def restart(self, *, skip_poison: bool = False) -> None:
        """Let a ``failed`` runner try again; nothing otherwise. With
        ``skip_poison``, the event it failed on goes to the dead letters if
        it fails again."""
        if self.state != ProjectionState.FAILED:
            return  # a resume kept for later would skip its next failure
        if skip_poison:
            self._skip = self.poison
        # Restarting from now on, not once its task runs: a wait_until_caught_up
        # right after this call must not see the old failure.
        self._mark_restarting()
        self._resume.set()

    def ask_swap(self, swap: Swap) -> None:
        """A rebuild's copy has (nearly) caught up: pause at the checkpoint
        between two batches and take the leader's part of ``swap``."""
        self._swap = swap
        self.interrupt()

    def withdraw_swap(self, swap: Swap) -> None:
        """The rebuild that asked for ``swap`` stops: forget it, unless taken."""
        if self._swap is swap:
            self._swap = None

    def interrupt(self) -> None:
        """Wake the apply loop from its wait (a swap is asked for, or a
        rebuild ended and the state is worked out again)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    # ------------------------------------------------------------ supervision

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _count_dead_letter(self) -> None:
        self.dead_letters += 1

    async def run(self) -> None:
        """The supervised task: lead (or stand by) until stopped; restart
        after a failure with the projection's backoff, up to its limit."""
        policy = self.projection.restart
        with self._scope:
            while True:
                try:
                    await self._lead()
                except (StoreUnavailable, DatabaseError) as exc:
                    # The database, not the handlers: retry, without counting toward failure.
                    self.last_error = str(exc)
                    self._mark_restarting()
                    delay = policy.delay(min(self._failures + 1, 4))
                    _log.warning("projection %s: restarting in %.1f s: %s", self.projection.name, delay, exc,
                                 exc_info=exc)  # fmt: skip
                    await trio.sleep(delay)
                except Exception as exc:
                    # A handler (HandlerFailed), or anything else this projection
                    # raised: its own failure, never the bus's.
                    self.last_error = str(exc) if isinstance(exc, HandlerFailed) else f"{type(exc).__name__}: {exc}"
                    record = exc.record if isinstance(exc, HandlerFailed) else None
                    self.poison = record.sequence_number if isinstance(record, EventRecord) else None
                    self._failures += 1
                    if policy.gives_up(self._failures) or (isinstance(exc, HandlerFailed) and exc.fatal):
                        self.state = ProjectionState.FAILED
                        _log.error("projection %s failed after %d restarts: %s", self.projection.name,
                                   self._failures - 1, self.last_error, exc_info=exc)  # fmt: skip
                        self._notify()
                        await self._resume.wait()
                        self._resume = trio.Event()
                        self._failures = 0
                        continue
                    self._mark_restarting()
                    delay = policy.delay(self._failures)
                    _log.warning("projection %s: restarting in %.1f s: %s", self.projection.name, delay,
                                 self.last_error, exc_info=exc)  # fmt: skip
                    await trio.sleep(delay)

    def _mark_restarting(self) -> None:
        self.state = ProjectionState.RESTARTING
        self.restarts += 1
        self.leader = False
        self._notify()

    async def _take_lead(self, conn: _db.Connection) -> bool:
        """Take the lead if it is free and the projection is not partitioned
        meanwhile (then it stands by, saying why, until that changes)."""
        key = _leases.leader_key(self.projection.name)
        if not await conn.fetchval("SELECT pg_try_advisory_lock($1)", key):
            return False
        try:
            await _leases.check_single(conn, self.projection.name)
        except PartitionsDiffer as exc:
            await conn.fetchval("SELECT pg_advisory_unlock($1)", key)
            if not self._differ:
                _log.warning("projection %s: %s", self.projection.name, exc)
            self.last_error, self._differ = str(exc), True
            self._notify()
            return False
        if self._differ:
            self.last_error, self._differ = None, False
        return True

    async def _lead(self) -> None:
        name = self.projection.name
        conn = await _db.connect(self._dsn, application_name=f"eventbus-projection {name}")
        try:
            self.state = ProjectionState.STANDBY
            self._notify()
            while not await self._take_lead(conn):
                applied = int(
                    await conn.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", name) or 0
                )
                if applied != self.applied:
                    self.applied = applied
                    self._notify()  # wait_until_caught_up here follows the leader
                await trio.sleep(LEADER_RETRY)
            self.leader = True
            _log.info("projection %s: this process leads it now", name)
            self.state = ProjectionState.STARTING
            await conn.execute("INSERT INTO eventbus.projections (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
            checkpoint = int(await conn.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", name))
            vanished = await prepare_schema(conn, self.projection, self.projection.schema, checkpoint=checkpoint)
            self.applied = 0 if vanished else checkpoint  # without its tables, the model reflects nothing
            self._notify()
            if vanished:
                swapped = await self._hold_for_rebuild(conn, checkpoint, vanished)
                if swapped is None:
                    return  # restart(): take the lead again
                checkpoint = swapped
            while True:
                checkpoint = await self._follow(conn, checkpoint)
        finally:
            if self.leader:
                _log.info("projection %s: this process no longer leads it", name)
            self.leader = False
            self._sub = None
            await conn.close()  # closing the session lets go of the lead

    async def _follow(self, conn: _db.Connection, checkpoint: int) -> int:
        """Apply batches from ``checkpoint`` on; return the checkpoint after a swap."""
        projection = self.projection
        sub = self._stream.subscribe(
            projection.filter,
            after=checkpoint,
            max_batch=projection.batch_size,
            buffer=projection.batch_size * SUBSCRIPTION_BATCHES,
            name=f"projection {projection.name}",
        )
        async with sub:
            self._sub = sub
            sub.on_move = self._notify
            while True:
                if self._swap is not None:
                    return await self._take_swap(conn, checkpoint)
                state = ProjectionState.REBUILDING if self._rebuilding() else _state_of(sub)
                if state != self.state:
                    self.state = state
                    self._notify()
                batch: list[EventRecord] | None = None
                with trio.move_on_after(IDLE_CHECKPOINT) as self._wait_scope:
                    try:
                        batch = await sub.__anext__()
                    except StopAsyncIteration:
                        await trio.sleep_forever()  # the bus is closing: cancellation follows
                self._wait_scope = None
                if batch is None:
                    position = sub.position
                    if position > checkpoint and self._swap is None:
                        # Nothing to apply up to there: the checkpoint may move on.
                        await conn.execute("SELECT eventbus.advance_checkpoint($1, $2, $3)",
                                           projection.name, checkpoint, position)  # fmt: skip
                        checkpoint = self.applied = position
                        self._notify()
                    continue
                self._batch_started = trio.current_time()
                self._notify()
                try:
                    checkpoint = await self._apply(conn, batch, checkpoint)
                finally:
                    self._batch_started = None
                self.applied = checkpoint
                self._failures = 0
                self._notify()

    async def _apply(self, conn: _db.Connection, batch: list[EventRecord], checkpoint: int) -> int:
        """Apply one batch in its span (the poison event a resume named as
        under ``on_error="skip"``); the new checkpoint."""
        projection = self.projection
        attributes = {"eventbus.projection": projection.name, "eventbus.events": len(batch),
                      "eventbus.position": batch[-1].sequence_number}  # fmt: skip
        with _telemetry.span("eventbus.projection_batch", attributes, lambda: (r.metadata for r in batch)):
            skip = self._skip
            if skip is not None and skip <= batch[-1].sequence_number:
                checkpoint = await apply_skipping(conn, projection, batch, checkpoint, skip, self._count_dead_letter)
                self._skip = None
                return checkpoint
            return await apply_in_time(conn, projection, batch, checkpoint, self._count_dead_letter)

    async def _hold_for_rebuild(self, conn: _db.Connection, checkpoint: int, vanished: list[str]) -> int | None:
        """The read model's tables are gone while its checkpoint is past 0:
        fail, rather than carry on over an empty model, and keep the lead
        until a rebuild here swaps a fresh copy in (its checkpoint after) or
        ``restart`` asks to try again (None)."""
        name = self.projection.name
        self.last_error = (
            f"projection {name}: its tables {', '.join(vanished)} are gone while its checkpoint is at {checkpoint}: "
            f"it will not carry on over an empty read model; rebuild it (bus.projections.rebuild({name!r}))"
            " to build them again from the events"
        )
        self.state = ProjectionState.FAILED
        _log.error("%s", self.last_error)
        self._notify()
        while True:
            swap, self._swap = self._swap, None
            if swap is not None:
                swapped = await swap_in(conn, self.projection, checkpoint, swap)
                if swapped is not None:
                    self.applied, self.last_error = swapped, None
                    self._notify()
                    return swapped
            if self._resume.is_set():
                self._resume = trio.Event()
                return None
            with trio.CancelScope() as self._wait_scope:  # ask_swap and restart wake it
                await self._resume.wait()
            self._wait_scope = None

    async def _take_swap(self, conn: _db.Connection, checkpoint: int) -> int:
        """Pause at ``checkpoint`` for the rebuild's copy, then swap it in;
        the checkpoint after."""
        swap = self._swap
        assert swap is not None
        self._swap = None
        swapped = await swap_in(conn, self.projection, checkpoint, swap)
        if swapped is None:
            return checkpoint
        self.applied = swapped
        self._notify()
        return swapped


def _state_of(sub: Subscription) -> ProjectionState:
    return ProjectionState.LIVE if sub.state == "live" else ProjectionState.CATCHING_UP
