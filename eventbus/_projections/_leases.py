"""The lease table protocol of partitioned projections.

A process that runs a partitioned projection is a *member* while it renews
its row in ``eventbus.projection_members`` every ``HEARTBEAT`` seconds; a row
not renewed for ``LEASE_TTL`` seconds is gone. The members, in name order,
share the partitions: partition ``k`` belongs to member ``k % len(members)``.
Each heartbeat (one transaction) renews the leases a process keeps, releases
those that now belong to another member, and takes those that are its own
once they are free or their lease has expired. Taking a lease raises its
epoch, the fencing token: a batch commits with ``eventbus.advance_lease``
under the owner and epoch it started with, so a process that lost its lease
(paused past it, cut off) can never commit for that partition again.

Nothing here holds session state (no advisory lock across transactions, no
LISTEN): it works through a transaction-pooling PgBouncer. All times are the
server's clock.
"""

from __future__ import annotations

import hashlib
import logging

import attrs

from .. import _db
from .._db import rollback
from .._errors import DatabaseError, PartitionsDiffer
from .._values import EventRecord
from ._apply import literal

_log = logging.getLogger("eventbus.projections")

LEASE_TTL = 3.0
"""Seconds a member row and a lease live without renewal: a process killed
with SIGKILL gives up its partitions after this long."""

HEARTBEAT = 0.5
"""Seconds between a member's heartbeats (renew, release, take)."""

FENCED = "EB001"
"""The SQLSTATE of a commit refused because its lease is lost."""


_LOCK_IN_ORDER = (
    "SELECT FROM eventbus.projection_leases WHERE projection = $1 AND ($2::int[] IS NULL OR partition = ANY($2))"
    " ORDER BY partition FOR UPDATE"
)
"""Lock lease rows in partition order, as a batch's commit does (one partition
after another, in order): taken in another order, two transactions of one
process could each wait for the other (a deadlock, which restarts the runner)."""


