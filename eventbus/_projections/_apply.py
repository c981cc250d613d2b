"""Applying a batch of events to a read model: one transaction, with the checkpoint.

A handler that raises rolls the transaction back. With ``on_error="skip"`` the
events before it are applied again, the failing one goes to
``eventbus.dead_letters``, and the rest follow in a new transaction; a batch
handler that fails is retried one event at a time to find the event at fault.
A commit that fails (a handler caught a database error and went on, so the
transaction is aborted) is a failure of the batch as a handler's is, and so
is a batch that passes the projection's ``handler_timeout``.
"""

from __future__ import annotations

import contextvars
import json
import logging
import math
from collections.abc import Callable, Mapping
from typing import Any

import attrs
import trio

from .. import _db
from .._db import rollback
from .._errors import DatabaseError, HandlerFailed, StoreUnavailable
from .._values import EventRecord
from ._definition import Projection, Transaction

_log = logging.getLogger("eventbus.projections")

_handling: contextvars.ContextVar[EventRecord | None] = contextvars.ContextVar("eventbus_handling", default=None)
"""The event whose handler runs now in this task (None: none, or a batch handler on several)."""


@attrs.frozen
class _Failure:
    """The first handler that raised in a run over a batch: where, and what
    (``commit``: not a handler but the commit after it)."""

    index: int
    error: BaseException
    commit: bool = False


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


Fence = Callable[[int, int], str]
"""``(checkpoint, new) -> SQL`` that moves a partition's checkpoint in the
batch's transaction, or fails it when the process lost the partition's lease
(``_leases.py``): it replaces the projection's own checkpoint."""


def commit_sql(name: str, checkpoint: int | None, new: int, fence: Fence | None = None) -> str:
    """Move projection ``name``'s checkpoint from ``checkpoint`` to ``new`` and
    commit, in one round trip (``checkpoint`` None: a shadow, which only commits;
    ``fence``: a partition's checkpoint instead of the projection's)."""
    if checkpoint is None:
        return "COMMIT"
    if fence is not None:
        return f"{fence(checkpoint, new)}; COMMIT"
    return f"SELECT eventbus.advance_checkpoint({literal(name)}, {int(checkpoint)}, {int(new)}); COMMIT"


DEAD_LETTER_SQL = (  # once per event (and copy: see schema.sql): a rebuild meets the same poison again
    "INSERT INTO eventbus.dead_letters (projection, sequence_number, event_id, event_type, payload, error, copy_of)"
    " SELECT $1, $2, $3, $4, $5, $6, $7"
    " WHERE NOT EXISTS (SELECT FROM eventbus.dead_letters WHERE projection = $1 AND sequence_number = $2"
    " AND copy_of IS NOT DISTINCT FROM $7)"
)


def copy_of(projection: Projection, schema: str | None) -> str | None:
    """The copy a batch applied in ``schema`` belongs to (its dead letters'
    ``copy_of``); None for the read model's own schema."""
    return schema if schema is not None and schema != projection.schema else None


async def begin(conn: _db.Connection, schema: str) -> Transaction:
    """Open a transaction on ``conn`` with ``schema`` first on its search path.
    Interrupted (cancelled on its way back, say), it rolls back (shielded,
    bounded): no transaction is left open that the caller does not know of."""
    try:
        await conn.run_script(f"BEGIN; SET LOCAL search_path TO {quote(schema)}, public")
    except BaseException:
        await rollback(conn)
        raise
    return Transaction(conn)


_TABLES_SQL = """
SELECT c.relname FROM pg_class c JOIN pg_namespace n ON n.oid = c.relnamespace
WHERE n.nspname = $1 AND c.relkind IN ('r', 'p', 'v', 'm') ORDER BY c.relname COLLATE "C"
"""


async def prepare_schema(
    conn: _db.Connection, projection: Projection, schema: str, *, checkpoint: int = 0
) -> list[str]:
    """Create the schema if missing and run ``setup`` in it, in one transaction.

    Returns the tables ``setup`` had to create although ``checkpoint`` says
    the read model has applied events: its tables vanished. Then nothing is
    committed, and the caller must not carry on over an empty model.

    Raises:
        HandlerFailed: ``setup`` raised, or its transaction was aborted.
    """
    await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {quote(schema)}")
    tx = await begin(conn, schema)
    try:
        before = {row[0] for row in await conn.fetch(_TABLES_SQL, schema)} if checkpoint else set()
        if projection.setup is not None:
            try:
                await projection.setup(tx)
            except StoreUnavailable:
                raise
            except Exception as exc:
                # The projection's own bug, as a handler's: supervised, never the bus's end.
                message = f"projection {projection.name}: setup raised {type(exc).__name__}: {exc}"
                raise HandlerFailed(message, None) from exc
            finally:
                tx._end()
        if checkpoint:
            vanished = [row[0] for row in await conn.fetch(_TABLES_SQL, schema) if row[0] not in before]
            if vanished:
                await rollback(conn)
                return vanished
        tag = await conn.execute("COMMIT")
    except BaseException:
        await rollback(conn)
        raise
    if tag != "COMMIT":  # an aborted transaction's COMMIT ends in ROLLBACK
        message = f"projection {projection.name}: setup's transaction was aborted (a database error caught?)"
        raise HandlerFailed(message, None)
    return []


