"""The stream actor (hub): every committed event, in order, to every subscriber.

One ingest task takes committed records, from this process's store (handed
over before the appenders are answered) and from the database (events other
processes appended, read after a notification or a timer). It keeps a
*position*: every event at or below it has been handed on or never existed.
Records at or below the position are dropped, so the two sources never
double; a gap before a local batch is read from the database first, so they
never skip.

Each subscription has a filter, a bounded buffer (counted in records) and a
batch size. The hub hands it lists of matching records without ever waiting
for it: when its buffer is full it is detached from the live feed and a
catch-up task of its own feeds it from a bounded ring of recent records, or
from the store when it fell behind the ring, until it reaches the position
again and re-attaches. With ``overflow="block"`` the hub waits for the
subscriber instead, and so, through the store, do the appenders.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import AsyncIterator, Iterable, Sequence
from contextlib import asynccontextmanager

import attrs
import trio

from .. import _telemetry
from .._errors import ClosedError, InvalidFilter, StoreUnavailable
from .._nursery import open_actor_nursery
from .._store import EventStore
from .._values import EventFilter, EventQuery, EventRecord
from ._subscription import (
    DEFAULT_BUFFER,
    DEFAULT_MAX_BATCH,
    Overflow,
    Subscription,
    SubscriptionStatistics,
)

RING_SIZE = 20_000
"""Recent records the hub keeps for subscribers that fell behind."""

INBOX_SIZE = 64
"""Committed batches that may wait for the hub before the store waits."""

CATCH_UP_PAGE = 2000
"""Records read from the store at a time by a subscriber catching up."""

RETRY_DELAY = 0.1
"""Seconds between attempts when the store cannot be read."""

_OVERFLOWS = ("catch_up", "block")
_log = logging.getLogger("eventbus.stream")
_POLL = object()


@attrs.frozen
class StreamStatistics:
    """The hub: its position, the records in its ring, the records it took in
    and handed to subscribers so far, and each subscription."""

    position: int
    ring: int
    ingested: int
    delivered: int
    subscriptions: tuple[SubscriptionStatistics, ...]


def _chunks(records: list[EventRecord], size: int) -> Iterable[list[EventRecord]]:
    if 0 < len(records) <= size:  # no empty chunk: a batch is never empty
        yield records
        return
    for start in range(0, len(records), size):
        yield records[start : start + size]


class _Ring:
    """The latest records, in position order, bounded in count.

    ``floor``: every record with a position above it is in the ring.
    """

    def __init__(self, capacity: int, floor: int) -> None:
        self._capacity = capacity
        self._records: list[EventRecord] = []
        self._start = 0
        self.floor = floor

    def __len__(self) -> int:
        return len(self._records) - self._start

    def extend(self, records: Sequence[EventRecord]) -> None:
        self._records.extend(records)
        excess = len(self) - self._capacity
        if excess > 0:
            self._start += excess
            self.floor = self._records[self._start - 1].sequence_number
            if self._start > self._capacity:
                del self._records[: self._start]
                self._start = 0

    def after(self, position: int, limit: int) -> list[EventRecord] | None:
        """Up to ``limit`` records after ``position``, or None if the ring
        no longer holds all of them."""
        if position < self.floor:
            return None
        index = bisect.bisect_right(self._records, position, lo=self._start, key=_position)
        return self._records[index : index + limit]


def _position(record: EventRecord) -> int:
    return record.sequence_number


class EventStream:
    """The hub's handle: subscribe, publish committed records, read figures."""

    def __init__(self, store: EventStore, position: int, ring_size: int = RING_SIZE) -> None:
        self._store = store
        self.position = position
        self._ring = _Ring(ring_size, position)
        self._live: dict[Subscription, None] = {}
        self._all: dict[Subscription, None] = {}
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[object](INBOX_SIZE)
        self._poll_pending = False
        self._nursery: trio.Nursery | None = None
        self._advanced = trio.Event()
        self._last_local = -math.inf
        self.ingested = 0
        self.delivered = 0
        self._closed = False
        _telemetry.watch("subscription", self, _subscription_lags)

    # ------------------------------------------------------------ public

    def subscribe(
        self,
        filter: EventFilter,
        *,
        after: int | None = None,
        max_batch: int = DEFAULT_MAX_BATCH,
        buffer: int = DEFAULT_BUFFER,
        overflow: Overflow = "catch_up",
        name: str | None = None,
    ) -> Subscription:
        """A subscription to the records that match ``filter``.

        ``after=None`` starts at the store's head when the block is entered
        (live events only); ``after=N`` starts with every matching event after
        position N, read from the store, then continues live with no gap and no
        duplicate. Use the result with ``async with``.

        Never blocks itself. Entering the block with ``after=None`` blocks for
        one read of the store's head. Iterating blocks until a batch is there;
        up to ``buffer`` records wait for the consumer, beyond which
        ``overflow`` decides (``catch_up``: the subscription reads from the
        store later; ``block``: the hub waits). Cancelling an iteration loses
        nothing: the batch stays for the next one. Leaving the block drops
        what is buffered.

        Raises:
            InvalidFilter: at once, for a bad filter, position, batch size,
                buffer or overflow policy.
            ClosedError: when the block is entered, if the stream has stopped.
            StoreUnavailable: when the block is entered with ``after=None``
                and the store cannot be reached.
        """
        if not isinstance(filter, EventFilter):
            raise InvalidFilter(f"subscribe takes an EventFilter (see create_filter), not {filter!r}")
        if after is not None and (type(after) is not int or after < 0):
            raise InvalidFilter(f"after must be None or a whole number >= 0, not {after!r}")
        if type(max_batch) is not int or max_batch < 1:
            raise InvalidFilter(f"max_batch must be a whole number >= 1, not {max_batch!r}")
        if type(buffer) is not int or buffer < max_batch:
            raise InvalidFilter(f"buffer must be a whole number >= max_batch ({max_batch}), not {buffer!r}")
        if overflow not in _OVERFLOWS:
            raise InvalidFilter(f"overflow must be one of {', '.join(_OVERFLOWS)}, not {overflow!r}")
        return Subscription(self, filter, after, max_batch, buffer, overflow, name)

    def statistics(self) -> StreamStatistics:
        """The hub's figures now; never blocks."""
        return StreamStatistics(
            position=self.position,
            ring=len(self._ring),
            ingested=self.ingested,
            delivered=self.delivered,
            subscriptions=tuple(sub.statistics() for sub in self._all),
        )

    async def publish(self, records: list[EventRecord]) -> None:
        """Hand committed records (in position order) to the hub.

        Blocks while the hub's inbox is full (``INBOX_SIZE`` batches), which
        happens only when a ``block`` subscriber holds the hub up.
        """
        try:
            self._inbox_send.send_nowait(records)  # the common case, without a scheduler round
        except trio.WouldBlock:
            await self._inbox_send.send(records)

    def poll_soon(self, *, unless_busy_within: float | None = None) -> None:
        """Ask the hub to read events other processes appended. Never blocks.

        With ``unless_busy_within=T``, skip it if a local batch arrived in the
        last T seconds: each local batch already reads whatever other
        processes appended before it (the gap below its first position).
        """
        if self._poll_pending:
            return
        if unless_busy_within is not None and trio.current_time() - self._last_local < unless_busy_within:
            return
        try:
            self._inbox_send.send_nowait(_POLL)
            self._poll_pending = True
        except trio.WouldBlock:
            pass  # the inbox is full: the hub is busy and will be asked again

    async def wait_position(self, position: int) -> None:
        """Block until the hub's position reaches ``position``."""
        while self.position < position:
            await self._advanced.wait()

    # ------------------------------------------------------------ the actor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The ingest loop, until cancelled; subscriptions close when it ends."""
        try:
            async with open_actor_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                async for item in self._inbox_receive:
                    if item is _POLL:
                        self._poll_pending = False
                        await self._poll()
                    else:
                        await self._ingest_local(item)  # type: ignore[arg-type]
        finally:
            self._closed = True
            _telemetry.unwatch("subscription", self)
            for sub in list(self._all):
                sub.close()

    async def _read(self, after: int, upto: int | None, filter: EventFilter | None = None) -> list[EventRecord]:
        """Records after a position, from the store, retrying while it is unavailable."""
        query = EventQuery([filter or _EVERYTHING], after=after, limit=CATCH_UP_PAGE)
        while True:
            try:
                return await self._store.fetch_records(query, upto)
            except StoreUnavailable:
                await trio.sleep(RETRY_DELAY)

    async def _poll(self) -> None:
        while True:
            records = await self._read(self.position, None)
            if records:
                await self._deliver(records)
            if len(records) < CATCH_UP_PAGE:
                return

    async def _ingest_local(self, records: list[EventRecord]) -> None:
        self._last_local = trio.current_time()
        if records[-1].sequence_number <= self.position:
            return  # read from the database already
        if records[0].sequence_number <= self.position:
            records = [r for r in records if r.sequence_number > self.position]
        first = records[0].sequence_number
        # Before this batch took the store's lock, every lower position was
        # settled: any we have not seen were appended by other processes.
        while first > self.position + 1:
            gap = await self._read(self.position, first - 1)
            if not gap:
                break
            await self._deliver(gap)
        await self._deliver(records)

    async def _deliver(self, records: list[EventRecord]) -> None:
        upto = records[-1].sequence_number
        self.position = upto
        self.ingested += len(records)
        self._ring.extend(records)
        advanced, self._advanced = self._advanced, trio.Event()
        advanced.set()
        selected: dict[EventFilter, list[EventRecord]] = {}
        blocked: list[tuple[Subscription, list[EventRecord], int]] = []
        for sub in list(self._live):
            matched = selected.get(sub.filter)
            if matched is None:
                matched = selected[sub.filter] = sub.filter.select(records)
            start = 0
            if matched and matched[0].sequence_number <= sub.enqueued_upto:
                start = bisect.bisect_right(matched, sub.enqueued_upto, key=_position)
            size = sub.max_batch
            while start < len(matched):
                chunk = matched[start : start + size]
                if not sub.offer(chunk, chunk[-1].sequence_number):
                    if sub.overflow == "block":
                        blocked.append((sub, matched, start))
                    else:
                        self._start_catch_up(sub, chunk[0].sequence_number - 1)
                    break
                sub.enqueued_upto = chunk[-1].sequence_number
                start += size
            else:
                # max: a subscriber may start after a position the hub has not reached
                sub.enqueued_upto = max(sub.enqueued_upto, upto)
            if sub.on_move is not None:
                sub.on_move()
        for sub, matched, start in blocked:
            # Backpressure: wait for this subscriber, then give it the rest.
            try:
                while start < len(matched):
                    chunk = matched[start : start + sub.max_batch]
                    await sub.put(chunk, chunk[-1].sequence_number)
                    sub.enqueued_upto = chunk[-1].sequence_number
                    start += sub.max_batch
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                continue
            sub.enqueued_upto = max(sub.enqueued_upto, upto)

    # ------------------------------------------------------------ subscriptions

    async def _attach(self, sub: Subscription, after: int | None) -> None:
        self._check_open()
        if after is None:
            after = await self._store.head()
            self._check_open()
        sub.enqueued_upto = sub.received_upto = after
        self._all[sub] = None
        if after >= self.position:
            sub.state = "live"
            self._live[sub] = None
        else:
            self._start_catch_up(sub, after, counts_as_detach=False)

    def _check_open(self) -> None:
        # A subscription to a stopped hub would wait forever for its first batch.
        if self._closed:
            raise ClosedError("the stream is closed (the bus was left)")

    def _detach(self, sub: Subscription) -> None:
        self._live.pop(sub, None)
        self._all.pop(sub, None)

    def _start_catch_up(self, sub: Subscription, position: int, *, counts_as_detach: bool = True) -> None:
        self._live.pop(sub, None)
        sub.state = "catching_up"
        sub.enqueued_upto = position
        if counts_as_detach:
            sub.detaches += 1
            _log.info("subscription %s detached at position %d (its buffer is full); catching up", sub.name, position)
        assert self._nursery is not None, "the stream is not running"
        scope = trio.CancelScope()
        sub._catch_up_scope = scope
        self._nursery.start_soon(self._catch_up, sub, scope)

    async def _catch_up(self, sub: Subscription, scope: trio.CancelScope) -> None:
        """Feed a detached subscriber until it reaches the hub, then re-attach.

        Waits on the subscriber (never on the hub): its own pace is the limit.
        Between the last check and re-attaching there is no checkpoint, so no
        record can slip between the catch-up and the live feed.
        """
        with scope:
            try:
                while sub.enqueued_upto < self.position:
                    position = sub.enqueued_upto
                    page = self._ring.after(position, CATCH_UP_PAGE)
                    if page is not None:
                        scanned = page[-1].sequence_number if page else position
                        matched = sub.filter.select(page)
                    else:
                        upto = self.position
                        matched = await self._read(position, upto, sub.filter)
                        scanned = matched[-1].sequence_number if len(matched) == CATCH_UP_PAGE else upto
                    for chunk in _chunks(matched, sub.max_batch):
                        await sub.put(chunk, chunk[-1].sequence_number)
                        sub.enqueued_upto = chunk[-1].sequence_number
                    sub.enqueued_upto = max(sub.enqueued_upto, scanned)
                    if not matched:
                        await trio.lowlevel.checkpoint()
                if sub.state == "catching_up":
                    sub.state = "live"
                    self._live[sub] = None
                    if sub.detaches:
                        _log.info("subscription %s re-attached at position %d", sub.name, self.position)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            finally:
                if sub._catch_up_scope is scope:
                    sub._catch_up_scope = None


def _subscription_lags(stream: EventStream) -> Iterable[tuple[float, dict[str, str]]]:
    return [(sub.lag, {"subscription": sub.name}) for sub in stream.statistics().subscriptions]


_EVERYTHING = EventFilter([])


@asynccontextmanager
async def open_event_stream(store: EventStore, *, ring_size: int = RING_SIZE) -> AsyncIterator[EventStream]:
    """Run a hub over ``store`` for the duration of the block.

    Starts at the store's head. Nothing feeds it by itself: hand it committed
    records with ``publish`` (the bus wires the store to it) and call
    ``poll_soon`` to read what other processes appended.
    """
    stream = EventStream(store, await store.head(), ring_size)
    async with open_actor_nursery() as nursery:
        await nursery.start(stream.run)
        try:
            yield stream
        finally:
            nursery.cancel_scope.cancel()