def leader_key(name: str) -> int:
    """The session advisory lock a single leader (``partitions=1``) holds while it leads ``name``."""
    digest = hashlib.blake2b(f"eventbus projection {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


def lock_key(name: str) -> int:
    """The transaction advisory lock that puts one projection's heartbeats in a row."""
    digest = hashlib.blake2b(f"eventbus partitions {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


@attrs.frozen
class Lease:
    """A partition this process holds: under which epoch, from which checkpoint."""

    partition: int
    epoch: int
    checkpoint: int


@attrs.frozen
class Round:
    """What one heartbeat left behind.

    Attributes:
        held: this member's leases, by partition.
        owners: every live lease's partitions, by owner.
        checkpoints: every partition's committed checkpoint, by partition.
    """

    held: dict[int, Lease]
    owners: dict[str, tuple[int, ...]]
    checkpoints: tuple[int, ...]


def assigned(members: list[str], me: str, partitions: int) -> list[int]:
    """The partitions that belong to ``me`` among ``members`` (in name order)."""
    if me not in members:
        return []
    ordered = sorted(members)
    return [k for k in range(partitions) if ordered[k % len(ordered)] == me]


def fence_sql(name: str, partition: int, owner: str, epoch: int, _checkpoint: int, new: int) -> str:
    """The statement that moves a partition's checkpoint to ``new`` within a
    batch's transaction, or fails it (SQLSTATE ``FENCED``) when the lease is lost."""
    return (
        f"SELECT eventbus.advance_lease({literal(name)}, {int(partition)}, {literal(owner)}, {int(epoch)}, {int(new)})"
    )


KEYS_DIFFER = -1
"""The witness (see schema.sql) of every partition once a process found that a key differs."""


async def witnesses(conn: _db.Connection, name: str, partitions: int) -> tuple[list[tuple[int, EventRecord]], bool]:
    """Each partition's witness (see schema.sql) that is still stored, with
    its partition, and whether keys were found to differ (``KEYS_DIFFER``);
    nothing while the stored count is not ``partitions`` (the heartbeat
    says so)."""
    rows = await conn.fetch(
        "SELECT l.partition, count(*) OVER () AS stored, l.witness, e.sequence_number, e.event_id, e.event_type,"
        " e.payload, e.metadata, e.occurred_at FROM eventbus.projection_leases l"
        " LEFT JOIN eventbus.events e ON e.sequence_number = l.witness WHERE l.projection = $1",
        name,
    )
    if not rows or rows[0]["stored"] != partitions:
        return [], False
    found = [
        (row[0], EventRecord(row[3], row[4], row[5], row[6], row[7], row[8]))
        for row in rows
        if row["sequence_number"] is not None
    ]
    return found, any(row["witness"] == KEYS_DIFFER for row in rows)


async def mark_keys_differ(conn: _db.Connection, name: str) -> None:
    """Set every partition's witness to ``KEYS_DIFFER``: every process of
    ``name`` stands by until a rebuild's swap clears them."""
    await conn.execute("UPDATE eventbus.projection_leases SET witness = $2 WHERE projection = $1", name, KEYS_DIFFER)


def is_fenced(exc: BaseException | None) -> bool:
    """Whether ``exc`` (or what caused it) is a commit refused for a lost lease."""
    seen = 0
    while exc is not None and seen < 20:
        if isinstance(exc, DatabaseError) and exc.sqlstate == FENCED:
            return True
        exc = exc.__cause__ or exc.__context__
        seen += 1
    return False


async def heartbeat(conn: _db.Connection, name: str, me: str, partitions: int, *, ttl: float = LEASE_TTL) -> Round:
    """One heartbeat of member ``me``, in one transaction; what it holds after.

    Blocks for a few round trips (and for the heartbeats of other members of
    the projection, one at a time). Cancelled, it rolls back: the leases stay
    as they were and expire unless renewed.

    Raises:
        DatabaseError, StoreUnavailable: the transaction failed (rolled back).
    """
    await conn.execute("BEGIN")
    try:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(name))
        await conn.execute(_LOCK_IN_ORDER, name, None)
        await _check_partitions(conn, name, me, partitions)
        await conn.execute(
            "INSERT INTO eventbus.projection_members (projection, member, expires_at)"
            " VALUES ($1, $2, now() + make_interval(secs => $3))"
            " ON CONFLICT (projection, member) DO UPDATE SET expires_at = excluded.expires_at",
            name,
            me,
            ttl,
        )
        await conn.execute("DELETE FROM eventbus.projection_members WHERE projection = $1 AND expires_at < now()", name)
        members = [row[0] for row in await conn.fetch(
            "SELECT member FROM eventbus.projection_members WHERE projection = $1", name
        )]  # fmt: skip
        mine = assigned(members, me, partitions)
        await conn.execute(  # what now belongs to another member (or to no partition any more)
            "UPDATE eventbus.projection_leases SET owner = NULL, expires_at = '-infinity'"
            " WHERE projection = $1 AND owner = $2 AND NOT (partition = ANY($3::int[]))",
            name,
            me,
            mine,
        )
        await conn.execute(  # what stays: the same epoch (nobody else took it meanwhile)
            "UPDATE eventbus.projection_leases SET expires_at = now() + make_interval(secs => $3)"
            " WHERE projection = $1 AND owner = $2",
            name,
            me,
            ttl,
        )
        await conn.execute(  # what is ours and free: a new epoch fences off the one before
            "UPDATE eventbus.projection_leases SET owner = $2, epoch = epoch + 1,"
            " expires_at = now() + make_interval(secs => $4)"
            " WHERE projection = $1 AND partition = ANY($3::int[]) AND owner IS DISTINCT FROM $2"
            " AND (owner IS NULL OR expires_at < now())",
            name,
            me,
            mine,
            ttl,
        )
        rows = await conn.fetch(
            "SELECT partition, owner, epoch, checkpoint, expires_at > now() AS live"
            " FROM eventbus.projection_leases WHERE projection = $1 AND partition < $2 ORDER BY partition",
            name,
            partitions,
        )
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise
    held: dict[int, Lease] = {}
    owners: dict[str, list[int]] = {}
    checkpoints = [0] * partitions
    for row in rows:
        checkpoints[row["partition"]] = row["checkpoint"]
        if row["owner"] == me:
            held[row["partition"]] = Lease(row["partition"], row["epoch"], row["checkpoint"])
        if row["owner"] is not None and row["live"]:
            owners.setdefault(row["owner"], []).append(row["partition"])
    return Round(held, {owner: tuple(ks) for owner, ks in owners.items()}, tuple(checkpoints))


async def _check_partitions(conn: _db.Connection, name: str, me: str, partitions: int) -> None:
    """Make sure the lease table holds ``partitions`` partitions of ``name``,
    within a heartbeat's transaction (under the projection's lock).

    The first member ever writes them, each starting where a single leader
    of the projection left off (0 for a new one). A count that differs from
    the stored one (a redeploy with another ``partitions``) is taken over
    only when it is safe: no other member is live and every partition stands
    at one position. Otherwise, two processes would route one key to
    different partitions and apply its events twice.

    Raises:
        PartitionsDiffer: a single leader leads ``name`` now, or its stored
            partitions differ and cannot be taken over yet.
    """
    rows = await conn.fetch(
        "SELECT min(checkpoint), max(checkpoint), count(*), coalesce(max(epoch), 0)"
        " FROM eventbus.projection_leases WHERE projection = $1",
        name,
    )
    low, high, stored, epoch = rows[0][0], rows[0][1], int(rows[0][2]), int(rows[0][3])
    if stored == partitions:
        return
    if stored == 0:
        if not await conn.fetchval("SELECT pg_try_advisory_xact_lock($1)", leader_key(name)):
            raise PartitionsDiffer(
                f"projection {name!r} is led by a single leader (partitions=1) in another process: this process"
                f" runs it with partitions={partitions} once that one stops"
            )
        start = int(await conn.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", name) or 0)
        why = f"from its single leader's checkpoint {start}" if start else "new"
    else:
        others = await conn.fetchval(
            "SELECT count(*) FROM eventbus.projection_members WHERE projection = $1 AND member <> $2"
            " AND expires_at >= now()",
            name,
            me,
        )
        if others or low != high:
            raise PartitionsDiffer(
                f"projection {name!r} has {stored} partitions in the database and this process runs it with"
                f" {partitions}: a key would go to different partitions in different processes."
                + (f" This process waits until the {others} other process(es) that run it stop" if others else "")
                + (
                    f"; its partitions stand at positions {low} to {high}: this process takes over when they"
                    " stand at one position (let the old count catch up with no writes, or rebuild it from a"
                    " process of the new count: eventbus projections rebuild NAME --process PID)"
                    if low != high
                    else ""
                )
            )
        start = int(low)
        await conn.execute("DELETE FROM eventbus.projection_leases WHERE projection = $1", name)
        why = f"from {stored} partitions, all at position {start}"
    await conn.execute(  # epochs go on from the old rows': an old owner's commit stays fenced off
        "INSERT INTO eventbus.projection_leases (projection, partition, checkpoint, epoch)"
        " SELECT $1, k, $3, $4 FROM generate_series(0, $2 - 1) AS k",
        name,
        partitions,
        start,
        epoch,
    )
    _log.log(logging.WARNING if stored else logging.INFO, "projection %s: %d partitions written (%s)",
             name, partitions, why)  # fmt: skip


async def check_single(conn: _db.Connection, name: str) -> None:
    """For a process that has just taken the lead of ``name`` with ``partitions=1``:
    make sure no partitions of it are stored, in one transaction.

    Stored partitions are taken over (their position becomes the single
    leader's checkpoint, their rows are deleted) only when no member is live
    and every partition stands at one position.

    Raises:
        PartitionsDiffer: partitions of ``name`` are stored and cannot be taken over yet.
    """
    await conn.execute("BEGIN")
    try:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(name))
        row = (await conn.fetch(
            "SELECT min(checkpoint), max(checkpoint), count(*),"
            " (SELECT count(*) FROM eventbus.projection_members WHERE projection = $1 AND expires_at >= now())"
            " FROM eventbus.projection_leases WHERE projection = $1",
            name,
        ))[0]  # fmt: skip
        low, high, stored, live = row[0], row[1], int(row[2]), int(row[3])
        if stored:
            _check_single_takes_over(name, stored, live, low, high)
            await conn.execute(
                "INSERT INTO eventbus.projections (name, checkpoint) VALUES ($1, $2)"
                " ON CONFLICT (name) DO UPDATE SET checkpoint = excluded.checkpoint, updated_at = now()",
                name,
                int(low),
            )
            await conn.execute("DELETE FROM eventbus.projection_leases WHERE projection = $1", name)
            await conn.execute("DELETE FROM eventbus.projection_members WHERE projection = $1", name)
            _log.warning("projection %s: one leader takes over its %d partitions at %d", name, stored, low)
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise


def _check_single_takes_over(name: str, stored: int, live: int, low: int, high: int) -> None:
    if live:
        why = f"{live} process(es) run it partitioned now"
    elif low != high:
        why = f"its partitions stand at positions {low} to {high}"
    else:
        return
    raise PartitionsDiffer(
        f"projection {name!r} has {stored} partitions in the database and this process runs it with partitions=1:"
        f" {why}; one leader takes over only when no process runs its partitions and they stand at one position"
    )


async def advance_idle(conn: _db.Connection, name: str, me: str, leases: list[Lease], position: int) -> None:
    """Move the checkpoints of ``leases`` up to ``position``, where every one
    of their events up to it is applied (the stream went on without theirs).
    Fenced as a batch: a lease lost meanwhile is left alone. One round trip."""
    if not leases:
        return
    partitions = [lease.partition for lease in leases]
    await conn.execute("BEGIN")
    try:
        await conn.execute(_LOCK_IN_ORDER, name, partitions)
        await conn.execute(
            "UPDATE eventbus.projection_leases AS l SET checkpoint = $5"
            " FROM unnest($3::int[], $4::bigint[]) AS u (partition, epoch)"
            " WHERE l.projection = $1 AND l.owner = $2 AND l.partition = u.partition AND l.epoch = u.epoch"
            " AND l.checkpoint < $5",
            name,
            me,
            partitions,
            [lease.epoch for lease in leases],
            position,
        )
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise


async def leave(conn: _db.Connection, name: str, me: str) -> None:
    """Stop being a member and let go of every lease, in one transaction:
    the other members take the partitions at their next heartbeat."""
    await conn.execute("BEGIN")
    try:
        await conn.execute("SELECT pg_advisory_xact_lock($1)", lock_key(name))
        await conn.execute("DELETE FROM eventbus.projection_members WHERE projection = $1 AND member = $2", name, me)
        await conn.execute(
            "UPDATE eventbus.projection_leases SET owner = NULL, expires_at = '-infinity'"
            " WHERE projection = $1 AND owner = $2",
            name,
            me,
        )
        await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise
