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
import heapq
import json
import json.scanner
import logging
import math
import types
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any, Protocol, TypeVar

import asyncpg
import sniffio
import trio
import trio_asyncio
from trio_asyncio._handles import AsyncHandle as _AsyncHandle

from ._embedded import scrub
from ._errors import DatabaseError, StoreUnavailable
from ._nursery import collapse

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


@asynccontextmanager
async def open_loop() -> AsyncIterator[None]:
    """Make sure an asyncio loop runs on top of Trio for the block's duration.

    Reuses the caller's trio-asyncio loop if there is one, else opens one (and
    lets it run ready callbacks in batches, see ``_drain_ready_callbacks``).
    """
    if trio_asyncio.current_loop.get() is not None:
        yield
        return
    try:
        async with trio_asyncio.open_loop() as loop:
            if _DRAIN_SUPPORTED:
                loop._main_loop_one = types.MethodType(_drain_ready_callbacks, loop)
            loop.set_exception_handler(_log_loop_error)
            yield
    except BaseExceptionGroup as group:  # the loop's nurseries: not the caller's concern
        raise collapse(group) from None


_log = logging.getLogger("eventbus.pg")


def _log_loop_error(loop: Any, context: dict[str, Any]) -> None:
    """Log what asyncio code reports to its loop, instead of ending the program.

    trio-asyncio's own handler raises every report in the loop's nursery, and
    asyncpg reports things that are no error of ours: a pooled connection
    reset while its cancelled query was still in a transaction, a background
    release that failed because the server went away. The connection concerned
    is discarded by asyncpg either way.
    """
    error = context.get("exception")
    _log.warning("asyncio: %s%s", context.get("message", "error"), f" ({error!r})" if error else "")


# trio-asyncio's loop runs ONE asyncio callback per Trio scheduler round. A
# query's round trip needs about five callbacks, so it costs five rounds where
# asyncio needs one (measured here: 7 epoll waits per SELECT 1 against 4 with
# draining, 320 us against 250 us). The loop below is the library's own
# ``_main_loop_one`` with one change: after the first ready callback it also
# runs the others that were queued before it started, as asyncio's own loop
# does (never those queued meanwhile, so Trio tasks are not starved). Only for
# the versions whose internals it was written against; others run unchanged.
_DRAIN_SUPPORTED = tuple(int(x) for x in trio_asyncio.__version__.split(".")[:2]) in ((0, 15), (0, 16))


async def _drain_ready_callbacks(self: Any, no_wait: bool = False) -> None:  # pragma: no cover - timing only
    obj = None
    due = False
    if self._timers:
        timeout = self._timers[0]._when - self.time()
        if timeout <= 0:
            # A timer that came due runs now; only timers arriving through the
            # queue go onto the heap (pushing this one back would spin forever).
            obj = heapq.heappop(self._timers)
            due = True
    else:
        timeout = math.inf
    if obj is None:
        if no_wait:
            obj = self._q_recv.receive_nowait()
        elif timeout == math.inf:
            obj = await self._q_recv.receive()
        else:
            with trio.move_on_after(timeout):
                obj = await self._q_recv.receive()
            if obj is None:
                return
    # Only the callbacks queued by now, as asyncio's own loop does: one that
    # queues itself again (a task awaiting sleep(0)) waits for the next round.
    more = self._q_recv.statistics().current_buffer_used
    while True:
        if isinstance(obj, asyncio.TimerHandle) and not due:
            heapq.heappush(self._timers, obj)
        elif isinstance(obj, _AsyncHandle):
            obj._context.run(self._nursery.start_soon, obj._run, name=obj._callback)
            await obj._started.wait()
        elif not obj._cancelled:
            previous, sniffio.thread_local.name = sniffio.thread_local.name, "asyncio"
            try:
                obj._run()
            finally:
                sniffio.thread_local.name = previous
        due = False
        if self._stopped.is_set() or more <= 0:
            return
        more -= 1
        try:
            obj = self._q_recv.receive_nowait()
        except trio.WouldBlock:
            return


async def call_asyncio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """From Trio, await an asyncio async function (within :func:`open_loop`)."""
    return await _aio(fn, *args)


async def call_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """From asyncio code running on the loop of :func:`open_loop`, await a Trio
    async function (for example from a Textual event handler)."""
    result: T = await trio_asyncio.trio_as_aio(fn)(*args)
    return result


def _unavailable(exc: BaseException) -> bool:
    if isinstance(exc, (OSError, ConnectionError, asyncpg.exceptions.ConnectionDoesNotExistError)):
        return True
    if isinstance(exc, asyncpg.exceptions.PostgresConnectionError):
        return True
    if isinstance(exc, asyncpg.PostgresError):
        code = exc.sqlstate or ""
        return code in _UNAVAILABLE_CODES or code.startswith(_UNAVAILABLE_CLASSES)
    if isinstance(exc, asyncpg.InterfaceError):
        return "closed" in str(exc) or ("connection" in str(exc) and "lost" in str(exc))
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
    return _scan_json(text, 0)[0]


async def _init_connection(raw: asyncpg.Connection) -> None:
    for name in ("json", "jsonb"):
        await raw.set_type_codec(name, encoder=_encode_json, decoder=_decode_json, schema="pg_catalog")


async def _aio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    result: T = await trio_asyncio.aio_as_trio(fn)(*args)
    return result


async def _opened(open_: Callable[[], Awaitable[T]], dsn: str) -> T:
    """Open a connection or a pool; its errors as StoreUnavailable, without secrets."""
    try:
        return await _aio(open_)
    except Exception as exc:
        if is_driver_error(exc) or isinstance(exc, (ValueError, KeyError)):
            raise StoreUnavailable(scrub(f"cannot connect to {dsn}: {type(exc).__name__}: {exc}", dsn)) from None
        raise


