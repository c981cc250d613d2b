"""Applying one stream batch for all the partitions a process holds, in ONE transaction.

A process that holds many partitions reads one stream batch and splits it by
partition. Committing each partition's share on its own costs a transaction
(three round trips) per partition per batch; here the handlers run on each
partition's share in turn (in partition order, a batch handler seeing one
partition's events, in position order) and one commit moves every
partition's checkpoint, each fenced by its lease's epoch. If any lease is
lost, the commit is refused and nothing of the batch is applied: the caller
drops the partitions it lost (:func:`lost`) and applies again for the rest.

If a handler fails (or passes ``handler_timeout``), the transaction rolls
back and the caller applies the batch one partition per transaction, as
``_apply.py`` does, so that the failing partition is isolated and its
failure handled (retry, skip, dead letters) as with one partition.
"""

from __future__ import annotations

import enum
import logging
import math
from collections.abc import Callable
from typing import Any

import attrs
import trio

from .. import _db
from .._db import rollback
from .._errors import DatabaseError, HandlerFailed, StoreUnavailable
from .._values import EventRecord
from . import _leases
from ._apply import _run_handlers, apply_in_time, begin
from ._definition import Projection, Transaction
from ._skip import apply_skipping

_log = logging.getLogger("eventbus.projections")

TAKEN = (
    "projection %s: partition %d was taken by another process (or its read model swapped by a rebuild):"
    " the batch rolled back, applied again without it"
)
HANDED_OVER = "projection %s: partition %d was handed to another member during a batch: the batch rolled back"


@attrs.define
class Held:
    """A partition held here: its epoch and its committed checkpoint."""

    epoch: int
    checkpoint: int


@attrs.frozen
class Share:
    """A held partition's events in a stream batch, past its checkpoint, in position order."""

    partition: int
    epoch: int
    checkpoint: int
    records: list[EventRecord]


class Outcome(enum.Enum):
    APPLIED = "applied"
    """Committed: every share applied, every checkpoint moved."""
    FENCED = "fenced"
    """Refused at the commit: a lease is lost; nothing applied."""
    FAILED = "failed"
    """A handler failed, passed its deadline or aborted the transaction; nothing applied."""
    DROPPED = "dropped"
    """Not committed: ``held`` said a partition is no longer held here; nothing applied."""


FenceOf = Callable[[Share, int], str]
"""``(share, new) -> SQL`` that moves the share's partition checkpoint to
``new`` in the transaction, or fails it (SQLSTATE ``_leases.FENCED``)."""


async def apply_together(
    conn: _db.Connection, projection: Projection, shares: list[Share], fence: FenceOf, held: Callable[[Share], bool]
) -> Outcome:
    """Apply ``shares`` in one transaction that moves each partition's checkpoint.

    ``held`` is asked of each share before the commit: a partition this
    process has let go of meanwhile (its heartbeat released it) is not
    committed for (``DROPPED``) rather than refused by its fence.

    Blocks for two round trips plus what the handlers do. Each share's
    handlers run within the projection's ``handler_timeout``. Nothing is
    committed unless every share is: on any outcome but ``APPLIED`` the
    transaction is rolled back (shielded, bounded). Cancelled, it rolls back
    too, unless the commit was already under way, in which case the batch
    may have committed (the caller must read the checkpoints again).

    Raises:
        StoreUnavailable: the connection was lost.
        HandlerFailed: the commit passed ``handler_timeout``: it may have
            committed, so the caller must not apply the batch again from
            what it remembers (a runner restarts from the committed
            checkpoints).
    """
    timeout = projection.handler_timeout
    limit = math.inf if timeout is None else timeout
    try:
        tx = await begin(conn, projection.schema)
        try:
            ran = await _run_shares(tx, projection, shares, limit)
        finally:
            tx._end()
        if not ran:
            await rollback(conn)
            return Outcome.FAILED
        if not all(held(share) for share in shares):
            await rollback(conn)
            return Outcome.DROPPED
        script = "; ".join(fence(share, share.records[-1].sequence_number) for share in shares)
        with trio.move_on_after(limit) as scope:
            await conn.run_script(f"{script}; COMMIT")
    except StoreUnavailable:
        await rollback(conn)
        raise
    except DatabaseError as exc:
        await rollback(conn)
        return Outcome.FENCED if _leases.is_fenced(exc) else Outcome.FAILED
    except HandlerFailed:  # (fatal: a handler ended the transaction; trying again could apply events twice)
        await rollback(conn)
        raise
    except Exception:  # a batch handler that failed on several events (which one is the fallback's to find)
        await rollback(conn)
        return Outcome.FAILED
    except BaseException:
        await rollback(conn)
        raise
    if scope.cancelled_caught:
        await rollback(conn)
        first, last = shares[0].records[0].sequence_number, shares[-1].records[-1].sequence_number
        raise HandlerFailed(
            f"projection {projection.name}: the commit of the batch at positions {first} to {last} passed its"
            f" deadline of {timeout:g} s (handler_timeout): cancelled",
            None,
        )
    return Outcome.APPLIED


async def _run_shares(tx: Transaction, projection: Projection, shares: list[Share], limit: float) -> bool:
    """Run the handlers on each share in turn, each within ``limit`` seconds;
    whether they all succeeded (a lost connection is raised, not a failure)."""
    for share in shares:
        with trio.move_on_after(limit) as scope:
            failed = await _run_handlers(tx, projection, share.records, 0, len(share.records))
        if failed is not None and isinstance(failed.error, StoreUnavailable):
            raise failed.error
        if scope.cancelled_caught or failed is not None:
            return False
    return True


