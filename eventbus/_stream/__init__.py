"""The stream room: the hub that owns delivery state, and the subscription,
the consumer's end of it."""

from ._hub import EventStream, StreamStatistics, open_event_stream
from ._subscription import (
    DEFAULT_BUFFER,
    DEFAULT_MAX_BATCH,
    Overflow,
    Subscription,
    SubscriptionState,
    SubscriptionStatistics,
)

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
]
