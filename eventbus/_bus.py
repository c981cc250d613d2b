"""The bus: the store actor, the stream actor and the listener in one nursery.

Every append committed through ``bus.store`` is handed to the stream before
the appender is answered. Events appended by other processes on the same
database reach the stream too: their transactions NOTIFY, the listener hears
it and asks the stream to read the rows past its position; a timer asks again
every ``poll_interval`` seconds, which covers a lost notification, a killed
listening connection and a restarted server.
"""

from __future__ import annotations

import contextlib
import functools
import logging
import math
from collections.abc import AsyncIterator, Callable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from . import _db
from ._db import open_database
from ._errors import EventBusError, InvalidOption, StoreUnavailable
from ._nursery import open_actor_nursery
from ._projections import ProjectionManager, ProjectionStatus
from ._store import (
    MAX_BATCH_BYTES,
    READ_POOL_SIZE,
    RECONNECT_TIMEOUT,
    REPLICA_WAIT,
    WRITE_LANES,
    EventStore,
    StoreStatistics,
    check_connections,
    check_max_batch_bytes,
    replica_list,
    run_event_store,
)
from ._stream import DEFAULT_BUFFER, DEFAULT_MAX_BATCH, EventStream, Overflow, StreamStatistics, Subscription
from ._values import EventFilter, EventRecord, _json, is_number

_log = logging.getLogger("eventbus.bus")

POLL_INTERVAL = 1.0
"""Seconds between reads of what other processes appended, notified or not."""

NOTIFY_CHANNEL = "eventbus_events"

_REGISTER = """
INSERT INTO eventbus.listeners (origin, pid, listening) VALUES ($1, pg_backend_pid(), $2)
ON CONFLICT (origin) DO UPDATE SET pid = excluded.pid, since = now(), listening = excluded.listening
"""
_UNREGISTER = "DELETE FROM eventbus.listeners WHERE origin = $1"
_FORGET_GONE = "DELETE FROM eventbus.listeners WHERE pid NOT IN (SELECT pid FROM pg_stat_activity)"


@attrs.frozen
class ListenerStatistics:
    """The connection that hears other processes' appends."""

    connected: bool
    notifications: int
    reconnects: int


@attrs.frozen
class BusStatistics:
    """The bus's figures: the store, the stream and each subscription, the
    listener, and each projection started in this process."""

    store: StoreStatistics
    stream: StreamStatistics
    listener: ListenerStatistics
    projections: dict[str, ProjectionStatus]


