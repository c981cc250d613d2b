"""Rebuilding a partitioned projection without downtime: a copy, then one swap.

One process, any that runs the projection, builds the copy from position 0 in
the shadow schema (``_shadow.py``), in position order, while the owners of
the partitions, in this process and others, go on applying new events to
the live read model and readers go on reading it. The builder holds a claim
in ``eventbus.projection_rebuilds``, renewed every ``HEARTBEAT`` seconds: a
second rebuild, here or elsewhere, is refused while it lives, and once it
has expired (its builder was killed) the next rebuild drops the copy left
behind and builds its own.

Once the copy has caught up with the stream (or with the slowest partition,
when writes outrun the handlers), at position P, ONE transaction
swaps it in, with every owner held at a consistent point by PostgreSQL
itself: it takes the live tables' locks (waiting for the batches under way
to commit; the batches that start later wait for it), then the lease
table's lock that heartbeats take, checks that the claim and the copy are
still this rebuild's, drops the live schema, renames the copy in its place,
and sets every partition's checkpoint to P under a new epoch. No owner
pauses of its own accord: a batch it started before the swap and commits
after is refused at its commit (its epoch is gone) and rolled back, its
writes with it, wherever they went; at its next heartbeat the owner takes
the partition under the new epoch and applies from P on, on the new tables.
The events an owner applied past P to the old tables went with them. So each
event is in the new read model exactly once: up to P from the copy, after P
from the owners.

A builder killed at any point leaves the live read model and the leases as
they were: the swap is one transaction, and what is left (a copy, a claim)
is taken care of by the next rebuild.
"""

from __future__ import annotations

import contextlib
import logging
import math
from collections.abc import Callable

import attrs
import trio

from .. import _db
from .._db import rollback
from .._errors import DatabaseError, EventBusError, ProjectionError
from .._nursery import open_actor_nursery
from .._store import EventStore
from .._stream import EventStream
from .._values import EventRecord
from . import _leases
from ._apply import literal, prepare_schema, quote
from ._definition import BatchHandler, Handler, Projection, Transaction, key_function
from ._rebuild import IDLE_WAIT, Progress, apply_to_copy, dead_letters_of, subscribe_from_start
from ._shadow import Shadow, adopt_dead_letters_sql, create_shadow, drop_shadow
from ._swap import LOCK_CONFLICTS, SWAP_ATTEMPTS, SWAP_LOCK_TIMEOUT

CLAIM_TTL = _leases.LEASE_TTL
"""Seconds a rebuild's claim lives without renewal: the builder killed, the
next rebuild of the projection may start after this long."""

NOT_CLAIMED = "EB002"
"""The SQLSTATE of a swap refused because the rebuild's claim was lost."""

_log = logging.getLogger("eventbus.projections")


def keyed(projection: Projection) -> Projection:
    """``projection`` whose handlers fail, as the live partitions do, on an
    event its ``partition_key`` raises on (a dead letter under ``skip``)."""
    key = key_function(projection)

    def check(record: EventRecord) -> None:
        try:
            key(record)
        except Exception as exc:
            raise ProjectionError(
                f"projection {projection.name}: partition_key raised {type(exc).__name__}: {exc}"
            ) from exc

    def guard(handler: Handler) -> Handler:
        async def guarded(tx: Transaction, record: EventRecord) -> None:
            check(record)
            await handler(tx, record)

        return guarded

    def guard_batch(handler: BatchHandler) -> BatchHandler:
        async def guarded(tx: Transaction, records: list[EventRecord]) -> None:
            for record in records:
                check(record)
            await handler(tx, records)

        return guarded

    return attrs.evolve(
        projection,
        handlers={t: guard(h) for t, h in projection.handlers.items()},
        batch_handler=None if projection.batch_handler is None else guard_batch(projection.batch_handler),
    )


