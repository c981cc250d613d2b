"""The database a chaos run attacks: on an embedded server of its own, or a
fresh database on a server it is given.

On its own server the run can crash PostgreSQL (``pg_ctl stop --mode
immediate``, then start) as well as end connections; on a server it is given
it only ends connections. Either way the database is new, so the checks see
exactly the events of this run.

On its own server the run also keeps a hot standby of it (streaming
replication), which the reader reads through and which may be crashed too.

The connection string the simulators get carries a password. The embedded
server never asks for it (it trusts its private unix socket), so it is a
marker: the run checks that it never shows up in any output.
"""

from __future__ import annotations

import functools
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Final
from urllib.parse import quote, urlsplit, urlunsplit

import attrs
import trio

from eventbus import EventBusError, StoreUnavailable, open_event_store, testing
from eventbus.testing import EmbeddedServer, start_standby

SERVER_SETTINGS: Final = {"fsync": "off", "max_connections": "300"}
"""The embedded server's settings. fsync off: a crash of the server process
loses nothing the operating system holds (only a power cut would)."""

DATABASE: Final = "chaos"
"""The database's name on the run's own server."""

APPLICATION_NAME: Final = "chaos-harness"
"""The harness's own connections, which it never terminates."""

STOP_TIMEOUT: Final = 60.0
"""Seconds the embedded server may take to stop at the end."""

POSTMASTER_TIMEOUT: Final = 60.0
"""Seconds the server has to accept connections again after its postmaster was killed."""

POSTMASTER_RETRY: Final = 0.5
"""Seconds between attempts to start the server after its postmaster was killed."""

_TERMINATE = """
SELECT count(*) FILTER (WHERE pg_terminate_backend(pid))
FROM pg_stat_activity
WHERE datname = $1 AND application_name LIKE $2 AND pid <> pg_backend_pid()
"""


def with_database(dsn: str, database: str, *, password: str | None = None) -> str:
    """``dsn`` pointed at ``database`` (and carrying ``password``, if given)."""
    if "://" not in dsn:
        extra = f" password={password}" if password else ""
        return f"{dsn} dbname={database}{extra}"
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if password is not None:
        user, _, host = netloc.rpartition("@")
        netloc = f"{user.partition(':')[0]}:{quote(password, safe='')}@{host}"
    return urlunsplit(parts._replace(netloc=netloc, path="/" + quote(database)))


def password_of(dsn: str) -> str | None:
    """The password a URL-style connection string holds, if any."""
    if "://" not in dsn:
        return None
    return urlsplit(dsn).password


@attrs.define
class ChaosDatabase:
    """The run's database and what the harness may do to its server.

    Attributes:
        dsn: what the simulators and the checks connect with.
        admin_dsn: a connection string with the right to end connections.
        name: the database's name.
        server: the run's own server; None when the server was given.
        password: the password the DSN carries (never to be printed).
        standby: the hot standby of the run's own server, if any.
        standby_dsn: the database on the standby (with the same password).
        restarts: server restarts done.
        postmaster_kills: postmasters killed (and the server started again).
        standby_restarts: standby restarts done.
        terminations: terminations done.
        terminated: connections they ended.
        keep: leave the database in place at the end (set when a check failed).
    """

    dsn: str
    admin_dsn: str
    name: str
    server: EmbeddedServer | None
    password: str | None
    standby: EmbeddedServer | None = None
    standby_dsn: str | None = None
    restarts: int = 0
    postmaster_kills: int = 0
    standby_restarts: int = 0
    terminations: int = 0
    terminated: int = 0
    keep: bool = False

    @property
    def can_restart(self) -> bool:
        """Whether the server is the run's own (and so may be crashed)."""
        return self.server is not None

    async def restart_server(self) -> float:
        """Crash the server (immediate mode) and start it again; the seconds it took.

        Blocks a worker thread until the server accepts connections again
        (at most the embedded server's start timeout).

        Raises:
            StoreUnavailable: the server did not come back.
        """
        assert self.server is not None, "only the run's own server is restarted"
        began = trio.current_time()
        await trio.to_thread.run_sync(functools.partial(self.server.restart, mode="immediate"))
        self.restarts += 1
        return trio.current_time() - began

    async def kill_postmaster(self) -> float:
        """SIGKILL the server's postmaster (its backends notice and end on
        their own), then start the server again, as its owner would; the
        seconds until it accepts connections.

        Blocks worker threads for the starts, at most ``POSTMASTER_TIMEOUT``.

        Raises:
            StoreUnavailable: the server did not come back.
        """
        assert self.server is not None, "only the run's own server is killed"
        server = self.server
        pid = await trio.to_thread.run_sync(server.pid)
        if pid is not None:
            os.kill(pid, signal.SIGKILL)
        self.postmaster_kills += 1
        began = trio.current_time()
        last: Exception | None = None
        with trio.move_on_after(POSTMASTER_TIMEOUT):
            while True:
                try:
                    await trio.to_thread.run_sync(server.start, abandon_on_cancel=True)
                    conn = await testing.connect(self.admin_dsn, application_name=APPLICATION_NAME)
                    await conn.close()
                    return trio.current_time() - began
                except EventBusError as exc:
                    last = exc
                await trio.sleep(POSTMASTER_RETRY)
        raise StoreUnavailable(f"no connection {POSTMASTER_TIMEOUT:.0f} s after the postmaster was killed: {last}")

    async def restart_standby(self) -> float:
        """Crash the hot standby (immediate mode) and start it again; the
        seconds it took (blocking a worker thread, as ``restart_server``).

        Raises:
            StoreUnavailable: the standby did not come back.
        """
        assert self.standby is not None, "only a run with a standby restarts it"
        began = trio.current_time()
        await trio.to_thread.run_sync(functools.partial(self.standby.restart, mode="immediate"))
        self.standby_restarts += 1
        return trio.current_time() - began

    async def terminate(self, pattern: str) -> int:
        """End the database's connections whose application name is LIKE ``pattern``.

        Blocks for a connection and one statement. Returns how many ended.

        Raises:
            StoreUnavailable: the server could not be reached.
        """
        conn = await testing.connect(with_database(self.admin_dsn, self.name), application_name=APPLICATION_NAME)
        try:
            count = int(await conn.fetchval(_TERMINATE, self.name, pattern))
        finally:
            await conn.close()
        self.terminations += 1
        self.terminated += count
        return count


