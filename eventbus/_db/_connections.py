"""PostgreSQL, as Trio sees it. The only module that imports asyncpg and trio_asyncio.

asyncpg runs on an asyncio loop that trio-asyncio provides on top of Trio. Each
method here is one crossing from Trio into asyncio and back, and translates
errors at the boundary: callers see ``StoreUnavailable`` when the server cannot
be reached or the connection was lost, ``DatabaseError`` when PostgreSQL
refused a statement, and never an asyncpg exception.

Every asyncpg object is made and closed inside ``open_loop()``. Closing is
shielded from cancellation and bounded in time; a connection that does not
close in time is terminated.
"""

from __future__ import annotations

import asyncio
import contextlib
import decimal
import json
import json.scanner
from collections.abc import Awaitable, Callable, Coroutine, Iterable, Iterator, Sequence
from typing import Any, Protocol, TypeVar

import asyncpg
import trio

from .._errors import DatabaseError, InvalidDSN, StoreUnavailable
from . import _revive
from ._dsn import check_dsn, scrub
from ._loop import aio as _aio
from ._loop import current_loop, loop_closed, loop_closing, patch_state
from ._loop import drive as _drive

T = TypeVar("T")

CONNECT_TIMEOUT = 10.0
"""Seconds a connection attempt may take."""

CLOSE_TIMEOUT = 2.0
"""Seconds a graceful close may take before the connection is terminated."""


class Row(Protocol):
    """A result row: indexable by position and by column name, iterable."""

    def __getitem__(self, key: int | str, /) -> Any: ...

    def __len__(self) -> int: ...

    def __iter__(self) -> Iterator[Any]: ...

    def get(self, key: str, default: Any = None, /) -> Any: ...

    def keys(self) -> Iterable[str]: ...


# SQLSTATE classes and codes that mean "the server is not there for you now".
_UNAVAILABLE_CLASSES = ("08",)
_UNAVAILABLE_CODES = frozenset({"57P01", "57P02", "57P03", "53300", "53400"})

