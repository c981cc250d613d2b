"""Rebuilding a projection without downtime: a shadow copy, then a swap.

The copy is built from position 0 in the schema ``projection_<name>__shadow``
while the live read model keeps serving reads and following new events. Once
the copy has caught up, it asks the leader for the swap: the leader pauses at
its checkpoint, the copy goes on until it is at or past it, and the leader
swaps the two schemas and moves the checkpoint in one transaction.
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from .. import _db
from .._errors import EventBusError, ProjectionError
from .._values import EventRecord
from ._apply import apply_records, prepare_schema, quote
from ._definition import Projection

if TYPE_CHECKING:
    from ._manager import ProjectionManager, Runner

IDLE_WAIT = 0.5
"""Seconds the copy waits for a batch before it looks at the swap again."""

Progress = Callable[[int, int], object]


class Swap:
    """The hand-over between a rebuild's shadow and the live leader."""

    def __init__(self) -> None:
        self.target: int | None = None  # set by the leader once it has paused
        self.target_set = trio.Event()
        self.reached: int | None = None  # set by the shadow once it is there
        self.reached_event = trio.Event()
        self.done = trio.Event()
        self.error: BaseException | None = None


@attrs.define
class Rebuild:
    manager: ProjectionManager
    runner: Runner
    progress: Progress | None

    async def run(self) -> None:
        projection = self.runner.projection
        shadow = projection.schema + "__shadow"
        manager = self.manager
        conn = await _db.connect(manager.dsn, application_name=f"eventbus-rebuild {projection.name}")
        swap = Swap()
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote(shadow)} CASCADE")
            await prepare_schema(conn, projection, shadow)
            total = await manager.store.head()
            await self._replay(conn, projection, shadow, swap, total)  # returns once the swap is over
        except BaseException as exc:
            if self.runner.swap is swap:
                self.runner.swap = None
            handed_over = swap.reached is not None
            swap.error = exc
            swap.reached_event.set()
            if not handed_over:  # the leader will not touch the shadow: it is ours to drop
                await drop_schema(conn, shadow)
            raise
        finally:
            await conn.close()
        if swap.error is not None:
            raise ProjectionError(f"rebuild of {projection.name!r} did not swap: {swap.error}") from swap.error

    async def _replay(self, conn: _db.Connection, projection: Projection, shadow: str, swap: Swap,
                      total: int) -> None:  # fmt: skip
        runner = self.runner
        position = 0
        asked = False
        sub = self.manager.stream.subscribe(
            projection.filter,
            after=0,
            max_batch=projection.batch_size,
            buffer=projection.batch_size * 4,
            name=f"rebuild {projection.name}",
        )
        async with sub:
            while True:
                if swap.target is not None and position >= swap.target:
                    swap.reached = position
                    swap.reached_event.set()
                    await swap.done.wait()
                    return
                if not runner.leader:
                    raise ProjectionError("this process no longer leads the projection")
                if not asked and (sub.state == "live" or position >= runner.applied):
                    runner.swap = swap
                    runner.interrupt()
                    asked = True
                batch: list[EventRecord] | None = None
                with trio.move_on_after(IDLE_WAIT) as scope:
                    async with trio.open_nursery() as nursery:

                        async def wake_on_target(scope: trio.CancelScope = scope) -> None:
                            await swap.target_set.wait()
                            scope.cancel()

                        if not swap.target_set.is_set():
                            nursery.start_soon(wake_on_target)
                        try:
                            batch = await sub.__anext__()
                        except StopAsyncIteration:
                            raise ProjectionError("the bus closed during the rebuild") from None
                        nursery.cancel_scope.cancel()
                if batch:
                    position = await apply_records(conn, projection, batch, None, None, shadow)
                if sub.buffered == 0:
                    position = max(position, sub.position)
                if self.progress is not None:
                    self.progress(position, max(total, position))


async def drop_schema(conn: _db.Connection, schema: str) -> None:
    """Drop ``schema`` if the connection can, shielded and bounded; a rebuild
    that starts drops its shadow anyway."""
    with trio.move_on_after(_db.CLOSE_TIMEOUT, shield=True), contextlib.suppress(EventBusError):
        if not conn.is_closed():
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE")
