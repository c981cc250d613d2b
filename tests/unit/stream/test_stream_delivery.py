"""A subscription is one delivery and two ends: the hub hands batches over and
owns every figure of the delivery; the subscription, the consumer's end, takes
the batches and asks the hub for every change.

No database: deliveries on their own, a subscription on a stand-in hub, and a
hub whose store is never asked (every published batch follows the last).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager
from datetime import UTC, datetime
from typing import Any

import attrs
import pytest
import trio
import trio.testing

from eventbus import EventRecord, EventStream, SubscriptionState, create_filter
from eventbus._stream._delivery import Delivery, open_delivery
from eventbus._stream._subscription import Subscription

EVERYTHING = create_filter([])
EPOCH = datetime(2025, 1, 1, tzinfo=UTC)


def records(first: int, last: int) -> list[EventRecord]:
    """The records at positions ``first`` to ``last``."""
    return [EventRecord(n, uuid.UUID(int=n), "A", {}, {}, EPOCH) for n in range(first, last + 1)]


def positions(batch: list[EventRecord]) -> list[int]:
    return [record.sequence_number for record in batch]


def a_delivery(*, max_batch: int, buffer: int) -> tuple[Delivery, trio.MemoryReceiveChannel[list[EventRecord]]]:
    return open_delivery(EVERYTHING, max_batch=max_batch, buffer=buffer, overflow="catch_up", name=None)


# ---------------------------------------------------------------- the hub's end


def test_put_nowait_hands_batches_over_while_there_is_room_then_raises_would_block() -> None:
    delivery, batches = a_delivery(max_batch=2, buffer=4)
    delivery.put_nowait(records(1, 2))
    delivery.put_nowait(records(3, 4))
    with pytest.raises(trio.WouldBlock):
        delivery.put_nowait(records(5, 5))
    assert (delivery.buffered, delivery.enqueued_upto) == (4, 4)
    assert [positions(batches.receive_nowait()) for _ in range(2)] == [[1, 2], [3, 4]]
    with pytest.raises(trio.WouldBlock):
        batches.receive_nowait()  # nothing of the refused batch went in


async def test_put_waits_until_the_consumer_has_taken_the_buffer_down_to_half() -> None:
    delivery, _ = a_delivery(max_batch=2, buffer=4)
    delivery.put_nowait(records(1, 2))
    delivery.put_nowait(records(3, 4))
    handed_over = trio.Event()

    async def put() -> None:
        await delivery.put(records(5, 5))
        handed_over.set()

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await trio.testing.wait_all_tasks_blocked()
        # Room for the one record, but three of four still buffered: more than
        # half, so the producer sleeps on, to fill the buffer in one go later.
        delivery.taken(1, 1)
        await trio.testing.wait_all_tasks_blocked()
        assert not handed_over.is_set()
        delivery.taken(1, 2)
    assert (delivery.buffered, delivery.enqueued_upto, delivery.delivered) == (3, 5, 2)


async def test_a_closed_delivery_refuses_a_hand_over_and_gives_up_a_waiting_one() -> None:
    delivery, _ = a_delivery(max_batch=2, buffer=2)
    delivery.put_nowait(records(1, 2))
    refused: list[type[BaseException]] = []

    async def put() -> None:
        try:
            await delivery.put(records(3, 4))
        except trio.ClosedResourceError as exc:
            refused.append(type(exc))

    async with trio.open_nursery() as nursery:
        nursery.start_soon(put)
        await trio.testing.wait_all_tasks_blocked()
        delivery.close()
    assert refused == [trio.ClosedResourceError]
    assert delivery.state is SubscriptionState.CLOSED
    delivery.taken(2, 2)
    with pytest.raises(trio.ClosedResourceError):
        delivery.put_nowait(records(3, 3))


# ---------------------------------------------------------------- the consumer's end


@attrs.define
class RecordingHub:
    """A hub that records what the consumer's end asks of it, and does nothing."""

    position: int = 10
    asked: list[tuple[Any, ...]] = attrs.Factory(list)

    async def attach(self, delivery: Delivery, after: int | None) -> None:
        self.asked.append(("attach", delivery, after))

    def received(self, delivery: Delivery, count: int, upto: int) -> None:
        self.asked.append(("received", delivery, count, upto))

    def watch(self, delivery: Delivery, callback: Callable[[], None] | None) -> None:
        self.asked.append(("watch", delivery, callback))

    def detach(self, delivery: Delivery) -> None:
        self.asked.append(("detach", delivery))


