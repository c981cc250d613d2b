"""Events appended by another OS process reach this process's subscribers,
through a killed listening connection and a restart of the database server.

The other process appends with a plain event store (no bus), see
``_stream_worker``; this one subscribes through a bus on the same database, on
a server of the test's own, so the test may restart it.
"""

from __future__ import annotations

import functools
import subprocess
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

import trio

from eventbus import Event, create_filter, open_bus, testing
from eventbus.testing import EmbeddedServer

from ...helpers import spawn_python
from .._stream_worker import event_id
from .test_stream import EVERYTHING, Log, assert_well_formed, everything_after, follow, keys

POLL_INTERVAL = 0.25
# A lost notification delays delivery by at most the poll interval; the rest
# is room for a loaded machine.
AT_MOST = POLL_INTERVAL + 2.0
B_OF_E1 = create_filter(["B"], [{"entity": "e1"}])


class Worker:
    """A ``_stream_worker`` process and its lines of output."""

    def __init__(self, process: subprocess.Popen[str]) -> None:
        self.process = process
        self.appended = 0

    async def next_line(self) -> str:
        assert self.process.stdout is not None
        line = await trio.to_thread.run_sync(self.process.stdout.readline, abandon_on_cancel=True)
        if not line:
            assert self.process.stderr is not None
            raise AssertionError(f"the worker ended early: {self.process.wait()} {self.process.stderr.read()}")
        return line.strip()

    async def wait_appended(self, count: int) -> None:
        while self.appended < count:
            word, number = (await self.next_line()).split()
            assert word == "appended"
            self.appended = int(number)

    async def wait_done(self) -> tuple[int, int]:
        """Once it is done: the position of the last event it appended, and
        how many times it lost the database and tried again."""
        while True:
            word, *numbers = (await self.next_line()).split()
            if word == "done":
                assert await trio.to_thread.run_sync(self.process.wait) == 0
                last, recovered = map(int, numbers)
                return last, recovered
            assert word == "appended"


@asynccontextmanager
async def worker(dsn: str, first: int, count: int, per_append: int, pause: float = 0.0) -> AsyncIterator[Worker]:
    args = (dsn, str(first), str(count), str(per_append), str(pause))
    process = spawn_python("-m", "tests.integration._stream_worker", *args)
    try:
        yield Worker(process)
    finally:
        if process.poll() is None:
            process.kill()
        process.wait()
        for stream in (process.stdout, process.stderr):
            if stream is not None:
                stream.close()


async def append_elsewhere(dsn: str, first: int, count: int, per_append: int) -> int:
    async with worker(dsn, first, count, per_append) as other:
        last, recovered = await other.wait_done()
    assert recovered == 0
    return last


async def wait_until(condition: Callable[[], bool], *, timeout: float) -> None:
    """Poll ``condition`` (something outside this process's control) until it holds."""
    with trio.fail_after(timeout):
        while not condition():
            await trio.sleep(0.01)


async def terminate_listening_connections(dsn: str) -> int:
    async with testing.open_loop():
        conn = await testing.connect(dsn, application_name="eventbus-test-admin")
        try:
            killed: int = await conn.fetchval(
                "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE application_name = 'eventbus-listen'"
            )
        finally:
            await conn.close()
    return killed


async def test_events_from_another_process_arrive_through_a_killed_listener_and_a_server_restart(
    embedded_server: EmbeddedServer,
) -> None:
    server = embedded_server
    async with testing.open_loop():
        await testing.create_database(server.dsn(), "db")
    dsn = server.dsn("db")
    everything, some = Log(), Log()
    with trio.fail_after(120):
        async with open_bus(dsn, poll_interval=POLL_INTERVAL) as bus:
            async with (
                bus.subscribe(EVERYTHING, after=0, max_batch=50, buffer=200) as all_events,
                bus.subscribe(B_OF_E1, after=0, max_batch=7, buffer=7) as some_events,
                trio.open_nursery() as readers,
            ):
                readers.start_soon(follow, all_events, everything)
                readers.start_soon(follow, some_events, some)

                # Plainly: the other process's transactions notify this bus.
                last = await append_elsewhere(dsn, 0, 300, 10)
                with trio.fail_after(10):
                    await everything.position.wait_for(last)
                assert bus.statistics().listener.notifications > 0

                # Nobody listens for a while: the timer reads what was appended.
                assert await terminate_listening_connections(dsn) == 1
                last = await append_elsewhere(dsn, 300, 300, 10)
                with trio.fail_after(AT_MOST):
                    await everything.position.wait_for(last)

                # The server restarts while the other process appends.
                async with worker(dsn, 600, 1500, 5, pause=0.005) as other:
                    await other.wait_appended(300)
                    restart = functools.partial(server.restart, mode="immediate")
                    await trio.to_thread.run_sync(restart)
                    last, recovered = await other.wait_done()
                assert recovered > 0  # the restart came in the middle of its run
                with trio.fail_after(AT_MOST):
                    await everything.position.wait_for(last)
                # Listening again: once after the kill, once after the restart.
                await wait_until(lambda: bus.statistics().listener.reconnects >= 2, timeout=10)

                # This process's appends work again and reach the subscribers too.
                local = await bus.store.append([Event("B", {"entity": "e1", "n": -1})])
                with trio.fail_after(10):
                    await everything.position.wait_for(local[-1].sequence_number)
                    await some.position.wait_for(local[-1].sequence_number)
                readers.cancel_scope.cancel()

            stored = await everything_after(bus, EVERYTHING, 0)
            stored_some = await everything_after(bus, B_OF_E1, 0)

    assert_well_formed(everything.batches, 50)
    assert_well_formed(some.batches, 7)
    assert keys(everything.records) == keys(stored)
    assert keys(some.records) == keys(stored_some)
    assert [r.event_id for r in stored[:-1]] == [event_id(n) for n in range(2100)]
    assert stored[-1].event_id == local[0].event_id
