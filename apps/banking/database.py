"""Where the bank keeps its data: a database of its own.

With no connection string (no ``--dsn``, no ``EVENTBUS_DSN``, no
``DATABASE_URL``) the bank runs on eventbus's embedded server, in a database
of its own, ``banking``, rather than in the ``eventbus`` database that every
other program on that server uses when it names none. A program that embeds
eventbus (the README's example, say) therefore never writes among the bank's
events, and the bank never reads theirs. The embedded server keeps its data in
``EVENTBUS_DATA_DIR``, else ``$XDG_DATA_HOME/eventbus``
(``~/.local/share/eventbus``), or ``/var/lib/eventbus`` for root.

With a connection string the bank uses the database it names, as it is: that
database is the person's, and so is the choice of what else writes to it.

:func:`reset` drops the ``banking`` database, so that the bank starts afresh;
the next command makes it again.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from eventbus import DatabaseError, testing

from .domain import BankingError

BANK_DATABASE: Final = "banking"
"""The bank's own database on the embedded server."""

_SCHEMES: Final = ("postgresql", "postgres")


class MalformedDsn(BankingError):
    """A connection string that cannot be one: not a ``postgresql://`` URL."""


class ResetRefused(BankingError):
    """``reset`` cannot start the bank afresh now (the message says why; nothing was deleted)."""


def named_dsn(dsn: str | None) -> str | None:
    """The connection string the bank is told to use: ``dsn``, else
    ``EVENTBUS_DSN``, else ``DATABASE_URL``; None for the embedded server."""
    return dsn if dsn is not None else testing.dsn_from_environment()


def check_dsn(dsn: str | None) -> None:
    """Check that a connection string has the shape of one, without connecting.

    Raises:
        MalformedDsn: not a ``postgresql://`` (or ``postgres://``) URL, or a
            port that is not a number. The message never shows a password.
    """
    if dsn is None:
        return
    try:
        parts = urlsplit(dsn.strip())
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        # Not the error's own words: without its "@host", a URL's password reads as its port.
        raise MalformedDsn(
            f"the connection string is malformed: its host or port cannot be read; write it like {_EXAMPLE}"
        ) from None
    if parts.scheme not in _SCHEMES:
        raise MalformedDsn(
            f"the connection string is malformed: it is not a postgresql:// URL; write it like {_EXAMPLE}"
        )


_EXAMPLE: Final = "postgresql://user:password@host:5432/database"


def data_dir() -> Path:
    """Where the embedded server keeps its data (see the module's docstring)."""
    return testing.default_data_dir()


def describe(dsn: str | None) -> str:
    """Where the bank's data is, for people, never with a password:
    ``banking (embedded, /home/ada/.local/share/eventbus)`` or ``bank on db.example:5432``."""
    named = named_dsn(dsn)
    if named is None:
        return f"{BANK_DATABASE} (embedded, {data_dir()})"
    try:
        parts = urlsplit(named)
        name = unquote(parts.path.lstrip("/")) or "?"
        host = parts.hostname or parse_qs(parts.query).get("host", [""])[0]
        port = f":{parts.port}" if parts.port else ""
    except ValueError:
        return "a malformed connection string"
    if not host or host.startswith("/"):
        return f"{name} (local socket)"
    return f"{name} on {host}{port}"


@asynccontextmanager
async def bank_database(dsn: str | None) -> AsyncIterator[str]:
    """The connection string of the bank's database, for the duration of the block.

    ``dsn`` (or the environment's) as it is; with none, the ``banking``
    database on the embedded server, which is started (or joined) and the
    database made if missing; if the server dies during the block, the
    bank's connections start it again. Starting the server blocks a worker thread, not
    Trio; leaving lets go of it (the last user stops it), shielded.

    Raises:
        StoreUnavailable: the embedded server could not be started.
    """
    named = named_dsn(dsn)
    if named is not None:
        yield named
        return
    server = testing.EmbeddedServer(data_dir())
    admin = await trio.to_thread.run_sync(server.acquire)
    try:
        with testing.keep_up(server):  # (a server that dies under the bank is started again)
            async with testing.open_loop():
                await testing.create_database(admin, BANK_DATABASE)
            yield server.dsn(BANK_DATABASE)
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.release)


async def reset(dsn: str | None) -> str:
    """Drop the bank's database on the embedded server; return what was done, in a line.

    Blocks for the server's start (in a worker thread) and a few statements.

    Raises:
        ResetRefused: a connection string names the database (it is the
            person's, not the bank's to drop), or other sessions use the
            bank's database (a dashboard, a simulator).
        StoreUnavailable: the embedded server could not be started.
    """
    if named_dsn(dsn) is not None:
        raise ResetRefused(
            "reset starts the bank's own database on the embedded server afresh; the database of "
            "--dsn, EVENTBUS_DSN or DATABASE_URL is yours: drop and create it with your own tools"
        )
    where = data_dir()
    server = testing.EmbeddedServer(where)
    if not (server.pgdata / "PG_VERSION").exists():
        return f"Nothing to reset: the embedded server in {where} holds no data yet."
    admin = await trio.to_thread.run_sync(server.acquire)
    try:
        async with testing.open_loop():
            conn = await testing.connect(admin)
            try:
                return await _drop(conn, where)
            finally:
                await conn.close()
    finally:
        with trio.CancelScope(shield=True):
            await trio.to_thread.run_sync(server.release)


async def _drop(conn: testing.Connection, where: Path) -> str:
    others = await conn.fetchval(
        "SELECT count(*) FROM pg_stat_activity WHERE datname = $1 AND pid <> pg_backend_pid()", BANK_DATABASE
    )
    if others:
        raise ResetRefused(_in_use(others))
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{BANK_DATABASE}"')
    except DatabaseError as exc:
        if exc.sqlstate == "55006":  # object_in_use: a session connected meanwhile
            raise ResetRefused(_in_use(1)) from None
        raise
    return f"The bank starts afresh: its database {BANK_DATABASE!r} in {where} is gone (made again on next use)."


def _in_use(sessions: int) -> str:
    what = "session uses" if sessions == 1 else "sessions use"
    return (
        f"{sessions} other {what} the bank's database (a dashboard, a simulator, a menu?): "
        f"close them, then reset again; nothing was deleted"
    )
