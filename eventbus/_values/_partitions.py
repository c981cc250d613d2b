"""Partitions by a payload field: a hash PostgreSQL computes as Python does.

A partitioned projection whose ``partition_key`` is a field name (not a
function) routes each event by the value of that payload field, and its
process reads from the store only the events of the partitions it holds:
PostgreSQL computes each event's partition in the query (see
``_store/_queries.py``), Python the same partition for records it already
has (:func:`field_partition`). Both take the md5 of the key's JSON text,
its first 60 bits as a whole number, modulo the partitions.

A key is a string or a whole number (JSON text ``"a-1"`` or ``12``): the
only values whose JSON text PostgreSQL and Python write alike (a fraction
may read back as other digits; objects are written with other spacing). An
event whose field is missing or holds anything else has no key: it goes to
the partition of its event id (the md5 of its text form), whose handlers
then fail on it, as on an event a key function raised on.
"""

from __future__ import annotations

import decimal
import functools
import hashlib
import uuid
from collections.abc import Mapping, Sequence
from json.encoder import encode_basestring
from typing import Any

import attrs

from ._model import EventFilter, EventRecord, Matchable

HASH_BITS = 60
"""The bits of the md5 digest a partition is taken from (a positive bigint in PostgreSQL)."""


CACHED_KEYS = 65_536
"""Key texts whose hash a process remembers (the least recently used go first)."""

CACHED_KEY_CHARS = 256
"""The longest key text whose hash is remembered; longer ones are hashed each time."""


def _hash(text: str) -> int:
    return int(hashlib.md5(text.encode(), usedforsecurity=False).hexdigest()[: HASH_BITS // 4], 16)


_cached_hash = functools.lru_cache(maxsize=CACHED_KEYS)(_hash)


def _hashed(text: str, partitions: int) -> int:
    # Every event of a key is hashed in the hub and again when routed: remember the short keys.
    return (_cached_hash(text) if len(text) <= CACHED_KEY_CHARS else _hash(text)) % partitions


def key_text(value: Any) -> str | None:
    """The JSON text of a partition key, or None when ``value`` is no key
    (only strings and whole numbers are: see the module)."""
    if type(value) is str:
        return encode_basestring(value)
    if type(value) is int:
        return str(value)
    if type(value) is decimal.Decimal and value == value.to_integral_value():
        # A whole number too long for an int, written by someone else (see
        # _db/_connections.py): its digits, as PostgreSQL writes them.
        return format(value, "f")
    return None


def field_partition(record: Matchable, field: str, event_id: uuid.UUID, partitions: int) -> tuple[int, bool]:
    """The partition of an event by its payload ``field``, and whether it has a key there."""
    payload = record.payload
    # A payload written by someone else may be no object at all (jsonb takes any value).
    text = key_text(payload.get(field) if type(payload) is dict or isinstance(payload, Mapping) else None)
    if text is None:
        return _hashed(str(event_id), partitions), False
    return _hashed(text, partitions), True


@attrs.frozen
class PartitionSlice:
    """The events of some partitions by a payload field.

    Attributes:
        field: the payload field whose value is the key.
        partitions: how many partitions there are.
        wanted: the partitions of the slice.
    """

    field: str
    partitions: int
    wanted: frozenset[int]

    def partition(self, record: EventRecord) -> int:
        """The partition of ``record`` (by its event id when it has no key)."""
        return field_partition(record, self.field, record.event_id, self.partitions)[0]


@attrs.frozen
class Sliced:
    """Records that match ``filter`` and fall in ``slice``: a selector, as
    :class:`EventFilter` is, whose store reads PostgreSQL narrows to the slice."""

    filter: EventFilter
    slice: PartitionSlice

    @property
    def filters(self) -> tuple[EventFilter, ...]:
        return (self.filter,)

    def matches(self, record: EventRecord) -> bool:
        """Whether the record matches the filter and falls in the slice."""
        return self.filter.matches(record) and self.slice.partition(record) in self.slice.wanted

    def select(self, records: Sequence[EventRecord]) -> list[EventRecord]:
        """The records that match, in their order."""
        wanted, partition = self.slice.wanted, self.slice.partition
        return [record for record in self.filter.select(records) if partition(record) in wanted]