async def commit(conn: _db.Connection, name: str, checkpoint: int | None, new: int, fence: Fence | None = None) -> None:
    """Commit a batch's transaction, moving the checkpoint (see :func:`commit_sql`).

    Raises:
        DatabaseError: the commit failed; the transaction is aborted, for the
            caller to roll back. An aborted transaction's plain ``COMMIT``
            (a shadow's) would end in a silent ROLLBACK: it raises too.
    """
    if checkpoint is not None:
        await conn.run_script(commit_sql(name, checkpoint, new, fence))
    elif (tag := await conn.execute("COMMIT")) != "COMMIT":
        raise DatabaseError(f"the transaction was aborted: COMMIT ended in {tag}", sqlstate="25P02")


async def apply_batch(
    conn: _db.Connection,
    projection: Projection,
    batch: list[EventRecord],
    checkpoint: int | None,
    on_dead_letter: Callable[[], object] | None,
    schema: str | None = None,
    fence: Fence | None = None,
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
            try:
                failed = await _run_handlers(tx, projection, batch, start, len(batch))
            finally:
                tx._end()
            if failed is None:
                last = batch[-1].sequence_number
                try:
                    await commit(conn, projection.name, checkpoint, last, fence)
                    return last
                except DatabaseError as exc:
                    failed = _commit_failed(projection, batch, start, exc)
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
        if failed.commit:
            message = f"projection {projection.name}: the commit after the handler for {record.event_type} " \
                      f"at position {record.sequence_number} failed: {error} (a database error caught?)"  # fmt: skip
        if isinstance(error, StoreUnavailable):
            raise error
        if projection.on_error == "retry":
            raise HandlerFailed(message, record) from error
        # skip: the events before it again, the poison event to the dead letters.
        tx = await begin(conn, schema)
        try:
            try:
                again = await _run_handlers(tx, projection, batch, start, index)
            finally:
                tx._end()
            if again is not None:
                _fail_on_replay(projection, batch, again)
            try:
                await conn.execute(DEAD_LETTER_SQL, projection.name, record.sequence_number, record.event_id,
                                   record.event_type, _payload_text(record.payload), message,
                                   copy_of(projection, schema))  # fmt: skip
                await commit(conn, projection.name, checkpoint, record.sequence_number, fence)
            except DatabaseError as exc:
                if index == start:
                    raise
                # A handler before it aborted the transaction without raising (and
                # the poison was blamed for it): find it one event at a time.
                raise _Bisect from exc
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


def _commit_failed(projection: Projection, batch: list[EventRecord], start: int, exc: DatabaseError) -> _Failure:
    """The commit of ``batch[start:]`` failed: a failure of its one event, or
    of the batch (with ``skip``: go one event at a time to find the event)."""
    if len(batch) - start == 1:
        return _Failure(start, exc, commit=True)
    if projection.on_error == "skip":
        raise _Bisect from exc
    first, last = batch[start].sequence_number, batch[-1].sequence_number
    raise HandlerFailed(
        f"projection {projection.name}: the commit of the batch at positions {first} to {last} failed: {exc}"
        " (a database error caught?)",
        None,
    ) from exc


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
        _handling.set(batch[start] if stop - start == 1 else None)
        try:
            await projection.batch_handler(tx, batch[start:stop])
        except Exception as exc:
            if stop - start == 1:
                return _Failure(start, exc)
            # Which event? Find it one by one, each in its own attempt.
            raise _Bisect from exc
        if tx._ended_by_handler():
            raise _ended(projection, batch[start:stop])
        _handling.set(None)
    handlers = projection.handlers
    for index in range(start, stop):
        record = batch[index]
        handler = handlers.get(record.event_type)
        if handler is None:
            continue
        _handling.set(record)
        try:
            await handler(tx, record)
        except Exception as exc:
            return _Failure(index, exc)
        if tx._ended_by_handler():
            raise _ended(projection, [record])
    _handling.set(None)
    return None


def _ended(projection: Projection, records: list[EventRecord]) -> HandlerFailed:
    """A handler ended its batch's transaction (COMMIT, ROLLBACK): what it
    wrote before may be committed, without the checkpoint, so applying the
    batch again could apply events twice. The projection fails at once."""
    record = records[0] if len(records) == 1 else None
    where = (
        f"the handler for {record.event_type} at position {record.sequence_number}"
        if record is not None
        else f"the batch handler for positions {records[0].sequence_number} to {records[-1].sequence_number}"
    )
    return HandlerFailed(
        f"projection {projection.name}: {where} ended the batch's transaction itself (COMMIT or ROLLBACK on its"
        " transaction): what it wrote before may be committed without the checkpoint, so the batch is not tried"
        " again. Take the COMMIT or ROLLBACK out of the handler, then rebuild the projection",
        record,
        fatal=True,
    )


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
    fence: Fence | None = None,
) -> int:
    """:func:`apply_batch`, going one event at a time when a batch handler fails."""
    try:
        return await apply_batch(conn, projection, batch, checkpoint, on_dead_letter, schema, fence)
    except _Bisect as bisect:
        start, checkpoint = bisect.resume.start, bisect.resume.checkpoint
    for record in batch[start:]:
        position = await apply_batch(conn, projection, [record], checkpoint, on_dead_letter, schema, fence)
        if checkpoint is not None:  # None: a shadow, which has no checkpoint
            checkpoint = position
    return batch[-1].sequence_number