async def lost(conn: _db.Connection, name: str, me: str, epochs: dict[int, int]) -> list[int]:
    """Of the partitions in ``epochs`` (partition -> the epoch held under),
    those whose lease ``me`` no longer holds under that epoch. One round trip."""
    rows = await conn.fetch(
        "SELECT partition, epoch FROM eventbus.projection_leases"
        " WHERE projection = $1 AND owner = $2 AND partition = ANY($3::int[])",
        name,
        me,
        list(epochs),
    )
    held = {row["partition"]: row["epoch"] for row in rows}
    return sorted(k for k, epoch in epochs.items() if held.get(k) != epoch)


class ShareApplier:
    """The applying half of a :class:`~._partitioned.PartitionedRunner`: a
    stream batch, split by partition, applied to the partitions held here."""

    projection: Projection
    member: str
    dead_letters: int
    _held: dict[int, Held]
    _skip: int | None
    _failures: int
    _applying: Projection
    _batch_started: float | None
    _unkeyed: dict[Any, str]
    _released: set[int]

    def _count_dead_letter(self) -> None:
        self.dead_letters += 1

    def _fence(self, share: Share, new: int) -> str:
        return _leases.fence_sql(self.projection.name, share.partition, self.member, share.epoch, share.checkpoint, new)

    def _still_held(self, share: Share) -> bool:
        held = self._held.get(share.partition)
        return held is not None and held.epoch == share.epoch

    async def _apply_groups(self, conn: _db.Connection, groups: dict[int, list[EventRecord]]) -> None:
        """Apply each held partition's share of a stream batch (``groups``:
        partition -> its events in position order), all in one transaction;
        one partition per transaction if a handler fails there. A partition
        whose lease is lost meanwhile is dropped, the others applied again."""
        name, skip = self.projection.name, self._skip
        while True:
            shares = [
                Share(k, held.epoch, held.checkpoint, records)
                for k in sorted(groups)
                if (held := self._held.get(k)) is not None
                and (records := [r for r in groups[k] if r.sequence_number > held.checkpoint])
            ]
            if not shares:
                return
            if skip is not None and any(r.sequence_number == skip for share in shares for r in share.records):
                break  # the poison event's partition is applied as skip_poison says, alone
            if self._unkeyed and any(r.event_id in self._unkeyed for share in shares for r in share.records):
                break  # its key function failed: known to fail, so no handler runs twice for it
            epochs = {share.partition: share.epoch for share in shares}
            shares_of = {share.partition: share for share in shares}
            self._batch_started = trio.current_time()
            try:
                outcome = await apply_together(conn, self._applying, shares, self._fence, self._still_held)
                gone = await lost(conn, name, self.member, epochs) if outcome == Outcome.FENCED else []
            finally:
                self._batch_started = None
            if outcome == Outcome.APPLIED:
                for share in shares:
                    held = self._held.get(share.partition)
                    if held is not None and held.epoch == share.epoch:
                        held.checkpoint = max(held.checkpoint, share.records[-1].sequence_number)
                    for record in share.records:
                        self._unkeyed.pop(record.event_id, None)
                self._failures = 0
                return
            if outcome == Outcome.DROPPED:
                gone = [k for k in epochs if not self._still_held(shares_of[k])]
            if not gone:  # a handler failed (or, fenced, no lease is lost now): isolate it
                break
            for k in gone:
                if k in self._released:  # a rebalance: this process handed it over
                    _log.info(HANDED_OVER, name, k)
                else:
                    _log.warning(TAKEN, name, k)
                held = self._held.get(k)
                if held is not None and held.epoch == epochs[k]:
                    del self._held[k]
        await self._apply_each(conn, groups)

    async def _apply_each(self, conn: _db.Connection, groups: dict[int, list[EventRecord]]) -> None:
        """Apply each held partition's share in a transaction of its own."""
        name = self.projection.name
        for k, records in sorted(groups.items()):
            held = self._held.get(k)
            if held is None:
                continue  # lost since
            records = [record for record in records if record.sequence_number > held.checkpoint]
            if not records:
                continue
            epoch = held.epoch

            def fence(old: int, new: int, k: int = k, epoch: int = epoch) -> str:
                return _leases.fence_sql(name, k, self.member, epoch, old, new)

            self._batch_started = trio.current_time()
            skip = self._skip
            try:
                if skip is not None and any(record.sequence_number == skip for record in records):
                    position = await apply_skipping(
                        conn, self._applying, records, held.checkpoint, skip, self._count_dead_letter, fence=fence
                    )
                    self._skip = None
                else:
                    position = await apply_in_time(
                        conn, self._applying, records, held.checkpoint, self._count_dead_letter, fence=fence
                    )
            except HandlerFailed as exc:
                if not _leases.is_fenced(exc):
                    raise
                _log.warning("projection %s: partition %d was taken by another process (or its read model swapped by"
                             " a rebuild): its batch rolled back", name, k)  # fmt: skip
                if self._held.get(k) is held:
                    del self._held[k]
                continue
            finally:
                self._batch_started = None
            held.checkpoint = max(held.checkpoint, position)
            self._failures = 0
            for record in records:
                self._unkeyed.pop(record.event_id, None)