class _Listener:
    """The bus's LISTEN connection, and its presence in ``eventbus.listeners``.

    With ``listen=False`` the bus holds no connection until ``present()``
    says it should be seen (it runs projections): it then holds one that
    only registers it, without listening (writers do not notify for it), so
    that ``eventbus status`` and operators' requests find it.
    """

    def __init__(
        self,
        dsn: str,
        stream: EventStream,
        origin: str,
        poll_interval: float,
        listen: bool = True,
        present: Callable[[], bool] = lambda: False,
    ) -> None:
        self._listen = listen
        self._present = present
        self._dsn = dsn
        self._stream = stream
        self._origin = origin
        self._poll_interval = poll_interval
        self._conn: _db.Connection | None = None
        self.notifications = 0
        self.reconnects = -1

    @property
    def connected(self) -> bool:
        """Whether the bus listens now (False with ``listen=False``)."""
        return self._listen and self._up()

    def _up(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    def _on_notify(self, payload: str) -> None:
        origin, _, _ = payload.rpartition(" ")
        self.notifications += 1
        if origin != self._origin:
            self._stream.poll_soon()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        task_status.started()
        try:
            while True:
                if self._listen and not self._up():
                    await self._connect()
                    # Whatever was appended while nobody listened.
                    self._stream.poll_soon()
                elif not self._listen and not self._up() and self._present():
                    await self._connect()
                # Half-interval ticks, skipped while local batches flow (each
                # reads what other processes appended before it): an event whose
                # notification was lost still arrives within the poll interval.
                await trio.sleep(self._poll_interval / 2)
                self._stream.poll_soon(unless_busy_within=self._poll_interval / 2, periodic=True)
        finally:
            if self._conn is not None:
                with trio.move_on_after(_db.CLOSE_TIMEOUT, shield=True):
                    with contextlib.suppress(EventBusError):
                        await self._conn.execute(_UNREGISTER, self._origin)
                await self._conn.close()

    async def _connect(self) -> None:
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        try:
            conn = await _db.connect(
                self._dsn, application_name="eventbus-listen" if self._listen else "eventbus-presence"
            )
        except StoreUnavailable:
            return  # the next tick tries again
        try:
            if self._listen:
                await conn.add_listener(NOTIFY_CHANNEL, self._on_notify)
            # Writers of other processes notify only while some bus listens.
            await conn.execute(_FORGET_GONE)
            await conn.execute(_REGISTER, self._origin, self._listen)
        except BaseException as exc:
            conn.terminate()
            if isinstance(exc, StoreUnavailable):
                return
            if isinstance(exc, EventBusError):  # polls still bring other processes' events
                _log.warning("the bus could not %s (%s); it tries again at the next tick",
                             "listen" if self._listen else "register for eventbus status", exc)  # fmt: skip
                return
            raise
        self._conn = conn
        self.reconnects += 1


class Bus:
    """An open bus (see :func:`open_bus`).

    Attributes:
        store: the event store; appends through it are dispatched to the stream.
        stream: the stream actor.
        projections: start, watch, wait for and rebuild projections.
    """

    def __init__(
        self, store: EventStore, stream: EventStream, listener: _Listener, projections: ProjectionManager
    ) -> None:
        self.store = store
        self.stream = stream
        self.projections = projections
        self._listener = listener

    def subscribe(
        self,
        filter: EventFilter | Sequence[EventFilter],
        *,
        after: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        buffer: int = DEFAULT_BUFFER,
        overflow: Overflow = "catch_up",
        name: str | None = None,
    ) -> Subscription:
        """Subscribe to committed events that match ``filter`` (or any of a
        sequence of filters).

        See :meth:`EventStream.subscribe`; use the result with ``async with``.
        """
        return self.stream.subscribe(
            filter, after=after, max_batch=max_batch, buffer=buffer, overflow=overflow, name=name
        )

    def statistics(self) -> BusStatistics:
        """The bus's figures now; never blocks."""
        return BusStatistics(
            store=self.store.statistics(),
            stream=self.stream.statistics(),
            listener=ListenerStatistics(
                connected=self._listener.connected,
                notifications=self._listener.notifications,
                reconnects=max(0, self._listener.reconnects),
            ),
            projections=self.projections.status(),
        )


MIN_POLL_INTERVAL = 0.001
"""The shortest ``poll_interval`` (seconds): a shorter one keeps a processor busy reading nothing."""


def _check_listening(poll_interval: object, listen: object) -> None:
    """Refuse a ``poll_interval`` that is not a number of seconds from
    ``MIN_POLL_INTERVAL`` on, and a ``listen`` that is not a bool.

    Raises:
        InvalidOption: naming the option.
    """
    if not is_number(poll_interval) or not MIN_POLL_INTERVAL <= poll_interval < math.inf:
        raise InvalidOption(
            f"poll_interval must be a number of seconds from {MIN_POLL_INTERVAL} on, not {poll_interval!r}"
        )
    if type(listen) is not bool:
        raise InvalidOption(f"listen must be True or False, not {listen!r}")


async def run_bus(
    dsn: str,
    *,
    poll_interval: float = POLL_INTERVAL,
    max_payload_bytes: int = _json.DEFAULT_MAX_PAYLOAD_BYTES,
    read_pool_size: int = READ_POOL_SIZE,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
    write_connections: int = WRITE_LANES,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    replica_dsns: Sequence[str] | None = None,
    replica_wait: float = REPLICA_WAIT,
    listen: bool = True,
    task_status: trio.TaskStatus[Bus] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the bus's actors until cancelled; ``task_status.started`` gets the bus.

    For ``nursery.start(run_bus, dsn)`` in a program that manages its own
    nursery; ``dsn`` must be a real connection string. The options are
    :func:`open_bus`'s.
    """
    _check_listening(poll_interval, listen)
    stream: EventStream | None = None

    async def dispatch(records: list[EventRecord]) -> None:
        if stream is not None:
            await stream.publish(records)

    async with _db.open_loop(), open_actor_nursery() as nursery:
        store: EventStore = await nursery.start(
            functools.partial(
                run_event_store,
                dsn,
                on_commit=dispatch,
                max_payload_bytes=max_payload_bytes,
                read_pool_size=read_pool_size,
                reconnect_timeout=reconnect_timeout,
                write_connections=write_connections,
                max_batch_bytes=max_batch_bytes,
                replica_dsns=replica_dsns,
                replica_wait=replica_wait,
            )
        )
        stream = EventStream(store, await store.head())
        stream.notified = listen
        await nursery.start(stream.run)
        projections = ProjectionManager(dsn, store, stream, nursery)
        nursery.start_soon(projections.run, name="projection calls")  # ends them as the bus closes
        listener = _Listener(dsn, stream, store.origin, poll_interval, listen, lambda: bool(projections.status()))
        await nursery.start(listener.run)
        task_status.started(Bus(store, stream, listener, projections))


@asynccontextmanager
async def open_bus(
    dsn: str | None = None,
    *,
    poll_interval: float = POLL_INTERVAL,
    max_payload_bytes: int = _json.DEFAULT_MAX_PAYLOAD_BYTES,
    read_pool_size: int = READ_POOL_SIZE,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
    write_connections: int = WRITE_LANES,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    replica_dsns: Sequence[str] | None = None,
    replica_wait: float = REPLICA_WAIT,
    listen: bool = True,
) -> AsyncIterator[Bus]:
    """Open the bus for the duration of the block.

    ``dsn`` as for :func:`open_event_store` (None: ``EVENTBUS_DSN``, then
    ``DATABASE_URL``, else the embedded server). Works inside any Trio program,
    with or without a trio-asyncio loop already open. The stream starts at the
    store's head. ``replica_dsns`` (hot standbys that serve reads) and
    ``replica_wait``: as for :func:`open_event_store`.

    Leaving the block closes every subscription (their iteration ends), stops
    the actors and closes the connections, shielded and bounded, also when the
    block is cancelled.

    The options are :func:`open_event_store`'s, and ``poll_interval``: seconds
    between reads of what other processes appended. With ``listen`` (the
    default) a connection of its own LISTENs for their appends, so that
    subscribers receive them at once; ``listen=False`` saves that connection,
    and this process the wake-up of every notification, for a process that
    only appends and reads (a command line, a dashboard's screen): the stream
    then learns of other processes' appends every ``poll_interval / 2``
    seconds, and a subscriber receives them that late. Once such a bus runs
    a projection, it holds one connection that does not listen but registers
    it, so that ``eventbus status`` and operators' requests find it.

    Raises:
        InvalidEvent: ``max_batch_bytes`` is out of range.
        InvalidOption: ``replica_dsns``, ``replica_wait``, ``listen``,
            ``poll_interval`` (a number of seconds from ``MIN_POLL_INTERVAL``
            on), ``read_pool_size``, ``write_connections``,
            ``reconnect_timeout`` or ``max_payload_bytes`` was refused.
        StoreUnavailable: the database could not be reached at open
            (``InvalidDSN``: its connection string cannot be read).
    """
    check_max_batch_bytes(max_batch_bytes)
    check_connections(read_pool_size, write_connections, reconnect_timeout, max_payload_bytes)  # before anything starts
    replica_list(replica_dsns, replica_wait)
    _check_listening(poll_interval, listen)
    async with open_database(dsn) as resolved, _db.open_loop(), open_actor_nursery() as nursery:
        bus: Bus = await nursery.start(
            functools.partial(
                run_bus,
                resolved,
                poll_interval=poll_interval,
                max_payload_bytes=max_payload_bytes,
                read_pool_size=read_pool_size,
                reconnect_timeout=reconnect_timeout,
                write_connections=write_connections,
                max_batch_bytes=max_batch_bytes,
                replica_dsns=replica_dsns,
                replica_wait=replica_wait,
                listen=listen,
            )
        )
        try:
            yield bus
        finally:
            nursery.cancel_scope.cancel()
