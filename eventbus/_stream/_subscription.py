"""The consumer's end of a subscription: an async iterator of record batches.

A subscription is one delivery (``_delivery.py``, owned by the hub) and two
ends. This is the consumer's: it holds the receiving end of the buffer and the
rest of a batch it split, reads the delivery for its figures, and asks the hub
for every change: ``attach`` when its block is entered, ``received`` for each
batch it returns, ``watch`` for a callback, ``detach`` when it closes. It
never changes the delivery itself.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import trio

from .._errors import ClosedError, InvalidFilter
from .._values import AnyOf, EventFilter, EventRecord, Sliced
from ._delivery import Batches, Delivery, Overflow, SubscriptionState, SubscriptionStatistics


class Hub(Protocol):
    """What the consumer's end asks of the hub that feeds it (``EventStream``)."""

    @property
    def position(self) -> int: ...

    async def attach(self, delivery: Delivery, after: int | None) -> None: ...

    def received(self, delivery: Delivery, count: int, upto: int) -> None: ...

    def watch(self, delivery: Delivery, callback: Callable[[], None] | None) -> None: ...

    def detach(self, delivery: Delivery) -> None: ...


class Subscription:
    """A subscriber's view of the stream: an async iterator of record batches.

    Use it as ``async with bus.subscribe(...) as sub: async for batch in sub``.
    Each batch is a non-empty list of matching records in ascending position,
    with no gap and no duplicate across batches. Iteration blocks until a batch
    is ready; it ends when the subscription or the bus closes. Leaving the
    ``async with`` block releases everything, also when cancelled. Records are
    shared with other subscribers: do not mutate them.
    """

    def __init__(self, hub: Hub, delivery: Delivery, batches: Batches, after: int | None) -> None:
        self._hub = hub
        self._delivery = delivery
        self._batches = batches
        self._after = after
        self._carry: list[EventRecord] | None = None  # the rest of a batch split at max_batch
        self._entered = False  # its block was entered (a subscription is entered once)

    # ------------------------------------------------------------ options and figures (never block)

    @property
    def filters(self) -> tuple[EventFilter, ...]:
        """The filters it was made with; a record is delivered if it matches any."""
        selector = self._delivery.filter
        return selector.filters if isinstance(selector, (AnyOf, Sliced)) else (selector,)

    @property
    def filter(self) -> EventFilter:
        """Its filter; for a subscription to several filters, the first (see ``filters``)."""
        return self.filters[0]

    @property
    def max_batch(self) -> int:
        return self._delivery.max_batch

    @property
    def buffer(self) -> int:
        return self._delivery.capacity

    @property
    def overflow(self) -> Overflow:
        return self._delivery.overflow

    @property
    def name(self) -> str:
        return self._delivery.name

    @property
    def state(self) -> SubscriptionState:
        return self._delivery.state

    @property
    def buffered(self) -> int:
        """Records waiting in the buffer."""
        return self._delivery.buffered

    @property
    def delivered(self) -> int:
        """Records the consumer has received."""
        return self._delivery.delivered

    @property
    def detaches(self) -> int:
        """Times the hub detached it from the live feed for a full buffer."""
        return self._delivery.detaches

    @property
    def position(self) -> int:
        """Every matching event up to this position has been received by the
        consumer (or did not match)."""
        return self._delivery.position

    @property
    def on_move(self) -> Callable[[], None] | None:
        """Called by the hub, never blocking, whenever this subscription's
        position may have moved; None (the default) for nothing."""
        return self._delivery.on_move

    @on_move.setter
    def on_move(self, callback: Callable[[], None] | None) -> None:
        self._hub.watch(self._delivery, callback)

    def statistics(self) -> SubscriptionStatistics:
        """The subscription's figures now."""
        return self._delivery.statistics(self._hub.position)

    # ------------------------------------------------------------ consuming

    async def __aenter__(self) -> Subscription:
        """Start receiving (see ``EventStream.subscribe``). A subscription is
        entered once.

        Raises:
            ClosedError: it was closed (its block left): subscribe again for a
                new one; or the stream is closed.
            InvalidFilter: its block is entered already.
        """
        if self._delivery.state is SubscriptionState.CLOSED:
            raise ClosedError("this subscription is closed (its block was left): subscribe again for a new one")
        if self._entered:
            raise InvalidFilter("this subscription's block is entered already: a subscription is entered once")
        self._entered = True  # (before the head is read: a second task entering meanwhile is refused too)
        try:
            await self._hub.attach(self._delivery, self._after)
        except BaseException:
            self._entered = False  # nothing was attached: it may be entered again
            raise
        return self

    async def __aexit__(self, *exc: object) -> None:
        self.close()

    def __aiter__(self) -> Subscription:
        return self

    async def __anext__(self) -> list[EventRecord]:
        if self._delivery.state is SubscriptionState.CLOSED:
            raise StopAsyncIteration  # what is buffered is dropped
        if not self._entered:  # (it would wait for ever: nothing feeds it)
            raise InvalidFilter("enter the subscription's block before iterating: async with bus.subscribe(...) as sub")
        if self._carry is not None:
            batch, self._carry = self._carry, None
        else:
            try:
                batch = await self._batches.receive()
            except (trio.EndOfChannel, trio.ClosedResourceError):
                raise StopAsyncIteration from None
        # Small batches waiting behind this one go out with it, up to max_batch:
        # a subscriber that fell behind gets fewer, larger batches. (Extending
        # in place is safe: every batch is a list of this subscription's own.)
        max_batch = self._delivery.max_batch
        while len(batch) < max_batch:
            try:
                more = self._batches.receive_nowait()
            except (trio.WouldBlock, trio.EndOfChannel, trio.ClosedResourceError):
                break
            room = max_batch - len(batch)
            if len(more) <= room:
                batch.extend(more)
            else:
                batch.extend(more[:room])
                self._carry = more[room:]
                break
        self._hub.received(self._delivery, len(batch), batch[-1].sequence_number)
        return batch

    def close(self) -> None:
        """Stop receiving; what is buffered is dropped. Never blocks."""
        self._hub.detach(self._delivery)
        self._batches.close()
        self._carry = None
