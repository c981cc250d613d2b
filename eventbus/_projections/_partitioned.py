"""A partitioned projection's runner: many processes, a fair share each.

Each process that starts a projection with ``partitions > 1`` joins its
members (``_leases.py``) and holds the leases of its share of partitions,
renewed every ``HEARTBEAT`` seconds on a connection of its own. It reads the
stream once, whatever it holds: one subscription from the lowest checkpoint
of its partitions, each record routed to partition
``stable_hash(partition_key(record)) % partitions``. A batch (up to
``batch_size`` events of the partitions held, from as many stream batches as
are buffered) is applied in ONE transaction for them all
(``_partitioned_apply.py``): the handlers run on each partition's records in
turn, and the commit moves each partition's checkpoint, fenced by its lease's
epoch: exactly once per event, in position order per key, and never by a
process that lost the lease. When
it takes a partition the subscription starts again from the lowest
checkpoint; the records of partitions past theirs are passed over.

A record the key function raises on goes to a partition chosen by its event
id, whose handlers then fail on it: under ``on_error="skip"`` it is a dead
letter, under ``retry`` the projection restarts as after any handler failure.

A handler failure under ``retry`` fails the runner as a whole: it lets go of
all its partitions, restarts with the projection's backoff and, past its
limit, is ``failed``; the other processes take its partitions meanwhile (and
fail on the same event in turn). Resumed with ``skip_poison``, the event it
failed on (``poison``) goes to the dead letters if it fails again, once this
process holds its partition (``_skip.py``).
"""

from __future__ import annotations

import logging
import os
import secrets
import socket
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .. import _db
from .._errors import DatabaseError, HandlerFailed, PartitionsDiffer, ProjectionError, StoreUnavailable
from .._nursery import open_actor_nursery
from .._stream import EventStream, Subscription, subscribe_slice
from .._values import EventRecord, PartitionSlice, Sliced
from . import _leases
from ._apply import prepare_schema
from ._definition import (
    SUBSCRIPTION_BATCHES,
    Projection,
    ProjectionState,
    ProjectionStatus,
    key_function,
)
from ._partitioned_apply import Held, ShareApplier
from ._routing import Router, check_witnesses

_FOLLOWING = frozenset({ProjectionState.LIVE, ProjectionState.CATCHING_UP, ProjectionState.STANDBY})
"""The states a rebuild under way in this process shows as ``rebuilding``."""

DIFFER_RETRY = 1.0
"""Seconds between a standing-by process's checks of a projection whose stored partitions differ from its own."""

IDLE_CHECKPOINT = 0.5
"""Seconds without events after which the held partitions' checkpoints move to the stream's position."""

LEAVE_TIMEOUT = 2.0
"""Seconds a stopping process tries to hand its leases back before leaving them to expire."""

_log = logging.getLogger("eventbus.projections")


