"""Applying a batch of events to a read model: one transaction, with the checkpoint.

A handler that raises rolls the transaction back. With ``on_error="skip"`` the
events before it are applied again, the failing one goes to
``eventbus.dead_letters``, and the rest follow in a new transaction; a batch
handler that fails is retried one event at a time to find the event at fault.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable

import attrs
import trio

from .. import _db
from .._db import rollback
from .._errors import EventBusError, HandlerFailed, StoreUnavailable
from .._values import EventRecord
from ._definition import Projection, Transaction

_log = logging.getLogger("eventbus.projections")


@attrs.frozen
class _Failure:
    """The first handler that raised in a run over a batch: where, and what."""

    index: int
    error: BaseException


@attrs.frozen
class _Resume:
    """Where a batch goes on one event at a time after a batch handler failed:
    the index of the first event not yet applied, and the checkpoint committed
    with what was (None: a shadow, which has no checkpoint)."""

    start: int
    checkpoint: int | None


def quote(identifier: str) -> str:
    return '"' + identifier.replace('"', '""') + '"'


def literal(text: str) -> str:
    """``text`` as an SQL string literal (standard_conforming_strings is on)."""
    return "'" + text.replace("'", "''") + "'"


def commit_sql(name: str, checkpoint: int | None, new: int) -> str:
    """Move projection ``name``'s checkpoint from ``checkpoint`` to ``new`` and
    commit, in one round trip (``checkpoint`` None: a shadow, which only commits)."""
    if checkpoint is None:
        return "COMMIT"
    return f"SELECT eventbus.advance_checkpoint({literal(name)}, {int(checkpoint)}, {int(new)}); COMMIT"


async def begin(conn: _db.Connection, schema: str) -> Transaction:
    await conn.run_script(f"BEGIN; SET LOCAL search_path TO {quote(schema)}, public")
    return Transaction(conn)


async def prepare_schema(conn: _db.Connection, projection: Projection, schema: str) -> None:
    """Create the schema if missing and run ``setup`` in it, in one transaction."""
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
    tx = await begin(conn, schema)
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
        await rollback(conn)
        raise


async def drop_schema(conn: _db.Connection, schema: str) -> None:
    """Drop ``schema`` if the connection can, shielded and bounded; a rebuild
    that starts drops its shadow anyway."""
    with trio.move_on_after(_db.CLOSE_TIMEOUT, shield=True), contextlib.suppress(EventBusError):
        if not conn.is_closed():
            await conn.execute(f"DROP SCHEMA IF EXISTS {quote(schema)} CASCADE")


async def apply_batch(
    conn: _db.Connection,
    projection: Projection,
    batch: list[EventRecord],
    checkpoint: int | None,
    on_dead_letter: Callable[[], object] | None,
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
        tx = await begin(conn, schema)
        try:
            failed = await _run_handlers(tx, projection, batch, start, len(batch))
            if failed is None:
                last = batch[-1].sequence_number
                await conn.run_script(commit_sql(projection.name, checkpoint, last))
                return last
        except BaseException as exc:
            await rollback(conn)
            if isinstance(exc, _Bisect):  # what is committed already stays: go on from here
                exc.resume = _Resume(start, checkpoint)
            raise
        index, error = failed.index, failed.error
        await rollback(conn)
        record = batch[index]
        message = f"projection {projection.name}: handler for {record.event_type} at position " \
                  f"{record.sequence_number} raised {type(error).__name__}: {error}"  # fmt: skip
        if isinstance(error, StoreUnavailable):
            raise error
        if projection.on_error == "retry":
            raise HandlerFailed(message, record) from error
        # skip: the events before it again, the poison event to the dead letters.
        tx = await begin(conn, schema)
        try:
            again = await _run_handlers(tx, projection, batch, start, index)
            if again is not None:
                _fail_on_replay(projection, batch, again)
            await conn.execute(  # once per event: a rebuild meets the same poison again
                "INSERT INTO eventbus.dead_letters (projection, sequence_number, event_id, event_type, payload, error)"
                " SELECT $1, $2, $3, $4, $5, $6 WHERE NOT EXISTS (SELECT FROM eventbus.dead_letters"
                " WHERE projection = $1 AND sequence_number = $2)",
                projection.name, record.sequence_number, record.event_id, record.event_type,
                dict(record.payload), message,
            )  # fmt: skip
            await conn.run_script(commit_sql(projection.name, checkpoint, record.sequence_number))
            if checkpoint is not None:
                checkpoint = record.sequence_number
        except BaseException as exc:
            await rollback(conn)
            if isinstance(exc, _Bisect):  # what is committed already stays: go on from here
                exc.resume = _Resume(start, checkpoint)
            raise
        _log.warning("%s; sent to the dead letters", message)
        if on_dead_letter is not None:
            on_dead_letter()
        start = index + 1
    return batch[-1].sequence_number


def _fail_on_replay(projection: Projection, batch: list[EventRecord], failure: _Failure) -> None:
    raise HandlerFailed(
        f"projection {projection.name}: a handler failed on events it had just applied: {failure.error}",
        batch[failure.index],
    ) from failure.error


async def _run_handlers(
    tx: Transaction, projection: Projection, batch: list[EventRecord], start: int, stop: int
) -> _Failure | None:
    """Run the handlers on ``batch[start:stop]``; the first failure, if any."""
    if projection.batch_handler is not None and start < stop:
        try:
            await projection.batch_handler(tx, batch[start:stop])
        except Exception as exc:
            if stop - start == 1:
                return _Failure(start, exc)
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
            return _Failure(index, exc)
    return None


class _Bisect(Exception):
    """A batch handler failed on a batch of several events; ``resume`` says
    where to go on one event at a time."""

    resume: _Resume = _Resume(0, None)


async def apply_records(
    conn: _db.Connection,
    projection: Projection,
    batch: list[EventRecord],
    checkpoint: int | None,
    on_dead_letter: Callable[[], object] | None,
    schema: str | None = None,
) -> int:
    """:func:`apply_batch`, going one event at a time when a batch handler fails."""
    try:
        return await apply_batch(conn, projection, batch, checkpoint, on_dead_letter, schema)
    except _Bisect as bisect:
        start, checkpoint = bisect.resume.start, bisect.resume.checkpoint
    for record in batch[start:]:
        position = await apply_batch(conn, projection, [record], checkpoint, on_dead_letter, schema)
        if checkpoint is not None:  # None: a shadow, which has no checkpoint
            checkpoint = position
    return batch[-1].sequence_number
