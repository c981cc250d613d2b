"""Projections: what a read model is made of, and the transaction it is written in.

A projection has a name (its tables live in the schema ``projection_<name>``),
handlers per event type, an optional ``setup`` that creates its tables, a batch
size and an error policy. The task that runs it is in ``_runner.py``.
"""

from __future__ import annotations

import enum
import inspect
import re
from collections.abc import Awaitable, Callable, Iterable, Mapping, Sequence
from typing import Any, Literal

import attrs

from .. import _db
from .._errors import ProjectionError
from .._values import EventFilter, EventRecord, _json
from .._values._partitions import key_text
from ._supervisor import RestartPolicy

DEFAULT_BATCH_SIZE = 500
"""Events applied per transaction, at most."""

SUBSCRIPTION_BATCHES = 4
"""A projection's subscription (and a rebuild's) buffers this many of its batches."""

NAME_PATTERN = re.compile(r"[a-z][a-z0-9_]{0,39}")
"""A projection's name: lower-case letters, digits and underscores, at most 40.
A rebuild's copy lives in a schema whose name holds a ``$``, which no name
here can produce (see ``_shadow.py``)."""

DEFAULT_HANDLER_TIMEOUT = 30.0
"""Seconds one batch (its handlers and its commit) may take before it is
cancelled, rolled back and counted as a failure."""

MAX_PARTITIONS = 1024
"""The most partitions a projection may have."""

OnError = Literal["retry", "skip"]