async def apply_in_time(
    conn: _db.Connection,
    projection: Projection,
    batch: list[EventRecord],
    checkpoint: int | None,
    on_dead_letter: Callable[[], object] | None,
    schema: str | None = None,
    fence: Fence | None = None,
) -> int:
    """:func:`apply_records` within the projection's ``handler_timeout``.

    Past it the batch is cancelled and rolled back (shielded, bounded; a
    connection that cannot roll back is terminated). When a handler of one
    event was running then, the failure names that event; under
    ``on_error="skip"`` the events before it are applied again, it goes to
    the dead letters, and the rest follow, each part with a deadline of its own.

    Raises:
        HandlerFailed: the batch passed its deadline, PostgreSQL refused a
            statement of the batch's transaction, or as apply_records.
        StoreUnavailable: the connection was lost (not the batch's fault).
    """
    timeout = projection.handler_timeout
    first, last = batch[0].sequence_number, batch[-1].sequence_number
    _handling.set(None)
    with trio.move_on_after(math.inf if timeout is None else timeout):
        try:
            return await apply_records(conn, projection, batch, checkpoint, on_dead_letter, schema, fence)
        except DatabaseError as exc:  # every way a batch fails is the batch's failure
            message = f"projection {projection.name}: the batch at positions {first} to {last} failed: {exc}"
            raise HandlerFailed(message, None) from exc
    record = _handling.get()
    _handling.set(None)
    index = next((i for i, r in enumerate(batch) if record is not None and r.sequence_number == record.sequence_number),
                 None)  # fmt: skip
    if record is None or index is None:
        raise HandlerFailed(
            f"projection {projection.name}: the batch at positions {first} to {last} passed its deadline of "
            f"{timeout:g} s (handler_timeout): cancelled and rolled back",
            None,
        )
    message = (
        f"projection {projection.name}: handler for {record.event_type} at position {record.sequence_number}"
        f" passed its deadline of {timeout:g} s (handler_timeout); the batch at positions {first} to {last}"
        " was cancelled and rolled back"
    )
    if projection.on_error != "skip":
        raise HandlerFailed(message, record)
    if index:
        done = await apply_in_time(conn, projection, batch[:index], checkpoint, on_dead_letter, schema, fence)
        checkpoint = done if checkpoint is not None else None
    await dead_letter(conn, projection, record, message, checkpoint, schema, fence)
    if checkpoint is not None:
        checkpoint = record.sequence_number
    _log.warning("%s; sent to the dead letters", message)
    if on_dead_letter is not None:
        on_dead_letter()
    if index + 1 < len(batch):
        return await apply_in_time(conn, projection, batch[index + 1 :], checkpoint, on_dead_letter, schema, fence)
    return record.sequence_number


async def dead_letter(
    conn: _db.Connection,
    projection: Projection,
    record: EventRecord,
    message: str,
    checkpoint: int | None,
    schema: str | None = None,
    fence: Fence | None = None,
) -> None:
    """Write ``record`` to the dead letters and move the checkpoint past it, in one transaction."""
    await begin(conn, schema or projection.schema)
    try:
        await conn.execute(DEAD_LETTER_SQL, projection.name, record.sequence_number, record.event_id,
                           record.event_type, _payload_text(record.payload), message,
                           copy_of(projection, schema))  # fmt: skip
        await commit(conn, projection.name, checkpoint, record.sequence_number, fence)
    except BaseException:
        await rollback(conn)
        raise


def _payload_text(payload: Any) -> str:
    """A payload as JSON text: an object, or whatever else someone else wrote (jsonb takes any value)."""
    return json.dumps(dict(payload) if isinstance(payload, Mapping) else payload, default=str)
