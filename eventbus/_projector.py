"""Projection actors: exactly-once read models, one leader per projection.

Each started projection runs as a supervised task. It opens a connection of
its own and takes a session advisory lock named after the projection: the
process holding it is the leader, the others stand by and try again every
``LEADER_RETRY`` seconds (a dead leader's connection closes, its lock goes
with it). The leader runs ``setup``, then subscribes from its checkpoint and
applies each batch in ONE transaction that also moves the checkpoint, on the
connection that holds the lock: after any crash the read model reflects
exactly the events up to its checkpoint, and no other process can apply
them meanwhile.

A rebuild replays every event into a shadow schema while the live read model
keeps serving reads and following new events; when the shadow has caught up,
the leader pauses, lets the shadow reach its own position, and swaps the two
schemas and the checkpoint in one transaction.
"""

from __future__ import annotations

import contextlib
import hashlib
import logging
import math
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Protocol

import attrs
import trio

from . import _pg
from ._errors import DatabaseError, EventBusError, StoreUnavailable
from ._model import EventFilter, EventRecord
from ._projection import (
    NAME_PATTERN,
    HandlerFailed,
    Projection,
    ProjectionConfig,
    ProjectionError,
    ProjectionStatus,
    Transaction,
    schema_of,
)
from ._store import EventStore
from ._stream import EventStream, Subscription

LEADER_RETRY = 1.0
"""Seconds between a standby's attempts to take the lead."""

IDLE_CHECKPOINT = 0.5
"""Seconds without events after which the checkpoint moves to the stream's position."""


def _leader_key(name: str) -> int:
    """The advisory lock key of a projection's lead: 64 bits of its name's hash."""
    digest = hashlib.blake2b(f"eventbus projection {name}".encode(), digest_size=8).digest()
    return int.from_bytes(digest, "big", signed=True)


_log = logging.getLogger("eventbus.projections")

Progress = Callable[[int, int], object]


def _quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


async def _begin(conn: _pg.Connection, schema: str) -> Transaction:
    await conn.run_script(f"BEGIN; SET LOCAL search_path TO {_quote(schema)}, public")
    return Transaction(conn)


async def _rollback(conn: _pg.Connection) -> None:
    with trio.move_on_after(_pg.CLOSE_TIMEOUT, shield=True) as scope:
        if not conn.is_closed():
            try:
                await conn.execute("ROLLBACK")
            except Exception:  # the connection is in no state to be reused
                conn.terminate()
    if scope.cancelled_caught:
        conn.terminate()


async def _prepare_schema(conn: _pg.Connection, projection: Projection, schema: str) -> None:
    """Create the schema if missing and run ``setup`` in it, in one transaction."""
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_quote(schema)}")
    tx = await _begin(conn, schema)
    try:
        if projection.setup is not None:
            try:
                await projection.setup(tx)
            except StoreUnavailable:
                raise
            except Exception as exc:
                # The projection's own bug, as a handler's: supervised, never the bus's end.
                message = f"projection {projection.name}: setup raised {type(exc).__name__}: {exc}"
                raise HandlerFailed(message, None) from exc
        await conn.execute("COMMIT")
    except BaseException:
        await _rollback(conn)
        raise


class _Swap:
    """The hand-over between a rebuild's shadow and the live leader."""

    def __init__(self) -> None:
        self.target: int | None = None  # set by the leader once it has paused
        self.target_set = trio.Event()
        self.reached: int | None = None  # set by the shadow once it is there
        self.reached_event = trio.Event()
        self.done = trio.Event()
        self.error: BaseException | None = None


