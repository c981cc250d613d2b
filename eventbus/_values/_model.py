"""The values eventbus passes around: events, records, filters and queries.

All are frozen attrs classes. Payloads are mappings of plain JSON; records
hold the store's own normalized copy, which callers must not mutate (records
are shared between subscribers).
"""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime
from typing import Any, Protocol, TypeGuard

import attrs

from .._errors import InvalidFilter
from . import _json, _tags

Payload = Mapping[str, Any]


class Matchable(Protocol):
    """Anything with an event type and a payload: events, records, ..."""

    @property
    def event_type(self) -> str: ...

    @property
    def payload(self) -> Payload: ...


@attrs.frozen
class Event:
    """An event to append: a type, a JSON payload and optional metadata.

    Nothing is checked when an Event is made; ``append`` checks it and refuses
    bad input with ``InvalidEvent``. ``event_id`` makes an append idempotent:
    give the same ids to retry safely. Without one the store makes a UUID.
    """

    event_type: str
    payload: Payload
    metadata: Payload | None = attrs.field(default=None, kw_only=True)
    event_id: uuid.UUID | None = attrs.field(default=None, kw_only=True)


@attrs.frozen
class EventRecord:
    """An event as stored: with its position, id and commit time.

    Attributes:
        sequence_number: the event's position; positions only grow, and a
            reader that has seen position N never later finds a new event
            below N.
        event_id: always set.
        occurred_at: when the append committed (timezone-aware, UTC).
    """

    sequence_number: int
    event_id: uuid.UUID
    event_type: str
    payload: Payload
    metadata: Payload
    occurred_at: datetime


def _types(value: object) -> tuple[str, ...]:
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise InvalidFilter(f"event_types must be a list of strings, not {value!r}")
    types = tuple(value)
    for item in types:
        if not isinstance(item, str) or not item:
            raise InvalidFilter(f"event types must be non-empty strings, not {item!r}")
        try:
            _json.check_event_type(item, "event type")
        except _json.JSONRefused as exc:
            raise InvalidFilter(str(exc)) from None
    return tuple(dict.fromkeys(types))


def _predicates(value: object) -> tuple[Payload, ...] | None:
    if value is None:
        return None
    if isinstance(value, (Mapping, str)) or not isinstance(value, Iterable):
        raise InvalidFilter(f"payload_predicates must be a list of mappings, not {value!r}")
    predicates = []
    for index, item in enumerate(value):
        try:
            predicates.append(_json.normalize_object(item, f"payload_predicates[{index}]"))
        except _json.JSONRefused as exc:
            raise InvalidFilter(str(exc)) from None
    return tuple(predicates) if predicates else None


@attrs.frozen(eq=False)
class EventFilter:
    """Which events a query, condition or subscription is about.

    An event matches iff its type is one of ``event_types`` (an empty list
    means any type) and, when predicates are given, its payload contains at
    least one of them, as PostgreSQL's jsonb ``@>`` says (nested objects and
    arrays included). An empty list of predicates is the same as none.

    Raises:
        InvalidFilter: types that are not non-empty strings, predicates that
            are not mappings of JSON.
    """

    event_types: tuple[str, ...] = attrs.field(converter=_types)
    payload_predicates: tuple[Payload, ...] | None = attrs.field(default=None, converter=_predicates)
    predicate_texts: tuple[str, ...] | None = attrs.field(init=False, repr=False)
    predicate_tags: tuple[int | None, ...] | None = attrs.field(init=False, repr=False)
    _type_set: frozenset[str] = attrs.field(init=False, repr=False)
    _key: tuple[tuple[str, ...], tuple[str, ...] | None] = attrs.field(init=False, repr=False)
    _hash: int = attrs.field(init=False, repr=False)

    def __attrs_post_init__(self) -> None:
        predicates = self.payload_predicates
        texts = None if predicates is None else tuple(map(_json.dumps, predicates))
        tags = None if predicates is None else tuple(_tags.predicate_tag(p) for p in predicates)  # type: ignore[arg-type]
        object.__setattr__(self, "predicate_texts", texts)
        object.__setattr__(self, "predicate_tags", tags)
        object.__setattr__(self, "_type_set", frozenset(self.event_types))
        key = (tuple(sorted(self._type_set)), None if texts is None else tuple(sorted(texts)))
        object.__setattr__(self, "_key", key)
        object.__setattr__(self, "_hash", hash(key))

    @property
    def key(self) -> tuple[tuple[str, ...], tuple[str, ...] | None]:
        """A hashable value, equal for filters that say the same thing."""
        return self._key

    def __eq__(self, other: object) -> bool:
        return self is other or (isinstance(other, EventFilter) and self._key == other._key)

    def __hash__(self) -> int:
        return self._hash

    def matches(self, record: Matchable) -> bool:
        """Whether the event matches, with the database's semantics."""
        if self._type_set and record.event_type not in self._type_set:
            return False
        if self.payload_predicates is None:
            return True
        payload = record.payload
        return any(_json.contains(payload, predicate) for predicate in self.payload_predicates)

    def select(self, records: Sequence[EventRecord]) -> list[EventRecord]:
        """The records that match, in their order (``records`` itself if all do)."""
        if self.payload_predicates is None:
            if not self._type_set:
                return records if isinstance(records, list) else list(records)
            types = self._type_set
            return [record for record in records if record.event_type in types]
        return [record for record in records if self.matches(record)]


