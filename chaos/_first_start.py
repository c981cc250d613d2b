"""A first start killed during initdb, aside from the run's server (``--first-start-faults``).

eventbus, given no database, runs an embedded server of its own and makes its
data directory on the first start. This fault starts a process in embedded
mode in a fresh data directory, kills it (SIGKILL, as the OOM killer does, or
SIGTERM, as ``docker stop`` and systemd do) while ``initdb`` runs, then starts
another. The second must start, and its server must listen on no TCP
address and on private socket folders only, whatever the first left behind.
Afterwards the server is stopped and anything the first left running is
killed.
"""

from __future__ import annotations

import contextlib
import functools
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Final

import psutil
import trio

from eventbus import EventBusError, testing
from eventbus.testing import EmbeddedServer

INITDB_TIMEOUT: Final = 60.0
"""Seconds for the first start to reach initdb."""

START_TIMEOUT: Final = 180.0
"""Seconds for the second start to open its store."""

STOP_TIMEOUT: Final = 60.0
"""Seconds for the server to stop afterwards."""

_SCRIPT = """
import trio
from eventbus import open_event_store

async def main():
    async with open_event_store() as store:
        await store.head()
    print("started", flush=True)

trio.run(main)
"""

_ROOT: Final = Path(__file__).resolve().parent.parent


def _environment(data: Path) -> dict[str, str]:
    env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "EVENTBUS_DSN")}
    env["EVENTBUS_DATA_DIR"] = str(data)
    return env


def _initdb_runs(pid: int) -> bool:
    try:
        return any(child.name() == "initdb" for child in psutil.Process(pid).children(recursive=True))
    except psutil.Error:
        return False


def _left_running(data: Path) -> list[psutil.Process]:
    """Processes whose command line names the data directory (an orphaned initdb, a server)."""
    found = []
    for process in psutil.process_iter(["cmdline"]):
        cmdline = process.info["cmdline"] or []
        if any(str(data) in part for part in cmdline) and process.pid != os.getpid():
            found.append(process)
    return found


def _mode(folder: str) -> int:
    return os.stat(folder).st_mode & 0o777


async def _private(server: EmbeddedServer) -> list[str]:
    """What is wrong with where the server listens: a TCP address, a socket folder others can enter."""
    conn = await testing.connect(server.dsn(), application_name="chaos-harness")
    try:
        listen = str(await conn.fetchval("SHOW listen_addresses"))
        folders = str(await conn.fetchval("SHOW unix_socket_directories"))
    finally:
        await conn.close()
    problems = [f"the server listens on TCP ({listen!r})"] if listen.strip() else []
    for folder in (part.strip() for part in folders.split(",") if part.strip()):
        mode = _mode(folder)
        if mode & 0o077:
            problems.append(f"the server's socket folder {folder} has mode {mode:o}: other users can connect")
    return problems


async def first_start_killed(folder: Path, number: int, signal_name: str) -> tuple[str, list[str]]:
    """Kill a first start during initdb with ``signal_name``, start again, check the server.

    Blocks for both starts (bounded) and the stop. Returns what happened, in a
    few words, and the problems found.
    """
    data = folder / f"first-start-{number}"
    log = folder / f"first-start-{number}.err.log"
    argv = [sys.executable, "-c", _SCRIPT]
    problems: list[str] = []
    happened = ""
    try:
        with log.open("ab") as err:
            first = await trio.lowlevel.open_process(
                argv, stdout=subprocess.DEVNULL, stderr=err, cwd=_ROOT, env=_environment(data)
            )
        with trio.move_on_after(INITDB_TIMEOUT):
            while not _initdb_runs(first.pid) and first.returncode is None:  # noqa: ASYNC110 - nothing tells
                await trio.sleep(0.01)
        reached = _initdb_runs(first.pid)
        first.send_signal(signal.Signals[signal_name])
        await first.wait()
        happened = f"{signal_name} {'during initdb' if reached else 'before initdb ran'}"
        second: subprocess.CompletedProcess[bytes] | None = None
        with log.open("ab") as err, trio.move_on_after(START_TIMEOUT):
            second = await trio.run_process(
                argv, capture_stdout=True, stderr=err, cwd=_ROOT, env=_environment(data), check=False
            )
        if second is None or second.returncode != 0 or b"started" not in second.stdout:
            last = [line for line in log.read_text(errors="replace").splitlines() if line.strip()][-1:]
            status = "no status: it did not end in time" if second is None else f"status {second.returncode}"
            problems.append(f"after a first start killed by {signal_name}, the next start failed ({status}): "
                            f"{last[0][-300:] if last else ''}")  # fmt: skip
            happened += "; the next start failed"
        else:
            unsafe = await _private(EmbeddedServer(data))
            problems += [f"after a first start killed by {signal_name}: {problem}" for problem in unsafe]
            happened += "; the next start came up" + ("" if not problems else ", unsafe")
    except (OSError, EventBusError) as exc:
        problems.append(f"the first-start fault could not be carried out: {exc}")
    finally:
        with trio.move_on_after(STOP_TIMEOUT, shield=True):
            server = EmbeddedServer(data)
            stop = functools.partial(server.stop, mode="immediate")
            with contextlib.suppress(OSError, EventBusError, subprocess.SubprocessError):
                await trio.to_thread.run_sync(stop, abandon_on_cancel=True)
            for process in _left_running(data):
                process.kill()
    return happened, problems
