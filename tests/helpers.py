"""Helpers shared by the tests."""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlsplit, urlunsplit

import attrs
import trio

from eventbus import EventBusError, testing
from eventbus.testing import EmbeddedServer

TEMPLATE = "eventbus_test_template"
ROOT = Path(__file__).resolve().parent.parent


@attrs.frozen
class Replicated:
    """A primary and its hot standby (streaming replication), both embedded."""

    primary: EmbeddedServer
    standby: EmbeddedServer


@attrs.frozen
class ReplicaDatabase:
    """One fresh database, as the primary and the standby serve it."""

    primary_dsn: str
    standby_dsn: str
    servers: Replicated


def database_dsn(admin_dsn: str, name: str) -> str:
    """The admin DSN pointed at database ``name``."""
    parts = urlsplit(admin_dsn)
    return urlunsplit(parts._replace(path="/" + name))


async def drop_database(admin_dsn: str, name: str) -> None:
    """Drop a test database, closing whatever still uses it."""
    async with testing.open_loop():
        conn = await testing.connect(admin_dsn)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


def spawn_python(*args: str, env: dict[str, str] | None = None) -> subprocess.Popen[str]:
    """Start ``python -m <args>`` from the project root, output captured."""
    return subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )


# ---------------------------------------------------------------- worker processes


class LineReader:
    """Lines from a byte stream."""

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._buffer = b""

    async def receive_line(self) -> str | None:
        while b"\n" not in self._buffer:
            data = await self._stream.receive_some(65536)
            if not data:
                return None
            self._buffer += data
        line, self._buffer = self._buffer.split(b"\n", 1)
        return line.decode()


def say(line: str) -> None:
    sys.stdout.write(line + "\n")
    sys.stdout.flush()


STANDBY_CATCH_UP = 30.0  # seconds: a bound, never a wait
STANDBY_RETRY = 0.01  # seconds between looks at a standby, which has no change notification


async def wait_for_schema(standby_dsn: str) -> None:
    """Until the standby serves the database with the eventbus schema."""
    with trio.fail_after(STANDBY_CATCH_UP):
        while True:
            try:
                conn = await testing.connect(standby_dsn)
            except EventBusError:
                await trio.sleep(STANDBY_RETRY)
                continue
            try:
                if await conn.fetchval("SELECT to_regclass('eventbus.events') IS NOT NULL"):
                    return
            finally:
                await conn.close()
            await trio.sleep(STANDBY_RETRY)


class SchedulerCount(trio.abc.Instrument):
    """Steps of each task (by name) and scheduler rounds (waits for I/O)."""

    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.rounds = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1

    def before_io_wait(self, timeout: float) -> None:
        self.rounds += 1

    def steps_of(self, suffix: str) -> int:
        """The steps of the tasks whose names end with ``suffix``."""
        return sum(count for name, count in self.steps.items() if name.endswith(suffix))


@contextmanager
def counting_scheduler() -> Iterator[SchedulerCount]:
    """Count the run's steps and rounds for the block."""
    count = SchedulerCount()
    trio.lowlevel.add_instrument(count)
    try:
        yield count
    finally:
        trio.lowlevel.remove_instrument(count)
