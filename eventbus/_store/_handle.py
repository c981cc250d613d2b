"""The event store: the store actor and the handle callers use.

One actor (``_writer``) owns the write connections, its lanes. Callers put
append requests on a bounded channel; the actor takes one, then its share of
the others that are ready (group commit), and runs them in one transaction and
one round trip through the ``eventbus.append_events`` function, while the next
batch forms for another lane. Each caller then gets its own outcome: a failed
condition or an id clash fails that append only. Reads go through a separate
pool and never wait behind appends; with hot standbys, to the standbys first
(``_reads.py``).
"""

from __future__ import annotations

import functools
import math
from collections.abc import AsyncIterator, Sequence
from contextlib import asynccontextmanager

import trio

from .. import _db, _telemetry
from .._db import open_database
from .._errors import ClosedError, InvalidEvent, InvalidFilter, InvalidOption
from .._nursery import check_run, open_actor_nursery
from .._values import (
    MAX_POSITION,
    Event,
    EventFilter,
    EventQuery,
    EventRecord,
    PartitionSlice,
    QueryResult,
    _json,
    is_number,
)
from ._actor import REQUEST_BUFFER, WRITE_LANES, CommitHook, StoreActor
from ._queries import query_sql, to_records
from ._reads import Reads
from ._replicas import REPLICA_WAIT
from ._requests import (
    MAX_BATCH_BYTES,
    Request,
    StoreStatistics,
    check_max_batch_bytes,
    condition,
    condition_filters,
    encoded_size,
    percentile,
    prepare,
)

READ_POOL_SIZE = 4
"""Connections in the read pool."""

RECONNECT_TIMEOUT = 10.0
"""Seconds the actor tries to reconnect, after losing its connection in the
middle of a batch, before telling those callers the outcome is unknown."""

# ---------------------------------------------------------------- the handle


