"""The values room: events, records, filters, JSON rules, tags.

Pure: imports neither trio nor asyncpg nor trio_asyncio, so a domain's core can
use these types without the database stack.
"""

from ._model import Event, EventFilter, EventQuery, EventRecord, Matchable, Payload, QueryResult, create_filter

__all__ = ["Event", "EventFilter", "EventQuery", "EventRecord", "Matchable", "Payload", "QueryResult", "create_filter"]