SERVER_SETTINGS = {
    # Prepared statements may switch to a generic plan after five runs, and a
    # generic plan cannot use the GIN index for a payload predicate (measured:
    # 0.06 ms custom against 2+ ms generic on 1M events, growing with the table).
    "plan_cache_mode": "force_custom_plan",
}


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, ConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError)):
        return True
    if isinstance(exc, asyncpg.exceptions.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return code in _UNAVAILABLE_CODES or code.startswith(_UNAVAILABLE_CLASSES)
    if isinstance(exc, asyncpg.InterfaceError):
        text = str(exc)
        return "closed" in text or ("connection" in text and "lost" in text)
    # The protocol is in a state no statement can start from: a connection the
    # server has just ended (its FATAL message came, the socket is not closed yet).
    return isinstance(exc, (TimeoutError, asyncpg.InternalClientError))


def translate(exc: BaseException, what: str) -> Exception:
    """The eventbus error for an exception raised by asyncpg."""
    if _unavailable(exc):
        return StoreUnavailable(f"{what}: the database is unavailable ({type(exc).__name__}: {exc})")
    if isinstance(exc, asyncpg.PostgresError):
        return DatabaseError(f"{what}: {exc}", sqlstate=exc.sqlstate)
    return DatabaseError(f"{what}: {type(exc).__name__}: {exc}")


def is_driver_error(exc: BaseException) -> bool:
    """Whether ``exc`` comes from the driver or the connection."""
    return isinstance(
        exc, (asyncpg.PostgresError, asyncpg.InterfaceError, asyncpg.InternalClientError, OSError, TimeoutError)
    )


def _encode_json(value: object) -> str:
    return value if isinstance(value, str) else json.dumps(value)


_scan_json = json.scanner.make_scanner(json.JSONDecoder())  # type: ignore[arg-type]


def _decode_json(text: str) -> Any:
    # PostgreSQL's output is valid JSON with no leading blanks: the C scanner
    # alone parses it, at half the cost of json.loads. Most metadata is '{}'.
    if text == "{}":
        return {}
    try:
        return _scan_json(text, 0)[0]
    except ValueError:
        # An integer longer than Python converts (sys.get_int_max_str_digits()):
        # the store refuses one, but jsonb takes it from whoever else writes.
        # It reads as a Decimal, exactly, and nothing else in the row is lost.
        return _scan_json_leniently(text, 0)[0]


def _int_or_decimal(text: str) -> int | decimal.Decimal:
    try:
        return int(text)
    except ValueError:
        return decimal.Decimal(text)


_scan_json_leniently = json.scanner.make_scanner(json.JSONDecoder(parse_int=_int_or_decimal))  # type: ignore[arg-type]


READ_SIZE = 64 * 1024
"""Bytes a connection asks of its socket per read, at most.

asyncio's socket transport asks 256 KiB, and CPython allocates a bytes
object of that size for each read before shrinking it to what came: past
glibc's mmap threshold (128 KiB), that is an ``mmap``, an ``mremap`` and a
``munmap``, with fresh pages to fault in, for every reply. Measured on this
project's 2-core machine, a ``SELECT 1`` round trip on plain asyncio took
130 us of processor time with 256 KiB reads and 84 us with 64 KiB reads, which
come from the heap. A large result is read in more, smaller reads."""


def _read_from_the_heap(raw: asyncpg.Connection) -> None:
    """Make ``raw``'s transport read at most ``READ_SIZE`` bytes at a time.

    ``max_size`` is an attribute of asyncio's selector transports (not of
    every transport); where it is missing, nothing changes.
    """
    transport: Any = getattr(raw, "_transport", None)
    size = getattr(transport, "max_size", None)
    if isinstance(size, int) and size > READ_SIZE:
        transport.max_size = READ_SIZE


async def _init_connection(raw: asyncpg.Connection) -> None:
    _read_from_the_heap(raw)
    for name in ("json", "jsonb"):
        await raw.set_type_codec(name, encoder=_encode_json, decoder=_decode_json, schema="pg_catalog")


async def _opened(open_: Callable[[], Awaitable[T]], dsn: str, loop: Any) -> T:
    """Open a connection; its errors as StoreUnavailable, without secrets.

    The driver's error is not chained (not even as ``__context__``): it may
    quote the connection string.
    """
    check_dsn(dsn)
    try:
        return await _aio(open_, loop=loop)
    except Exception as exc:  # the driver's, or one of the many its parsing of a bad value raises
        error = StoreUnavailable(scrub(f"cannot connect to {dsn}: {type(exc).__name__}: {exc}", dsn))
    raise error


async def _call(what: str, loop: Any, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """One crossing into asyncio, on ``loop``; driver errors translated.

    Raises:
        ClosedError: the loop closed (the bus or store that opened it closed).
    """
    if loop is not None and loop_closing(loop):
        raise loop_closed()
    with _translated(what):
        try:
            return await _aio(fn, *args, loop=loop)
        except asyncio.CancelledError:  # not this task's cancellation (that is Trio's): the loop's tasks were
            if loop is not None and loop_closing(loop):
                raise loop_closed() from None
            raise


@contextlib.contextmanager
def _translated(what: str) -> Iterator[None]:
    """Driver errors raised in the block leave it as eventbus errors (see :func:`translate`)."""
    try:
        yield
    except Exception as exc:
        if is_driver_error(exc):
            raise translate(exc, what) from None
        raise


async def connect(dsn: str, *, application_name: str = "eventbus", custom_plans: bool = True) -> Connection:
    """Open a connection.

    With ``custom_plans`` every statement is planned with its actual values
    (see ``SERVER_SETTINGS``); without, PostgreSQL may reuse generic plans.
    Blocks until connected or ``CONNECT_TIMEOUT``. Cancellation abandons the
    attempt. If ``dsn`` reaches the embedded server that this process uses
    (through ``open_database``) and it is down, it is started again (blocking
    a worker thread) and the connection tried once more.

    Raises:
        InvalidDSN: ``dsn`` cannot be read (nothing of it is shown).
        StoreUnavailable: the server cannot be reached.
    """
    return await connect_on(current_loop(), dsn, application_name=application_name, custom_plans=custom_plans)


async def connect_on(loop: Any, dsn: str, *, application_name: str, custom_plans: bool = True) -> Connection:
    """:func:`connect`, the connection living on ``loop`` whichever task calls."""

    async def _connect() -> asyncpg.Connection:
        raw = await asyncpg.connect(
            dsn,
            timeout=CONNECT_TIMEOUT,
            server_settings={**(SERVER_SETTINGS if custom_plans else {}), "application_name": application_name},
        )
        try:
            await _init_connection(raw)
        except BaseException:
            raw.terminate()
            raise
        return raw

    try:
        return Connection(await _opened(_connect, dsn, loop), loop)
    except InvalidDSN:
        raise
    except StoreUnavailable:
        # The embedded server this process uses may have died: started again, once, shared.
        if not await _revive.revive(dsn):
            raise
    return Connection(await _opened(_connect, dsn, loop), loop)


async def _driven(
    what: str, raw: asyncpg.Connection, loop: Any, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any
) -> T:
    """One statement on ``raw``, its coroutine driven in the calling task
    (:func:`~eventbus._db._loop.drive`); through an asyncio Task as
    :func:`_call` does while the protocol is still cancelling an earlier
    statement (asyncpg then waits under ``asyncio.timeout``, which needs one),
    or when ``EVENTBUS_LOOP_PATCH`` turns the loop's patches off."""
    protocol = getattr(raw, "_protocol", None)
    cancelling = getattr(protocol, "_is_cancelling", None)
    if cancelling is None or cancelling() or patch_state() != "applied":
        return await _call(what, loop, fn, *args)
    if loop_closing(loop):
        raise loop_closed()
    with _translated(what):
        return await _drive(fn, *args)


class Connection:
    """One PostgreSQL connection, used from Trio.

    Methods block for one round trip (plus the crossing into asyncio); none may
    run concurrently on the same connection. Cancelling a call cancels the
    statement; the connection stays usable unless it was lost. Once the bus
    or store whose block opened the connection's asyncio loop has closed, a
    call (and one waiting then, in a task outside that block) raises
    ``ClosedError``.
    """

    def __init__(self, raw: asyncpg.Connection, loop: Any) -> None:
        self._raw = raw
        self._loop = loop  # the asyncio loop the connection lives on, whichever task calls
        self._interrupted = False  # a statement was cancelled since the last settle()

    @property
    def backend_pid(self) -> int:
        """The server process serving this connection."""
        pid: int = self._raw.get_server_pid()
        return pid

    def in_transaction(self) -> bool:
        """Whether a transaction is open on the connection (as of its last reply)."""
        try:
            return bool(self._raw.is_in_transaction())
        except asyncpg.InterfaceError:
            return False

    def is_closed(self) -> bool:
        """Whether the connection was closed or lost."""
        try:
            closed: bool = self._raw.is_closed()
        except asyncpg.InterfaceError:  # asyncpg refuses to say: count it as closed
            return True
        return closed

    async def execute(self, sql: str, *args: Any) -> str:
        """Run a statement; return its status tag."""
        return await self._statement("execute", self._raw.execute, sql, *args)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per argument tuple, in one pipeline."""
        await self._statement("executemany", self._raw.executemany, sql, args, driven=False)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run a query; return all its rows."""
        return await self._statement("fetch", self._raw.fetch, sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """Run a query; return its first row, or None."""
        return await self._statement("fetchrow", self._raw.fetchrow, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run a query; return the first column of its first row, or None."""
        return await self._statement("fetchval", self._raw.fetchval, sql, *args)

    async def run_script(self, sql: str) -> None:
        """Run several statements (no parameters) in one round trip."""
        await self._statement("script", self._raw.execute, sql)

    async def _statement(
        self, what: str, fn: Callable[..., Coroutine[Any, Any, T]], *args: Any, driven: bool = True
    ) -> T:
        try:
            if driven:
                return await _driven(what, self._raw, self._loop, fn, *args)
            return await _call(what, self._loop, fn, *args)
        except AttributeError:
            # asyncpg drops its protocol when the connection is terminated (by
            # another task): a statement then fails inside its code.
            if self.is_closed():
                raise StoreUnavailable(f"{what}: the connection was closed") from None
            raise
        except BaseException as exc:
            if not isinstance(exc, Exception):
                self._interrupted = True  # cancelled: the server may not have ended it yet
            raise

    async def settle(self) -> bool:
        """After a cancelled statement, wait until the server has ended it.

        A cancelled statement is cancelled on the server in the background;
        until that is acknowledged, :meth:`in_transaction` may not say what
        the server will say. Blocks, shielded, up to ``CLOSE_TIMEOUT`` (a
        server that does not answer: the connection is then terminated).
        Returns whether the connection can serve another statement.
        """
        if self._interrupted and not self.is_closed():
            self._interrupted = False
            protocol = self._raw._protocol
            settled = False
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                try:
                    # An asyncio task: it runs after the cancellation's own
                    # callbacks, already queued on the loop.
                    await _call("settle", self._loop, protocol._wait_for_cancellation)
                    settled = True
                except Exception:  # noqa: S110 - lost: terminated below
                    pass
            if not settled:
                self.terminate()
        return not self.is_closed()

    async def add_listener(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` for every NOTIFY on ``channel``.

        The callback runs in the Trio thread and must not block.
        """

        def _on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            callback(payload)

        await _call("listen", self._loop, self._raw.add_listener, channel, _on_notify)

    async def close(self) -> None:
        """Close gracefully, shielded from cancellation, within ``CLOSE_TIMEOUT``."""
        if self._raw.is_closed():
            return
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            try:
                await _aio(self._raw.close, loop=self._loop)
                return
            except Exception:  # noqa: S110 - a failed close ends in terminate below
                pass
        self._raw.terminate()

    def terminate(self) -> None:
        """Drop the connection at once, without telling the server.

        Once its asyncio loop has closed, asyncpg cannot (it asks the loop to
        close the socket): the socket is then left to the garbage collector."""
        with contextlib.suppress(asyncpg.InterfaceError):  # one asyncpg closed already
            try:
                self._raw.terminate()
            except RuntimeError:
                if not self._loop.is_closed():
                    raise


async def create_database(admin_dsn: str, name: str, *, template: str | None = None) -> bool:
    """Create database ``name`` unless it exists; True if this call made it.

    Safe when several processes race to create the same database.
    """
    conn = await connect(admin_dsn, application_name="eventbus-admin")
    try:
        if await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name):
            return False
        quoted = '"' + name.replace('"', '""') + '"'
        sql = f"CREATE DATABASE {quoted}"
        if template is not None:
            sql += ' TEMPLATE "' + template.replace('"', '""') + '" STRATEGY FILE_COPY'
        try:
            await conn.execute(sql)
        except DatabaseError as exc:
            if exc.sqlstate in ("42P04", "23505"):  # another process won the race
                return False
            raise
        return True
    finally:
        await conn.close()


async def rollback(conn: Connection) -> None:
    """End ``conn``'s transaction, shielded and bounded; a connection that
    cannot is terminated rather than reused."""
    with trio.move_on_after(CLOSE_TIMEOUT, shield=True) as scope:
        if not conn.is_closed():
            try:
                await conn.execute("ROLLBACK")
            except Exception:  # the connection is in no state to be reused
                conn.terminate()
    if scope.cancelled_caught:
        conn.terminate()
