"""The SQL of reads: a query's statement, and records from its rows."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

from .. import _db
from .._values import EventFilter, EventQuery, EventRecord, PartitionSlice, _partitions, _tags

_COLUMNS = "sequence_number, event_id, event_type, payload, metadata, occurred_at"
_E_COLUMNS = ", ".join(f"e.{name}" for name in _COLUMNS.split(", "))


MAX_WALKS = 32
"""The most tags (or types) a query walks one by one; with more (many
predicates), their candidates are read as one set and sorted instead."""


def _check_sql(filter: EventFilter, args: list[Any]) -> str:
    """What makes the event ``e`` match ``filter``, exactly."""
    clauses = []
    if filter.event_types:
        args.append(list(filter.event_types))
        clauses.append(f"e.event_type = ANY(${len(args)}::text[])")
    if filter.predicate_texts is not None:
        args.append(list(filter.predicate_texts))
        clauses.append(f"e.payload @> ANY(${len(args)}::text[]::jsonb[])")
    return "(" + " AND ".join(clauses) + ")" if clauses else "TRUE"


def _candidates(query: EventQuery) -> tuple[dict[int, None], dict[str, None]] | None:
    """The tags and types whose index walks find every event ``query`` may
    match, or None when any event may match a filter (no types, or a
    predicate without a scalar leaf). A filter with predicates walks the tag
    index for each predicate's tag (and the wide events); one without walks
    the type index for each type."""
    tags: dict[int, None] = {}
    types: dict[str, None] = {}
    for filter in query.filters:
        if filter.predicate_tags is not None and None not in filter.predicate_tags:
            tags.update(dict.fromkeys(filter.predicate_tags))  # type: ignore[arg-type]
        elif filter.event_types:
            types.update(dict.fromkeys(filter.event_types))
        else:
            return None
    if tags:
        tags[_tags.WIDE] = None
    return tags, types


def partition_sql(field: str, partitions: str) -> str:
    """The partition of the event ``e`` by the payload field ``field`` (a
    parameter), as ``_values/_partitions.py`` computes it: the md5 of the
    key's JSON text (a string's, quoted and escaped as jsonb writes it, or a
    whole number's), or of the event id's text when there is no key."""
    value = f"(e.payload -> {field})"
    key = (f"CASE WHEN jsonb_typeof({value}) = 'string' OR (jsonb_typeof({value}) = 'number'"
           f" AND {value}::text ~ '^-?[0-9]+$') THEN {value}::text ELSE e.event_id::text END")  # fmt: skip
    bits = _partitions.HASH_BITS
    return f"(('x' || substr(md5(convert_to({key}, 'UTF8')), 1, {bits // 4}))::bit({bits})::bigint % {partitions})"


def _slice_sql(partition: PartitionSlice, args: list[Any]) -> str:
    args.extend([partition.field, partition.partitions, sorted(partition.wanted)])
    n = len(args)
    return f" AND {partition_sql(f'${n - 2}::text', f'${n - 1}::int')} = ANY(${n}::int[])"


def query_sql(
    query: EventQuery, upto: int | None = None, partition: PartitionSlice | None = None
) -> tuple[str, list[Any]]:
    """SQL text and arguments for an EventQuery (``upto``: an upper position;
    ``partition``: only the events of those partitions by a payload field).

    Each tag or type of ``_candidates`` is one walk of its index in position
    order, each candidate looked up by position and checked exactly, and,
    for a bounded query, stopped at the limit: the first ``limit`` matches of
    the query are among the first ``limit`` of some walk. The walks' rows are
    then merged in order. A bounded read so costs about ``limit`` index steps
    per walk however long the entity's history, and an unbounded one what it
    returns. A query that any event may match walks the events themselves.
    """
    args: list[Any] = [query.after]
    bound = ""
    if upto is not None:
        args.append(upto)
        bound = f" AND {{}}.sequence_number <= ${len(args)}"
    check_args = list(args)
    checks = [_check_sql(f, check_args) for f in query.filters]
    if "TRUE" not in checks:  # else any event passes: no check, no arguments
        args = check_args
    # Written as CASE, the check is one the planner cannot estimate, so it
    # assumes half the candidates pass; as plain @> it takes a flat guess of
    # a few in a thousand, concludes that a limit reads every candidate
    # anyway, and may as well sort them all as walk in order and stop.
    check = "" if "TRUE" in checks else " AND CASE WHEN " + " OR ".join(checks) + " THEN TRUE END"
    if partition is not None:
        check += _slice_sql(partition, args)
    limit = ""
    if query.limit is not None:
        args.append(query.limit)
        limit = f" LIMIT ${len(args)}"
    found = _candidates(query)
    if found is None:
        sql = (f"SELECT {_E_COLUMNS} FROM eventbus.events e WHERE e.sequence_number > $1{bound.format('e')}{check} "
               f"ORDER BY e.sequence_number{limit}")  # fmt: skip
        return sql, args
    tags, types = found
    # Each candidate looked up by its position, one at a time (OFFSET 0 keeps
    # the lookup a subquery: no merge or hash join reading all the events).
    lookup = (f"CROSS JOIN LATERAL (SELECT {_E_COLUMNS} FROM eventbus.events e "
              f"WHERE e.sequence_number = t.sequence_number{check} OFFSET 0) e")  # fmt: skip
    walks: list[str] = []
    if len(tags) > MAX_WALKS:
        # Too many tags to walk one by one: their candidates as one set, sorted.
        args.append(list(tags))
        walks.append(f"SELECT e.* FROM (SELECT DISTINCT t.sequence_number FROM eventbus.event_tags t "
                     f"WHERE t.tag = ANY(${len(args)}::bigint[]) AND t.sequence_number > $1{bound.format('t')}) t "
                     f"{lookup} ORDER BY t.sequence_number{limit}")  # fmt: skip
        tags = {}
    for tag in tags:
        args.append(tag)
        walks.append(f"SELECT e.* FROM eventbus.event_tags t {lookup} WHERE t.tag = ${len(args)}::bigint "
                     f"AND t.sequence_number > $1{bound.format('t')} ORDER BY t.sequence_number{limit}")  # fmt: skip
    one_type = "= ${}::text"
    if len(types) > MAX_WALKS:  # the same for types
        types, one_type = {tuple(types): None}, "= ANY(${}::text[])"  # type: ignore[dict-item]
    for kind in types:
        args.append(list(kind) if isinstance(kind, tuple) else kind)
        where = f"e.event_type {one_type.format(len(args))} AND e.sequence_number > $1{bound.format('e')}{check}"
        walks.append(f"SELECT {_E_COLUMNS} FROM eventbus.events e WHERE {where} ORDER BY e.sequence_number{limit}")
    if len(walks) == 1:
        return walks[0], args
    # An event has one type and, when wide, no other tag: only two tags, or
    # a tag and a type, can find the same event; keep it once.
    distinct = "DISTINCT ON (e.sequence_number) " if len(found[0]) > 2 or (found[0] and types) else ""
    merged = " UNION ALL ".join(f"({walk})" for walk in walks)
    return f"SELECT {distinct}* FROM ({merged}) e ORDER BY e.sequence_number{limit}", args


def to_records(rows: Iterable[_db.Row]) -> list[EventRecord]:
    """Records from rows of ``_COLUMNS``."""
    return [EventRecord(*row) for row in rows]
