"""The swap: how a rebuild's shadow copy takes the live read model's place.

Two tasks meet in one :class:`Swap`: the rebuild, which builds the copy in
its shadow schema (``_shadow.py``) and asks for the swap, and the projection's
leader, which pauses at its checkpoint, waits for the copy to reach it, and
swaps the two schemas and moves the checkpoint in one transaction
(:func:`swap_in`). The ``Swap`` holds the state of the hand-over; each side
calls only its own methods on it.

Whoever holds the shadow drops it when the swap does not happen: the rebuild
until it hands the copy over, the leader from then on.
"""

from __future__ import annotations

import logging

import trio

from .. import _db
from .._db import rollback
from .._errors import DatabaseError, ProjectionError
from ._apply import commit_sql, literal, quote
from ._definition import Projection
from ._shadow import NOT_THE_COPY, Shadow, adopt_dead_letters_sql, drop_shadow

SWAP_LOCK_TIMEOUT = 1.0
"""Seconds a rebuild's swap waits for the live tables' locks before it gives way."""

SWAP_ATTEMPTS = 10
"""How many times a swap that gave way (a lock timeout, a deadlock) is tried."""

LOCK_CONFLICTS = frozenset({"40P01", "55P03"})  # deadlock_detected, lock_not_available

_log = logging.getLogger("eventbus.projections")


class Swap:
    """The hand-over between a rebuild's shadow copy and the live leader.

    The rebuild asks the leader for the swap; the leader :meth:`pause_at` its
    checkpoint; the rebuild goes on until its copy is at or past it and
    :meth:`hand_over` it (or :meth:`abandon` the swap); the leader swaps it
    in, or :meth:`fail` it, and :meth:`finish` ends the swap. ``error`` is
    why it did not happen, from either side (the first reason recorded).
    ``shadow`` is the copy's schema, as the rebuild made it.
    """

    def __init__(self, shadow: Shadow) -> None:
        self.shadow = shadow
        self.left_out: frozenset[int] = frozenset()  # the dead letters the copy leaves out (see _rebuild.py)
        self._target: int | None = None
        self._target_set = trio.Event()
        self._reached: int | None = None
        self._reached_event = trio.Event()
        self._done = trio.Event()
        self._error: BaseException | None = None

    @property
    def target(self) -> int | None:
        """The leader's checkpoint once it has paused, else None."""
        return self._target

    @property
    def handed_over(self) -> bool:
        """Whether the copy was handed over: the shadow is then the leader's."""
        return self._reached is not None

    @property
    def error(self) -> BaseException | None:
        """Why the swap did not happen (so far), or None."""
        return self._error

    # ------------------------------------------------------------ the rebuild's side

    async def wait_target(self) -> None:
        """Block until the leader has paused (:attr:`target` is set)."""
        await self._target_set.wait()

    def hand_over(self, position: int) -> None:
        """The copy reflects every event up to ``position`` (at or past the
        target): the leader may swap it in. Never blocks."""
        self._reached = position
        self._reached_event.set()

    async def wait_finished(self) -> None:
        """Block until the leader has swapped the copy in, or given up."""
        await self._done.wait()

    def abandon(self, error: BaseException) -> None:
        """The rebuild stops (``error`` says why); a leader waiting for the
        copy stops waiting. Never blocks."""
        self.fail(error)
        self._reached_event.set()

    # ------------------------------------------------------------ the leader's side

    def pause_at(self, checkpoint: int) -> None:
        """The leader has paused at ``checkpoint``: the copy is to reach it."""
        self._target = checkpoint
        self._target_set.set()

    async def wait_copy(self) -> int | None:
        """Block until the rebuild hands the copy over or abandons the swap;
        the position the copy reached, or None when abandoned."""
        await self._reached_event.wait()
        return self._reached if self._error is None else None

    def fail(self, error: BaseException) -> None:
        """Record why the swap does not happen (unless a reason is recorded
        already). Never blocks."""
        if self._error is None:
            self._error = error

    def finish(self) -> None:
        """End the swap, swapped or not: the rebuild wakes. Never blocks."""
        self._done.set()


async def swap_in(conn: _db.Connection, projection: Projection, checkpoint: int, swap: Swap) -> int | None:
    """The leader's part of ``swap``, paused at ``checkpoint`` on ``conn``.

    Blocks until the copy is handed over, then swaps it in (see
    :func:`_swap_schemas`). Returns the new checkpoint, or None when nothing
    was swapped. Once the copy is handed over the shadow schema is this
    leader's: whatever ends the swap without swapping it in, cancellation
    included, drops it (shielded, bounded).
    """
    swapped: int | None = None
    try:
        swap.pause_at(checkpoint)
        reached = await swap.wait_copy()
        if reached is None:
            return None
        if await _swap_schemas(conn, projection, checkpoint, reached, swap):
            swapped = reached
        return swapped
    finally:
        if swapped is None:
            swap.fail(ProjectionError("the live projection stopped before the swap"))
            if swap.handed_over:
                await drop_shadow(conn, swap.shadow)
        swap.finish()


async def _swap_schemas(conn: _db.Connection, projection: Projection, checkpoint: int, reached: int,
                        swap: Swap) -> bool:  # fmt: skip
    """Swap the live and shadow schemas and move the checkpoint, in one
    transaction: the live schema is dropped and the copy, if it is still the
    schema the rebuild made (by oid), renamed in its place; no other schema
    is touched. The live tables are locked first, in the order readers
    lock them; a lock that is not granted within ``SWAP_LOCK_TIMEOUT``
    (a long reader) or a deadlock with a session outside ``reader`` rolls
    the swap back, and it is tried again up to ``SWAP_ATTEMPTS`` times.
    Returns whether it swapped."""
    schema = projection.schema
    live, shadow = quote(schema), quote(swap.shadow.schema)
    attempt = 0
    while True:
        attempt += 1
        if swap.error is not None:  # the rebuild was cancelled meanwhile
            return False
        try:
            await conn.run_script(
                f"BEGIN; SET LOCAL lock_timeout = '{int(SWAP_LOCK_TIMEOUT * 1000)}ms';"
                f" SELECT eventbus.lock_read_model({literal(schema)}, true); {swap.shadow.check_sql()};"
                f" DROP SCHEMA IF EXISTS {live} CASCADE; ALTER SCHEMA {shadow} RENAME TO {live};"
                f" COMMENT ON SCHEMA {live} IS NULL;"
                f" {adopt_dead_letters_sql(swap.shadow, projection.name, swap.left_out, reached)};"
                f" {commit_sql(projection.name, checkpoint, reached)}"
            )
            return True
        except DatabaseError as exc:
            await rollback(conn)
            if exc.sqlstate == NOT_THE_COPY:  # the rebuild fails; the live model goes on
                swap.fail(ProjectionError(str(exc)))
                return False
            if exc.sqlstate not in LOCK_CONFLICTS:
                swap.fail(exc)
                raise
            if attempt == SWAP_ATTEMPTS:  # the rebuild fails; the live model goes on
                swap.fail(exc)
                return False
            _log.info("projection %s: swap attempt %d gave way (%s); trying again",
                      projection.name, attempt, exc.sqlstate)  # fmt: skip
        except BaseException as exc:
            await rollback(conn)
            swap.fail(exc)
            raise
        await trio.sleep(min(SWAP_LOCK_TIMEOUT, 0.05 * 2 ** (attempt - 1)))  # others' turn
