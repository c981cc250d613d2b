"""Secrets stay secret, the embedded server stays private, names cannot inject."""

from __future__ import annotations

import logging
import os
import stat
import sys
import traceback
from pathlib import Path

import psutil
import pytest
import trio

from eventbus import Event, InvalidDSN, StoreUnavailable, create_filter, open_bus, open_event_store, testing
from eventbus.testing import EmbeddedServer, redact_dsn

from ...helpers import ROOT

PASSWORD = "s3cr3t-Pa55"

BAD_DSNS = [
    f"postgresql://alice:{PASSWORD}@127.0.0.1:1/app",  # nothing listens there
    f"postgresql://alice:{PASSWORD}@/app?host=/nonexistent/socket/dir",
    f"postgresql://alice@127.0.0.1:1/app?password={PASSWORD}",
]


@pytest.mark.parametrize("dsn", BAD_DSNS, ids=["unreachable", "no socket", "query"])
async def test_a_password_never_appears_in_errors_or_logs(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    with pytest.raises(StoreUnavailable) as caught:
        async with open_event_store(dsn):
            pass
    assert PASSWORD not in str(caught.value)
    assert PASSWORD not in repr(caught.value)
    assert "***" in str(caught.value) or "alice" in str(caught.value)
    assert PASSWORD not in caplog.text


SECRET = "S3cretZq9Vw"

# A password with a reserved character left unencoded: no pattern can tell where it ends.
MALFORMED_DSNS = {
    "hash": f"postgresql://postgres:Hash#{SECRET}@127.0.0.1:1/app",
    "question mark": f"postgresql://postgres:Q?{SECRET}@127.0.0.1:1/app",
    "at sign": f"postgresql://postgres:At@{SECRET}@127.0.0.1:1/app",
    "slash": f"postgresql://postgres:Sl/{SECRET}@127.0.0.1:1/app",
    "digits and slash": f"postgresql://postgres:12/{SECRET}@127.0.0.1:1/app",
    "at the end": f"postgresql://postgres:{SECRET}#?@127.0.0.1:1/app",
    "bad port": f"postgresql://postgres:{SECRET}@127.0.0.1:notaport/app",
    "key=value": f"host=127.0.0.1 port=1 user=alice password={SECRET} dbname=app",
}


def assert_nothing_of_the_secret(text: str) -> None:
    for start in range(len(SECRET) - 4):
        assert SECRET[start : start + 5] not in text, text


def chain(exc: BaseException | None) -> list[BaseException]:
    """The exception and every exception chained to it (cause, context, group member)."""
    seen: list[BaseException] = []
    todo = [exc]
    while todo:
        exc = todo.pop()
        if exc is None or any(exc is s for s in seen):
            continue
        seen.append(exc)
        todo += [exc.__cause__, exc.__context__]
        if isinstance(exc, BaseExceptionGroup):
            todo += exc.exceptions
    return seen


async def open_and_fail(dsn: str | None) -> InvalidDSN:
    with pytest.raises(InvalidDSN) as caught:
        async with open_bus(dsn):
            pass
    return caught.value


@pytest.mark.parametrize("dsn", MALFORMED_DSNS.values(), ids=MALFORMED_DSNS.keys())
@pytest.mark.parametrize("given_as", ["dsn", "EVENTBUS_DSN", "DATABASE_URL"])
async def test_a_malformed_dsn_is_refused_and_no_part_of_its_password_shows(
    dsn: str, given_as: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    monkeypatch.delenv("EVENTBUS_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    if given_as != "dsn":
        monkeypatch.setenv(given_as, dsn)
    error = await open_and_fail(dsn if given_as == "dsn" else None)
    assert "is malformed" in str(error)
    assert ("passed as dsn" if given_as == "dsn" else f"in {given_as}") in str(error)
    assert isinstance(error, StoreUnavailable)
    for exc in chain(error):
        assert_nothing_of_the_secret(str(exc))
        assert_nothing_of_the_secret(repr(exc))
    assert_nothing_of_the_secret("".join(traceback.format_exception(error)))
    assert_nothing_of_the_secret(caplog.text)


@pytest.mark.parametrize("dsn", MALFORMED_DSNS.values(), ids=MALFORMED_DSNS.keys())
async def test_plain_connections_refuse_a_malformed_dsn_too(dsn: str) -> None:
    async with testing.open_loop():
        with pytest.raises(InvalidDSN) as caught:
            await testing.connect(dsn)
    assert_nothing_of_the_secret("".join(traceback.format_exception(caught.value)))


@pytest.mark.parametrize("dsn", ["", "   "])
async def test_an_empty_dsn_is_refused_and_never_means_the_embedded_server(
    dsn: str, monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # A setting read as os.environ.get("DB", ""): an empty string is no request for the embedded server.
    monkeypatch.delenv("EVENTBUS_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("EVENTBUS_DATA_DIR", str(tmp_path / "embedded"))
    for opener in (open_bus, open_event_store):
        with pytest.raises(InvalidDSN, match="is empty"):
            async with opener(dsn):
                pass
    done = await trio.run_process([sys.executable, "-m", "eventbus", "status", "--dsn", dsn], cwd=ROOT,
                                  capture_stdout=True, capture_stderr=True, check=False)  # fmt: skip
    assert done.returncode == 2 and b"is empty" in done.stderr
    assert not (tmp_path / "embedded").exists()


async def test_a_driver_error_at_connect_is_not_chained_to_the_error_raised() -> None:
    with pytest.raises(StoreUnavailable) as caught:
        async with open_event_store(f"postgresql://alice:{PASSWORD}@127.0.0.1:1/app"):
            pass
    assert caught.value.__cause__ is None
    assert all(isinstance(exc, (StoreUnavailable, BaseExceptionGroup)) for exc in chain(caught.value))


async def banking_cli(*args: str, env: dict[str, str]) -> tuple[int, str, str]:
    base = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")}
    with trio.fail_after(60):
        result = await trio.run_process(
            [sys.executable, "-m", "tui", *args],
            cwd=ROOT,
            env={**base, **env},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return result.returncode, result.stdout.decode(), result.stderr.decode()


CLI_SHAPES = ["hash", "question mark", "at sign", "slash"]


@pytest.mark.parametrize("shape", CLI_SHAPES)
@pytest.mark.parametrize("command", ["list", "dashboard"])
async def test_the_banking_command_shows_no_part_of_a_malformed_dsns_password(shape: str, command: str) -> None:
    dsn = MALFORMED_DSNS[shape]
    for args, env in [
        ([command, "--dsn", dsn], {}),
        ([command], {"EVENTBUS_DSN": dsn}),
        ([command], {"DATABASE_URL": dsn}),
    ]:
        status, out, err = await banking_cli(*args, env=env)
        assert status == 2, err  # bad usage: the connection string given is malformed
        assert "is malformed" in err
        assert "Traceback" not in err
        assert_nothing_of_the_secret(out + err)


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
