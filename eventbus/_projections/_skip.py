"""Moving on from a poison event: an operator's ``resume --skip-poison``.

A projection with ``on_error="retry"`` that failed on one event fails on it
again after every restart. Resumed with ``skip_poison``, the runner applies
the batch that holds that event as three: the events before it as usual, the
event itself as under ``on_error="skip"`` (if it fails again, it goes to
``eventbus.dead_letters`` and the checkpoint moves past it), and the rest as
usual. Only that one event is skipped; a later failure is a failure again.
"""

from __future__ import annotations

from collections.abc import Callable

import attrs

from .. import _db
from .._values import EventRecord
from ._apply import Fence, apply_in_time
from ._definition import Projection


async def apply_skipping(
    conn: _db.Connection,
    projection: Projection,
    batch: list[EventRecord],
    checkpoint: int,
    position: int,
    on_dead_letter: Callable[[], object] | None,
    *,
    fence: Fence | None = None,
) -> int:
    """Apply ``batch`` from ``checkpoint``, the event at ``position`` under
    ``on_error="skip"``; return the new checkpoint (one transaction per part,
    each within the projection's ``handler_timeout``; ``fence``: a
    partition's checkpoint, see :func:`apply_batch`)."""
    before = [r for r in batch if r.sequence_number < position]
    poison = [r for r in batch if r.sequence_number == position]
    after = [r for r in batch if r.sequence_number > position]
    if before:
        checkpoint = await apply_in_time(conn, projection, before, checkpoint, on_dead_letter, fence=fence)
    if poison:
        skipping = attrs.evolve(projection, on_error="skip")
        checkpoint = await apply_in_time(conn, skipping, poison, checkpoint, on_dead_letter, fence=fence)
    if after:
        checkpoint = await apply_in_time(conn, projection, after, checkpoint, on_dead_letter, fence=fence)
    return checkpoint
