"""Secrets stay secret, the embedded server stays private, names cannot inject."""

from __future__ import annotations

import logging
import os
import stat
from pathlib import Path

import psutil
import pytest

from eventbus import Event, StoreUnavailable, create_filter, open_event_store, testing
from eventbus.testing import EmbeddedServer, redact_dsn

PASSWORD = "s3cr3t-Pa55"

BAD_DSNS = [
    f"postgresql://alice:{PASSWORD}@127.0.0.1:1/app",  # nothing listens there
    f"postgresql://alice:{PASSWORD}@127.0.0.1:notaport/app",  # malformed port
    f"postgresql://alice:{PASSWORD}@/app?host=/nonexistent/socket/dir",
    f"host=127.0.0.1 port=1 user=alice password={PASSWORD} dbname=app",
    f"postgresql://alice@127.0.0.1:1/app?password={PASSWORD}",
]


@pytest.mark.parametrize("dsn", BAD_DSNS, ids=["unreachable", "bad port", "no socket", "key=value", "query"])
async def test_a_password_never_appears_in_errors_or_logs(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreUnavailable) as caught:
        async with open_event_store(dsn):
            pass
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value)
    assert "***" in str(caught.value) or "alice" in str(caught.value)
    assert PASSWORD not in caplog.text


def test_redaction_covers_every_dsn_form() -> None:
    for dsn in BAD_DSNS:
        assert PASSWORD not in redact_dsn(dsn)
    assert redact_dsn("postgresql://u:p%40ss@h/db") == "postgresql://u:***@h/db"


def _listening_ports(pid: int) -> list[tuple[str, int]]:
    process = psutil.Process(pid)
    sockets = []
    for child in [process, *process.children(recursive=True)]:
        try:
            connections = child.net_connections(kind="inet")
        except psutil.Error:
            continue
        sockets += [(c.laddr.ip, c.laddr.port) for c in connections if c.status == psutil.CONN_LISTEN]
    return sockets


async def test_the_embedded_server_listens_on_a_private_unix_socket_only(embedded_server: EmbeddedServer) -> None:
    pid = embedded_server.pid()
    assert pid is not None
    assert _listening_ports(pid) == []
    async with testing.open_loop():
        conn = await testing.connect(embedded_server.dsn())
        try:
            assert await conn.fetchval("SHOW listen_addresses") == ""
            assert await conn.fetchval("SHOW unix_socket_permissions") == "0700"
        finally:
            await conn.close()
    socket_dir = embedded_server.socket_dir
    assert stat.S_IMODE(socket_dir.stat().st_mode) == 0o700


def test_the_embedded_data_directory_is_private(embedded_server: EmbeddedServer) -> None:
    for folder in (embedded_server.data_dir, embedded_server.pgdata):
        mode = stat.S_IMODE(folder.stat().st_mode)
        assert mode & 0o077 == 0, f"{folder} is {oct(mode)}"
    owner = embedded_server.pgdata.stat().st_uid
    assert owner == (os.geteuid() if os.geteuid() != 0 else Path(embedded_server.data_dir).stat().st_uid)


HOSTILE_TYPES = [
    "Robert'); DROP TABLE eventbus.events;--",
    'quote " and backslash \\',
    "$1 $$ dollar $$",
    "select * from pg_user",
    "ünïcødé 🚀 тип",
    "a" * 500,
]


async def test_event_types_that_look_like_sql_are_stored_and_found_as_text(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        for event_type in HOSTILE_TYPES:
            records = await store.append([Event(event_type, {"k": event_type})])
            result = await store.query(create_filter([event_type], [{"k": event_type}]))
            assert [r.event_id for r in result.events] == [records[0].event_id]
            assert result.events[0].event_type == event_type
        assert await store.head() == len(HOSTILE_TYPES)
