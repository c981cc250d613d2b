"""Rebuilding a projection without downtime: a shadow copy, then a swap.

The copy is built from position 0 in the schema ``projection_<name>__shadow``
while the live read model keeps serving reads and following new events. Once
the copy has caught up, it asks the leader for the swap: the leader pauses at
its checkpoint, the copy goes on until it is at or past it, and the leader
swaps the two schemas and moves the checkpoint in one transaction.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs
import trio

from .. import _db
from .._errors import ProjectionError
from .._values import EventRecord
from ._apply import apply_records, drop_schema, prepare_schema, quote
from ._definition import Projection
from ._swap import Swap

if TYPE_CHECKING:
    from ._manager import ProjectionManager, Runner

IDLE_WAIT = 0.5
"""Seconds the copy waits for a batch before it looks at the swap again."""

Progress = Callable[[int, int], object]


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
            handed_over = swap.handed_over
            swap.abandon(exc)
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
                    swap.hand_over(position)
                    await swap.wait_finished()
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
                    position = await apply_records(conn, projection, batch, None, None, shadow)
                if sub.buffered == 0:
                    position = max(position, sub.position)
                if self.progress is not None:
                    self.progress(position, max(total, position))
