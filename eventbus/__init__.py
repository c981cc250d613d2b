"""eventbus: an event store and message bus for Trio, on PostgreSQL."""

from ._errors import (
    ClosedError,
    ConcurrencyError,
    DatabaseError,
    DuplicateEventId,
    EventBusError,
    InvalidEvent,
    InvalidFilter,
    StoreUnavailable,
)
from ._model import Event, EventFilter, EventQuery, EventRecord, QueryResult, create_filter
from ._store import EventStore, open_event_store, run_event_store
from ._writer import StoreStatistics

__all__ = [
    "ClosedError",
    "ConcurrencyError",
    "DatabaseError",
    "DuplicateEventId",
    "Event",
    "EventBusError",
    "EventFilter",
    "EventQuery",
    "EventRecord",
    "EventStore",
    "InvalidEvent",
    "InvalidFilter",
    "QueryResult",
    "StoreStatistics",
    "StoreUnavailable",
    "create_filter",
    "open_event_store",
    "run_event_store",
]
