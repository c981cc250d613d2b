"""The store actor: append requests, group commit, and the write connections.

Callers put requests on a bounded channel. The actor waits for a free write
connection ("lane"), then for one request, then takes every other request that
is ready, up to the batch limits: that is one batch, one transaction, one round
trip through ``eventbus.append_events``. While a batch is in flight on one lane
the actor forms the next on another, so preparing requests in Python overlaps
with PostgreSQL's work; the database's append lock still commits the batches
one after another, and each caller gets its own outcome.

Answers leave in the order the batches were sent, so the stream receives
committed records in position order (and copes, by reading the database, in
the rare case two lanes' transactions took the lock the other way round).
"""

from __future__ import annotations

import collections
import logging
import math
import os
import time
import uuid
from collections.abc import Awaitable, Callable

import attrs
import trio

from .. import _db, _telemetry
from .._channels import buffered
from .._errors import (
    ClosedError,
    ConcurrencyError,
    DatabaseError,
    DuplicateEventId,
    EventBusError,
    InvalidEvent,
    StoreUnavailable,
)
from .._values import EventRecord
from ._requests import MAX_BATCH_BYTES, Counters, Outcome, Request
from ._sql import APPEND_SQL, answer_outcomes, batch_arguments

REQUEST_BUFFER = 1024
"""Append requests that may wait for the actor before ``append`` blocks."""

MAX_BATCH_APPENDS = 512
"""The most append requests the actor commits in one transaction."""

MAX_BATCH_EVENTS = 5000
"""The most events in one transaction (a larger single append goes alone)."""

WRITE_LANES = 2
"""Write connections: one batch in flight on each."""

IDLE_RECONNECT = 1.0
"""Seconds between two attempts to reconnect a store that lost its write
connections and has no append to make."""

BACKOFF_INITIAL = 0.05
BACKOFF_MAX = 2.0

_UNIQUE_VIOLATION = "23505"
_log = logging.getLogger("eventbus.store")
CommitHook = Callable[[list[EventRecord]], Awaitable[None]]


# One error object per caller: each raises its own, with its own traceback.


def _unavailable() -> StoreUnavailable:
    return StoreUnavailable("the database is unavailable; nothing was stored")


def _unknown() -> StoreUnavailable:
    return StoreUnavailable(
        "the connection was lost while this append was committing and has not come back; "
        "the append may or may not be stored: retry it with the same event ids to find out",
        outcome_known=False,
    )


def _in_doubt() -> ClosedError:
    return ClosedError(
        "the event store closed while this append was committing; it may or may not "
        "be stored: retry it with the same event ids to find out"
    )


# ---------------------------------------------------------------- the actor


class _Lane:
    """A write connection, connected on demand."""

    def __init__(self, conn: _db.Connection | None) -> None:
        self.conn = conn

    @property
    def up(self) -> bool:
        return self.conn is not None and not self.conn.is_closed()

    def drop(self) -> None:
        if self.conn is not None:
            self.conn.terminate()
            self.conn = None


