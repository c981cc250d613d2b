"""A subscriber's view of the stream: a bounded buffer of record batches.

The hub (``_stream.py``) fills it; the subscriber iterates it. Its buffer is
counted in records; what the hub offers beyond it is refused, and the hub then
detaches the subscription and feeds it through a catch-up task of its own.
"""

from __future__ import annotations

import enum
from collections.abc import Callable
from typing import Literal, Protocol

import attrs
import trio

from .._values import EventFilter, EventRecord

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


class Hub(Protocol):
    """What a subscription needs of the hub that feeds it."""

    position: int
    delivered: int

    async def _attach(self, sub: Subscription, after: int | None) -> None: ...

    def _detach(self, sub: Subscription) -> None: ...


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


class Subscription:
    """A subscriber's view of the stream: an async iterator of record batches.

    Use it as ``async with bus.subscribe(...) as sub: async for batch in sub``.
    Each batch is a non-empty list of matching records in ascending position,
    with no gap and no duplicate across batches. Iteration blocks until a batch
    is ready; it ends when the subscription or the bus closes. Leaving the
    ``async with`` block releases everything, also when cancelled. Records are
    shared with other subscribers: do not mutate them.
    """

    def __init__(
        self,
        hub: Hub,
        filter: EventFilter,
        after: int | None,
        max_batch: int,
        buffer: int,
        overflow: Overflow,
        name: str | None,
    ) -> None:
        self._hub = hub
        self.filter = filter
        self._after = after
        self.max_batch = max_batch
        self.buffer = buffer
        self.overflow: Overflow = overflow
        self.name = name or _describe(filter)
        self._send, self._receive = trio.open_memory_channel[tuple[list[EventRecord], int]](buffer)
        self.state = SubscriptionState.NEW
        self.enqueued_upto = 0  # hub side: every match up to here is in the buffer (or was received)
        self.received_upto = 0  # subscriber side: every match up to here was received
        self.buffered = 0
        self.delivered = 0
        self.detaches = 0
        self._space = trio.Event()
        self._low_water = buffer // 2
        self._carry: tuple[list[EventRecord], int] | None = None
        self.on_move: Callable[[], None] | None = None
        self._catch_up_scope: trio.CancelScope | None = None

    # ------------------------------------------------------------ subscriber

    async def __aenter__(self) -> Subscription:
        await self._hub._attach(self, self._after)
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[EventRecord]:
        if self._carry is not None:
            (batch, upto), self._carry = self._carry, None
        else:
            try:
                batch, upto = await self._receive.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise StopAsyncIteration from None
        # Small batches waiting behind this one go out with it, up to max_batch:
        # a subscriber that fell behind gets fewer, larger batches. (Extending
        # in place is safe: every chunk is a list of this subscription's own.)
        while len(batch) < self.max_batch:
            try:
                more, more_upto = self._receive.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            room = self.max_batch - len(batch)
            if len(more) <= room:
                batch.extend(more)
                upto = more_upto
            else:
                batch.extend(more[:room])
                upto = more[room - 1].sequence_number
                self._carry = (more[room:], more_upto)
                break
        self.buffered -= len(batch)
        self.delivered += len(batch)
        self.received_upto = upto if self.buffered else max(upto, self.enqueued_upto)
        if self.buffered <= self._low_water:
            # A producer waiting for room wakes when half the buffer is free,
            # and then fills it in one go rather than batch by batch.
            self._space.set()
        return batch

    def close(self) -> None:
        """Stop receiving; what is buffered is dropped. Never blocks."""
        if self.state is SubscriptionState.CLOSED:
            return
        self.state = SubscriptionState.CLOSED
        self._hub._detach(self)
        if self._catch_up_scope is not None:
            self._catch_up_scope.cancel()
        self._send.close()
        self._receive.close()
        self._carry = None  # dropped with the rest of the buffer: iteration ends
        self._space.set()  # the hub may be waiting in put() for room (overflow="block")

    @property
    def position(self) -> int:
        """Every matching event up to this position has been received by the
        consumer (or did not match); never blocks."""
        return self.received_upto if self.buffered else max(self.received_upto, self.enqueued_upto)

    def statistics(self) -> SubscriptionStatistics:
        """The subscription's figures now; never blocks."""
        position = self.position
        return SubscriptionStatistics(
            name=self.name,
            state=self.state,
            overflow=self.overflow,
            delivered=self.delivered,
            buffered=self.buffered,
            position=position,
            lag=max(0, self._hub.position - position),
            detaches=self.detaches,
        )

    # ------------------------------------------------------------ hub side

    def put_nowait(self, chunk: list[EventRecord], upto: int) -> None:
        """Enqueue without waiting.

        Raises:
            trio.WouldBlock: the buffer has no room for ``chunk``; nothing was enqueued.
        """
        if self.buffered + len(chunk) > self.buffer:
            raise trio.WouldBlock
        self._send.send_nowait((chunk, upto))
        self.buffered += len(chunk)
        self._hub.delivered += len(chunk)

    async def put(self, chunk: list[EventRecord], upto: int) -> None:
        """Enqueue, waiting for room. Raises trio.ClosedResourceError if closed."""
        while self.buffered + len(chunk) > self.buffer and self.buffered > 0:
            self._space = trio.Event()
            await self._space.wait()
            if self.state is SubscriptionState.CLOSED:
                raise trio.ClosedResourceError
        self._send.send_nowait((chunk, upto))
        self.buffered += len(chunk)
        self._hub.delivered += len(chunk)


def _describe(filter: EventFilter) -> str:
    types = ",".join(filter.event_types) or "*"
    if filter.payload_predicates:
        return f"{types} {list(filter.payload_predicates)}"
    return types
