"""Append requests: checked and written as JSON before they reach the store actor.

Everything here runs in the caller's task: a bad event is refused with
``InvalidEvent`` before anything is queued, and the actor's batch only joins
text that is ready. Also the store's figures (``StoreStatistics``).
"""

from __future__ import annotations

import collections
import functools
import json
import math
import os
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs
import trio

from .._errors import InvalidEvent
from .._values import MAX_POSITION, Event, EventFilter, EventRecord, _json, _tags
from ._standby_checks import ReplicaStatistics

# ---------------------------------------------------------------- requests


@attrs.frozen
class Prepared:
    """An event checked and written as JSON, ready for the database."""

    event_id: uuid.UUID
    event_type: str
    payload: dict[str, Any]
    payload_text: str
    metadata: dict[str, Any]
    metadata_text: str
    tags: list[int]


def _uuid_from_int(value: int) -> uuid.UUID:
    # uuid.UUID(int=...) checks its arguments at length; a value made here
    # needs none of it. Checked against the real constructor at import.
    made: uuid.UUID = _new_object(uuid.UUID)
    _set_attribute(made, "int", value)
    _set_attribute(made, "is_safe", _UNKNOWN_SAFETY)
    return made


def _checked_uuid_from_int(value: int) -> uuid.UUID:
    return uuid.UUID(int=value)


def _made_like_uuid() -> bool:
    probe = 0x0190_0000_0000_7ABC_8DEF_0123_4567_89AB
    try:
        made, real = _uuid_from_int(probe), uuid.UUID(int=probe)
    except (TypeError, AttributeError):  # pragma: no cover - a uuid module unlike CPython's
        return False
    return made == real and str(made) == str(real) and hash(made) == hash(real)


_new_object = object.__new__
_set_attribute = object.__setattr__
_UNKNOWN_SAFETY = uuid.SafeUUID.unknown  # (an enum member costs a lookup each time)
if not _made_like_uuid():  # pragma: no cover
    _uuid_from_int = _checked_uuid_from_int


