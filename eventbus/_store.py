"""The event store: the store actor and the handle callers use.

One actor owns the write connection. Callers put append requests on a bounded
channel; the actor takes one, then every other request that is ready (group
commit), and runs them all in one transaction and one round trip through the
``eventbus.append_batch`` function. Each caller then gets its own outcome: a
failed condition or an id clash fails that append only. Reads go through a
separate pool and never wait behind appends.
"""

from __future__ import annotations

import collections
import contextlib
import functools
import hashlib
import importlib.resources
import json
import math
import os
import time
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from . import _json, _pg
from ._embedded import open_database
from ._errors import (
    ClosedError,
    ConcurrencyError,
    DatabaseError,
    DuplicateEventId,
    EventBusError,
    InvalidEvent,
    StoreUnavailable,
)
from ._model import Event, EventFilter, EventQuery, EventRecord, QueryResult

REQUEST_BUFFER = 1024
"""Append requests that may wait for the actor before ``append`` blocks."""

MAX_BATCH_APPENDS = 512
"""The most append requests the actor commits in one transaction."""

MAX_BATCH_EVENTS = 5000
"""The most events the actor commits in one transaction (a larger single
append still goes alone)."""

READ_POOL_SIZE = 4
"""Connections in the read pool."""

RECONNECT_TIMEOUT = 10.0
"""Seconds the actor tries to reconnect, after losing its connection in the
middle of a batch, before telling those callers the outcome is unknown."""

BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 2.0

_SCHEMA_LOCK = 7243049118  # advisory lock key taken while installing the schema
_NOTIFY_CHANNEL = "eventbus_events"
_UNIQUE_VIOLATION = "23505"
_COLUMNS = "sequence_number, event_id, event_type, payload, metadata, occurred_at"
_APPEND_SQL = "SELECT * FROM eventbus.append_batch($1, $2, $3, $4, $5, $6, $7, $8)"

CommitHook = Callable[[list[EventRecord]], Awaitable[None]]


def schema_sql() -> str:
    """The text of the schema eventbus installs."""
    return importlib.resources.files("eventbus").joinpath("_schema.sql").read_text()


async def install_schema(conn: _pg.Connection) -> None:
    """Create or update the eventbus schema, unless it is current.

    Safe when several processes open at once: the work runs under an advisory
    lock, and every statement is idempotent.
    """
    sql = schema_sql()
    digest = hashlib.sha256(sql.encode()).hexdigest()
    installed = await conn.fetchval("SELECT to_regclass('eventbus.meta') IS NOT NULL")
    if installed and await conn.fetchval("SELECT value FROM eventbus.meta WHERE key = 'schema'") == digest:
        return
    script = (
        f"BEGIN;\nSELECT pg_advisory_xact_lock({_SCHEMA_LOCK});\n{sql}\n"
        "INSERT INTO eventbus.meta (key, value) VALUES ('schema', "
        f"'{digest}') ON CONFLICT (key) DO UPDATE SET value = excluded.value;\nCOMMIT;"
    )
    try:
        await conn.run_script(script)
    except BaseException:
        with trio.CancelScope(shield=True):
            if not conn.is_closed():
                with contextlib.suppress(EventBusError):
                    await conn.execute("ROLLBACK")
        raise


# ---------------------------------------------------------------- preparing


@attrs.frozen
class _Prepared:
    event_id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    payload_text: str
    metadata: dict[str, Any]
    metadata_text: str