class PartitionedRunner(ShareApplier, Router):
    """One partitioned projection in this process: its share of partitions.

    The manager uses it as it does a :class:`Runner` (``state``, ``leader``,
    ``position``, ``status``, ``stop``, ``restart``); a rebuild is
    ``_partitioned_rebuild.py``'s, which this runner knows nothing of: a
    swap shows here as leases lost and taken again under a new epoch.
    """

    def __init__(
        self, projection: Projection, *, dsn: str, stream: EventStream, rebuilding: Callable[[], bool] = lambda: False
    ) -> None:
        self.projection = projection
        self._rebuilding = rebuilding  # whether this process rebuilds the projection now
        self.member = f"{socket.gethostname()}:{os.getpid()}:{secrets.token_hex(4)}"
        self._dsn = dsn
        self._stream = stream
        self.state: ProjectionState = ProjectionState.STARTING
        self.restarts = 0
        self.dead_letters = 0
        self.last_error: str | None = None
        self.poison: int | None = None  # the position of the event the latest failure was in
        self._skip: int | None = None  # that event goes to the dead letters if it fails again
        self._failures = 0
        self._differ = False  # standing by: the stored partitions differ from this process's
        self._held: dict[int, Held] = {}  # applied by the loop
        self._taken: dict[int, Held] = {}  # taken by the heartbeat, for the loop to adopt between batches
        self._released: set[int] = set()  # let go of by the heartbeat for another member (not taken from it)
        self._owners: dict[str, tuple[int, ...]] = {}
        self._stored: tuple[int, ...] = (0,) * projection.partitions
        self._through = 0  # every held partition has applied its events up to here
        self._resubscribe = False
        self._sub: Subscription | None = None
        self._changed = trio.Event()
        self._wait_scope: trio.CancelScope | None = None
        self._scope = trio.CancelScope()
        self._resume = trio.Event()
        self._batch_started: float | None = None
        self._unkeyed: dict[Any, str] = {}  # event id -> why the key function failed on it
        self._routes: dict[str, int] = {}  # string key -> its partition (see ROUTES_REMEMBERED)
        self._routed_over = projection.partitions  # the partitions self._routes was made for
        self._key = key_function(projection)
        self._slice: frozenset[int] | None = None  # the partitions a subscription by a payload field reads
        self._applying = attrs.evolve(
            projection,
            handlers={t: self._guard(h) for t, h in projection.handlers.items()},
            batch_handler=None if projection.batch_handler is None else self._guard_batch(projection.batch_handler),
        )

    # ------------------------------------------------------------ what others see

    @property
    def leader(self) -> bool:
        """Whether this process holds any partition's lease."""
        return bool(self._held or self._taken)

    def held(self) -> tuple[int, ...]:
        """The partitions whose leases are held here, in order: those applied,
        and those taken to be applied from the next batch on."""
        return tuple(sorted({*self._held, *self._taken}))

    def _following(self) -> int:
        sub = self._sub
        if sub is not None and sub.buffered == 0 and self._batch_started is None and not self._resubscribe:
            return max(self._through, sub.position)
        return self._through

    def position(self) -> int:
        """The position up to which every partition reflects every event: the
        slowest partition's (held here, as applied; elsewhere, as last read)."""
        through = self._following()
        held = dict(self._held)
        return min(max(held[k].checkpoint, through) if k in held else stored for k, stored in enumerate(self._stored))

    def status(self, stream_position: int) -> ProjectionStatus:
        """The projection's status, ``stream_position`` being the stream's."""
        checkpoint = self.position()
        started = self._batch_started
        owners = dict(self._owners)
        if self.leader:
            owners[self.member] = self.held()
        else:
            owners.pop(self.member, None)
        state = self.state
        if state in _FOLLOWING and self._rebuilding():
            state = ProjectionState.REBUILDING
        return ProjectionStatus(
            state=state,
            checkpoint=checkpoint,
            lag=max(0, stream_position - checkpoint),
            restarts=self.restarts,
            last_error=self.last_error,
            dead_letters=self.dead_letters,
            leader=self.leader,
            batch_running=None if started is None else trio.current_time() - started,
            partitions=owners,
        )

    async def wait_changed(self) -> None:
        """Block until the state, a checkpoint or the leases change."""
        await self._changed.wait()

    # ------------------------------------------------------------ what others ask

    def stop(self) -> None:
        """Cancel the task (a batch under way is rolled back, the leases are
        handed back, bounded by ``LEAVE_TIMEOUT``); state ``stopped``."""
        self._scope.cancel()
        self.state = ProjectionState.STOPPED
        self._notify()  # (a wait_until_caught_up learns of it)

    def restart(self, *, skip_poison: bool = False) -> None:
        """Let a ``failed`` runner try again; nothing otherwise. With
        ``skip_poison``, the event it failed on goes to the dead letters if
        it fails again (once this process holds its partition)."""
        if self.state != ProjectionState.FAILED:
            return
        if skip_poison:
            self._skip = self.poison
        self._mark_restarting()
        self._resume.set()

    def _notify(self) -> None:
        self._changed.set()
        self._changed = trio.Event()

    def _mark_restarting(self) -> None:
        self.state = ProjectionState.RESTARTING
        self.restarts += 1
        self._notify()

    # ------------------------------------------------------------ supervision

    async def run(self) -> None:
        """The supervised task: hold a share of the partitions until stopped;
        restart after a failure with the projection's backoff, up to its limit
        (then ``failed``, holding none, so that the others may try)."""
        policy = self.projection.restart
        with self._scope:
            while True:
                try:
                    await self._member()
                except PartitionsDiffer as exc:  # not a failure: it waits for its turn
                    if self.state != ProjectionState.STANDBY:
                        _log.warning("projection %s: %s", self.projection.name, exc)
                    self.last_error, self._differ = str(exc), True
                    self.state = ProjectionState.STANDBY
                    self._notify()
                    await trio.sleep(DIFFER_RETRY)
                except (StoreUnavailable, DatabaseError) as exc:
                    self.last_error = str(exc)
                    self._mark_restarting()
                    await trio.sleep(policy.delay(min(self._failures + 1, 4)))
                except Exception as exc:
                    self.last_error = str(exc) if isinstance(exc, HandlerFailed) else f"{type(exc).__name__}: {exc}"
                    record = exc.record if isinstance(exc, HandlerFailed) else None
                    self.poison = record.sequence_number if isinstance(record, EventRecord) else None
                    self._failures += 1
                    if policy.gives_up(self._failures) or (isinstance(exc, HandlerFailed) and exc.fatal):
                        self.state = ProjectionState.FAILED
                        _log.error("projection %s failed: %s", self.projection.name, self.last_error)
                        self._notify()
                        await self._resume.wait()
                        self._resume = trio.Event()
                        self._failures = 0
                        continue
                    self._mark_restarting()
                    await trio.sleep(policy.delay(self._failures))

    async def _member(self) -> None:
        name = self.projection.name
        conn = await _db.connect(self._dsn, application_name=f"eventbus-projection {name}")
        try:
            leases = await _db.connect(self._dsn, application_name=f"eventbus-leases {name}")
        except BaseException:
            with trio.CancelScope(shield=True):
                await conn.close()
            raise
        try:
            if self.state != ProjectionState.STANDBY:
                self.state = ProjectionState.STARTING
                self._notify()
            await self._heartbeat(leases)
            if self._differ:  # the partitions are this process's count now
                self.last_error, self._differ = None, False
                self.state = ProjectionState.STARTING
                self._notify()
            vanished = await prepare_schema(conn, self.projection, self.projection.schema, checkpoint=max(self._stored))
            if vanished:
                raise ProjectionError(
                    f"projection {name}: its tables {', '.join(vanished)} are gone while its partitions have applied"
                    " events: it will not carry on over an empty read model"
                )
            async with open_actor_nursery() as nursery:  # a handler's failure comes out as itself
                nursery.start_soon(self._heartbeats, leases)
                await self._apply_loop(conn)
        finally:
            self._held.clear()
            self._taken.clear()
            self._sub = None
            with trio.CancelScope(shield=True), trio.move_on_after(LEAVE_TIMEOUT):
                try:
                    await _leases.leave(leases, name, self.member)
                except (StoreUnavailable, DatabaseError) as exc:  # the leases expire on their own
                    _log.warning("projection %s: could not hand back its leases: %s", name, exc)
            self._notify()
            await leases.close()
            await conn.close()

    # ------------------------------------------------------------ leases

    async def _heartbeats(self, conn: _db.Connection) -> None:
        while True:
            await trio.sleep(_leases.HEARTBEAT)
            await self._heartbeat(conn)

    async def _heartbeat(self, conn: _db.Connection) -> None:
        """Renew, release and take leases; first check this process's key
        against the partitions' witnesses, at every heartbeat: a process of
        another key may have joined since (or be running when this one
        joins a projection nothing has applied yet), and both step back
        once either has applied a batch (PartitionsDiffer)."""
        projection = self.projection
        found, differed = await _leases.witnesses(conn, projection.name, projection.partitions)
        try:
            check_witnesses(projection, found, differed)
        except PartitionsDiffer:
            if not differed:  # the others stand by too: one of them may have applied with the other key already
                await _leases.mark_keys_differ(conn, projection.name)
            raise
        round_ = await _leases.heartbeat(conn, projection.name, self.member, projection.partitions)
        owned = {k for ks in round_.owners.values() for k in ks}
        for leases in (self._held, self._taken):
            for k in list(leases):
                lease = round_.held.get(k)
                if lease is None or lease.epoch != leases[k].epoch:
                    del leases[k]  # a batch of it under way is refused at its commit
                    if lease is None and k not in owned:
                        self._released.add(k)
                    else:
                        self._released.discard(k)
                    _log.info("projection %s: partition %d is no longer held here", projection.name, k)
        for k, lease in round_.held.items():
            if k not in self._held and k not in self._taken:
                self._taken[k] = Held(lease.epoch, lease.checkpoint)
                self._released.discard(k)
                self._interrupt()
        self._owners = round_.owners
        self._stored = round_.checkpoints
        self._notify()

    def _adopt(self) -> None:
        """Apply the partitions taken since the last batch from now on (between
        two batches: a batch under way was routed without them)."""
        if not self._taken:
            return
        through = self._following()
        for k, held in self._taken.items():
            self._held[k] = held
            if held.checkpoint < through:
                self._resubscribe = True  # read again from its checkpoint
        self._taken.clear()

    def _interrupt(self) -> None:
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    # ------------------------------------------------------------ applying

    async def _apply_loop(self, conn: _db.Connection) -> None:
        projection = self.projection
        while True:
            self._adopt()
            if not self._held:
                self.state = ProjectionState.STANDBY
                self._notify()
                while not self._taken:
                    with trio.move_on_after(_leases.HEARTBEAT) as self._wait_scope:
                        await trio.sleep_forever()
                    self._wait_scope = None
                self._adopt()
            after = min(h.checkpoint for h in self._held.values())
            self._through, self._resubscribe = after, False
            options: dict[str, Any] = {
                "after": after,
                "max_batch": projection.batch_size,
                "buffer": projection.batch_size * SUBSCRIPTION_BATCHES,
                "name": f"projection {projection.name}",
            }
            if isinstance(projection.partition_key, str):  # the store sends the held partitions' events alone
                self._slice = frozenset(self._held)
                chosen = PartitionSlice(projection.partition_key, projection.partitions, self._slice)
                sub = subscribe_slice(self._stream, Sliced(projection.filter, chosen), **options)
            else:
                sub = self._stream.subscribe(projection.filter, **options)
            try:
                async with sub:
                    self._sub = sub
                    sub.on_move = self._notify
                    await self._follow(conn, sub)
            finally:
                self._sub, self._slice = None, None

    async def _follow(self, conn: _db.Connection, sub: Subscription) -> None:
        """Apply batches until a partition taken here needs an earlier start."""
        while True:
            self._adopt()
            if self._resubscribe or not self._held:
                return
            if self._slice is not None and self._slice != frozenset(self._held):
                return  # read the partitions held now (and no longer those let go of)
            state = ProjectionState.LIVE if sub.state == "live" else ProjectionState.CATCHING_UP
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
                await self._advance_idle(conn, sub)
                continue
            await self._apply(conn, sub, batch)

    async def _advance_idle(self, conn: _db.Connection, sub: Subscription) -> None:
        if sub.buffered or self._resubscribe:
            return
        position = max(self._through, sub.position)
        behind = [
            _leases.Lease(k, held.epoch, held.checkpoint)
            for k, held in self._held.items()
            if held.checkpoint < position
        ]
        if not behind:
            return
        await _leases.advance_idle(conn, self.projection.name, self.member, behind, position)
        self._through = position
        for lease in behind:
            held = self._held.get(lease.partition)
            if held is not None and held.epoch == lease.epoch:
                held.checkpoint = max(held.checkpoint, position)
        self._notify()

    async def _apply(self, conn: _db.Connection, sub: Subscription, batch: list[EventRecord]) -> None:
        """Apply ``batch`` and the stream batches buffered behind it, up to
        ``batch_size`` events of the partitions held here per transaction.

        The subscription's batches are of the stream: a process that holds a
        quarter of the partitions finds a quarter of each batch its own. So
        that each transaction (and each call of a batch handler) still gets
        full batches of its own events, the batches already buffered are
        taken too (without waiting), until ``batch_size`` of them are this
        process's; the rest of a batch starts the next transaction.
        """
        limit = self.projection.batch_size
        groups: dict[int, list[EventRecord]] = {}
        own = 0
        while True:
            for record in batch:
                k = self._route(record)
                held = self._held.get(k)
                if held is not None and record.sequence_number > held.checkpoint:
                    groups.setdefault(k, []).append(record)
                    own += 1
                    if own == limit:
                        await self._apply_groups(conn, groups)
                        groups, own = {}, 0
                        self._moved(record.sequence_number)
            if not sub.buffered or self._taken or self._resubscribe:
                break
            try:
                batch = await sub.__anext__()  # buffered: at once
            except StopAsyncIteration:
                break
            if own == 0:
                self._moved(batch[0].sequence_number - 1)
        if groups:
            await self._apply_groups(conn, groups)
        self._moved(batch[-1].sequence_number)

    def _moved(self, through: int) -> None:
        """Every held partition has applied its events up to ``through``."""
        if through > self._through:
            self._through = through
            self._notify()
