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

The hub owns every subscription's delivery state (``_delivery.py``): it alone
changes it. A ``Subscription`` is the consumer's end and asks the hub through
``attach``, ``received``, ``watch`` and ``detach``.
"""

from __future__ import annotations

import bisect
import logging
import math
from collections.abc import Callable, Sequence

import attrs
import trio

from .. import _telemetry
from .._errors import ClosedError, StoreUnavailable
from .._nursery import check_run, open_actor_nursery
from .._store import EventStore
from .._values import AnyOf, EventFilter, EventQuery, EventRecord, PartitionSlice, Sliced
from ._delivery import (
    DEFAULT_BUFFER,
    DEFAULT_MAX_BATCH,
    Delivery,
    Overflow,
    Selector,
    StreamStatistics,
    SubscriptionState,
    checked_selector,
    open_delivery,
    subscription_lags,
)
from ._ring import Ring, chunks, position_of
from ._subscription import Subscription

RING_SIZE = 20_000
"""Recent records the hub keeps for subscribers that fell behind."""

INBOX_SIZE = 64
"""Committed batches that may wait for the hub before the store waits."""

CATCH_UP_PAGE = 2000
"""Records read from the store at a time by a subscriber catching up."""

RETRY_DELAY = 0.1
"""Seconds between attempts when the store cannot be read."""

_log = logging.getLogger("eventbus.stream")
_POLL = object()


class EventStream:
    """The hub's handle: subscribe, publish committed records, read figures.

    ``attach``, ``received``, ``watch`` and ``detach`` are what a
    ``Subscription`` (the consumer's end) asks of the hub; callers use the
    subscription instead.
    """

    def __init__(self, store: EventStore, position: int, ring_size: int = RING_SIZE) -> None:
        self._store = store
        self._run = trio.lowlevel.current_trio_token()  # the run that opened the stream
        self.position = position
        self._ring = Ring(ring_size, position)
        self._live: dict[Delivery, None] = {}  # fed by _deliver, in the order they joined
        self._all: dict[Delivery, None] = {}  # attached and not closed
        self._inbox_send, self._inbox_receive = trio.open_memory_channel[object](INBOX_SIZE)
        self._poll_pending = False
        self._missed = False  # a notification was let go while nothing was subscribed
        self.notified = True  # notifications tell of others' appends; without, a first subscription reads once
        self._nursery: trio.Nursery | None = None
        self._advanced = trio.Event()
        self._last_local = -math.inf
        self.ingested = 0
        self.delivered = 0
        self._closed = False
        self._stopping = False  # the hub's loop has ended; its nursery may still be closing
        _telemetry.watch("subscription", self, lambda stream: subscription_lags(stream.statistics()))

    # ------------------------------------------------------------ public

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
        """A subscription to the records that match ``filter``, or any of
        several filters (a DCB query's items) when given a sequence of them.

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
        selector = checked_selector(filter, after=after, max_batch=max_batch, buffer=buffer, overflow=overflow)
        delivery, batches = open_delivery(selector, max_batch=max_batch, buffer=buffer, overflow=overflow, name=name)
        return Subscription(self, delivery, batches, after)

    def statistics(self) -> StreamStatistics:
        """The hub's figures now; never blocks."""
        return StreamStatistics(
            position=self.position,
            ring=len(self._ring),
            ingested=self.ingested,
            delivered=self.delivered,
            subscriptions=tuple(delivery.statistics(self.position) for delivery in self._all),
        )

    async def publish(self, records: list[EventRecord]) -> None:
        """Hand committed records (in position order) to the hub.

        Blocks while the hub's inbox is full (``INBOX_SIZE`` batches), which
        happens only when a ``block`` subscriber holds the hub up. Cancelled
        while it waits, the records were not handed over.
        """
        try:
            self._inbox_send.send_nowait(records)  # the common case, without a scheduler round
        except trio.WouldBlock:
            await self._inbox_send.send(records)

    def poll_soon(self, *, unless_busy_within: float | None = None, periodic: bool = False) -> None:
        """Ask the hub to read events other processes appended. Never blocks.

        With ``unless_busy_within=T``, skip it if a local batch arrived in the
        last T seconds: each local batch already reads whatever other
        processes appended before it (the gap below its first position).

        While nothing is subscribed, only a ``periodic`` ask is taken, and
        it reads the store's head, not the events: a process that appends
        and never subscribes (a command line, a writer) costs the database
        nothing for the others' appends but that one read per tick.
        """
        if not periodic and not self._all:
            self._missed = True  # for the first subscription to come
            return
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
        """Block until the hub's position reaches ``position``. Cancelling
        it changes nothing."""
        while self.position < position:
            await self._advanced.wait()

    # ------------------------------------------------------------ the actor

    async def run(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """The ingest loop, until cancelled or its store is closed; every
        subscription is closed when it ends (their iterations end, what they
        buffered is dropped), and entering one later raises ClosedError."""
        try:
            async with open_actor_nursery() as nursery:
                self._nursery = nursery
                task_status.started()
                try:
                    async for item in self._inbox_receive:
                        if item is _POLL:
                            self._poll_pending = False
                            await self._poll()
                        else:
                            await self._ingest_local(item)  # type: ignore[arg-type]
                except ClosedError:
                    # The store closed under the hub (the bus closing, or a
                    # store closed before its stream): it stops as if cancelled.
                    _log.info("the stream stops: its store is closed")
                finally:
                    # The nursery now waits for the catch-ups to end and then
                    # takes no new one, before this task runs again below.
                    self._stopping = True
        finally:
            self._closed = True
            _telemetry.unwatch("subscription", self)
            for delivery in list(self._all):
                self.detach(delivery)

    async def _read(
        self, after: int, upto: int | None, filter: Selector | None = None, *, live: bool = True
    ) -> list[EventRecord]:
        """Records after a position, from the store, retrying while it is unavailable.

        ``live`` reads (what other processes appended, a gap before a local
        batch) go to the primary: nothing waits for a standby on the way to
        the subscribers. A catch-up's reads (``live=False``, with ``upto`` a
        position the hub has reached) may go to a hot standby, in a snapshot
        that shows ``upto``, or else to the primary.
        """
        partition: PartitionSlice | None = None
        if filter is None:
            filters = [_EVERYTHING]
        elif isinstance(filter, Sliced):
            filters, partition = [filter.filter], filter.slice
        else:
            filters = list(filter.filters) if isinstance(filter, AnyOf) else [filter]
        query = EventQuery(filters, after=after, limit=CATCH_UP_PAGE)
        while True:
            try:
                if live:
                    return await self._store.fetch_records(query, upto, from_primary=True, partition=partition)
                return await self._store.fetch_records(query, upto, min_position=upto, partition=partition)
            except StoreUnavailable:
                await trio.sleep(RETRY_DELAY)

    async def _head(self) -> int:
        while True:
            try:
                return await self._store.head()
            except StoreUnavailable:
                await trio.sleep(RETRY_DELAY)

    async def _poll(self) -> None:
        while True:
            if not self._all:
                head = await self._head()
                if self._all:
                    continue  # a subscription came meanwhile: it may want what lies below the head
                self._skip_to(head)
                return
            narrowed = self._narrowed()
            upto = None if narrowed is None else await self._head()
            records = await self._read(self.position, upto, narrowed)
            if narrowed is not None and self._narrowed() != narrowed:
                continue  # a subscription came meanwhile, which may want more: read what they all want now
            if narrowed is None:
                if records:
                    await self._deliver(records)
            else:
                assert upto is not None
                scanned = records[-1].sequence_number if len(records) == CATCH_UP_PAGE else upto
                if scanned > self.position:
                    self._ring.skip(scanned)  # it no longer holds every record
                    await self._deliver(records, scanned)
            if len(records) < CATCH_UP_PAGE:
                return

    def _skip_to(self, position: int) -> None:
        """Move to ``position`` without reading what lies before it (nothing
        is subscribed): the ring holds none of it, and a subscription that
        wants it later reads it from the store."""
        if position > self.position:
            self._ring.skip(position)
            self.position = position
            advanced, self._advanced = self._advanced, trio.Event()
            advanced.set()

    def _narrowed(self) -> Sliced | None:
        """What a poll reads: everything (None), or, when every subscription reads the same events of some
        partitions by a payload field (a partitioned projection's process), only the partitions they want: the
        others' events are neither sent nor decoded here, and the ring, no longer complete, is emptied."""
        sliced = [d.filter for d in self._all if isinstance(d.filter, Sliced)]
        if not sliced or len(sliced) < len(self._all):
            return None
        first, wanted = sliced[0], frozenset().union(*(s.slice.wanted for s in sliced))
        if len({(s.filter, s.slice.field, s.slice.partitions) for s in sliced}) > 1:
            return None  # several kinds of slice: everything, as ever
        return Sliced(first.filter, attrs.evolve(first.slice, wanted=wanted))

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
            if not self._all:
                self._skip_to(first - 1)  # nobody to hand the others' events to
                break
            gap = await self._read(self.position, first - 1)
            if not gap:
                break
            await self._deliver(gap)
        await self._deliver(records)

    async def _deliver(self, records: list[EventRecord], scanned: int | None = None) -> None:
        """Move the position to the end of ``records`` (or to ``scanned``,
        for a poll narrowed to some partitions, whose records do not go to
        the ring) and hand each live subscription its matches. Never waits
        for a ``catch_up`` subscriber (a full buffer detaches it to a
        catch-up task); waits for a ``block`` subscriber until its buffer has
        room, after every other one had its share."""
        upto = records[-1].sequence_number if scanned is None else scanned
        self.position = upto
        self.ingested += len(records)
        if scanned is None:
            self._ring.extend(records)
        advanced, self._advanced = self._advanced, trio.Event()
        advanced.set()
        selected: dict[Selector, list[EventRecord]] = {}
        blocked: list[tuple[Delivery, list[EventRecord], int]] = []
        for delivery in list(self._live):
            matched = selected.get(delivery.filter)
            if matched is None:
                matched = selected[delivery.filter] = delivery.filter.select(records)
            start = 0
            if matched and matched[0].sequence_number <= delivery.enqueued_upto:
                start = bisect.bisect_right(matched, delivery.enqueued_upto, key=position_of)
            size = delivery.max_batch
            while start < len(matched):
                chunk = matched[start : start + size]
                try:
                    delivery.put_nowait(chunk)
                except trio.ClosedResourceError:  # closed behind the hub's back: never the others' concern
                    self._live.pop(delivery, None)
                    self._all.pop(delivery, None)
                    break
                except trio.WouldBlock:
                    if delivery.overflow == "block":
                        blocked.append((delivery, matched, start))
                    else:
                        self._start_catch_up(delivery, chunk[0].sequence_number - 1)
                    break
                self.delivered += len(chunk)
                start += size
            else:
                # max: a subscriber may start after a position the hub has not reached
                delivery.enqueued_upto = max(delivery.enqueued_upto, upto)
            if delivery.on_move is not None:
                delivery.on_move()
        for delivery, matched, start in blocked:
            # Backpressure: wait for this subscriber, then give it the rest.
            try:
                while start < len(matched):
                    chunk = matched[start : start + delivery.max_batch]
                    await delivery.put(chunk)
                    self.delivered += len(chunk)
                    start += delivery.max_batch
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                continue
            delivery.enqueued_upto = max(delivery.enqueued_upto, upto)

    # ------------------------------------------------------------ asked by a subscription (the consumer's end)

    async def attach(self, delivery: Delivery, after: int | None) -> None:
        """Start feeding ``delivery`` with every match after ``after`` (None:
        the store's head): live if the hub is there, else by a catch-up first.
        A subscription asks for it when its block is entered.

        Blocks for one read of the store's head when ``after`` is None.
        Cancelled, nothing is attached.

        Raises:
            ClosedError: the stream has stopped.
            StoreUnavailable: ``after`` is None and the store cannot be reached.
        """
        self._check_open()
        if after is None:
            after = await self._store.head()
            self._check_open()
        if delivery.state is not SubscriptionState.NEW:  # attached before, or closed while the head was read
            raise ClosedError(f"subscription {delivery.name} cannot be attached: it is {delivery.state}")
        delivery.enqueued_upto = delivery.received_upto = after
        first = not self._all
        self._all[delivery] = None
        if first and (self._missed or not self.notified):
            # Notifications were let go while nothing was subscribed: one read
            # now, for what others appended since the hub's last tick.
            self._missed = False
            self.poll_soon(periodic=True)
        if after >= self.position:
            delivery.state = SubscriptionState.LIVE
            self._live[delivery] = None
        else:
            self._start_catch_up(delivery, after, counts_as_detach=False)

    def received(self, delivery: Delivery, count: int, upto: int) -> None:
        """The consumer took ``count`` records from its buffer, the last at
        position ``upto``. Never blocks; may wake the hub or a catch-up
        waiting for room."""
        delivery.taken(count, upto)

    def watch(self, delivery: Delivery, callback: Callable[[], None] | None) -> None:
        """Call ``callback`` (never blocking) whenever the position of
        ``delivery`` may have moved; None for nothing."""
        delivery.on_move = callback

    def detach(self, delivery: Delivery) -> None:
        """Stop feeding ``delivery`` and close it: its catch-up is cancelled, a
        hand-over waiting for room gives up, and the consumer's iteration ends
        (what is buffered is dropped). Never blocks; closing twice does nothing."""
        if delivery.state is SubscriptionState.CLOSED:
            return
        self._live.pop(delivery, None)
        self._all.pop(delivery, None)
        delivery.close()

    # ------------------------------------------------------------ catch-up

    def _check_open(self) -> None:
        # A subscription to a stopped hub would wait forever for its first batch.
        if self._closed:
            raise ClosedError("the stream is closed (the bus was left)")
        check_run(self._run, "the event stream")

    def _start_catch_up(self, delivery: Delivery, position: int, *, counts_as_detach: bool = True) -> None:
        self._live.pop(delivery, None)
        delivery.state = SubscriptionState.CATCHING_UP
        delivery.enqueued_upto = position
        if counts_as_detach:
            delivery.detaches += 1
            _log.info(
                "subscription %s detached at position %d (its buffer is full); catching up", delivery.name, position
            )
        assert self._nursery is not None, "the stream is not running"
        if self._stopping:  # no catch-up can start: the subscription ends now, as every one does when the hub stops
            self.detach(delivery)
            return
        scope = trio.CancelScope()
        delivery.catch_up_scope = scope
        self._nursery.start_soon(self._catch_up, delivery, scope)

    async def _catch_up(self, delivery: Delivery, scope: trio.CancelScope) -> None:
        """Feed a detached subscriber until it reaches the hub, then re-attach.

        Waits on the subscriber (never on the hub): its own pace is the limit.
        Between the last check and re-attaching there is no checkpoint, so no
        record can slip between the catch-up and the live feed. Cancelled
        (the subscription closed, or the hub stopped), it just ends.
        """
        with scope:
            try:
                while delivery.enqueued_upto < self.position:
                    position = delivery.enqueued_upto
                    page = self._ring.after(position, CATCH_UP_PAGE)
                    if page is not None:
                        scanned = page[-1].sequence_number if page else position
                        matched = delivery.filter.select(page)
                    else:
                        upto = self.position
                        matched = await self._read(position, upto, delivery.filter, live=False)
                        scanned = matched[-1].sequence_number if len(matched) == CATCH_UP_PAGE else upto
                    for chunk in chunks(matched, delivery.max_batch):
                        await delivery.put(chunk)
                        self.delivered += len(chunk)
                    delivery.enqueued_upto = max(delivery.enqueued_upto, scanned)
                    if not matched:
                        await trio.lowlevel.checkpoint()
                if delivery.state is SubscriptionState.CATCHING_UP:
                    delivery.state = SubscriptionState.LIVE
                    self._live[delivery] = None
                    if delivery.detaches:
                        _log.info("subscription %s re-attached at position %d", delivery.name, self.position)
            except (trio.ClosedResourceError, trio.BrokenResourceError):
                return
            except ClosedError:  # the store closed under it (the bus is closing): the subscription ends
                self.detach(delivery)
                return
            finally:
                if delivery.catch_up_scope is scope:
                    delivery.catch_up_scope = None


_EVERYTHING = EventFilter([])
