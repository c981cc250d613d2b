"""eventbus: an event store and message bus for Trio, on PostgreSQL.

The values and errors load with the package; the actors (and with them trio,
asyncpg and trio-asyncio) load on first use of one of their names, so a
program that only builds events and filters, or ``import eventbus.values``,
does not need the database stack.
"""

from __future__ import annotations

import importlib
import logging
from typing import TYPE_CHECKING, Any

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
    InvalidOption,
    NotCaughtUp,
    PartitionsDiffer,
    ProjectionError,
    StoreUnavailable,
    WrongTrioRun,
)
from ._values import Event, EventFilter, EventQuery, EventRecord, QueryResult, create_filter

__version__ = "0.2.0"

# Loggers live under ``eventbus.*``; what is done with their records is the program's choice.
logging.getLogger(__name__).addHandler(logging.NullHandler())

if TYPE_CHECKING:
    from ._bus import Bus, BusStatistics, ListenerStatistics, open_bus, run_bus
    from ._db import call_asyncio, call_trio, open_loop
    from ._projections import (
        Projection,
        ProjectionConfig,
        ProjectionManager,
        ProjectionState,
        ProjectionStatus,
        RestartPolicy,
        Transaction,
        create_projection_config,
        start_projection_listener,
    )
    from ._store import (
        EventStore,
        ReplicaState,
        ReplicaStatistics,
        StoreStatistics,
        open_event_store,
        run_event_store,
    )
    from ._stream import (
        EventStream,
        StreamStatistics,
        Subscription,
        SubscriptionState,
        SubscriptionStatistics,
        open_event_stream,
    )

# name -> the room that defines it, imported on first use
_LAZY = {
    **dict.fromkeys(("Bus", "BusStatistics", "ListenerStatistics", "open_bus", "run_bus"), "._bus"),
    **dict.fromkeys(("call_asyncio", "call_trio", "open_loop"), "._db"),
    **dict.fromkeys(
        (
            "Projection",
            "ProjectionConfig",
            "ProjectionManager",
            "ProjectionState",
            "ProjectionStatus",
            "RestartPolicy",
            "Transaction",
            "create_projection_config",
            "start_projection_listener",
        ),
        "._projections",
    ),
    **dict.fromkeys(
        ("EventStore", "ReplicaState", "ReplicaStatistics", "StoreStatistics", "open_event_store", "run_event_store"),
        "._store",
    ),
    **dict.fromkeys(
        (
            "EventStream",
            "StreamStatistics",
            "Subscription",
            "SubscriptionState",
            "SubscriptionStatistics",
            "open_event_stream",
        ),
        "._stream",
    ),
}


def __getattr__(name: str) -> Any:
    room = _LAZY.get(name)
    if room is None:
        raise AttributeError(f"module 'eventbus' has no attribute {name!r}")
    value = getattr(importlib.import_module(room, __name__), name)
    globals()[name] = value  # later lookups skip this function
    return value


def __dir__() -> list[str]:
    return sorted(__all__)


__all__ = [
    "__version__",
    "call_asyncio",
    "call_trio",
    "open_loop",
    "HandlerFailed",
    "Projection",
    "ProjectionConfig",
    "PartitionsDiffer",
    "ProjectionError",
    "ProjectionManager",
    "ProjectionState",
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
    "SubscriptionState",
    "SubscriptionStatistics",
    "open_bus",
    "open_event_stream",
    "run_bus",
    "ClosedError",
    "WrongTrioRun",
    "ConcurrencyError",
    "DatabaseError",
    "DuplicateEventId",
    "Event",
    "EventBusError",
    "EventFilter",
    "EventQuery",
    "EventRecord",
    "EventStore",
    "InvalidDSN",
    "InvalidEvent",
    "InvalidFilter",
    "InvalidOption",
    "NotCaughtUp",
    "QueryResult",
    "ReplicaState",
    "ReplicaStatistics",
    "StoreStatistics",
    "StoreUnavailable",
    "create_filter",
    "open_event_store",
    "run_event_store",
]
