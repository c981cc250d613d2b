"""The events the bank's read models set aside: dead letters, with the reason.

An event that is not the bank's, or not as the bank writes it (another program
wrote it into the bank's database), is not applied: the read model puts it in
``eventbus.dead_letters`` with the reason and goes on with the next (see the
projections' ``on_error="skip"``). This module reads them back for people.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import Final

import attrs

from eventbus import Bus

DEFAULT_LIMIT: Final = 20
"""Dead letters read unless told otherwise (the latest)."""


@attrs.frozen
class DeadLetter:
    """One event a read model set aside.

    Attributes:
        projection: the read model (``accounts`` or ``analytics``).
        error: why, as the read model said it.
    """

    projection: str
    sequence_number: int
    event_type: str
    error: str
    failed_at: datetime


@attrs.frozen
class DeadLetters:
    """The events the read models set aside.

    Attributes:
        count: how many (each event once, however many read models set it aside).
        per_projection: how many each read model set aside (those with any).
        latest: the latest of them, newest first.
    """

    count: int
    per_projection: dict[str, int]
    latest: tuple[DeadLetter, ...]


_LATEST = """
SELECT projection, sequence_number, event_type, error, failed_at FROM eventbus.dead_letters
WHERE projection = ANY($1::text[]) AND copy_of IS NULL ORDER BY sequence_number DESC, projection LIMIT $2
"""

_EVENTS = (
    "SELECT count(DISTINCT sequence_number) FROM eventbus.dead_letters"
    " WHERE projection = ANY($1::text[]) AND copy_of IS NULL"
)

_PER_PROJECTION = """
SELECT projection, count(*) AS letters FROM eventbus.dead_letters
WHERE projection = ANY($1::text[]) AND copy_of IS NULL GROUP BY projection
"""


async def read_dead_letters(bus: Bus, projections: Iterable[str], limit: int = DEFAULT_LIMIT) -> DeadLetters:
    """The dead letters of ``projections``: how many, and the latest ``limit``.

    Blocks for three queries (one when there are none) on a pooled connection.
    """
    names = sorted(projections)
    async with bus.projections.reader(names[0]) as tx:
        events = await tx.fetchval(_EVENTS, names)
        counts = await tx.fetch(_PER_PROJECTION, names) if events else []
        rows = await tx.fetch(_LATEST, names, limit) if events else []
    latest = tuple(
        DeadLetter(row["projection"], row["sequence_number"], row["event_type"], row["error"], row["failed_at"])
        for row in rows
    )
    return DeadLetters(int(events), {row["projection"]: int(row["letters"]) for row in counts}, latest)