def _prepare(events: Sequence[Event], max_bytes: int) -> list[_Prepared]:
    """Check every event and write its JSON; raise InvalidEvent naming the first bad one."""
    if isinstance(events, (Event, str, bytes)) or not isinstance(events, Iterable):
        raise InvalidEvent(f"append takes a list of Event, not {type(events).__name__}")
    prepared: list[_Prepared] = []
    seen: set[uuid.UUID] = set()
    for index, event in enumerate(events):
        if not isinstance(event, Event):
            raise InvalidEvent(f"event {index}: must be an Event, not {type(event).__name__}")
        kind = event.event_type
        where = f"event {index}"
        if not isinstance(kind, str) or not kind:
            raise InvalidEvent(f"{where}: event_type must be a non-empty string, not {kind!r}")
        where = f"event {index} ({kind!r})"
        try:
            _json.normalize(kind, "event_type")
            payload, payload_text = _json.encode(event.payload, "payload", max_bytes=max_bytes)
            metadata: dict[str, Any] = {}
            metadata_text = "{}"
            if event.metadata is not None:
                metadata, metadata_text = _json.encode(event.metadata, "metadata", max_bytes=max_bytes)
        except _json.JSONRefused as exc:
            raise InvalidEvent(f"{where}: {exc}") from None
        event_id = event.event_id
        if event_id is None:
            event_id = uuid.uuid4()
        elif not isinstance(event_id, uuid.UUID):
            raise InvalidEvent(f"{where}: event_id must be a uuid.UUID, not {event_id!r}")
        if event_id in seen:
            raise InvalidEvent(f"{where}: event_id {event_id} appears twice in one append")
        seen.add(event_id)
        prepared.append(_Prepared(event_id, kind, payload, payload_text, metadata, metadata_text))
    return prepared


def _condition(filter: EventFilter | None, expected: int | None) -> str | None:
    if filter is None:
        if expected is not None:
            raise InvalidEvent("expected_max_sequence_number needs a filter")
        return None
    if not isinstance(filter, EventFilter):
        raise InvalidEvent(f"filter must be an EventFilter (see create_filter), not {filter!r}")
    if expected is None:
        expected = 0
    if type(expected) is not int or expected < 0:
        raise InvalidEvent(f"expected_max_sequence_number must be a whole number >= 0, not {expected!r}")
    preds = None if filter.predicate_texts is None else [json.loads(t) for t in filter.predicate_texts]
    return json.dumps({"t": list(filter.event_types), "p": preds, "a": expected})


# ---------------------------------------------------------------- the actor


@attrs.define(eq=False)
class _Request:
    events: list[_Prepared]
    condition: str | None
    expected: int
    done: trio.Event = attrs.field(factory=trio.Event)
    result: list[EventRecord] | None = None
    error: BaseException | None = None
    abandoned: bool = False
    started: float = attrs.field(factory=time.perf_counter)

    def finish(self, result: list[EventRecord] | None = None, error: BaseException | None = None) -> None:
        self.result, self.error = result, error
        self.done.set()


@attrs.frozen
class StoreStatistics:
    """What the store actor has done since it started.

    Attributes:
        connected: whether the actor holds a live write connection.
        appends: append requests answered (stored, refused or failed).
        events: events committed.
        batches: transactions run.
        conflicts: appends refused with ConcurrencyError.
        unavailable: appends failed with StoreUnavailable.
        reconnects: connections re-established after a loss.
        queued: requests waiting for the actor now.
        last_batch_appends: append requests in the latest transaction.
        mean_batch_appends: average append requests per transaction.
        p50_latency / p99_latency: seconds from request to answer, over the
            latest answered appends.
    """

    connected: bool
    appends: int
    events: int
    batches: int
    conflicts: int
    unavailable: int
    reconnects: int
    queued: int
    last_batch_appends: int
    mean_batch_appends: float
    p50_latency: float
    p99_latency: float


def _percentile(values: Sequence[float], q: float) -> float:
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1)]


class _Counters:
    def __init__(self) -> None:
        self.appends = self.events = self.batches = 0
        self.conflicts = self.unavailable = self.reconnects = 0
        self.last_batch = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=2048)