class EventStore:
    """The handle to an open event store (see :func:`open_event_store`).

    ``append`` goes through the store actor; ``head`` uses the read pool;
    ``query`` uses a hot standby when the store has some, else the read pool.
    All methods may be called from many tasks at once.
    """

    def __init__(
        self,
        send: trio.MemorySendChannel[Request],
        pool: _db.Pool,
        actor: StoreActor,
        max_payload_bytes: int,
        max_batch_bytes: int = MAX_BATCH_BYTES,
        reads: Reads | None = None,
    ) -> None:
        self._send = send
        self._pool = pool
        self._reads = reads if reads is not None else Reads(pool, (), 1, REPLICA_WAIT)
        self._actor = actor
        self._max_payload_bytes = max_payload_bytes
        self._max_batch_bytes = max_batch_bytes
        self._closed = False
        self._run = trio.lowlevel.current_trio_token()  # the run that opened the store

    async def append(
        self,
        events: Sequence[Event],
        filter: EventFilter | Sequence[EventFilter] | None = None,
        expected_max_sequence_number: int | None = None,
    ) -> list[EventRecord]:
        """Store ``events``, all or none, and dispatch them to the stream.

        With a ``filter``, the append is conditional: it fails with
        ``ConcurrencyError`` iff some stored event that matches the filter has
        a position after ``expected_max_sequence_number`` (None means 0: no
        matching event may exist). Pass the ``max_sequence_number`` of the
        query you decided on. Events of the same call never count against it.

        ``filter`` may also be a sequence of filters, OR'd, as a DCB append
        condition is a query of several items: the append fails iff a stored
        event after the position matches any of them. Read with
        ``EventQuery(filters)`` and pass the same filters here. Each filter is
        checked with its own index probe.

        Retrying with the same event ids never stores twice: if the append is
        stored already, the stored records are returned.

        Blocks until the append is committed (or refused): the request waits
        in a bounded queue (``REQUEST_BUFFER``), then for its batch's single
        round trip. Validation happens first, in the caller's task.

        Cancellation: if the request has not yet gone to the database, it is
        dropped and nothing is stored; once its batch is in flight, the append
        may still commit. Either way the caller sees ``trio.Cancelled``;
        retrying with the same event ids tells which.

        Returns:
            One record per event, in the given order, with their positions.

        Raises:
            InvalidEvent: an event is not storable, or the append is bigger
                (encoded) than one batch may be, ``max_batch_bytes``; nothing
                reached the database.
            ConcurrencyError: the condition failed; nothing was stored.
            DuplicateEventId: some ids are stored already for other events.
            StoreUnavailable: the database could not be reached; see its
                ``outcome_known``.
            ClosedError: the store is closed.
            WrongTrioRun: called from a Trio run other than the store's.
        """
        try:
            prepared = prepare(events, self._max_payload_bytes, _telemetry.trace_metadata())
            filters = condition_filters(filter)
            checked = condition(filters, expected_max_sequence_number)
        except InvalidEvent:
            _telemetry.count_invalid()
            raise
        if not prepared:
            return []
        size = encoded_size(prepared, checked)
        if size > self._max_batch_bytes:
            count = f"{len(prepared)} event" + ("s" if len(prepared) > 1 else "")
            raise InvalidEvent(
                f"this append is {size} bytes encoded ({count}), over the limit of {self._max_batch_bytes} "
                "bytes for one batch (max_batch_bytes): split it into smaller appends"
            )
        self._check_open()
        request = Request(prepared, checked, expected_max_sequence_number or 0, filters, size)
        try:
            try:
                self._send.send_nowait(request)  # the common case: no extra scheduler round
            except trio.WouldBlock:
                await self._send.send(request)
            await request.done.wait()
        except trio.Cancelled:
            request.abandoned = True
            raise
        except (trio.ClosedResourceError, trio.BrokenResourceError):
            raise ClosedError("the event store is closed") from None
        if request.error is not None:
            raise request.error
        assert request.result is not None
        return request.result

    async def query(
        self, query: EventFilter | Sequence[EventFilter] | EventQuery, *, min_position: int | None = None
    ) -> QueryResult:
        """The events a filter, several filters (OR'd) or a query selects, in
        ascending position.

        With hot standbys (``replica_dsns``) the query runs on one of them,
        and may not show the latest appends. ``min_position=P`` makes the
        result include every event up to position P (a position you have
        seen, such as your own append's last record): on a standby that has
        not replayed P yet the query waits for it, up to ``replica_wait``
        seconds, and then runs on the primary instead. Without standbys every
        query runs on the primary and includes every committed event.

        Blocks for one round trip on a pooled connection, plus that wait;
        never waits behind appends. Cancellation abandons the query.

        Raises:
            InvalidFilter: ``query`` is none of these, or ``min_position`` is
                not None or a whole number >= 0.
            StoreUnavailable: the database could not be reached.
        """
        if isinstance(query, EventFilter):
            query = EventQuery([query])
        elif isinstance(query, (list, tuple)):
            query = EventQuery(query)
        elif not isinstance(query, EventQuery):
            raise InvalidFilter(f"query takes an EventFilter, a list of them or an EventQuery, not {query!r}")
        if min_position is not None and (type(min_position) is not int or not 0 <= min_position <= MAX_POSITION):
            raise InvalidFilter(f"min_position must be None or a position (a whole number >= 0), not {min_position!r}")
        return QueryResult(await self.fetch_records(query, min_position=min_position))

    async def fetch_records(
        self,
        query: EventQuery,
        upto: int | None = None,
        *,
        min_position: int | None = None,
        from_primary: bool = False,
        partition: PartitionSlice | None = None,
    ) -> list[EventRecord]:
        """The records of ``query`` with positions up to ``upto`` (if given),
        from a snapshot that shows ``min_position`` (see :meth:`query`);
        ``from_primary`` reads the primary whatever the standbys show;
        ``partition``: only the events of those partitions, computed by the
        server (the rows of the others are never sent)."""
        if not query.filters or query.limit == 0:
            return []
        self._check_open()
        sql, args = query_sql(query, upto, partition)
        return to_records(await self._reads.fetch(sql, args, min_position=min_position, from_primary=from_primary))

    def _check_open(self) -> None:
        if self._closed:
            raise ClosedError("the event store is closed")
        check_run(self._run, "the event store")

    async def head(self) -> int:
        """The highest position stored, 0 when the store is empty.

        Blocks for one round trip on a pooled connection.

        Raises:
            StoreUnavailable: the database could not be reached.
            ClosedError: the store is closed.
            WrongTrioRun: called from a Trio run other than the store's.
        """
        self._check_open()
        value = await self._pool.fetchval("SELECT coalesce(max(sequence_number), 0) FROM eventbus.events")
        return int(value)

    def statistics(self) -> StoreStatistics:
        """What the store actor has done so far; never blocks."""
        counters = self._actor.counters
        latencies = list(counters.latencies)
        batches = counters.batches
        return StoreStatistics(
            connected=self._actor.connected,
            appends=counters.appends,
            events=counters.events,
            batches=batches,
            conflicts=counters.conflicts,
            unavailable=counters.unavailable,
            reconnects=counters.reconnects,
            queued=self._send.statistics().current_buffer_used,
            last_batch_appends=counters.last_batch,
            mean_batch_appends=(counters.appends / batches) if batches else 0.0,
            p50_latency=percentile(latencies, 0.50),
            p99_latency=percentile(latencies, 0.99),
            replicas=self._reads.statistics(),
        )

    @property
    def pool(self) -> _db.Pool:
        """The primary's read pool (for the library's own readers)."""
        return self._pool

    @property
    def reads(self) -> Reads:
        """Where reads go: the standbys, then the primary (for the library's own readers)."""
        return self._reads

    @property
    def origin(self) -> str:
        """This store's name in the notifications it sends."""
        return self._actor.origin