@attrs.define
class PartitionedRebuild:
    """One rebuild of a partitioned ``projection``; :meth:`run` it once.

    ``member`` names the builder in its claim; ``running()`` says whether the
    projection still runs in this process (a rebuild of a stopped one gives up).
    """

    projection: Projection
    member: str
    running: Callable[[], bool]
    dsn: str
    store: EventStore
    stream: EventStream
    progress: Progress | None

    async def run(self) -> int:
        """Claim, build the copy, swap it in; the position it was swapped in at.

        Blocks while the copy is built (one transaction per batch on a
        connection of its own; its subscription buffers up to
        ``SUBSCRIPTION_BATCHES`` batches) and for the swap (up to
        ``SWAP_ATTEMPTS`` tries of ``SWAP_LOCK_TIMEOUT`` seconds each).
        Cancelled, it drops the copy and the claim (shielded, bounded); if
        the swap's transaction had committed, the copy stays swapped in.

        Raises:
            ProjectionError: another rebuild of the projection is under way
                (here or in another process), the claim was lost, the copy's
                schema name is taken by a schema that is not a rebuild's, the
                projection was stopped here, or the swap could not get its
                locks. The copy is dropped; the live read model goes on.
            HandlerFailed: a handler failed on the copy (the live model stays).
        """
        name = self.projection.name
        pool = self.store.pool
        claimed = await pool.fetchval(
            "INSERT INTO eventbus.projection_rebuilds AS r (projection, owner, expires_at)"
            " VALUES ($1, $2, now() + make_interval(secs => $3))"
            " ON CONFLICT (projection) DO UPDATE SET owner = excluded.owner, expires_at = excluded.expires_at"
            " WHERE r.expires_at < now() RETURNING owner",
            name,
            self.member,
            CLAIM_TTL,
        )
        if claimed is None:
            raise ProjectionError(f"projection {name!r} is being rebuilt by another process already")
        try:
            async with open_actor_nursery() as nursery:
                nursery.start_soon(self._renew)
                position = await self._build()
                nursery.cancel_scope.cancel()
            return position
        finally:
            with trio.move_on_after(_db.CLOSE_TIMEOUT, shield=True), contextlib.suppress(EventBusError, RuntimeError):
                await pool.fetch(
                    "DELETE FROM eventbus.projection_rebuilds WHERE projection = $1 AND owner = $2", name, self.member
                )

    async def _renew(self) -> None:
        while True:
            await trio.sleep(_leases.HEARTBEAT)
            renewed = await self.store.pool.fetchval(
                "UPDATE eventbus.projection_rebuilds SET expires_at = now() + make_interval(secs => $3)"
                " WHERE projection = $1 AND owner = $2 RETURNING owner",
                self.projection.name,
                self.member,
                CLAIM_TTL,
            )
            if renewed is None:
                raise ProjectionError("the rebuild's claim expired (the process was paused past it)")

    async def _build(self) -> int:
        projection = keyed(self.projection)
        conn = await _db.connect(self.dsn, application_name=f"eventbus-rebuild {projection.name}")
        try:
            shadow = await create_shadow(conn, projection.name)
            swapped = False
            try:
                await prepare_schema(conn, projection, shadow.schema)
                total = await self.store.head()
                position = await self._replay(conn, projection, shadow, total)
                swapped = True
                return position
            finally:
                if not swapped:
                    await drop_shadow(conn, shadow, self.store.pool)
        finally:
            await conn.close()

    async def _slowest(self) -> int:
        """The slowest partition's committed checkpoint (0 before any)."""
        value = await self.store.pool.fetchval(
            "SELECT min(checkpoint) FROM eventbus.projection_leases WHERE projection = $1 AND partition < $2",
            self.projection.name,
            self.projection.partitions,
        )
        return int(value or 0)

    async def _replay(self, conn: _db.Connection, projection: Projection, shadow: Shadow, total: int) -> int:
        """Apply every event to the copy; swap once it has caught up with
        the stream or with the slowest partition (which may lag the stream
        as far as the copy does, under writes faster than the handlers)."""
        position = 0
        attempt = 0
        looked = -math.inf  # when the slowest partition was last looked at
        left_out = await dead_letters_of(conn, projection.name)
        sub = subscribe_from_start(self.stream, projection)
        async with sub:
            while True:
                if not self.running():
                    raise ProjectionError("the projection was stopped in this process")
                caught_up = sub.state == "live" and sub.buffered == 0
                if caught_up:
                    position = max(position, sub.position)
                elif position and trio.current_time() - looked >= IDLE_WAIT:
                    looked = trio.current_time()
                    caught_up = position >= await self._slowest()
                if caught_up:
                    attempt += 1
                    if await _swap_in(conn, projection, shadow, self.member, position, attempt, left_out):
                        return position
                batch: list[EventRecord] | None = None
                with trio.move_on_after(IDLE_WAIT):
                    try:
                        batch = await sub.__anext__()
                    except StopAsyncIteration:
                        raise ProjectionError("the bus closed during the rebuild") from None
                if batch:
                    position = await apply_to_copy(conn, projection, batch, left_out, shadow.schema)
                if sub.buffered == 0:
                    position = max(position, sub.position)
                if self.progress is not None:
                    self.progress(position, max(total, position))