@asynccontextmanager
async def open_chaos_database(
    workdir: Path, admin_dsn: str | None, *, keep: bool = False
) -> AsyncIterator[ChaosDatabase]:
    """A fresh database with the eventbus schema, for the block's duration.

    With ``admin_dsn`` None an embedded server is started in
    ``workdir / "pg"`` and stopped when the block ends; otherwise a database
    named after the time and the process is made on that server and dropped
    when the block ends, unless ``keep`` (or the database's ``keep``, set
    meanwhile). Starting and stopping block worker
    threads; leaving is shielded and bounded.

    Raises:
        StoreUnavailable: the server could not be started or reached.
    """
    async with testing.open_loop():
        if admin_dsn is None:
            async with _own_server(workdir) as database:
                yield database
        else:
            async with _given_server(admin_dsn, keep=keep) as database:
                yield database


@asynccontextmanager
async def _own_server(workdir: Path) -> AsyncIterator[ChaosDatabase]:
    server = EmbeddedServer(workdir / "pg", settings=SERVER_SETTINGS)
    standby: EmbeddedServer | None = None
    await trio.to_thread.run_sync(server.start)
    try:
        admin = server.dsn()
        await testing.create_database(admin, DATABASE)
        password = "chaos-" + secrets.token_hex(8)
        database = ChaosDatabase(
            dsn=with_database(admin, DATABASE, password=password),
            admin_dsn=admin,
            name=DATABASE,
            server=server,
            password=password,
        )
        await _install_schema(database.dsn)
        standby = await trio.to_thread.run_sync(start_standby, server, workdir / "standby")
        database.standby = standby
        database.standby_dsn = with_database(standby.dsn(), DATABASE, password=password)
        yield database
    finally:
        with trio.move_on_after(STOP_TIMEOUT, shield=True):
            for running in (standby, server):
                if running is not None:
                    stop = functools.partial(running.stop, mode="fast")
                    await trio.to_thread.run_sync(stop, abandon_on_cancel=True)


@asynccontextmanager
async def _given_server(admin_dsn: str, *, keep: bool) -> AsyncIterator[ChaosDatabase]:
    name = f"chaos_{time.strftime('%Y%m%d_%H%M%S')}_{os.getpid()}"
    await testing.create_database(admin_dsn, name)
    database: ChaosDatabase | None = None
    try:
        database = ChaosDatabase(
            dsn=with_database(admin_dsn, name),
            admin_dsn=admin_dsn,
            name=name,
            server=None,
            password=password_of(admin_dsn),
            keep=keep,
        )
        await _install_schema(database.dsn)
        yield database
    finally:
        if database is None or not database.keep:
            with trio.move_on_after(STOP_TIMEOUT, shield=True):
                await _drop(admin_dsn, name)


async def _install_schema(dsn: str) -> None:
    # Before any simulator starts, so that no crash strikes the first install.
    async with open_event_store(dsn):
        pass


async def _drop(admin_dsn: str, name: str) -> None:
    try:
        conn = await testing.connect(admin_dsn, application_name=APPLICATION_NAME)
    except EventBusError:
        return
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    except EventBusError:
        pass
    finally:
        await conn.close()
