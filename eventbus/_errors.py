"""The errors eventbus raises: one root, names that say what happened."""

from __future__ import annotations

from typing import Any


class EventBusError(Exception):
    """The root of every error eventbus raises on purpose."""


class InvalidEvent(EventBusError, ValueError):
    """An event (or a filter) was refused before it reached the database.

    The message names the event by its index in the append and its type, and
    the path inside its payload or metadata where the problem is; for an
    append too big for one batch, its size and the limit (``max_batch_bytes``,
    also refused with this error when it is out of range).
    """


class ConcurrencyError(EventBusError):
    """A conditional append found an event that matches its filter after the
    position the caller read. Nothing of that append was stored.

    Attributes:
        expected_max_sequence_number: the position the caller passed.
    """

    def __init__(self, message: str, *, expected_max_sequence_number: int) -> None:
        super().__init__(message)
        self.expected_max_sequence_number = expected_max_sequence_number


class DuplicateEventId(EventBusError):
    """An event id of this append is already stored for a different event, or
    only some of the append's ids are stored. A retry of the very same append
    is not an error: it returns the stored records."""


class StoreUnavailable(EventBusError):
    """The database could not be reached or was lost during the request.

    For an append, ``outcome_known`` says whether the append is known not to be
    stored. When it is False the append may or may not have committed; retrying
    it with the same event ids is safe and tells which.
    """

    def __init__(self, message: str, *, outcome_known: bool = True) -> None:
        super().__init__(message)
        self.outcome_known = outcome_known


class InvalidDSN(StoreUnavailable, ValueError):
    """A connection string that cannot be read (a password with an unencoded
    ``#``, ``?``, ``@`` or ``/``, a port that is not a number, no
    ``postgresql://`` scheme).

    A ``StoreUnavailable``, since the store cannot be reached with it (callers
    that handle an unreachable database handle this too), and a
    ``ValueError``, since no retry helps: the string must be fixed. The
    message says what is wrong and shows no part of the string, which may
    hold a password it cannot tell apart from the rest.
    """


class DatabaseError(EventBusError):
    """PostgreSQL refused a statement (in a projection handler, for example).

    Attributes:
        sqlstate: the five-character SQLSTATE code, when PostgreSQL gave one.
    """

    def __init__(self, message: str, *, sqlstate: str | None = None) -> None:
        super().__init__(message)
        self.sqlstate = sqlstate


class ClosedError(EventBusError):
    """The store, bus or subscription was used after it was closed."""


class WrongTrioRun(EventBusError, RuntimeError):
    """A store or bus was called from a Trio run other than the one that
    opened it (a thread running ``trio.run`` of its own). Its connections and
    actors live in that run: call from there, or from a thread through
    ``trio.from_thread.run``."""


class InvalidFilter(EventBusError, ValueError):
    """A filter, query or subscription was refused: the message says why."""


class InvalidOption(EventBusError, ValueError):
    """An option given to ``open_bus`` or ``open_event_store`` was refused
    (a replica list that is not a list of connection strings, a negative wait)."""


class NotCaughtUp(EventBusError, TimeoutError):
    """A projection had not reached a position in the time allowed: a
    ``reader`` block's ``min_position`` (on a standby nor on the primary),
    or the store's head for ``wait_until_caught_up``. A ``TimeoutError``.

    Attributes:
        position: the position waited for.
    """

    def __init__(self, message: str, *, position: int) -> None:
        super().__init__(message)
        self.position = position


class ProjectionError(EventBusError):
    """A projection was defined or used wrongly (bad name, handler or policy,
    unknown projection, a rebuild where another process leads)."""


class PartitionsDiffer(ProjectionError):
    """A projection's partitions stored in the database differ from this
    process's ``partitions`` (a redeploy with another count, or a single
    leader against partitions), or were applied with another
    ``partition_key``: the process stands by, and takes over by itself once
    that is safe (for a key, once a rebuild from a process with the new key
    swapped its copy in)."""


class HandlerFailed(EventBusError):
    """A projection's handler raised for an event.

    Attributes:
        record: the ``EventRecord`` it failed on, or None when the failure
            was not in one event (a commit, a deadline).
        fatal: the projection cannot go on by trying again (a handler ended
            its batch's transaction itself): it fails at once, whatever its
            restart policy.
    """

    def __init__(self, message: str, record: Any, *, fatal: bool = False) -> None:
        super().__init__(message)
        self.record = record
        self.fatal = fatal