async def run_event_store(
    dsn: str,
    *,
    on_commit: CommitHook | None = None,
    max_payload_bytes: int = _json.DEFAULT_MAX_PAYLOAD_BYTES,
    read_pool_size: int = READ_POOL_SIZE,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
    write_connections: int = WRITE_LANES,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    replica_dsns: Sequence[str] | None = None,
    replica_wait: float = REPLICA_WAIT,
    task_status: trio.TaskStatus[EventStore] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the store actor until cancelled; ``task_status.started`` gets the handle.

    For ``nursery.start(run_event_store, dsn)``: the schema is installed and the
    connections are open before ``start`` returns. ``dsn`` must be a real
    connection string (see :func:`open_event_store` for the embedded server).
    ``on_commit`` receives every committed batch's records, in order, before
    the appenders are answered; if it blocks, the actor (and so appends) wait.
    ``replica_dsns`` and ``replica_wait``: see :func:`open_event_store`.
    """
    check_max_batch_bytes(max_batch_bytes)
    check_connections(read_pool_size, write_connections, reconnect_timeout, max_payload_bytes)
    replicas = replica_list(replica_dsns, replica_wait)
    send, receive = trio.open_memory_channel[Request](REQUEST_BUFFER)
    actor = StoreActor(dsn, receive, on_commit, reconnect_timeout, write_connections, max_batch_bytes)
    async with _db.open_loop():
        pool = await _db.create_pool(dsn, max_size=read_pool_size)
        reads = Reads(pool, replicas, read_pool_size, replica_wait)
        store = EventStore(send, pool, actor, max_payload_bytes, max_batch_bytes, reads)
        try:
            async with open_actor_nursery() as nursery:
                await nursery.start(actor.run, _db.install_schema)
                await nursery.start(reads.run)
                task_status.started(store)
        finally:
            store._closed = True
            send.close()
            await pool.close()


@asynccontextmanager
async def open_event_store(
    dsn: str | None = None,
    *,
    on_commit: CommitHook | None = None,
    max_payload_bytes: int = _json.DEFAULT_MAX_PAYLOAD_BYTES,
    read_pool_size: int = READ_POOL_SIZE,
    reconnect_timeout: float = RECONNECT_TIMEOUT,
    write_connections: int = WRITE_LANES,
    max_batch_bytes: int = MAX_BATCH_BYTES,
    replica_dsns: Sequence[str] | None = None,
    replica_wait: float = REPLICA_WAIT,
) -> AsyncIterator[EventStore]:
    """Open the event store for the duration of the block.

    ``dsn``: a PostgreSQL connection string; None means ``EVENTBUS_DSN``, then
    ``DATABASE_URL``, else the embedded server (started if needed). The schema
    is created if missing. Works inside any Trio program, with or without a
    trio-asyncio loop already open.

    Options: ``on_commit`` receives each committed batch's records in order
    (the bus uses it); ``max_payload_bytes`` bounds a payload's JSON;
    ``read_pool_size`` connections serve queries; ``write_connections``
    carry batches (more than one lets the next batch form while one commits);
    ``reconnect_timeout`` bounds how long an append waits to learn its outcome
    after a lost connection; ``max_batch_bytes`` bounds a batch's encoded size
    (appends that would pass it together go in separate batches, and a single
    append over it is refused with ``InvalidEvent``; at most
    ``BATCH_BYTES_CEILING``, under PostgreSQL's 1 GB message limit).

    ``replica_dsns``: connection strings of hot standbys of the database
    (PostgreSQL streaming replication). Queries, subscriptions' catch-up
    reads and projection ``reader`` blocks then go to the standbys
    (round-robin over those that are up); appends, the stream's live reads
    and ``head`` stay on the primary. A standby that is down or far behind
    is skipped (see ``statistics().replicas``) and comes back once it has
    caught up; with none up the primary serves every read. A read with
    ``min_position`` waits up to ``replica_wait`` seconds for a standby to
    show that position, then reads the primary. None (the default): every
    read goes to the primary. A standby that cannot be reached does not
    stop the store from opening.

    Leaving the block stops the actor: appends still queued fail with
    ``ClosedError``; connections close, shielded from cancellation and bounded.

    Raises:
        InvalidEvent: ``max_batch_bytes`` is out of range.
        InvalidOption: ``replica_dsns`` is not a list of connection strings,
            ``replica_wait`` or ``reconnect_timeout`` is not a number >= 0,
            or ``read_pool_size``, ``write_connections`` or
            ``max_payload_bytes`` is not a whole number >= 1.
        StoreUnavailable: the database could not be reached at open
            (``InvalidDSN``: its connection string cannot be read).
    """
    check_max_batch_bytes(max_batch_bytes)
    check_connections(read_pool_size, write_connections, reconnect_timeout, max_payload_bytes)  # before anything starts
    replica_list(replica_dsns, replica_wait)
    async with open_database(dsn) as resolved, _db.open_loop(), open_actor_nursery() as nursery:
        store: EventStore = await nursery.start(
            functools.partial(
                run_event_store,
                resolved,
                on_commit=on_commit,
                max_payload_bytes=max_payload_bytes,
                read_pool_size=read_pool_size,
                reconnect_timeout=reconnect_timeout,
                write_connections=write_connections,
                max_batch_bytes=max_batch_bytes,
                replica_dsns=replica_dsns,
                replica_wait=replica_wait,
            )
        )
        try:
            yield store
        finally:
            nursery.cancel_scope.cancel()


def check_connections(
    read_pool_size: object, write_connections: object, reconnect_timeout: object, max_payload_bytes: object
) -> None:
    """Refuse connection counts that are not whole numbers >= 1, a reconnect
    timeout that is not a number of seconds >= 0, and a payload limit that is
    not a whole number of bytes >= 1.

    Raises:
        InvalidOption: naming the option.
    """
    if type(max_payload_bytes) is not int or max_payload_bytes < 1:
        raise InvalidOption(f"max_payload_bytes must be a whole number of bytes >= 1, not {max_payload_bytes!r}")
    for name, value in (("read_pool_size", read_pool_size), ("write_connections", write_connections)):
        if type(value) is not int or value < 1:
            raise InvalidOption(f"{name} must be a whole number >= 1, not {value!r}")
    if not is_number(reconnect_timeout) or not 0 <= reconnect_timeout < math.inf:
        raise InvalidOption(f"reconnect_timeout must be a number of seconds >= 0, not {reconnect_timeout!r}")


def replica_list(replica_dsns: Sequence[str] | None, replica_wait: float) -> list[str]:
    """The standbys' connection strings, checked.

    Raises:
        InvalidOption: not a list of non-empty strings, or a bad wait.
    """
    if not is_number(replica_wait) or not replica_wait >= 0:
        raise InvalidOption(f"replica_wait must be a number of seconds >= 0, not {replica_wait!r}")
    if replica_dsns is None:
        return []
    if isinstance(replica_dsns, (str, bytes)) or not isinstance(replica_dsns, Sequence):
        raise InvalidOption("replica_dsns must be a list of connection strings, not a single string or other value")
    dsns = list(replica_dsns)
    for index, dsn in enumerate(dsns):
        if not isinstance(dsn, str) or not dsn.strip():
            raise InvalidOption(f"replica_dsns[{index}] must be a non-empty connection string")
    return dsns
