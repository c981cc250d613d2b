"""One subscription's delivery state, and the words that describe it.

Like trio's memory channels (one state object, two endpoints), a subscription
is one ``Delivery`` and two ends. The hub (``_hub.py``) is the producer's end
and the only code that changes a delivery: it creates it, hands batches over
(``put_nowait``, ``put``), records what the consumer took (``taken``), moves
it between live and catch-up, and closes it. The ``Subscription``
(``_subscription.py``) is the consumer's end: it owns the receiving end of the
buffer, reads the delivery for its figures, and asks the hub for every change.

The buffer is counted in records (a batch is a non-empty list). A batch
handed over waits in it until the consumer takes it; what it holds is dropped
when the subscription closes.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Literal, TypeAlias

import attrs
import trio

from .._errors import InvalidFilter
from .._values import MAX_POSITION, AnyOf, EventFilter, EventRecord, Sliced

DEFAULT_MAX_BATCH = 100
"""Records per batch a subscriber receives, at most."""

DEFAULT_BUFFER = 1000
"""Records a subscription may hold unread before it overflows."""


Overflow = Literal["catch_up", "block"]


class SubscriptionState(enum.StrEnum):
    """Where a subscription stands. Each state is a ``str`` equal to its value
    (``SubscriptionState.LIVE == "live"``)."""

    NEW = "new"
    """Made, its block not yet entered."""
    LIVE = "live"
    """Fed by the hub with each committed batch."""
    CATCHING_UP = "catching_up"
    """Fed from the hub's ring or the store, until it reaches the hub."""
    CLOSED = "closed"
    """Left, or the stream stopped: iteration has ended."""


@attrs.frozen
class SubscriptionStatistics:
    """One subscription as the hub sees it.

    Attributes:
        name: the subscription's name (given, or made from its filter).
        state: ``SubscriptionState.LIVE`` (fed by the hub), ``CATCHING_UP``
            (fed from the ring or the store) or ``CLOSED``; each equal to its
            old string (``"live"``, ``"catching_up"``, ``"closed"``).
        overflow: the policy when its buffer is full.
        delivered: records the subscriber has received.
        buffered: records waiting in its buffer.
        position: the stream position up to which it has received every
            matching record.
        lag: positions between that and the hub's position.
        detaches: times it was detached for a full buffer.
    """

    name: str
    state: SubscriptionState
    overflow: str
    delivered: int
    buffered: int
    position: int
    lag: int
    detaches: int


Batches: TypeAlias = trio.MemoryReceiveChannel[list[EventRecord]]
"""The consumer's end of a delivery's buffer."""


Selector: TypeAlias = "EventFilter | AnyOf | Sliced"
"""What a subscription selects: one filter, or any of several."""


def open_delivery(
    filter: Selector, *, max_batch: int, buffer: int, overflow: Overflow, name: str | None
) -> tuple[Delivery, Batches]:
    """A new delivery (for the hub) and the receiving end of its buffer (for
    the subscription). Never blocks."""
    # Counted in batches, the channel never fills: every batch holds at least
    # one record and the delivery lets at most ``buffer`` records in.
    send, receive = trio.open_memory_channel[list[EventRecord]](buffer)
    delivery = Delivery(filter, max_batch, buffer, overflow, name or _describe(filter), send)
    return delivery, receive