def new_event_id() -> uuid.UUID:
    """A fresh event id: a version-7 UUID (RFC 9562).

    48 bits of Unix milliseconds, then 74 random bits. Ids made close in time
    sort close together, so the unique index on event ids takes new entries at
    its right edge instead of on random pages of a large index.
    """
    rand = int.from_bytes(os.urandom(10), "big")  # 80 bits; 74 are used
    return _uuid_from_int(
        ((time.time_ns() // 1_000_000) & 0xFFFF_FFFF_FFFF) << 80
        | 0x7 << 76  # version
        | ((rand >> 62) & 0xFFF) << 64  # rand_a
        | 0b10 << 62  # variant
        | (rand & ((1 << 62) - 1))  # rand_b
    )


def prepare(events: Sequence[Event], max_bytes: int, trace: Mapping[str, str] | None = None) -> list[Prepared]:
    """Check every event and write its JSON; raise InvalidEvent naming the first bad one.

    ``trace``: metadata to add to each event's (its own keys win), the appender's trace context.
    """
    if type(events) is not list and (isinstance(events, (Event, str, bytes)) or not isinstance(events, Iterable)):
        raise InvalidEvent(f"append takes a list of Event, not {type(events).__name__}")
    prepared: list[Prepared] = []
    seen: set[uuid.UUID] = set()
    for index, event in enumerate(events):
        if not isinstance(event, Event):
            raise InvalidEvent(f"event {index}: must be an Event, not {type(event).__name__}")
        kind = event.event_type
        if (type(kind) is not str and not isinstance(kind, str)) or not kind:
            raise InvalidEvent(f"event {index}: event_type must be a non-empty string, not {kind!r}")
        try:
            if not kind.isascii() or "\x00" in kind or len(kind) > _json.MAX_EVENT_TYPE_LENGTH:
                _json.check_event_type(kind, "event_type")
            payload, payload_text = _json.encode(event.payload, "payload", max_bytes=max_bytes)
            metadata: dict[str, Any] = {}
            metadata_text = "{}"
            given = event.metadata
            if trace is not None and (given is None or isinstance(given, Mapping)):
                given = {**trace, **(given or {})}
            if given is not None:
                metadata, metadata_text = _json.encode(given, "metadata", max_bytes=max_bytes)
        except _json.JSONRefused as exc:
            raise InvalidEvent(f"event {index} ({kind!r}): {exc}") from None
        event_id = event.event_id
        if event_id is None:
            event_id = new_event_id()
        elif not isinstance(event_id, uuid.UUID):
            raise InvalidEvent(f"event {index} ({kind!r}): event_id must be a uuid.UUID, not {event_id!r}")
        elif event_id in seen:
            raise InvalidEvent(f"event {index} ({kind!r}): event_id {event_id} appears twice in one append")
        else:
            seen.add(event_id)
        tags = _tags.event_tags(payload)
        prepared.append(Prepared(event_id, kind, payload, payload_text, metadata, metadata_text, tags))
    return prepared


MAX_BATCH_BYTES = 256 * 1024 * 1024
"""The default bound on one batch's encoded size (see :func:`encoded_size`).

PostgreSQL refuses a message over 1 GB, and a batch is one message: without a
bound in bytes, appends that each fit would fail together once batched."""

BATCH_BYTES_CEILING = 1024 * 1024 * 1024 - 64 * 1024 * 1024
"""The most ``max_batch_bytes`` may be: PostgreSQL's 1 GB message limit, less
room for what :func:`encoded_size` does not count (the batch's dependency
pairs, the message's own framing)."""

_EVENT_OVERHEAD = 40  # an event's id, its append number, the length word of each of its array elements
_TAG_OVERHEAD = 20  # a tag and its event number, with their length words
_APPEND_OVERHEAD = 16


def _utf8_length(text: str) -> int:
    return len(text) if text.isascii() else len(text.encode())


def encoded_size(events: Sequence[Prepared], condition: str | None) -> int:
    """About how many bytes an append adds to its batch's message, never fewer.

    Its events' types, payloads and metadata as UTF-8, their ids and tags,
    its condition, and the length words that frame each.
    """
    size = _APPEND_OVERHEAD + (_utf8_length(condition) if condition is not None else 4)
    for event in events:
        size += _EVENT_OVERHEAD + _TAG_OVERHEAD * len(event.tags)
        size += _utf8_length(event.event_type) + _utf8_length(event.payload_text) + _utf8_length(event.metadata_text)
    return size


def check_max_batch_bytes(value: object) -> int:
    """``value`` if it is a whole number from 1 to ``BATCH_BYTES_CEILING``, else InvalidEvent."""
    if type(value) is not int or not 1 <= value <= BATCH_BYTES_CEILING:
        raise InvalidEvent(f"max_batch_bytes must be a whole number from 1 to {BATCH_BYTES_CEILING}, not {value!r}")
    return value


Condition = EventFilter | Sequence[EventFilter]
"""What an append may be conditional on: one filter, or several OR'd (a DCB query)."""


def condition_filters(filter: Condition | None) -> tuple[EventFilter, ...] | None:
    """The filters of a condition, checked; None for an unconditional append.

    Raises:
        InvalidEvent: not a filter, not a sequence of filters, or an empty one.
    """
    if filter is None:
        return None
    if isinstance(filter, EventFilter):
        return (filter,)
    if isinstance(filter, (str, bytes, Mapping)) or not isinstance(filter, Sequence):
        raise InvalidEvent(f"filter must be an EventFilter or a list of them (see create_filter), not {filter!r}")
    filters = tuple(filter)
    if not filters:
        raise InvalidEvent("a condition needs at least one EventFilter (pass None for no condition)")
    for item in filters:
        if not isinstance(item, EventFilter):
            raise InvalidEvent(f"a condition's filters must be EventFilter values (see create_filter), not {item!r}")
    return filters


def _condition_prefix(filter: EventFilter) -> str:
    """A condition item as ``append_events`` reads it, up to its position:
    the same for every append on the same boundary."""
    if filter.predicate_texts is None or filter.predicate_tags is None:
        preds = tags = "null"
    else:
        preds = "[" + ",".join(filter.predicate_texts) + "]"
        tags = json.dumps(filter.predicate_tags)
    return f'{{"t":{json.dumps(filter.event_types)},"p":{preds},"k":{tags},"a":'


@functools.lru_cache(maxsize=4096)
def _condition_parts(filters: tuple[EventFilter, ...]) -> tuple[str, tuple[str, ...], str]:
    """What a condition's text is made of but its position: the same for
    every append on the same boundary, so written once (equal filters write
    the same text). The text is the head, then each item's prefix followed
    by the position and ``}``, comma-separated, then the tail."""
    prefixes = tuple(_condition_prefix(f) for f in filters)
    if all(_tagged(f) for f in filters):
        return '{"g":[', prefixes, "]}"
    return ("", prefixes, "") if len(filters) == 1 else ("[", prefixes, "]")


def condition(filters: tuple[EventFilter, ...] | None, expected: int | None) -> str | None:
    """The condition as ``append_events`` reads it, or None for an
    unconditional append: ``{"g": [items]}`` when every predicate of every
    filter has a tag (one statement checks them all), else an object for one
    filter, an array for several."""
    if filters is None:
        if expected is not None:
            raise InvalidEvent("expected_max_sequence_number needs a filter")
        return None
    if expected is None:
        expected = 0
    if type(expected) is not int or not 0 <= expected <= MAX_POSITION:
        raise InvalidEvent(f"expected_max_sequence_number must be a whole number from 0 to 2**63 - 1, not {expected!r}")
    head, prefixes, tail = _condition_parts(filters)
    position = str(expected)
    if len(prefixes) == 1:
        return head + prefixes[0] + position + "}" + tail
    return head + (position + "},").join(prefixes) + position + "}" + tail


def _tagged(filter: EventFilter) -> bool:
    """Whether each of the filter's predicates has a tag (see append_events)."""
    tags = filter.predicate_tags
    return tags is not None and len(tags) > 0 and None not in tags


@attrs.define(eq=False)
class Request:
    """One append waiting for its outcome."""

    events: list[Prepared]
    condition: str | None
    expected: int
    filters: tuple[EventFilter, ...] | None = None
    size: int = 0
    done: trio.Event = attrs.field(factory=trio.Event)
    result: list[EventRecord] | None = None
    error: BaseException | None = None
    abandoned: bool = False
    started: float = attrs.field(factory=time.perf_counter)

    def finish(self, result: list[EventRecord] | None = None, error: BaseException | None = None) -> None:
        if not self.done.is_set():
            self.result, self.error = result, error
            self.done.set()


@attrs.frozen
class Outcome:
    """What became of one append: its records or its error.

    Attributes:
        request: the append.
        records: its stored records, or None when it failed.
        error: why it failed, or None.
        new: whether its records were committed by this batch (and so are for
            the stream to hand on), not found stored by an earlier one.
    """

    request: Request
    records: list[EventRecord] | None = None
    error: BaseException | None = None
    new: bool = False


def dependencies(batch: list[Request]) -> tuple[list[int], list[int]]:
    """Pairs (j, i), 1-based: an event of append i matches the condition of a
    later append j of the same batch. (The database cannot see those events
    yet; the batch decides in order whether i committed.)

    The batch's events are indexed by tag and by type as they go, so each
    condition looks at its likely matches only, then checks them exactly.
    """
    dep_of: list[int] = []
    dep_on: list[int] = []
    by_tag: dict[int, list[tuple[int, Prepared]]] = {}
    by_type: dict[str, list[tuple[int, Prepared]]] = {}
    everything: list[tuple[int, Prepared]] = []
    none: list[tuple[int, Prepared]] = []
    for number, request in enumerate(batch, 1):
        filters = request.filters
        if filters is not None and everything:
            found: set[int] = set()
            for filter in filters:
                if filter.predicate_tags is not None and None not in filter.predicate_tags:
                    candidates = by_tag.get(_tags.WIDE, none)
                    for tag in filter.predicate_tags:
                        candidates = candidates + by_tag.get(tag, none)  # type: ignore[arg-type]
                elif filter.event_types:
                    candidates = [c for kind in filter.event_types for c in by_type.get(kind, none)]
                else:
                    candidates = everything
                if candidates:
                    found.update(i for i, prepared in candidates if i not in found and filter.matches(prepared))
            if found:
                matched = sorted(found)
                dep_of += [number] * len(matched)
                dep_on += matched
        for prepared in request.events:
            entry = (number, prepared)
            everything.append(entry)
            by_type.setdefault(prepared.event_type, []).append(entry)
            for tag in prepared.tags:
                by_tag.setdefault(tag, []).append(entry)
    return dep_of, dep_on


# ---------------------------------------------------------------- statistics


@attrs.frozen
class StoreStatistics:
    """What the store actor has done since it started.

    Attributes:
        connected: whether a write connection is up.
        appends: append requests answered (stored, refused or failed).
        events: events committed.
        batches: transactions run.
        conflicts: appends refused with ConcurrencyError.
        unavailable: appends failed with StoreUnavailable.
        reconnects: connections re-established after a loss.
        queued: requests waiting for the actor now.
        last_batch_appends: append requests in the latest transaction.
        mean_batch_appends: average append requests per transaction.
        p50_latency / p99_latency: seconds from request to answer, over the
            latest answered appends.
        replicas: each hot standby that serves reads (state, lag, reads).
    """

    connected: bool
    appends: int
    events: int
    batches: int
    conflicts: int
    unavailable: int
    reconnects: int
    queued: int
    last_batch_appends: int
    mean_batch_appends: float
    p50_latency: float
    p99_latency: float
    replicas: tuple[ReplicaStatistics, ...] = ()


def percentile(values: Sequence[float], q: float) -> float:
    """The q-quantile (0..1) of values, 0.0 for none."""
    if not values:
        return 0.0
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


class Counters:
    """Running totals for StoreStatistics."""

    def __init__(self) -> None:
        self.appends = self.events = self.batches = 0
        self.conflicts = self.unavailable = self.reconnects = 0
        self.last_batch = 0
        self.latencies: collections.deque[float] = collections.deque(maxlen=2048)