class _StoreActor:
    """Owns the write connection and commits append requests in batches."""

    def __init__(
        self,
        dsn: str,
        receive: trio.MemoryReceiveChannel[_Request],
        on_commit: CommitHook | None,
        reconnect_timeout: float,
    ) -> None:
        self._dsn = dsn
        self._receive = receive
        self._on_commit = on_commit
        self._reconnect_timeout = reconnect_timeout
        self._conn: _pg.Connection | None = None
        self._pending: collections.deque[_Request] = collections.deque()
        self._in_flight: list[_Request] = []
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.counters = _Counters()

    @property
    def connected(self) -> bool:
        return self._conn is not None and not self._conn.is_closed()

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        self._conn = await _pg.connect(self._dsn, application_name="eventbus-store", custom_plans=False)
        try:
            await install_schema(self._conn)
            task_status.started()
            while True:
                self._in_flight = await self._next_batch()
                await self._serve(self._in_flight)
                self._in_flight = []
        finally:
            self._close_queue()
            if self._conn is not None:
                await self._conn.close()

    def _close_queue(self) -> None:
        for request in self._in_flight:
            if not request.done.is_set():
                request.finish(
                    error=ClosedError(
                        "the event store closed while this append was committing; it may or may not "
                        "be stored: retry it with the same event ids to find out"
                    )
                )
        closed = ClosedError("the event store closed before this append ran; nothing was stored")
        for request in self._pending:
            request.finish(error=closed)
        while True:
            try:
                self._receive.receive_nowait().finish(error=closed)
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._receive.close()

    async def _next_batch(self) -> list[_Request]:
        """Wait for one request, then take every ready one up to the limits.

        Requests whose callers gave up are dropped; a request sharing an event
        id with one already in the batch waits for the next batch.
        """
        batch: list[_Request] = []
        ids: set[uuid.UUID] = set()
        events = 0
        held: list[_Request] = []
        while len(batch) < MAX_BATCH_APPENDS:
            if self._pending:
                request = self._pending.popleft()
            elif not batch:
                request = await self._receive.receive()
            else:
                try:
                    request = self._receive.receive_nowait()
                except trio.WouldBlock:
                    break
            if request.abandoned:
                continue
            request_ids = {prepared.event_id for prepared in request.events}
            if batch and (events + len(request.events) > MAX_BATCH_EVENTS or not ids.isdisjoint(request_ids)):
                held.append(request)
                if events + len(request.events) > MAX_BATCH_EVENTS:
                    break
                continue
            batch.append(request)
            ids |= request_ids
            events += len(request.events)
        self._pending.extendleft(reversed(held))
        return batch

    async def _serve(self, batch: list[_Request]) -> None:
        if self._conn is None or self._conn.is_closed():
            await self._reconnect(refuse_meanwhile=True)
        assert self._conn is not None
        try:
            try:
                rows = await self._conn.fetch(_APPEND_SQL, *self._arguments(batch))
            except DatabaseError as exc:
                if exc.sqlstate != _UNIQUE_VIOLATION:
                    raise
                # A retry of a stored append: look for stored ids this time.
                rows = await self._conn.fetch(_APPEND_SQL, *self._arguments(batch, check_ids=True))
        except StoreUnavailable:
            await self._settle(batch)
            return
        except DatabaseError:
            await self._serve_singly(batch)
            return
        await self._answer(batch, rows)

    def _arguments(self, batch: list[_Request], check_ids: bool = False) -> tuple[Any, ...]:
        append_of: list[int] = []
        ids: list[uuid.UUID] = []
        types: list[str] = []
        payloads: list[str] = []
        metadata: list[str] = []
        conditions: list[str] = []
        conditional = False
        for number, request in enumerate(batch, 1):
            for prepared in request.events:
                append_of.append(number)
                ids.append(prepared.event_id)
                types.append(prepared.event_type)
                payloads.append(prepared.payload_text)
                metadata.append(prepared.metadata_text)
            conditions.append(request.condition or "null")
            conditional = conditional or request.condition is not None
        condition_text = "[" + ",".join(conditions) + "]" if conditional else None
        return (append_of, ids, types, payloads, metadata, condition_text, check_ids, self.origin)

    async def _answer(self, batch: list[_Request], rows: list[_pg.Row]) -> None:
        stored: dict[uuid.UUID, tuple[int, Any]] = {}
        refused: dict[int, tuple[str, int | None]] = {}
        for append_no, outcome, event_id, position, occurred_at in rows:
            if outcome in ("ok", "duplicate"):
                stored[event_id] = (position, occurred_at)
            else:
                refused[append_no] = (outcome, position)
        new_ids = {row[2] for row in rows if row[1] == "ok"}
        committed: list[EventRecord] = []
        answers: list[tuple[_Request, list[EventRecord] | None, BaseException | None]] = []
        records: list[EventRecord]
        for number, request in enumerate(batch, 1):
            if number in refused:
                outcome, position = refused[number]
                answers.append((request, None, self._refusal(request, outcome, position)))
                continue
            if any(p.event_id not in stored for p in request.events):
                answers.append((request, None, DatabaseError("the store returned no position for this append")))
                continue
            records = []
            for p in request.events:
                position, occurred_at = stored[p.event_id]
                records.append(EventRecord(position, p.event_id, p.event_type, p.payload, p.metadata, occurred_at))
            answers.append((request, records, None))
            if request.events[0].event_id in new_ids:
                committed.extend(records)
        committed.sort(key=lambda record: record.sequence_number)
        counters = self.counters
        counters.batches += 1
        counters.last_batch = len(batch)
        counters.events += len(committed)
        if committed and self._on_commit is not None:
            # Handed over before callers wake: once append returns, the stream has it.
            await self._on_commit(committed)
        now = time.perf_counter()
        for request, answer, error in answers:
            counters.appends += 1
            counters.latencies.append(now - request.started)
            if isinstance(error, ConcurrencyError):
                counters.conflicts += 1
            request.finish(answer, error)

    @staticmethod
    def _refusal(request: _Request, outcome: str, position: int | None) -> EventBusError:
        if outcome == "conflict":
            where = f"at position {position}" if position else "appended earlier in the same batch"
            return ConcurrencyError(
                f"an event matching the filter was appended after position {request.expected} (first found {where})",
                expected_max_sequence_number=request.expected,
            )
        return DuplicateEventId(
            "some event ids of this append are stored already for different events "
            "(or only some of them are stored): pick new ids for new events"
        )

    async def _serve_singly(self, batch: list[_Request]) -> None:
        """The batch failed as a whole: run each append alone to find the culprit."""
        for request in batch:
            assert self._conn is not None
            try:
                rows = await self._conn.fetch(_APPEND_SQL, *self._arguments([request], check_ids=True))
            except StoreUnavailable:
                await self._settle([request])
                continue
            except DatabaseError as exc:
                error: EventBusError = exc
                if exc.sqlstate and exc.sqlstate.startswith("22"):  # data exception
                    error = InvalidEvent(f"the database refused the events: {exc}")
                self.counters.appends += 1
                request.finish(error=error)
                continue
            await self._answer([request], rows)

    async def _settle(self, batch: list[_Request]) -> None:
        """The connection was lost during a batch: learn what committed.

        Reconnects for up to the reconnect timeout. Appends found stored are
        answered with their records; the others did not commit and go back to
        the front of the queue. If no connection comes back in time, their
        callers get StoreUnavailable with the outcome unknown.
        """
        if self._conn is not None:
            self._conn.terminate()
            self._conn = None
        with trio.move_on_after(self._reconnect_timeout):
            await self._reconnect(refuse_meanwhile=False)
        if self._conn is None:
            for request in batch:
                self.counters.appends += 1
                self.counters.unavailable += 1
                request.finish(
                    error=StoreUnavailable(
                        "the connection was lost while this append was committing and has not come back; "
                        "the append may or may not be stored: retry it with the same event ids to find out",
                        outcome_known=False,
                    )
                )
            return
        ids = [p.event_id for request in batch for p in request.events]
        try:
            rows = await self._conn.fetch(
                "SELECT event_id, sequence_number, occurred_at FROM eventbus.events WHERE event_id = ANY($1)", ids
            )
        except StoreUnavailable:
            await self._settle(batch)
            return
        found = {event_id: (position, occurred_at) for event_id, position, occurred_at in rows}
        redo: list[_Request] = []
        done: list[_Request] = []
        for request in batch:
            if request.events[0].event_id in found:
                done.append(request)
            elif not request.abandoned:
                redo.append(request)
        if done:
            # Those committed before the loss: answer them as a duplicate would be.
            fake_rows = [(0, "ok", p.event_id, *found[p.event_id]) for request in done for p in request.events]
            await self._answer(done, fake_rows)
        self._pending.extendleft(reversed(redo))

    async def _reconnect(self, *, refuse_meanwhile: bool) -> None:
        """Connect again, with backoff. With ``refuse_meanwhile``, requests
        that arrive before the connection is back fail with StoreUnavailable."""
        delay = BACKOFF_INITIAL
        async with trio.open_nursery() as nursery:
            if refuse_meanwhile:
                nursery.start_soon(self._refuse_requests)
            while True:
                try:
                    self._conn = await _pg.connect(self._dsn, application_name="eventbus-store", custom_plans=False)
                    break
                except StoreUnavailable:
                    await trio.sleep(delay)
                    delay = min(delay * 2, BACKOFF_MAX)
            self.counters.reconnects += 1
            nursery.cancel_scope.cancel()

    async def _refuse_requests(self) -> None:
        while self._pending:
            self._refuse(self._pending.popleft())
        async for request in self._receive:
            self._refuse(request)

    def _refuse(self, request: _Request) -> None:
        self.counters.appends += 1
        self.counters.unavailable += 1
        request.finish(error=StoreUnavailable("the database is unavailable; nothing was stored"))