async def _call(what: str, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """One crossing into asyncio; driver errors translated."""
    try:
        return await _aio(fn, *args)
    except Exception as exc:
        if is_driver_error(exc):
            raise translate(exc, what) from None
        raise


async def connect(dsn: str, *, application_name: str = "eventbus", custom_plans: bool = True) -> Connection:
    """Open a connection.

    With ``custom_plans`` every statement is planned with its actual values
    (see ``SERVER_SETTINGS``); without, PostgreSQL may reuse generic plans.
    Blocks until connected or ``CONNECT_TIMEOUT``. Cancellation abandons the
    attempt.

    Raises:
        StoreUnavailable: the server cannot be reached.
    """

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

    return Connection(await _opened(_connect, dsn))


class Connection:
    """One PostgreSQL connection, used from Trio.

    Methods block for one round trip (plus the crossing into asyncio); none may
    run concurrently on the same connection. Cancelling a call cancels the
    statement; the connection stays usable unless it was lost.
    """

    def __init__(self, raw: asyncpg.Connection) -> None:
        self._raw = raw

    @property
    def backend_pid(self) -> int:
        """The server process serving this connection."""
        pid: int = self._raw.get_server_pid()
        return pid

    def is_closed(self) -> bool:
        """Whether the connection was closed or lost."""
        closed: bool = self._raw.is_closed()
        return closed

    async def execute(self, sql: str, *args: Any) -> str:
        """Run a statement; return its status tag."""
        return await _call("execute", self._raw.execute, sql, *args)

    async def executemany(self, sql: str, args: Sequence[Sequence[Any]]) -> None:
        """Run a statement once per argument tuple, in one pipeline."""
        await _call("executemany", self._raw.executemany, sql, args)

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run a query; return all its rows."""
        return await _call("fetch", self._raw.fetch, sql, *args)

    async def fetchrow(self, sql: str, *args: Any) -> Row | None:
        """Run a query; return its first row, or None."""
        return await _call("fetchrow", self._raw.fetchrow, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run a query; return the first column of its first row, or None."""
        return await _call("fetchval", self._raw.fetchval, sql, *args)

    async def run_script(self, sql: str) -> None:
        """Run several statements (no parameters) in one round trip."""
        await _call("script", self._raw.execute, sql)

    async def add_listener(self, channel: str, callback: Callable[[str], None]) -> None:
        """Call ``callback(payload)`` for every NOTIFY on ``channel``.

        The callback runs in the Trio thread and must not block.
        """

        def _on_notify(_conn: object, _pid: int, _channel: str, payload: str) -> None:
            callback(payload)

        await _call("listen", self._raw.add_listener, channel, _on_notify)

    async def close(self) -> None:
        """Close gracefully, shielded from cancellation, within ``CLOSE_TIMEOUT``."""
        if self._raw.is_closed():
            return
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            try:
                await _aio(self._raw.close)
                return
            except Exception:  # noqa: S110 - a failed close ends in terminate below
                pass
        self._raw.terminate()

    def terminate(self) -> None:
        """Drop the connection at once, without telling the server."""
        self._raw.terminate()


class Pool:
    """A pool of connections for reads, used from Trio.

    Each call borrows a connection for one statement: one crossing, one round
    trip. Calls run concurrently up to the pool's size; beyond that they wait
    for a free connection.
    """

    def __init__(self, raw: asyncpg.Pool) -> None:
        self._raw = raw

    async def fetch(self, sql: str, *args: Any) -> list[Row]:
        """Run a query on a pooled connection; return all its rows."""
        return await _call("query", self._raw.fetch, sql, *args)

    async def fetchval(self, sql: str, *args: Any) -> Any:
        """Run a query on a pooled connection; return one value."""
        return await _call("query", self._raw.fetchval, sql, *args)

    @asynccontextmanager
    async def acquire(self) -> AsyncIterator[Connection]:
        """Borrow a connection for the block (waits for a free one)."""
        try:
            raw = await _aio(self._raw.acquire)
        except Exception as exc:
            if is_driver_error(exc):
                raise translate(exc, "acquire") from None
            raise
        try:
            yield Connection(raw)
        finally:
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                try:
                    await _aio(self._raw.release, raw)
                except Exception:
                    raw.terminate()

    async def close(self) -> None:
        """Close every connection, shielded and bounded; terminate stragglers."""
        with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
            try:
                await _aio(self._raw.close)
                return
            except Exception:  # noqa: S110 - a failed close ends in terminate below
                pass
        self._raw.terminate()


async def _keep_session(raw: asyncpg.Connection) -> None:
    """A pooled connection needs no reset query when it goes back to the pool.

    asyncpg's default sends one (advisory unlocks, CLOSE ALL, UNLISTEN, RESET
    ALL): a second round trip for every query. Pooled connections here only run
    single statements and read-only transactions with ``SET LOCAL``; asyncpg
    still rolls back a transaction left open before calling this.
    """


async def create_pool(dsn: str, *, max_size: int, application_name: str = "eventbus-read") -> Pool:
    """Open a pool of up to ``max_size`` connections (one opened at once).

    Raises:
        StoreUnavailable: the server cannot be reached.
    """

    async def _create() -> asyncpg.Pool:
        return await asyncpg.create_pool(
            dsn,
            min_size=1,
            max_size=max_size,
            timeout=CONNECT_TIMEOUT,
            init=_init_connection,
            reset=_keep_session,
            server_settings={**SERVER_SETTINGS, "application_name": application_name},
        )

    return Pool(await _opened(_create, dsn))


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
