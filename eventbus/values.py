"""The values of eventbus, importable without its database stack.

``import eventbus.values`` needs neither asyncpg nor trio-asyncio: a domain's
functional core (``decide``/``evolve``) can build events and filters with it,
and its tests run without a database. The same names are exported by
``eventbus`` itself.
"""

from ._errors import (
    ClosedError,
    ConcurrencyError,
    DatabaseError,
    DuplicateEventId,
    EventBusError,
    HandlerFailed,
    InvalidDSN,
    InvalidEvent,
    InvalidFilter,
    ProjectionError,
    StoreUnavailable,
)
from ._values import Event, EventFilter, EventQuery, EventRecord, QueryResult, create_filter

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
    "HandlerFailed",
    "InvalidDSN",
    "InvalidEvent",
    "InvalidFilter",
    "ProjectionError",
    "QueryResult",
    "StoreUnavailable",
    "create_filter",
]
