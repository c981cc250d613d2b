"""``eventbus tail``: events as they are committed, by any process.

Reads the events table in position order from a position on. Positions are
committed in order (the append lock), so reading past the last one seen
never misses an event; ``--follow`` looks again every ``FOLLOW_POLL`` seconds.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import trio

from .._store import query_sql
from .._values import EventFilter, EventQuery, EventRecord
from ._common import EXIT_OK, Failed, connected, print_json

FOLLOW_POLL = 0.25
"""Seconds between looks for new events with ``--follow``."""

PAGE = 1000
"""Events read at a time."""


def parse_where(items: Sequence[str]) -> dict[str, Any]:
    """One payload predicate from ``key=value`` (a string) and ``key:=json``
    items; ``a.b=x`` means ``{"a": {"b": "x"}}``.

    Raises:
        Failed: (usage) an item without ``=``, an empty key or part, bad JSON,
            or one key given twice.
    """
    predicate: dict[str, Any] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep:
            raise Failed(f"--where {item!r}: write key=value (a string) or key:=json", 2)
        value: Any = raw
        if key.endswith(":"):
            key = key[:-1]
            try:
                value = json.loads(raw)
            except ValueError:
                raise Failed(f"--where {item!r}: {raw!r} is not JSON", 2) from None
        parts = key.split(".")
        if not all(parts):
            raise Failed(f"--where {item!r}: the key must be names joined by dots", 2)
        node = predicate
        for part in parts[:-1]:
            child = node.setdefault(part, {})
            if not isinstance(child, dict):
                raise Failed(f"--where {item!r}: {part!r} is given twice", 2)
            node = child
        if parts[-1] in node:
            raise Failed(f"--where {item!r}: {key!r} is given twice", 2)
        node[parts[-1]] = value
    return predicate


def make_filter(types: Sequence[str], where: Sequence[str]) -> EventFilter:
    predicate = parse_where(where)
    try:
        return EventFilter(list(types), [predicate] if predicate else None)
    except ValueError as exc:
        raise Failed(f"bad filter: {exc}", 2) from None


def as_json(record: EventRecord) -> dict[str, Any]:
    return {
        "position": record.sequence_number,
        "event_id": str(record.event_id),
        "type": record.event_type,
        "occurred_at": record.occurred_at.isoformat(),
        "payload": record.payload,
        "metadata": record.metadata,
    }


def as_line(record: EventRecord) -> str:
    payload = json.dumps(record.payload, ensure_ascii=False, separators=(", ", ": "), default=str)
    when = record.occurred_at.isoformat(timespec="milliseconds")
    return f"{record.sequence_number}  {when}  {record.event_type}  {payload}"


async def run_tail(
    dsn: str | None,
    *,
    types: Sequence[str],
    where: Sequence[str],
    after: int | None,
    lines: int,
    follow: bool,
    json_lines: bool,
) -> int:
    event_filter = make_filter(types, where)
    async with connected(dsn) as conn:
        if after is None:
            head = int(await conn.fetchval("SELECT coalesce(max(sequence_number), 0) FROM eventbus.events"))
            after = await _start_of_last(conn, event_filter, head, lines)
        while True:
            sql, args = query_sql(EventQuery([event_filter], after=after, limit=PAGE))
            rows = await conn.fetch(sql, *args)
            for row in rows:
                record = EventRecord(*row)
                if json_lines:
                    print_json(as_json(record))
                else:
                    print(as_line(record), flush=True)
                after = record.sequence_number
            if len(rows) < PAGE:
                if not follow:
                    return EXIT_OK
                await trio.sleep(FOLLOW_POLL)


async def _start_of_last(conn: Any, event_filter: EventFilter, head: int, lines: int) -> int:
    """The position after which the last ``lines`` matching events start."""
    if lines == 0:
        return head
    sql, args = query_sql(EventQuery([event_filter], after=0))
    # The same selection, newest first (every walk of it): the last ``lines`` of it.
    sql = re.sub(r"ORDER BY (\w+\.)?sequence_number\b", r"ORDER BY \1sequence_number DESC", sql)
    sql = f"SELECT min(sequence_number) - 1 FROM ({sql} LIMIT {int(lines)}) AS last"
    start = await conn.fetchval(sql, *args)
    return head if start is None else int(start)
