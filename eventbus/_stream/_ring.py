"""The hub's ring: the latest records, for subscribers that fell behind."""

from __future__ import annotations

import bisect
from collections.abc import Iterable, Sequence

from .._values import EventRecord


def chunks(records: list[EventRecord], size: int) -> Iterable[list[EventRecord]]:
    """``records`` in lists of ``size`` at most (none when there are none)."""
    if 0 < len(records) <= size:  # no empty chunk: a batch is never empty
        yield records
        return
    for start in range(0, len(records), size):
        yield records[start : start + size]


class Ring:
    """The latest records, in position order, bounded in count.

    ``floor``: every record with a position above it is in the ring.
    """

    def __init__(self, capacity: int, floor: int) -> None:
        self._capacity = capacity
        self._records: list[EventRecord] = []
        self._start = 0
        self.floor = floor

    def __len__(self) -> int:
        return len(self._records) - self._start

    def extend(self, records: Sequence[EventRecord]) -> None:
        self._records.extend(records)
        excess = len(self) - self._capacity
        if excess > 0:
            self._start += excess
            self.floor = self._records[self._start - 1].sequence_number
            if self._start > self._capacity:
                del self._records[: self._start]
                self._start = 0

    def skip(self, position: int) -> None:
        """Drop every record: the ring holds none of those up to ``position``
        (read narrowed to some subscribers' partitions)."""
        self._records, self._start, self.floor = [], 0, position

    def after(self, position: int, limit: int) -> list[EventRecord] | None:
        """Up to ``limit`` records after ``position``, or None if the ring
        no longer holds all of them."""
        if position < self.floor:
            return None
        index = bisect.bisect_right(self._records, position, lo=self._start, key=position_of)
        return self._records[index : index + limit]


def _position(record: EventRecord) -> int:
    return record.sequence_number


def position_of(record: EventRecord) -> int:
    """A record's position (a sort key)."""
    return record.sequence_number