# ---------------------------------------------------------------- queries


def _filter_sql(filter: EventFilter, args: list[Any]) -> str:
    clauses = []
    if filter.event_types:
        args.append(list(filter.event_types))
        clauses.append(f"event_type = ANY(${len(args)}::text[])")
    if filter.predicate_texts is not None:
        args.append(list(filter.predicate_texts))
        clauses.append(f"payload @> ANY(${len(args)}::text[]::jsonb[])")
    return "(" + " AND ".join(clauses) + ")" if clauses else "TRUE"


def query_sql(query: EventQuery, upto: int | None = None) -> tuple[str, list[Any]]:
    """SQL text and arguments for an EventQuery (``upto``: an upper position)."""
    args: list[Any] = [query.after]
    where = ["sequence_number > $1"]
    if upto is not None:
        args.append(upto)
        where.append(f"sequence_number <= ${len(args)}")
    ors = [_filter_sql(f, args) for f in query.filters]
    if "TRUE" not in ors:
        where.append("(" + " OR ".join(ors) + ")")
    sql = f"SELECT {_COLUMNS} FROM eventbus.events WHERE {' AND '.join(where)} ORDER BY sequence_number"
    if query.limit is not None:
        args.append(query.limit)
        sql += f" LIMIT ${len(args)}"
    return sql, args