class _Runner:
    """One projection in this process: its supervised task and its state."""

    def __init__(self, projection: Projection, manager: ProjectionManager) -> None:
        self.projection = projection
        self._manager = manager
        self.state = "starting"
        self.applied = 0
        self.restarts = 0
        self.failures = 0
        self.dead_letters = 0
        self.last_error: str | None = None
        self.leader = False
        self.sub: Subscription | None = None
        self.changed = trio.Event()
        self.swap: _Swap | None = None
        self._wait_scope: trio.CancelScope | None = None
        self.scope = trio.CancelScope()
        self.resume = trio.Event()

    def notify(self) -> None:
        self.changed.set()
        self.changed = trio.Event()

    def position(self) -> int:
        """The position up to which the read model reflects every event."""
        sub = self.sub
        if sub is not None and self.state in ("live", "catching_up", "rebuilding"):
            stats = sub.statistics()
            if stats.buffered == 0 and not self._busy:
                return max(self.applied, stats.position)
        return self.applied

    _busy = False

    def status(self, stream_position: int) -> ProjectionStatus:
        checkpoint = self.position()
        return ProjectionStatus(
            state=self.state,
            checkpoint=checkpoint,
            lag=max(0, stream_position - checkpoint),
            restarts=self.restarts,
            last_error=self.last_error,
            dead_letters=self.dead_letters,
            leader=self.leader,
        )

    # ------------------------------------------------------------ supervision

    async def run(self) -> None:
        policy = self.projection.restart
        with self.scope:
            while True:
                try:
                    await self._lead()
                except (StoreUnavailable, DatabaseError) as exc:
                    # The database, not the handlers: retry, without counting toward failure.
                    self.last_error = str(exc)
                    self._mark_restarting()
                    await trio.sleep(policy.delay(min(self.failures + 1, 4)))
                except Exception as exc:
                    # A handler (HandlerFailed), or anything else this projection
                    # raised: its own failure, never the bus's.
                    self.last_error = str(exc) if isinstance(exc, HandlerFailed) else f"{type(exc).__name__}: {exc}"
                    self.failures += 1
                    if policy.gives_up(self.failures):
                        self.state = "failed"
                        _log.error("projection %s failed: %s", self.projection.name, self.last_error)
                        self.notify()
                        await self.resume.wait()
                        self.resume = trio.Event()
                        self.failures = 0
                        continue
                    self._mark_restarting()
                    await trio.sleep(policy.delay(self.failures))

    def _mark_restarting(self) -> None:
        self.state = "restarting"
        self.restarts += 1
        self.leader = False
        self.notify()

    async def _lead(self) -> None:
        manager = self._manager
        name = self.projection.name
        conn = await _pg.connect(manager.dsn, application_name=f"eventbus-projection {name}")
        try:
            self.state = "standby"
            self.notify()
            while not await conn.fetchval("SELECT pg_try_advisory_lock($1)", _leader_key(name)):
                applied = int(
                    await conn.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", name) or 0
                )
                if applied != self.applied:
                    self.applied = applied
                    self.notify()  # wait_until_caught_up here follows the leader
                await trio.sleep(LEADER_RETRY)
            self.leader = True
            self.state = "starting"
            await _prepare_schema(conn, self.projection, self.projection.schema)
            await conn.execute("INSERT INTO eventbus.projections (name) VALUES ($1) ON CONFLICT DO NOTHING", name)
            checkpoint = int(await conn.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", name))
            self.applied = checkpoint
            self.notify()
            while True:
                checkpoint = await self._follow(conn, checkpoint)
        finally:
            self.leader = False
            self.sub = None
            await conn.close()  # closing the session lets go of the lead

    async def _follow(self, conn: _pg.Connection, checkpoint: int) -> int:
        """Apply batches from ``checkpoint`` on; return the checkpoint after a swap."""
        projection = self.projection
        manager = self._manager
        sub = manager.stream.subscribe(
            projection.filter,
            after=checkpoint,
            max_batch=projection.batch_size,
            buffer=projection.batch_size * 4,
            name=f"projection {projection.name}",
        )
        async with sub:
            self.sub = sub
            sub.on_move = self.notify
            while True:
                if self.swap is not None:
                    return await self._swap(conn, checkpoint)
                state = "rebuilding" if manager.rebuilding(projection.name) else _state_of(sub)
                if state != self.state:
                    self.state = state
                    self.notify()
                batch: list[EventRecord] | None = None
                with trio.move_on_after(IDLE_CHECKPOINT) as self._wait_scope:
                    try:
                        batch = await sub.__anext__()
                    except StopAsyncIteration:
                        await trio.sleep_forever()  # the bus is closing: cancellation follows
                self._wait_scope = None
                if batch is None:
                    position = sub.statistics().position
                    if position > checkpoint and self.swap is None:
                        # Nothing to apply up to there: the checkpoint may move on.
                        await conn.execute("SELECT eventbus.advance_checkpoint($1, $2, $3)",
                                           projection.name, checkpoint, position)  # fmt: skip
                        checkpoint = self.applied = position
                        self.notify()
                    continue
                self._busy = True
                try:
                    checkpoint = await apply_records(conn, projection, batch, checkpoint, self)
                finally:
                    self._busy = False
                self.applied = checkpoint
                self.failures = 0
                self.notify()

    def interrupt(self) -> None:
        """Wake the apply loop from its wait (a swap is asked for)."""
        if self._wait_scope is not None:
            self._wait_scope.cancel()

    async def _swap(self, conn: _pg.Connection, checkpoint: int) -> int:
        swap = self.swap
        assert swap is not None
        self.swap = None
        try:
            swap.target = checkpoint
            swap.target_set.set()
            await swap.reached_event.wait()
            if swap.error is not None or swap.reached is None:
                return checkpoint
            live = _quote(self.projection.schema)
            old = _quote(self.projection.schema + "__old")
            shadow = _quote(self.projection.schema + "__shadow")
            try:
                await conn.run_script(
                    f"BEGIN; DROP SCHEMA IF EXISTS {old} CASCADE; ALTER SCHEMA {live} RENAME TO {old}; "
                    f"ALTER SCHEMA {shadow} RENAME TO {live}; DROP SCHEMA {old} CASCADE"
                )
                await conn.execute("SELECT eventbus.advance_checkpoint($1, $2, $3)",
                                   self.projection.name, checkpoint, swap.reached)  # fmt: skip
                await conn.execute("COMMIT")
            except BaseException as exc:
                await _rollback(conn)
                swap.error = exc
                raise
            self.applied = swap.reached
            return swap.reached
        finally:
            swap.done.set()


def _state_of(sub: Subscription) -> str:
    return "live" if sub.state == "live" else "catching_up"


async def apply_batch(
    conn: _pg.Connection,
    projection: Projection,
    batch: list[EventRecord],
    checkpoint: int | None,
    runner: _Runner | None,
    schema: str | None = None,
) -> int:
    """Apply ``batch`` in one transaction with the checkpoint; return the new one.

    ``checkpoint`` None applies without a checkpoint (a rebuild's shadow). A
    handler that raises rolls the transaction back; with ``on_error="skip"``
    the events before it are applied again, the failing one goes to the
    dead-letter table, and the rest follow in a new transaction.

    Raises:
        HandlerFailed: a handler raised and the policy is ``retry``.
    """
    schema = schema or projection.schema
    start = 0
    while start < len(batch):
        tx = await _begin(conn, schema)
        try:
            failed = await _run_handlers(tx, projection, batch, start, len(batch))
            if failed is None:
                last = batch[-1].sequence_number
                if checkpoint is not None:
                    await conn.execute("SELECT eventbus.advance_checkpoint($1, $2, $3)", projection.name,
                                       checkpoint, last)  # fmt: skip
                await conn.execute("COMMIT")
                return last
        except BaseException:
            await _rollback(conn)
            raise
        index, error = failed
        await _rollback(conn)
        record = batch[index]
        message = f"projection {projection.name}: handler for {record.event_type} at position " \
                  f"{record.sequence_number} raised {type(error).__name__}: {error}"  # fmt: skip
        if isinstance(error, StoreUnavailable):
            raise error
        if projection.on_error == "retry":
            raise HandlerFailed(message, record) from error
        # skip: the events before it again, the poison event to the dead letters.
        tx = await _begin(conn, schema)
        try:
            again = await _run_handlers(tx, projection, batch, start, index)
            if again is not None:
                _fail_on_replay(projection, batch, again)
            await conn.execute(
                "INSERT INTO eventbus.dead_letters (projection, sequence_number, event_id, event_type, payload, error)"
                " VALUES ($1, $2, $3, $4, $5, $6)",
                projection.name, record.sequence_number, record.event_id, record.event_type,
                dict(record.payload), message,
            )  # fmt: skip
            if checkpoint is not None:
                await conn.execute("SELECT eventbus.advance_checkpoint($1, $2, $3)", projection.name,
                                   checkpoint, record.sequence_number)  # fmt: skip
                checkpoint = record.sequence_number
            await conn.execute("COMMIT")
        except BaseException:
            await _rollback(conn)
            raise
        _log.warning("%s; sent to the dead letters", message)
        if runner is not None:
            runner.dead_letters += 1
        start = index + 1
    return batch[-1].sequence_number


def _fail_on_replay(projection: Projection, batch: list[EventRecord], failure: tuple[int, BaseException]) -> None:
    index, error = failure
    raise HandlerFailed(
        f"projection {projection.name}: a handler failed on events it had just applied: {error}", batch[index]
    ) from error


async def _run_handlers(
    tx: Transaction, projection: Projection, batch: list[EventRecord], start: int, stop: int
) -> tuple[int, BaseException] | None:
    """Run the handlers on ``batch[start:stop]``; the index and error of the first failure."""
    if projection.batch_handler is not None and start < stop:
        try:
            await projection.batch_handler(tx, batch[start:stop])
        except Exception as exc:
            if stop - start == 1:
                return start, exc
            # Which event? Find it one by one, each in its own attempt.
            raise _Bisect from exc
    handlers = projection.handlers
    for index in range(start, stop):
        record = batch[index]
        handler = handlers.get(record.event_type)
        if handler is None:
            continue
        try:
            await handler(tx, record)
        except Exception as exc:
            return index, exc
    return None


class _Bisect(Exception):
    """A batch handler failed on a batch of several events."""


async def apply_records(
    conn: _pg.Connection,
    projection: Projection,
    batch: list[EventRecord],
    checkpoint: int | None,
    runner: _Runner | None,
    schema: str | None = None,
) -> int:
    """:func:`apply_batch`, going one event at a time when a batch handler fails."""
    try:
        return await apply_batch(conn, projection, batch, checkpoint, runner, schema)
    except _Bisect:
        pass
    for record in batch:
        checkpoint = await apply_batch(conn, projection, [record], checkpoint, runner, schema)
    return batch[-1].sequence_number


class ProjectionManager:
    """``bus.projections``: start, watch, wait for and rebuild projections."""

    def __init__(self, dsn: str, store: EventStore, stream: EventStream, nursery: trio.Nursery) -> None:
        self.dsn = dsn
        self.store = store
        self.stream = stream
        self._nursery = nursery
        self._runners: dict[str, _Runner] = {}
        self._rebuilding: set[str] = set()
        self._listeners = 0

    def rebuilding(self, name: str) -> bool:
        return name in self._rebuilding

    def _runner(self, name: str) -> _Runner:
        try:
            return self._runners[name]
        except KeyError:
            raise ProjectionError(f"no projection named {name!r} was started here") from None

    async def start(self, projection: Projection) -> None:
        """Start ``projection`` as a supervised task in the bus's nursery.

        Returns at once; the projection then takes the lead (or stands by) and
        catches up on its own. Never blocks beyond a checkpoint.

        Raises:
            ProjectionError: a projection of that name was started already, or
                ``projection`` is not a Projection.
        """
        await trio.lowlevel.checkpoint()
        if not isinstance(projection, Projection):
            raise ProjectionError(f"start takes a Projection, not {projection!r}")
        if projection.name in self._runners:
            raise ProjectionError(f"projection {projection.name!r} is started already")
        runner = _Runner(projection, self)
        self._runners[projection.name] = runner
        self._nursery.start_soon(runner.run, name=f"projection {projection.name}")

    async def stop(self, name: str) -> None:
        """Stop projection ``name`` here (its state stays in the database)."""
        runner = self._runner(name)
        runner.scope.cancel()
        runner.state = "stopped"
        del self._runners[name]
        await trio.lowlevel.checkpoint()

    def restart(self, name: str) -> None:
        """Let a ``failed`` projection try again (after a fix to its data).

        Does nothing to a projection that has not failed.
        """
        runner = self._runner(name)
        if runner.state != "failed":
            return  # a resume kept for later would skip its next "failed"
        # Restarting from now on, not once its task runs: a wait_until_caught_up
        # right after this call must not see the old failure.
        runner._mark_restarting()
        runner.resume.set()

    def status(self) -> dict[str, ProjectionStatus]:
        """Every projection started here, by name; never blocks."""
        position = self.stream.position
        return {name: runner.status(position) for name, runner in self._runners.items()}

    async def wait_until_caught_up(self, name: str, timeout: float | None = None) -> None:
        """Block until projection ``name`` reflects every event committed
        before the call.

        Raises:
            ProjectionError: unknown name, or the projection is ``failed``.
            TimeoutError: not caught up within ``timeout`` seconds.
        """
        runner = self._runner(name)
        target = await self.store.head()
        with trio.fail_after(math.inf if timeout is None else timeout):
            while runner.position() < target:
                if runner.state == "failed":
                    raise ProjectionError(f"projection {name!r} failed: {runner.last_error}")
                await runner.changed.wait()

    @asynccontextmanager
    async def reader(self, name: str) -> AsyncIterator[Transaction]:
        """A read-only transaction on projection ``name``'s schema, for queries
        with unqualified table names. Waits for a free pooled connection.

        Raises:
            ProjectionError: ``name`` is not a projection name.
        """
        if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
            raise ProjectionError(f"{name!r} is not a projection name")
        schema = schema_of(name)
        async with self.store.pool.acquire() as conn:
            await conn.run_script(f"BEGIN READ ONLY; SET LOCAL search_path TO {_quote(schema)}, public")
            try:
                yield Transaction(conn)
            finally:
                await _rollback(conn)

    async def rebuild(self, name: str, progress: Progress | None = None) -> None:
        """Rebuild projection ``name`` from position 0, without downtime.

        A fresh copy is built in a shadow schema while the live read model
        keeps serving reads and following new events; when the copy has
        caught up, the two are swapped with the checkpoint in one transaction.
        ``progress(done, total)`` is called after each batch, in positions.
        Blocks until the swap; cancelling it abandons the copy.

        Raises:
            ProjectionError: unknown name, a rebuild already running, or this
                process does not lead the projection.
            HandlerFailed: a handler failed on the copy (the live model stays).
        """
        runner = self._runner(name)
        if name in self._rebuilding:
            raise ProjectionError(f"projection {name!r} is being rebuilt already")
        if not runner.leader:
            raise ProjectionError(f"projection {name!r} is led by another process (or not yet): rebuild it there")
        self._rebuilding.add(name)
        try:
            await _Rebuild(self, runner, progress).run()
        finally:
            self._rebuilding.discard(name)
            if runner.state == "rebuilding":
                runner.state = "live"


@attrs.define
class _Rebuild:
    manager: ProjectionManager
    runner: _Runner
    progress: Progress | None

    async def run(self) -> None:
        projection = self.runner.projection
        shadow = projection.schema + "__shadow"
        manager = self.manager
        conn = await _pg.connect(manager.dsn, application_name=f"eventbus-rebuild {projection.name}")
        swap = _Swap()
        try:
            await conn.execute(f"DROP SCHEMA IF EXISTS {_quote(shadow)} CASCADE")
            await _prepare_schema(conn, projection, shadow)
            total = await manager.store.head()
            await self._replay(conn, projection, shadow, swap, total)
        except BaseException as exc:
            swap.error = exc
            swap.reached_event.set()
            with trio.CancelScope(shield=True):
                if not conn.is_closed() and not swap.done.is_set():
                    with contextlib.suppress(EventBusError):
                        await conn.execute(f"DROP SCHEMA IF EXISTS {_quote(shadow)} CASCADE")
            raise
        finally:
            await conn.close()
        await swap.done.wait()
        if swap.error is not None:
            raise ProjectionError(f"rebuild of {projection.name!r} did not swap: {swap.error}") from swap.error

    async def _replay(self, conn: _pg.Connection, projection: Projection, shadow: str, swap: _Swap,
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
                if not asked and (sub.state == "live" or position >= runner.applied):
                    runner.swap = swap
                    runner.interrupt()
                    asked = True
                batch: list[EventRecord] | None = None
                with trio.move_on_after(IDLE_CHECKPOINT) as scope:
                    async with trio.open_nursery() as nursery:

                        async def wake_on_target(scope: trio.CancelScope = scope) -> None:
                            await swap.target_set.wait()
                            scope.cancel()

                        nursery.start_soon(wake_on_target)
                        try:
                            batch = await sub.__anext__()
                        except StopAsyncIteration:
                            raise ProjectionError("the bus closed during the rebuild") from None
                        nursery.cancel_scope.cancel()
                if batch:
                    position = await apply_records(conn, projection, batch, None, None, shadow)
                stats = sub.statistics()
                if stats.buffered == 0:
                    position = max(position, stats.position)
                if self.progress is not None:
                    self.progress(position, max(total, position))


# ------------------------------------------------------------------ the original's style


class HasProjections(Protocol):
    """Anything with a projection manager: a bus."""

    @property
    def projections(self) -> ProjectionManager: ...


async def start_projection_listener(bus: HasProjections, config: ProjectionConfig) -> Callable[[], Awaitable[None]]:
    """Run the original style's handlers on live events; return ``stop``.

    Each event of ``config.event_types`` committed from now on is passed to
    its handler, in order, once, in this process; a handler that raises is
    logged and the listener goes on. For read models that must survive
    restarts, use :class:`Projection` instead. ``await stop()`` ends it.
    """
    if not isinstance(config, ProjectionConfig):
        raise ProjectionError(f"start_projection_listener takes a ProjectionConfig, not {config!r}")
    manager = bus.projections
    sub = manager.stream.subscribe(EventFilter(list(config.event_types)), name="listener")
    await sub.__aenter__()
    scope = trio.CancelScope()
    finished = trio.Event()

    async def listen() -> None:
        try:
            with scope:
                async for batch in sub:
                    for record in batch:
                        handler = config.handlers.get(record.event_type)
                        if handler is None:
                            continue
                        try:
                            await handler(record)
                        except Exception:
                            _log.exception("listener handler for %s failed", record.event_type)
        finally:
            sub.close()
            finished.set()

    manager._nursery.start_soon(listen)

    async def stop() -> None:
        scope.cancel()
        await finished.wait()

    return stop