@attrs.frozen
class AnyOf:
    """Records that match any of several filters, as a DCB query's items.

    Has the two methods of :class:`EventFilter` that selecting uses, so
    either can stand where records are selected.
    """

    filters: tuple[EventFilter, ...]

    def matches(self, event: Matchable) -> bool:
        """Whether an event matches any of the filters."""
        return any(f.matches(event) for f in self.filters)

    def select(self, records: Sequence[EventRecord]) -> list[EventRecord]:
        """The records that match any filter, in their order."""
        return [record for record in records if self.matches(record)]


def create_filter(event_types: Iterable[str], payload_predicates: Iterable[Payload] | None = None) -> EventFilter:
    """Make an :class:`EventFilter` (see there for the semantics).

    ``create_filter(["MoneyDeposited"], [{"accountId": "a1"}])`` matches the
    deposits whose payload contains ``"accountId": "a1"``.
    """
    return EventFilter(event_types, payload_predicates)


def _filters(value: object) -> tuple[EventFilter, ...]:
    if isinstance(value, EventFilter):
        return (value,)
    if not isinstance(value, Iterable):
        raise InvalidFilter(f"filters must be a list of EventFilter, not {value!r}")
    filters = tuple(value)
    for item in filters:
        if not isinstance(item, EventFilter):
            raise InvalidFilter(f"filters must be EventFilter values (see create_filter), not {item!r}")
    return filters


MAX_POSITION = 2**63 - 1
"""The largest position (and count) PostgreSQL's bigint holds."""


def is_number(value: object) -> TypeGuard[float]:
    """Whether ``value`` is an int or a float, and not a bool (an option's
    number of seconds, say; its range is the caller's to check)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _position(name: str, value: object, *, allow_none: bool) -> None:
    if value is None and allow_none:
        return
    if type(value) is not int or not 0 <= value <= MAX_POSITION:
        raise InvalidFilter(f"{name} must be a whole number from 0 to 2**63 - 1, not {value!r}")


@attrs.frozen
class EventQuery:
    """Events that match any of ``filters``, with ``sequence_number > after``,
    in ascending order, at most ``limit`` of them (None: all)."""

    filters: tuple[EventFilter, ...] = attrs.field(converter=_filters)
    after: int = attrs.field(default=0, kw_only=True)
    limit: int | None = attrs.field(default=None, kw_only=True)

    def __attrs_post_init__(self) -> None:
        _position("after", self.after, allow_none=False)
        _position("limit", self.limit, allow_none=True)

    def matches(self, record: EventRecord) -> bool:
        """Whether a record is one this query returns (ignoring ``limit``)."""
        return record.sequence_number > self.after and any(f.matches(record) for f in self.filters)


@attrs.frozen
class QueryResult:
    """What a query found."""

    events: list[EventRecord]

    @property
    def max_sequence_number(self) -> int:
        """The highest position among ``events``, 0 when there are none.

        Pass it as ``expected_max_sequence_number`` to append on what you read.
        """
        return self.events[-1].sequence_number if self.events else 0
