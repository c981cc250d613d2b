"""eventbus: an event store and message bus for Trio, on PostgreSQL."""

from ._bus import Bus, BusStatistics, ListenerStatistics, open_bus, run_bus
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
from ._pg import call_asyncio, call_trio, open_loop
from ._projection import (
    HandlerFailed,
    Projection,
    ProjectionConfig,
    ProjectionError,
    ProjectionStatus,
    Transaction,
    create_projection_config,
)
from ._projector import ProjectionManager, start_projection_listener
from ._requests import StoreStatistics
from ._store import EventStore, open_event_store, run_event_store
from ._stream import EventStream, StreamStatistics, open_event_stream
from ._subscription import Subscription, SubscriptionStatistics
from ._supervisor import RestartPolicy

__all__ = [
    "call_asyncio",
    "call_trio",
    "open_loop",
    "HandlerFailed",
    "Projection",
    "ProjectionConfig",
    "ProjectionError",
    "ProjectionManager",
    "ProjectionStatus",
    "RestartPolicy",
    "Transaction",
    "create_projection_config",
    "start_projection_listener",
    "Bus",
    "BusStatistics",
    "EventStream",
    "ListenerStatistics",
    "StreamStatistics",
    "Subscription",
    "SubscriptionStatistics",
    "open_bus",
    "open_event_stream",
    "run_bus",
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
