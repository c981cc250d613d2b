"""Which partition each event of a partitioned projection goes to, in this process.

A key function's key goes to ``partition_of(key) % partitions`` (a stable
hash of its JSON text); a payload field's to the partition PostgreSQL
computes alike (``_values/_partitions.py``). An event whose key cannot be
had goes to a partition chosen by its event id, the same in every process,
whose handlers then fail on it (``_check_key``).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from json.encoder import encode_basestring
from typing import Any

from .._errors import PartitionsDiffer, ProjectionError
from .._values import EventRecord, field_partition
from ._definition import BatchHandler, Handler, Projection, Transaction

ROUTES_REMEMBERED = 65_536
"""String keys whose partition a process remembers (then it forgets them all
and starts again): it reads every event of the projection, whatever it
holds, and would otherwise hash the key of each one. Only keys of up to
``ROUTED_KEY_CHARS`` characters are remembered, so that memory stays bounded."""

ROUTED_KEY_CHARS = 256
"""The longest string key whose partition a process remembers; longer ones are hashed each time."""


def partition_of(key: Any, partitions: int) -> int:
    """The partition of ``key``: a stable hash of its JSON text (the same in
    every process and every run, unlike ``hash``), modulo ``partitions``.

    Raises:
        TypeError, ValueError: ``key`` is not a JSON value.
    """
    if type(key) is str:  # the same text as json.dumps gives, without building an encoder
        text = encode_basestring(key)
    else:
        text = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    digest = hashlib.blake2b(text.encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big") % partitions


def key_partition(projection: Projection, record: EventRecord) -> int | None:
    """The partition ``projection``'s key puts ``record`` in; None when its key cannot be had."""
    key = projection.partition_key
    if isinstance(key, str):
        partition, found = field_partition(record, key, record.event_id, projection.partitions)
        return partition if found else None
    assert key is not None
    try:
        return partition_of(key(record), projection.partitions)
    except Exception:
        return None


def check_witnesses(projection: Projection, witnesses: list[tuple[int, EventRecord]], differed: bool) -> None:
    """Raise PartitionsDiffer if a process found keys to differ before
    (``differed``), or unless ``projection``'s key puts each witness (see
    schema.sql) in the partition that applied it.

    A key changed under a running projection would send a key's events to
    another partition, whose checkpoint may be past them (never applied) or
    behind them (applied twice). The check catches most changes, not all:
    only what the witnesses' keys show.
    """
    if differed:
        raise PartitionsDiffer(
            f"projection {projection.name!r} was applied by processes of different partition_keys: every process of"
            " it stands by. Stop those of the key you no longer want, then rebuild it from a process of the key to"
            " keep (eventbus projections rebuild NAME --process PID)"
        )
    moved = [(k, record, got) for k, record in witnesses if (got := key_partition(projection, record)) not in (k, None)]
    if moved:
        k, record, got = min(moved, key=lambda m: m[0])
        raise PartitionsDiffer(
            f"projection {projection.name!r}: its partition_key is not the one its partitions were applied with"
            f" (the event at position {record.sequence_number} was applied in partition {k}; this process's key"
            f" puts it in partition {got}; {len(moved)} of {len(witnesses)} such events moved). It stands by, and so"
            " does every other process of it: stop those of the key you no longer want, then rebuild it from a"
            " process of the key to keep (eventbus projections rebuild NAME --process PID)"
        )


class Router:
    """The routing half of a :class:`~._partitioned.PartitionedRunner`."""

    projection: Projection
    _unkeyed: dict[Any, str]  # event id -> why its key could not be had
    _routes: dict[str, int]  # string key -> its partition (see ROUTES_REMEMBERED)
    _routed_over: int  # the partitions self._routes was made for
    _key: Callable[[EventRecord], Any]

    def _route(self, record: EventRecord) -> int:
        projection = self.projection
        if isinstance(projection.partition_key, str):
            partition, found = field_partition(record, projection.partition_key, record.event_id, projection.partitions)
            if not found:
                try:
                    self._key(record)
                except Exception as exc:
                    self._unkeyed[record.event_id] = f"partition_key raised {type(exc).__name__}: {exc}"
            return partition
        assert projection.partition_key is not None
        try:
            key = projection.partition_key(record)
            if type(key) is not str or len(key) > ROUTED_KEY_CHARS:
                return partition_of(key, projection.partitions)
            if self._routed_over != projection.partitions:
                self._routes.clear()
                self._routed_over = projection.partitions
            k = self._routes.get(key)
            if k is None:
                if len(self._routes) >= ROUTES_REMEMBERED:
                    self._routes.clear()
                k = self._routes[key] = partition_of(key, projection.partitions)
            return k
        except Exception as exc:
            # Stable for every process: the event id picks the partition that fails on it.
            self._unkeyed[record.event_id] = f"partition_key raised {type(exc).__name__}: {exc}"
            return (
                int.from_bytes(hashlib.blake2b(record.event_id.bytes, digest_size=8).digest()) % projection.partitions
            )

    def _check_key(self, record: EventRecord) -> None:
        why = self._unkeyed.get(record.event_id)
        if why is not None:
            raise ProjectionError(f"projection {self.projection.name}: {why}")

    def _guard(self, handler: Handler) -> Handler:
        async def guarded(tx: Transaction, record: EventRecord) -> None:
            self._check_key(record)
            await handler(tx, record)

        return guarded

    def _guard_batch(self, handler: BatchHandler) -> BatchHandler:
        async def guarded(tx: Transaction, records: list[EventRecord]) -> None:
            for record in records:
                self._check_key(record)
            await handler(tx, records)

        return guarded