class StoreActor:
    """Owns the write connections and commits append requests in batches."""

    def __init__(
        self,
        dsn: str,
        receive: trio.MemoryReceiveChannel[Request],
        on_commit: CommitHook | None,
        reconnect_timeout: float,
        lanes: int = WRITE_LANES,
        max_batch_bytes: int = MAX_BATCH_BYTES,
    ) -> None:
        self._dsn = dsn
        self._max_batch_bytes = max_batch_bytes
        self._receive = receive
        self._on_commit = on_commit
        self._reconnect_timeout = reconnect_timeout
        self._lane_count = lanes
        self._lanes: list[_Lane] = []
        self._pending: collections.deque[Request] = collections.deque()
        self._in_flight: set[Request] = set()
        self._retry_at = 0.0
        self._backoff = BACKOFF_INITIAL
        self._lost_at: float | None = None  # when the database was lost, until a connection is back
        self.origin = f"{os.getpid()}-{uuid.uuid4().hex[:12]}"
        self.counters = Counters()

    @property
    def connected(self) -> bool:
        return any(lane.up for lane in self._lanes)

    async def _connect(self) -> _db.Connection:
        return await _db.connect(self._dsn, application_name="eventbus-store", custom_plans=False)

    async def run(
        self, install: Callable[[_db.Connection], Awaitable[None]], *, task_status: trio.TaskStatus[None]
    ) -> None:
        """Connect, install the schema, then serve requests until cancelled."""
        try:
            first = await self._connect()
            self._lanes.append(_Lane(first))
            await install(first)
            for _ in range(self._lane_count - 1):
                self._lanes.append(_Lane(await self._connect()))
            idle_send, idle_receive = trio.open_memory_channel[_Lane](len(self._lanes))
            for lane in self._lanes:
                idle_send.send_nowait(lane)
            task_status.started()
            answered = trio.Event()
            answered.set()
            async with trio.open_nursery() as nursery:
                nursery.start_soon(self._keep_connected, idle_receive, idle_send)
                while True:
                    try:  # (receive() would take a scheduler round even with a lane idle)
                        lane = idle_receive.receive_nowait()
                    except trio.WouldBlock:
                        lane = await idle_receive.receive()
                    batch = await self._next_batch(lambda: buffered(idle_receive) + 1)
                    turn = trio.Event()
                    self._in_flight.update(batch)
                    nursery.start_soon(self._carry, lane, batch, answered, turn, idle_send)
                    answered = turn
        finally:
            self._close_queue()
            with trio.CancelScope(shield=True):
                for lane in self._lanes:
                    if lane.conn is not None:
                        await lane.conn.close()

    async def _keep_connected(
        self, idle_receive: trio.MemoryReceiveChannel[_Lane], idle_send: trio.MemorySendChannel[_Lane]
    ) -> None:
        """While no write connection is up, try an idle lane's every
        ``IDLE_RECONNECT`` seconds (the backoff after a failure respected):
        a store that nobody appends to says it is connected once it can be,
        not at its next append. Never holds a lane the appends wait for
        longer than one attempt."""
        while True:
            await trio.sleep(IDLE_RECONNECT)
            if self.connected:
                continue
            try:
                lane = idle_receive.receive_nowait()
            except trio.WouldBlock:
                continue  # every lane is in use or in the hands of the next batch
            try:
                await self._reconnect(lane)
            finally:
                idle_send.send_nowait(lane)

    def _close_queue(self) -> None:
        for request in self._in_flight:
            request.finish(error=_in_doubt())

        def closed() -> ClosedError:
            return ClosedError("the event store closed before this append ran; nothing was stored")

        for request in self._pending:
            request.finish(error=closed())
        while True:
            try:
                self._receive.receive_nowait().finish(error=closed())
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
        self._receive.close()

    async def _next_batch(self, idle_lanes: Callable[[], int] = lambda: 1) -> list[Request]:
        """Wait for one request, then take the ready ones, up to the batch limits
        (appends, events, and bytes: ``max_batch_bytes``; a request that would
        pass one waits for the next batch, and the first of a batch always goes).

        With other lanes idle too, only a fair share of what is ready: the
        next batch can then go out while this one commits, and Python's work
        on one overlaps PostgreSQL's on the other. Requests whose callers gave
        up are dropped; a request sharing an event id with one already in the
        batch waits for the next batch.
        """
        batch: list[Request] = []
        ids: set[uuid.UUID] = set()
        events = size = 0
        held: list[Request] = []
        limit = MAX_BATCH_APPENDS
        while len(batch) < limit:
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
            too_big = events + len(request.events) > MAX_BATCH_EVENTS or size + request.size > self._max_batch_bytes
            if batch and (too_big or not ids.isdisjoint(request_ids)):
                held.append(request)
                if too_big:
                    break
                continue
            batch.append(request)
            ids |= request_ids
            events += len(request.events)
            size += request.size
            if len(batch) == 1:
                ready = 1 + buffered(self._receive) + len(self._pending)
                limit = min(MAX_BATCH_APPENDS, math.ceil(ready / idle_lanes()))
        self._pending.extendleft(reversed(held))
        return batch

    async def _carry(
        self,
        lane: _Lane,
        batch: list[Request],
        previous: trio.Event,
        turn: trio.Event,
        idle: trio.MemorySendChannel[_Lane],
    ) -> None:
        """Run one batch on one lane, then answer it after the batch before.

        ``turn`` is set once this batch is answered, or as soon as it has to
        wait for a lost connection: the batches after it do not wait for that.
        """
        try:
            outcomes = await self._execute(lane, batch, turn.set)
            if not previous.is_set():  # (waiting on a set Event would cost a scheduler round)
                await previous.wait()
            await self._deliver(outcomes)
        finally:
            # Cancelled (the store is closing) or failed before answering:
            # no caller may be left waiting.
            for request in batch:
                request.finish(error=_in_doubt())
            self._in_flight.difference_update(batch)
            turn.set()
            idle.send_nowait(lane)

    # ---------------------------------------------------------- executing

    async def _execute(self, lane: _Lane, batch: list[Request], release: Callable[[], None]) -> list[Outcome]:
        if not lane.up and not await self._reconnect(lane):
            return [Outcome(request, error=_unavailable()) for request in batch]
        with _telemetry.span(
            "eventbus.append_batch",
            {"eventbus.appends": len(batch)},
            lambda: (r.events[0].metadata for r in batch),
            traced_only=True,
        ):
            _telemetry.count_batch(len(batch))
            return await self._execute_batch(lane, batch, release)

    async def _execute_batch(self, lane: _Lane, batch: list[Request], release: Callable[[], None]) -> list[Outcome]:
        assert lane.conn is not None
        try:
            try:
                rows = await lane.conn.fetch(APPEND_SQL, *batch_arguments(batch, self.origin))
            except DatabaseError as exc:
                if exc.sqlstate != _UNIQUE_VIOLATION:
                    raise
                # A retry of a stored append: look for stored ids this time.
                rows = await lane.conn.fetch(APPEND_SQL, *batch_arguments(batch, self.origin, check_ids=True))
        except StoreUnavailable as exc:
            self._lost(exc)
            return await self._settle(lane, batch, release)
        except DatabaseError as exc:
            _log.warning("a batch of %d appends was refused as a whole (%s); running each alone", len(batch), exc)
            return await self._execute_singly(lane, batch, release)
        self.counters.batches += 1
        self.counters.last_batch = len(batch)
        return answer_outcomes(batch, rows)

    async def _execute_singly(
        self, lane: _Lane, batch: list[Request], release: Callable[[], None], *, settling: bool = False
    ) -> list[Outcome]:
        """The batch failed as a whole: run each append alone to find the culprit.

        With ``settling`` (the batch is being settled after a lost connection),
        a second lost connection answers the rest with the outcome unknown.
        """
        outcomes: list[Outcome] = []
        for request in batch:
            assert lane.conn is not None
            try:
                rows = await lane.conn.fetch(APPEND_SQL, *batch_arguments([request], self.origin, check_ids=True))
            except StoreUnavailable as exc:
                self._lost(exc)
                if settling:
                    lane.drop()
                    break
                outcomes += await self._settle(lane, [request], release)
                if not lane.up:
                    break
                continue
            except DatabaseError as exc:
                error: EventBusError = exc
                if exc.sqlstate and exc.sqlstate.startswith("22"):  # data exception
                    error = InvalidEvent(f"the database refused the events: {exc}")
                outcomes.append(Outcome(request, error=error))
                continue
            self.counters.batches += 1
            outcomes += _as_new(answer_outcomes([request], rows)) if settling else answer_outcomes([request], rows)
        answered = {outcome.request for outcome in outcomes}
        lost = _unknown if settling else _unavailable
        outcomes += [Outcome(request, error=lost()) for request in batch if request not in answered]
        return outcomes

    async def _settle(self, lane: _Lane, batch: list[Request], release: Callable[[], None]) -> list[Outcome]:
        """The connection was lost during a batch: learn what committed, and
        run the rest again.

        Reconnects, then runs the batch again with its stored ids looked up
        first: appends that committed before the loss are answered with their
        stored records, the others commit now (or are refused, as any append).
        Appends whose callers have left are not run again. A run that loses
        its connection too is tried again, until ``reconnect_timeout`` after
        the first loss; then the callers get StoreUnavailable with the outcome
        unknown (so does a batch that ends every connection it runs on).
        """
        release()  # later batches need not wait for this one
        lane.drop()
        waiting = [request for request in batch if not request.abandoned]
        unknown: list[Outcome] = [Outcome(request, error=_unknown()) for request in batch]
        deadline = trio.current_time() + self._reconnect_timeout
        while waiting:
            connected = False
            with trio.move_on_at(deadline):
                connected = await self._reconnect(lane, patient=True)
            if not connected:
                return unknown
            assert lane.conn is not None
            try:
                rows = await lane.conn.fetch(APPEND_SQL, *batch_arguments(waiting, self.origin, check_ids=True))
            except StoreUnavailable as exc:
                self._lost(exc)
                lane.drop()
                continue
            except DatabaseError:
                outcomes = await self._execute_singly(lane, waiting, release, settling=True)
            else:
                self.counters.batches += 1
                # Stored before the loss or now: the stream has seen neither (it drops what it has).
                outcomes = _as_new(answer_outcomes(waiting, rows))
            return outcomes + [Outcome(request, error=_unknown()) for request in batch if request.abandoned]
        return unknown

    async def _reconnect(self, lane: _Lane, *, patient: bool = False) -> bool:
        """Give the lane a connection. Without ``patient``, one attempt at most
        (none while backing off after a failure); with it, wait out the
        backoff and try again until connected or cancelled."""
        while True:
            wait = self._retry_at - time.monotonic()
            if wait > 0:
                if not patient:
                    return False
                await trio.sleep(wait)
            try:
                lane.conn = await self._connect()
            except StoreUnavailable as exc:
                self._lost(exc)
                self._retry_at = time.monotonic() + self._backoff
                self._backoff = min(self._backoff * 2, BACKOFF_MAX)
                if not patient:
                    return False
                continue
            self._backoff = BACKOFF_INITIAL
            self.counters.reconnects += 1
            _telemetry.count_reconnect()
            if self._lost_at is not None:
                _log.warning("connection to the database restored after %.1f s", time.monotonic() - self._lost_at)
                self._lost_at = None
            return True

    def _lost(self, exc: BaseException) -> None:
        """Log the start of an outage (once: its end is logged on reconnect)."""
        if self._lost_at is None:
            self._lost_at = time.monotonic()
            _log.warning("lost the connection to the database (%s); reconnecting", exc)

    # ---------------------------------------------------------- answering

    async def _deliver(self, outcomes: list[Outcome]) -> None:
        counters = self.counters
        committed = [record for outcome in outcomes if outcome.new and outcome.records for record in outcome.records]
        if committed:
            committed.sort(key=lambda record: record.sequence_number)
            counters.events += len(committed)
            if self._on_commit is not None:
                # Handed over before callers wake: once append returns, the stream has it.
                await self._on_commit(committed)
        now = time.perf_counter()
        refused = 0
        for outcome in outcomes:
            counters.appends += 1
            counters.latencies.append(now - outcome.request.started)
            if outcome.error is not None:
                refused += 1
                _telemetry.count_appends(_outcome(outcome.error), 1)
                if isinstance(outcome.error, ConcurrencyError):
                    counters.conflicts += 1
                elif isinstance(outcome.error, StoreUnavailable):
                    counters.unavailable += 1
            outcome.request.finish(outcome.records, outcome.error)
        _telemetry.count_appends("ok", len(outcomes) - refused)
        if outcomes:
            _telemetry.count_answered(now - min(outcome.request.started for outcome in outcomes))


def _outcome(error: BaseException | None) -> str:
    """An append's outcome as the ``eventbus.appends`` counter names it."""
    if error is None:
        return "ok"
    if isinstance(error, (ConcurrencyError, DuplicateEventId)):
        return "conflict"
    if isinstance(error, (StoreUnavailable, ClosedError)):
        return "unavailable"
    return "invalid"


def _as_new(outcomes: list[Outcome]) -> list[Outcome]:
    """``outcomes`` with every stored append marked new, to be handed to the stream."""
    return [attrs.evolve(outcome, new=outcome.records is not None) for outcome in outcomes]
