"""Rebuilding a projection without downtime: a shadow copy, then a swap.

The copy is built from position 0 in a shadow schema (``_shadow.py``: a name
no projection can own, dropped and swapped only by its oid) while the live
read model keeps serving reads and following new events. Once
the copy has caught up, it asks the leader for the swap: the leader pauses at
its checkpoint, the copy goes on until it is at or past it, and the leader
swaps the two schemas and moves the checkpoint in one transaction (``_swap.py``).

The rebuild sees the live leader only through :class:`Leader`, declared here:
what it reads of it and the two requests it makes. It imports no runner and
no manager.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol

import attrs
import trio

from .. import _db
from .._errors import ProjectionError
from .._store import EventStore
from .._stream import EventStream, Subscription
from .._values import EventRecord
from ._apply import apply_in_time, prepare_schema
from ._definition import SUBSCRIPTION_BATCHES, Projection
from ._shadow import create_shadow, drop_shadow
from ._swap import Swap

IDLE_WAIT = 0.5
"""Seconds the copy waits for a batch before it looks at the swap again."""

Progress = Callable[[int, int], object]
"""``progress(done, total)``, in positions."""


async def dead_letters_of(conn: _db.Connection, name: str) -> frozenset[int]:
    """The positions of ``name``'s dead letters, as a rebuild starts.

    A copy leaves them out, as the live read model did: a dead letter is
    applied by ``eventbus dead-letters retry`` only, which applies it once to
    the read model of the day. (Applied by a rebuild too, a retry after it
    would apply it twice; and a poison event skipped by an operator would
    fail every rebuild.) A discarded one is no longer a dead letter: a
    rebuild meets it again.
    """
    rows = await conn.fetch(  # (FOR SHARE: a retry under way is waited for; see Operations._do_retry)
        "SELECT sequence_number FROM eventbus.dead_letters WHERE projection = $1 AND copy_of IS NULL FOR SHARE", name
    )
    return frozenset(int(row[0]) for row in rows)


async def apply_to_copy(
    conn: _db.Connection, projection: Projection, batch: list[EventRecord], left_out: frozenset[int], schema: str
) -> int:
    """Apply ``batch`` to the copy in ``schema``, but the events at the
    positions ``left_out``; return the batch's last position."""
    kept = [record for record in batch if record.sequence_number not in left_out] if left_out else batch
    if kept:
        await apply_in_time(conn, projection, kept, None, None, schema)
    return batch[-1].sequence_number


def subscribe_from_start(stream: EventStream, projection: Projection) -> Subscription:
    """A rebuild's subscription: ``projection``'s events from position 0, in
    its batches, buffering up to ``SUBSCRIPTION_BATCHES`` of them."""
    return stream.subscribe(
        projection.filter,
        after=0,
        max_batch=projection.batch_size,
        buffer=projection.batch_size * SUBSCRIPTION_BATCHES,
        name=f"rebuild {projection.name}",
    )


class Leader(Protocol):
    """The live projection's leader in this process, as a rebuild sees it."""

    @property
    def leader(self) -> bool:
        """Whether this process still leads the projection."""
        ...

    @property
    def applied(self) -> int:
        """The live read model's checkpoint."""
        ...

    def ask_swap(self, swap: Swap) -> None:
        """Pause between two batches and take the leader's part of ``swap``."""
        ...

    def withdraw_swap(self, swap: Swap) -> None:
        """Forget ``swap`` if not taken yet: the rebuild stops."""
        ...


@attrs.define
class Rebuild:
    """One rebuild of ``projection``; :meth:`run` it once."""

    projection: Projection
    live: Leader
    dsn: str
    store: EventStore
    stream: EventStream
    progress: Progress | None

    async def run(self) -> None:
        """Build the copy, hand it over, wait for the swap.

        Raises:
            ProjectionError: the swap did not happen (the cause is chained),
                or the copy's schema name is taken by a schema that is not
                a rebuild's (it stays as it is).
        """
        projection = self.projection
        conn = await _db.connect(self.dsn, application_name=f"eventbus-rebuild {projection.name}")
        try:
            shadow = await create_shadow(conn, projection.name)
            swap = Swap(shadow)
            try:
                await prepare_schema(conn, projection, shadow.schema)
                total = await self.store.head()
                await self._replay(conn, projection, shadow.schema, swap, total)  # returns once the swap is over
            except BaseException as exc:
                self.live.withdraw_swap(swap)
                handed_over = swap.handed_over
                swap.abandon(exc)
                if not handed_over:  # the leader will not touch the shadow: it is ours to drop
                    await drop_shadow(conn, shadow, self.store.pool)
                raise
        finally:
            await conn.close()
        if swap.error is not None:
            raise ProjectionError(f"rebuild of {projection.name!r} did not swap: {swap.error}") from swap.error

    async def _replay(self, conn: _db.Connection, projection: Projection, shadow: str, swap: Swap,
                      total: int) -> None:  # fmt: skip
        live = self.live
        position = 0
        asked = False
        left_out = swap.left_out = await dead_letters_of(conn, projection.name)
        sub = subscribe_from_start(self.stream, projection)
        async with sub:
            while True:
                if swap.target is not None and position >= swap.target:
                    swap.hand_over(position)
                    await swap.wait_finished()
                    return
                if not live.leader:
                    raise ProjectionError("this process no longer leads the projection")
                if not asked and (sub.state == "live" or position >= live.applied):
                    live.ask_swap(swap)
                    asked = True
                batch: list[EventRecord] | None = None
                with trio.move_on_after(IDLE_WAIT) as scope:
                    async with trio.open_nursery() as nursery:

                        async def wake_on_target(scope: trio.CancelScope = scope) -> None:
                            await swap.wait_target()
                            scope.cancel()

                        if swap.target is None:
                            nursery.start_soon(wake_on_target)
                        try:
                            batch = await sub.__anext__()
                        except StopAsyncIteration:
                            raise ProjectionError("the bus closed during the rebuild") from None
                        nursery.cancel_scope.cancel()
                if batch:
                    position = await apply_to_copy(conn, projection, batch, left_out, shadow)
                if sub.buffered == 0:
                    position = max(position, sub.position)
                if self.progress is not None:
                    self.progress(position, max(total, position))