async def _swap_in(conn: _db.Connection, projection: Projection, shadow: Shadow, member: str, position: int,
                   attempt: int, left_out: frozenset[int]) -> bool:  # fmt: skip
    """Swap the copy in at ``position``, in one transaction (see the module's
    docstring); whether it swapped. A lock not granted within
    ``SWAP_LOCK_TIMEOUT`` (a long batch or reader) or a deadlock rolls it
    back, for the caller to try again after more of the stream, up to
    ``SWAP_ATTEMPTS`` times.

    Raises:
        ProjectionError: the claim is lost, the copy is not the schema made,
            or the last attempt gave way.
    """
    name, schema = projection.name, projection.schema
    live, copy = quote(schema), quote(shadow.schema)
    claim_check = (  # locked: no other rebuild takes the claim (expired or not) before this one commits
        "DO $eventbus$ BEGIN PERFORM FROM eventbus.projection_rebuilds"
        f" WHERE projection = {literal(name)} AND owner = {literal(member)} FOR UPDATE; IF NOT FOUND THEN"
        f" RAISE EXCEPTION 'the rebuild''s claim is lost' USING ERRCODE = '{NOT_CLAIMED}'; END IF; END $eventbus$"
    )
    try:
        # The live tables first, as readers and batches lock them; then the
        # heartbeats' lock, so that no heartbeat reads the leases half-swapped.
        await conn.run_script(
            f"BEGIN; SET LOCAL lock_timeout = '{int(SWAP_LOCK_TIMEOUT * 1000)}ms';"
            f" SELECT eventbus.lock_read_model({literal(schema)}, true);"
            f" SELECT pg_advisory_xact_lock({_leases.lock_key(name)}); {claim_check}; {shadow.check_sql()};"
            f" DROP SCHEMA IF EXISTS {live} CASCADE; ALTER SCHEMA {copy} RENAME TO {live};"
            f" COMMENT ON SCHEMA {live} IS NULL; {adopt_dead_letters_sql(shadow, name, left_out, position)};"
            " UPDATE eventbus.projection_leases SET epoch = epoch + 1, witness = NULL, checkpoint = "
            f"{int(position)} WHERE projection = {literal(name)};"
            " INSERT INTO eventbus.projection_leases (projection, partition, checkpoint)"
            f" SELECT {literal(name)}, k, {int(position)} FROM generate_series(0, {int(projection.partitions)} - 1) k"
            " ON CONFLICT DO NOTHING; COMMIT"  # the claim goes after, once the renewals have stopped
        )
    except DatabaseError as exc:
        await rollback(conn)
        if exc.sqlstate not in LOCK_CONFLICTS:
            raise ProjectionError(f"rebuild of {name!r} did not swap: {exc}") from exc
        if attempt >= SWAP_ATTEMPTS:
            raise ProjectionError(f"rebuild of {name!r} did not swap: {exc} ({attempt} attempts)") from exc
        _log.info("projection %s: swap attempt %d gave way (%s); trying again", name, attempt, exc.sqlstate)
        await trio.sleep(min(SWAP_LOCK_TIMEOUT, 0.05 * 2 ** (attempt - 1)))  # others' turn
        return False
    except BaseException:
        await rollback(conn)
        raise
    return True
