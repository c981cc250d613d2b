"""The values room: events, records, filters, JSON rules, tags.

Pure: imports neither trio nor asyncpg nor trio_asyncio, so a domain's core can
use these types without the database stack.
"""

from ._model import (
    MAX_POSITION,
    AnyOf,
    Event,
    EventFilter,
    EventQuery,
    EventRecord,
    Matchable,
    Payload,
    QueryResult,
    create_filter,
    is_number,
)
from ._partitions import PartitionSlice, Sliced, field_partition

__all__ = [
    "MAX_POSITION",
    "AnyOf",
    "Event",
    "EventFilter",
    "EventQuery",
    "EventRecord",
    "Matchable",
    "PartitionSlice",
    "Payload",
    "QueryResult",
    "Sliced",
    "create_filter",
    "field_partition",
    "is_number",
]