class Transaction:
    """A read model's transaction, as handlers see it.

    Every statement runs in the projection's transaction, with ``search_path``
    set to the projection's schema: use unqualified table names. Each method
    blocks for one round trip and buffers nothing; a cancelled statement rolls
    the transaction back as a whole (nothing of the batch, or of the reader's
    block, is kept). Raises ``DatabaseError`` when PostgreSQL refuses a
    statement (the transaction is then rolled back as a whole) and
    ``StoreUnavailable`` when the connection is lost. jsonb parameters take
    JSON text or plain Python values; jsonb results come back as Python values.

    A transaction is over once its handler (or batch) is done, or its
    ``reader`` block is left: a statement on it then raises
    ``ProjectionError`` (the connection is someone else's by then). A handler
    must not end it itself (``COMMIT``, ``ROLLBACK``): the projection then
    fails at once, naming the event, since what the handler did before may
    be committed and the checkpoint is not moved with it.
    """

    def __init__(self, conn: _db.Connection) -> None:
        self._conn: _db.Connection | None = conn

    def _open(self) -> _db.Connection:
        if self._conn is None:
            raise ProjectionError(
                "this transaction is over (its handler returned, or its reader block was left): use the one"
                " a handler or reader block is given, while it runs"
            )
        return self._conn

    def _end(self) -> None:
        """The transaction is over: statements on it are refused from now on."""
        self._conn = None

    def _ended_by_handler(self) -> bool:
        """Whether the connection is no longer in a transaction (a handler's
        COMMIT or ROLLBACK; a lost connection is not the handler's doing)."""
        conn = self._conn
        return conn is not None and not conn.is_closed() and not conn.in_transaction()

    async def execute(self, sql: str, *args: Any) -> str:
        """Run a statement; return its status tag (``"UPDATE 1"``)."""
        return await self._open().execute(sql, *args)

    async def executemany(self, sql: str, args: Iterable[Sequence[Any]]) -> None:
        """Run a statement once per argument tuple, pipelined in one round trip."""
        await self._open().executemany(sql, list(args))

    async def fetch(self, sql: str, *args: Any) -> list[_db.Row]:
        """Run a query; return its rows (indexable by position and by name)."""
        return await self._open().fetch(sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> _db.Row | None:
        """Run a query; return its first row or None."""
        return await self._open().fetchrow(sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run a query; return the first value of its first row, or None."""
        return await self._open().fetchval(sql, *args)


Handler = Callable[[Transaction, EventRecord], Awaitable[None]]
BatchHandler = Callable[[Transaction, list[EventRecord]], Awaitable[None]]
Setup = Callable[[Transaction], Awaitable[None]]


def _is_async(fn: object) -> bool:
    if inspect.iscoroutinefunction(fn):
        return True
    # an object whose __call__ is async
    return callable(fn) and inspect.iscoroutinefunction(type(fn).__call__)


def _check_name(_: Any, __: Any, name: Any) -> None:
    if not isinstance(name, str) or not NAME_PATTERN.fullmatch(name):
        raise ProjectionError(
            f"projection name {name!r} is not a safe identifier: use 1 to 40 lower-case letters, "
            "digits and underscores, starting with a letter"
        )


def _check_event_type(event_type: object, what: str) -> None:
    if not isinstance(event_type, str) or not event_type:
        raise ProjectionError(f"{what}: event types must be non-empty strings, not {event_type!r}")
    try:
        _json.check_event_type(event_type, what)  # what the store accepts
    except _json.JSONRefused as exc:
        raise ProjectionError(f"{what}: {event_type!r} is not a valid event type ({exc.reason})") from None


def _check_handlers(_: Any, __: Any, handlers: Any) -> None:
    if not isinstance(handlers, Mapping):
        raise ProjectionError(f"handlers must be a mapping of event type to async handler, not {handlers!r}")
    for event_type, handler in handlers.items():
        _check_event_type(event_type, "handler keys")
        if not _is_async(handler):
            raise ProjectionError(f"the handler for {event_type!r} must be an async function (tx, record)")


def _check_optional_async(what: str) -> Callable[[Any, Any, Any], None]:
    def check(_: Any, __: Any, fn: Any) -> None:
        if fn is not None and not _is_async(fn):
            raise ProjectionError(f"{what} must be an async function, not {fn!r}")

    return check


def _event_types(value: Iterable[str]) -> tuple[str, ...]:
    """Event types as a tuple; a lone string is refused (``tuple`` would make it its letters)."""
    if isinstance(value, str) or not isinstance(value, Iterable):
        raise ProjectionError(f"event_types must be a list of event types, not {value!r}")
    types = tuple(value)
    for event_type in types:
        _check_event_type(event_type, "event_types")
    return types


def _check_on_error(_: Any, __: Any, value: Any) -> None:
    if value not in ("retry", "skip"):
        raise ProjectionError(f"on_error must be 'retry' or 'skip', not {value!r}")


def _check_handler_timeout(_: Any, __: Any, value: Any) -> None:
    if value is None:
        return
    if type(value) not in (int, float) or not 0 < value <= MAX_HANDLER_TIMEOUT:
        raise ProjectionError(
            f"handler_timeout must be a positive number of seconds, up to a day, or None, not {value!r}"
        )


MAX_HANDLER_TIMEOUT = 86_400.0
"""The longest ``handler_timeout``, in seconds (None: no deadline at all)."""


def _check_restart(_: Any, __: Any, value: Any) -> None:
    if not isinstance(value, RestartPolicy):
        raise ProjectionError(f"restart must be a RestartPolicy, not {value!r}")


def _check_batch_size(_: Any, __: Any, value: Any) -> None:
    if type(value) is not int or not 1 <= value <= 100_000:
        raise ProjectionError(f"batch_size must be a whole number from 1 to 100000, not {value!r}")


def _check_partitions(_: Any, __: Any, value: Any) -> None:
    if type(value) is not int or not 1 <= value <= MAX_PARTITIONS:
        raise ProjectionError(f"partitions must be a whole number from 1 to {MAX_PARTITIONS}, not {value!r}")


PartitionKey = Callable[[EventRecord], Any]

MAX_KEY_FIELD = 200
"""The longest payload field name ``partition_key`` may name, in characters."""


def _check_partition_key(_: Any, __: Any, key: Any) -> None:
    if isinstance(key, str):
        if not key or len(key) > MAX_KEY_FIELD or "\x00" in key:
            raise ProjectionError(
                f"partition_key as a payload field name must be 1 to {MAX_KEY_FIELD} characters, not {key!r}"
            )
    elif key is not None and (not callable(key) or _is_async(key)):
        raise ProjectionError(
            f"partition_key must be a payload field name or a plain function (record) -> key, not {key!r}"
        )


def key_function(projection: Projection) -> PartitionKey:
    """``projection``'s key as a function of a record. For a field name, the
    field's value; ProjectionError when it holds no key (it is missing, or
    neither a string nor a whole number)."""
    key = projection.partition_key
    if not isinstance(key, str):
        assert key is not None
        return key
    field = key

    def value(record: EventRecord) -> Any:
        payload = record.payload
        if not isinstance(payload, Mapping):
            raise ProjectionError(f"the payload is a {type(payload).__name__}, not an object with a field {field!r}")
        found = payload.get(field)
        if key_text(found) is None:
            kind = "missing" if field not in payload else f"a {type(found).__name__}"
            raise ProjectionError(f"payload field {field!r} is {kind}, not a string or a whole number")
        return found

    return value


@attrs.frozen
class Projection:
    """A read model kept current from the events.

    Attributes:
        name: a safe identifier; the tables live in schema ``projection_<name>``.
        handlers: ``{event_type: async (tx, record) -> None}``. Each event's
            effects in ``tx`` are committed exactly once; a handler may run
            more than once for an event whose batch was rolled back (a
            failure, a deadline, a partition taken by another process
            meanwhile), so what it does outside ``tx`` is not undone.
        setup: ``async (tx) -> None``, creates the tables; it runs whenever a
            process takes the lead and before a rebuild, so it must be
            idempotent (``CREATE TABLE IF NOT EXISTS``). A table it has to
            create again once the projection has applied events means the
            read model was dropped under it: the projection then fails with
            ``ProjectionError`` naming the tables, and a rebuild builds them
            again from the events.
        batch_size: events per transaction, at most; the projection's
            subscription buffers ``SUBSCRIPTION_BATCHES`` times as many.
        on_error: ``retry`` (restart with backoff, then ``failed``) or
            ``skip`` (write the event to ``eventbus.dead_letters`` and go on).
        batch_handler: optional ``async (tx, records) -> None`` that applies a
            whole batch at once (for set-based SQL); it receives the events of
            ``event_types`` and of the handlers' types, and runs before them.
        event_types: more event types to subscribe to (for ``batch_handler``).
        restart: the restart policy.
        handler_timeout: seconds one batch (its handlers and its commit) may
            take; past it the batch is cancelled, rolled back and counted as a
            failure under ``restart``, as a handler that raised. None waits
            for ever. A rebuild's copy keeps the same deadline.
        partitions: how many partitions the events are split into (1, the
            default: one process applies them all). With more, every process
            that starts the projection applies a fair share of them (see
            ``_partitioned.py``); events of one key keep their order.
        partition_key: required with ``partitions > 1``: a payload field
            name (``"accountId"``), or ``(record) -> key``, a plain function.
            The key picks the partition by a stable hash. With a field name,
            the key is that field's value, a string or a whole number, and
            the partition is computed by PostgreSQL too: each process reads
            from the store only the events of the partitions it holds
            (with a function it reads and decodes every event of the
            projection's types, and routes it in Python). A function's key
            may be any JSON value. An event whose key cannot be had (the
            function raises, the field is missing or holds another value)
            is a failure of a handler (a dead letter under
            ``on_error="skip"``). The two forms hash differently: changing
            one for the other (or the function) moves keys to other
            partitions, which nothing can detect: stop every process of
            the projection and rebuild it. A changed ``partitions`` is
            detected: see :class:`~eventbus.PartitionsDiffer`.

    Raises:
        ProjectionError: at once, for a bad name, handler, policy or size.
    """

    name: str = attrs.field(validator=_check_name)
    handlers: Mapping[str, Handler] = attrs.field(factory=dict, validator=_check_handlers)
    setup: Setup | None = attrs.field(default=None, validator=_check_optional_async("setup"))
    batch_size: int = attrs.field(default=DEFAULT_BATCH_SIZE, validator=_check_batch_size)
    on_error: OnError = attrs.field(default="retry", validator=_check_on_error)
    batch_handler: BatchHandler | None = attrs.field(
        default=None, kw_only=True, validator=_check_optional_async("batch_handler")
    )
    event_types: tuple[str, ...] = attrs.field(default=(), kw_only=True, converter=_event_types)
    restart: RestartPolicy = attrs.field(factory=RestartPolicy, kw_only=True, validator=_check_restart)
    handler_timeout: float | None = attrs.field(
        default=DEFAULT_HANDLER_TIMEOUT, kw_only=True, validator=_check_handler_timeout
    )
    partitions: int = attrs.field(default=1, kw_only=True, validator=_check_partitions)
    partition_key: PartitionKey | str | None = attrs.field(default=None, kw_only=True, validator=_check_partition_key)

    def __attrs_post_init__(self) -> None:
        if not self.handlers and self.batch_handler is None:
            raise ProjectionError(f"projection {self.name!r} has no handlers")
        if self.batch_handler is not None and not self.event_types and not self.handlers:
            raise ProjectionError(f"projection {self.name!r}: batch_handler needs event_types")
        if self.partitions > 1 and self.partition_key is None:
            raise ProjectionError(f"projection {self.name!r}: partitions={self.partitions} needs a partition_key")

    @property
    def schema(self) -> str:
        """The schema that holds the read model."""
        return schema_of(self.name)

    @property
    def filter(self) -> EventFilter:
        """The events the projection reads."""
        return EventFilter(sorted({*self.handlers, *self.event_types}))


def schema_of(name: str) -> str:
    """The schema of projection ``name`` (quoted-safe: names are identifiers)."""
    return f"projection_{name}"


class ProjectionState(enum.StrEnum):
    """What a projection is doing in this process.

    A ``str``: ``status.state == "live"`` holds for ``ProjectionState.LIVE``.
    """

    STARTING = "starting"
    """Taking the lead, running ``setup``, reading its checkpoint."""
    STANDBY = "standby"
    """Another process leads it; this one follows its checkpoint."""
    CATCHING_UP = "catching_up"
    """Applying events read from the store or the stream's ring."""
    LIVE = "live"
    """Applying events as they are committed."""
    REBUILDING = "rebuilding"
    """Live, with a rebuild under way."""
    RESTARTING = "restarting"
    """Waiting out its backoff after a failure."""
    FAILED = "failed"
    """Gave up after the restart limit (it lets go of the lead: another
    process may try), or found its tables gone while its checkpoint says it
    has applied events (it keeps the lead: rebuild it here); ``restart``
    lets it try again."""
    STOPPED = "stopped"
    """Stopped here; its state stays in the database."""


@attrs.frozen
class ProjectionStatus:
    """A projection as this process sees it. Cheap to read.

    Attributes:
        state: a :class:`ProjectionState` (a ``str``, so ``state == "live"``
            works); a plain string given here is converted.
        checkpoint: the position up to which the read model reflects every
            event (as applied by this process, or last read when standby).
        lag: positions between the stream's position and the checkpoint.
        restarts: restarts since the projection was started here.
        last_error: the latest failure, or None.
        dead_letters: events skipped here (``on_error="skip"``).
        leader: whether this process applies the projection.
        batch_running: seconds the batch under way here has run, None
            between batches: a batch that runs long shows here before its
            deadline (``handler_timeout``) cancels it.
        partitions: a partitioned projection's partitions, by the process
            that holds them (as this process last read the leases; the
            checkpoint and lag are then those of the slowest partition).
            Empty for one with a single partition.
    """

    state: ProjectionState = attrs.field(converter=ProjectionState)
    checkpoint: int
    lag: int
    restarts: int
    last_error: str | None
    dead_letters: int = 0
    leader: bool = False
    batch_running: float | None = None
    partitions: Mapping[str, tuple[int, ...]] = attrs.field(factory=dict)


@attrs.frozen
class ProjectionConfig:
    """The original style's projection: event types and plain handlers.

    Handlers are ``async (record) -> None`` and see live events only, once
    each, in order, in this process (see :func:`start_projection_listener`).
    """

    event_types: tuple[str, ...] = attrs.field(converter=_event_types)
    handlers: Mapping[str, Callable[[EventRecord], Awaitable[None]]] = attrs.field(validator=_check_handlers)


def create_projection_config(
    event_types: Iterable[str], handlers: Mapping[str, Callable[[EventRecord], Awaitable[None]]]
) -> ProjectionConfig:
    """A :class:`ProjectionConfig` for :func:`start_projection_listener`."""
    return ProjectionConfig(event_types, handlers)