@attrs.define(eq=False)
class Delivery:
    """What the hub knows of one subscription: its options, its figures, and
    the sending end of its buffer.

    Owned by the hub: only the hub calls the methods that change it and sets
    its fields. The subscription (the consumer's end) only reads it.

    Attributes:
        state: where the subscription stands.
        enqueued_upto: every match up to this position is in the buffer, or
            was received.
        received_upto: every match up to this position was received.
        buffered: records waiting in the buffer.
        delivered: records the consumer has received.
        detaches: times it was detached from the live feed for a full buffer.
        catch_up_scope: the scope of its catch-up task, while one runs.
        on_move: called (never blocking) whenever its position may have moved.
    """

    filter: Selector
    max_batch: int
    capacity: int
    overflow: Overflow
    name: str
    _send: trio.MemorySendChannel[list[EventRecord]]
    state: SubscriptionState = SubscriptionState.NEW
    enqueued_upto: int = 0
    received_upto: int = 0
    buffered: int = 0
    delivered: int = 0
    detaches: int = 0
    catch_up_scope: trio.CancelScope | None = None
    on_move: Callable[[], None] | None = None
    _space: trio.Event = attrs.field(factory=trio.Event)

    @property
    def position(self) -> int:
        """Every matching event up to this position has been received by the
        consumer (or did not match)."""
        return self.received_upto if self.buffered else max(self.received_upto, self.enqueued_upto)

    def statistics(self, stream_position: int) -> SubscriptionStatistics:
        """The figures now, with the lag behind ``stream_position``; never blocks."""
        position = self.position
        return SubscriptionStatistics(
            name=self.name,
            state=self.state,
            overflow=self.overflow,
            delivered=self.delivered,
            buffered=self.buffered,
            position=position,
            lag=max(0, stream_position - position),
            detaches=self.detaches,
        )

    # ------------------------------------------------------------ the hub's end

    def put_nowait(self, batch: list[EventRecord]) -> None:
        """Hand ``batch`` over without waiting.

        Raises:
            trio.WouldBlock: the buffer has no room for it; nothing was handed over.
            trio.ClosedResourceError: the subscription is closed.
        """
        if self.buffered + len(batch) > self.capacity:
            raise trio.WouldBlock
        self._hand_over(batch)

    async def put(self, batch: list[EventRecord]) -> None:
        """Hand ``batch`` over, waiting for room.

        Blocks while the buffer holds records and has no room for the batch,
        until the consumer has taken it down to half (a producer then fills it
        in one go rather than batch by batch). Cancelled while it waits,
        nothing was handed over.

        Raises:
            trio.ClosedResourceError: the subscription is closed, before or
                while it waits.
        """
        while self.buffered + len(batch) > self.capacity and self.buffered > 0:
            self._space = trio.Event()
            await self._space.wait()
            if self.state is SubscriptionState.CLOSED:
                raise trio.ClosedResourceError
        self._hand_over(batch)

    def _hand_over(self, batch: list[EventRecord]) -> None:
        self._send.send_nowait(batch)
        self.buffered += len(batch)
        self.enqueued_upto = batch[-1].sequence_number

    def taken(self, count: int, upto: int) -> None:
        """The consumer took ``count`` records from the buffer, the last at
        position ``upto``. Wakes a ``put`` at half the buffer."""
        self.buffered -= count
        self.delivered += count
        self.received_upto = upto if self.buffered else max(upto, self.enqueued_upto)
        if self.buffered <= self.capacity // 2:
            self._space.set()

    def close(self) -> None:
        """Closed: its catch-up ends, a waiting ``put`` raises, and the
        consumer's iteration ends (what is buffered is dropped)."""
        self.state = SubscriptionState.CLOSED
        if self.catch_up_scope is not None:
            self.catch_up_scope.cancel()
        self._send.close()
        self._space.set()


def _describe(filter: Selector) -> str:
    if isinstance(filter, AnyOf):
        return " | ".join(_describe(item) for item in filter.filters)
    if isinstance(filter, Sliced):
        return f"{_describe(filter.filter)} [{filter.slice.field} in {len(filter.slice.wanted)} partitions]"
    types = ",".join(filter.event_types) or "*"
    if filter.payload_predicates:
        return f"{types} {list(filter.payload_predicates)}"
    return types


@attrs.frozen
class StreamStatistics:
    """The hub: its position, the records in its ring, the records it took in
    and handed to subscribers so far, and each subscription."""

    position: int
    ring: int
    ingested: int
    delivered: int
    subscriptions: tuple[SubscriptionStatistics, ...]


OVERFLOWS = ("catch_up", "block")


def checked_selector(filter: object, *, after: object, max_batch: object, buffer: object, overflow: object) -> Selector:
    """A subscription's filter, or filters, as one selector, once its options are checked.

    Raises:
        InvalidFilter: a bad filter, position, batch size, buffer or overflow policy.
    """
    if isinstance(filter, (EventFilter, Sliced)):
        selector: Selector = filter
    elif isinstance(filter, (list, tuple)) and filter and all(isinstance(f, EventFilter) for f in filter):
        selector = filter[0] if len(filter) == 1 else AnyOf(tuple(filter))
    else:
        raise InvalidFilter(
            f"subscribe takes an EventFilter or a non-empty list of them (see create_filter), not {filter!r}"
        )
    if after is not None and (type(after) is not int or not 0 <= after <= MAX_POSITION):
        raise InvalidFilter(f"after must be None or a whole number from 0 to 2**63 - 1, not {after!r}")
    if type(max_batch) is not int or max_batch < 1:
        raise InvalidFilter(f"max_batch must be a whole number >= 1, not {max_batch!r}")
    if type(buffer) is not int or buffer < max_batch:
        raise InvalidFilter(f"buffer must be a whole number >= max_batch ({max_batch}), not {buffer!r}")
    if overflow not in OVERFLOWS:
        raise InvalidFilter(f"overflow must be one of {', '.join(OVERFLOWS)}, not {overflow!r}")
    return selector


def subscription_lags(statistics: StreamStatistics) -> list[tuple[float, dict[str, str]]]:
    """Each subscription's lag, with its name: the telemetry's lag gauge."""
    return [(sub.lag, {"subscription": sub.name}) for sub in statistics.subscriptions]
