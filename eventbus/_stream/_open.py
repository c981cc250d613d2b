"""Opening a stream over a store, and a partitioned projection's subscription."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

from .._nursery import open_actor_nursery
from .._store import EventStore
from .._values import Sliced
from ._hub import RING_SIZE, EventStream
from ._subscription import Subscription


def subscribe_slice(stream: EventStream, sliced: Sliced, **options: Any) -> Subscription:
    """:meth:`EventStream.subscribe` to the records of ``sliced``: its filter's, in its partitions, read from the
    store narrowed to them (a partitioned projection's; not for callers: the slice is the library's own)."""
    return stream.subscribe(sliced, **options)  # type: ignore[arg-type]  # the hub takes a slice as well


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