async def test_the_consumer_end_takes_batches_and_leaves_every_change_of_the_delivery_to_the_hub() -> None:
    delivery, batches = a_delivery(max_batch=3, buffer=10)
    delivery.put_nowait(records(1, 2))
    delivery.put_nowait(records(3, 4))
    before = attrs.asdict(delivery, recurse=False)
    hub = RecordingHub()

    def moved() -> None:
        pass

    taken = []
    async with Subscription(hub, delivery, batches, 0) as sub:
        taken.append(positions(await sub.__anext__()))  # [1, 2] and the first of [3, 4]
        taken.append(positions(await sub.__anext__()))  # the rest of it
        sub.on_move = moved
        assert sub.statistics().lag == 10 - delivery.position
    assert taken == [[1, 2, 3], [4]]
    assert hub.asked == [
        ("attach", delivery, 0),
        ("received", delivery, 3, 3),
        ("received", delivery, 1, 4),
        ("watch", delivery, moved),
        ("detach", delivery),
    ]
    assert attrs.asdict(delivery, recurse=False) == before


async def test_a_subscription_closed_by_the_hub_ends_its_iteration_and_drops_what_it_buffered() -> None:
    delivery, batches = a_delivery(max_batch=2, buffer=4)
    delivery.put_nowait(records(1, 2))
    async with Subscription(RecordingHub(), delivery, batches, 0) as sub:
        delivery.close()
        assert [batch async for batch in sub] == []


def test_each_subscription_state_is_the_string_it_replaced() -> None:
    assert list(SubscriptionState) == ["new", "live", "catching_up", "closed"]
    assert [f"{state}" for state in SubscriptionState] == ["new", "live", "catching_up", "closed"]
    assert SubscriptionState("catching_up") is SubscriptionState.CATCHING_UP
    assert json.dumps({"state": SubscriptionState.LIVE}) == '{"state": "live"}'


# ---------------------------------------------------------------- the hub


class NoStore:
    """A store the hub must not ask: every published batch follows the last."""

    async def head(self) -> int:
        raise AssertionError("the hub asked the store for its head")

    async def fetch_records(self, *args: object) -> list[EventRecord]:
        raise AssertionError("the hub read the store")


@asynccontextmanager
async def open_hub() -> AsyncIterator[EventStream]:
    stream = EventStream(NoStore(), 0)  # type: ignore[arg-type]
    async with trio.open_nursery() as nursery:
        await nursery.start(stream.run)
        yield stream
        nursery.cancel_scope.cancel()


async def test_a_full_buffer_detaches_the_subscription_which_catches_up_from_the_ring_and_goes_live_again() -> None:
    async with open_hub() as stream, stream.subscribe(EVERYTHING, after=0, max_batch=2, buffer=2) as sub:
        await stream.publish(records(1, 5))
        await stream.wait_position(5)
        stats = sub.statistics()
        assert (stats.state, stats.buffered, stats.delivered, stats.detaches) == ("catching_up", 2, 0, 1)

        received: list[int] = []
        while len(received) < 5:
            received += positions(await sub.__anext__())
        await trio.testing.wait_all_tasks_blocked()
        stats = sub.statistics()
        assert (stats.state, stats.buffered, stats.delivered, stats.position, stats.detaches) == ("live", 0, 5, 5, 1)

        await stream.publish(records(6, 6))
        received += positions(await sub.__anext__())
        assert received == [1, 2, 3, 4, 5, 6]
        assert stream.statistics().delivered == 6
    assert sub.state is SubscriptionState.CLOSED
    assert stream.statistics().subscriptions == ()