def to_records(rows: Iterable[_pg.Row]) -> list[EventRecord]:
    """Records from rows of ``_COLUMNS``."""
    return [EventRecord(*row) for row in rows]


# ---------------------------------------------------------------- the handle


class EventStore:
    """The handle to an open event store (see :func:`open_event_store`).

    ``append`` goes through the store actor; ``query`` and ``head`` use the
    read pool. All methods may be called from many tasks at once.
    """

    def __init__(
        self,
        send: trio.MemorySendChannel[_Request],
        pool: _pg.Pool,
        actor: _StoreActor,
        max_payload_bytes: int,
    ) -> None:
        self._send = send
        self._pool = pool
        self._actor = actor
        self._max_payload_bytes = max_payload_bytes
        self._closed = False

    async def append(
        self,
        events: Sequence[Event],
        filter: EventFilter | None = None,
        expected_max_sequence_number: int | None = None,
    ) -> list[EventRecord]:
        """Store ``events``, all or none, and dispatch them to the stream.

        With a ``filter``, the append is conditional: it fails with
        ``ConcurrencyError`` iff some stored event that matches the filter has
        a position after ``expected_max_sequence_number`` (None means 0: no
        matching event may exist). Pass the ``max_sequence_number`` of the
        query you decided on. Events of the same call never count against it.

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
            InvalidEvent: an event is not storable (nothing reached the database).
            ConcurrencyError: the condition failed; nothing was stored.
            DuplicateEventId: some ids are stored already for other events.
            StoreUnavailable: the database could not be reached; see its
                ``outcome_known``.
            ClosedError: the store is closed.
        """
        prepared = _prepare(events, self._max_payload_bytes)
        condition = _condition(filter, expected_max_sequence_number)
        if not prepared:
            return []
        if self._closed:
            raise ClosedError("the event store is closed")
        request = _Request(prepared, condition, expected_max_sequence_number or 0)
        try:
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

    async def query(self, query: EventFilter | EventQuery) -> QueryResult:
        """The events a filter or query selects, in ascending position.

        Blocks for one round trip on a pooled connection; never waits behind
        appends. Cancellation abandons the query.

        Raises:
            InvalidFilter: ``query`` is neither an EventFilter nor an EventQuery.
            StoreUnavailable: the database could not be reached.
        """
        if isinstance(query, EventFilter):
            query = EventQuery([query])
        elif not isinstance(query, EventQuery):
            from ._errors import InvalidFilter

            raise InvalidFilter(f"query takes an EventFilter or an EventQuery, not {query!r}")
        return QueryResult(await self.fetch_records(query))

    async def fetch_records(self, query: EventQuery, upto: int | None = None) -> list[EventRecord]:
        """The records of ``query`` with positions up to ``upto`` (if given)."""
        if not query.filters or query.limit == 0:
            return []
        sql, args = query_sql(query, upto)
        return to_records(await self._pool.fetch(sql, *args))

    async def head(self) -> int:
        """The highest position stored, 0 when the store is empty.

        Blocks for one round trip on a pooled connection.
        """
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
            p50_latency=_percentile(latencies, 0.50),
            p99_latency=_percentile(latencies, 0.99),
        )

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
    task_status: trio.TaskStatus[EventStore] = trio.TASK_STATUS_IGNORED,
) -> None:
    """Run the store actor until cancelled; ``task_status.started`` gets the handle.

    For ``nursery.start(run_event_store, dsn)``: the schema is installed and the
    connections are open before ``start`` returns. ``dsn`` must be a real
    connection string (see :func:`open_event_store` for the embedded server).
    ``on_commit`` receives every committed batch's records, in order, before
    the appenders are answered; if it blocks, the actor (and so appends) wait.
    """
    send, receive = trio.open_memory_channel[_Request](REQUEST_BUFFER)
    actor = _StoreActor(dsn, receive, on_commit, reconnect_timeout)
    async with _pg.open_loop():
        pool = await _pg.create_pool(dsn, max_size=read_pool_size)
        store = EventStore(send, pool, actor, max_payload_bytes)
        try:
            async with trio.open_nursery() as nursery:
                await nursery.start(actor.run)
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
) -> AsyncIterator[EventStore]:
    """Open the event store for the duration of the block.

    ``dsn``: a PostgreSQL connection string; None means ``EVENTBUS_DSN``, then
    ``DATABASE_URL``, else the embedded server (started if needed). The schema
    is created if missing. Works inside any Trio program, with or without a
    trio-asyncio loop already open.

    Leaving the block stops the actor: appends still queued fail with
    ``ClosedError``; connections close, shielded from cancellation and bounded.

    Raises:
        StoreUnavailable: the database could not be reached at open.
    """
    async with open_database(dsn) as resolved, _pg.open_loop(), trio.open_nursery() as nursery:
        store: EventStore = await nursery.start(
            functools.partial(
                run_event_store,
                resolved,
                on_commit=on_commit,
                max_payload_bytes=max_payload_bytes,
                read_pool_size=read_pool_size,
                reconnect_timeout=reconnect_timeout,
            )
        )
        try:
            yield store
        finally:
            nursery.cancel_scope.cancel()
