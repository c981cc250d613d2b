"""The stream room: the hub that owns delivery state, and the subscription,
the consumer's end of it.

``_delivery``: one subscription's delivery state and the words for it;
``_subscription``: the consumer's end, which only reads that state;
``_hub``: the actor, the only writer of delivery state; ``_open``: running
one over a store. Imports run ``_open`` -> ``_hub`` -> ``_subscription`` ->
``_delivery``.
"""

from ._delivery import (
    DEFAULT_BUFFER,
    DEFAULT_MAX_BATCH,
    Overflow,
    StreamStatistics,
    SubscriptionState,
    SubscriptionStatistics,
)
from ._hub import EventStream
from ._open import open_event_stream, subscribe_slice
from ._subscription import Subscription

__all__ = [
    "DEFAULT_BUFFER",
    "DEFAULT_MAX_BATCH",
    "EventStream",
    "Overflow",
    "StreamStatistics",
    "Subscription",
    "SubscriptionState",
    "SubscriptionStatistics",
    "open_event_stream",
    "subscribe_slice",
]
