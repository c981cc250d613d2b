"""Projections across processes: a crash in the middle of a replay, one leader at a time,
and a leader whose handlers hang.

The projections run in worker processes (``_projection_worker``), driven one
line at a time over their standard input and output, and killed with SIGKILL.
Who applied which events is in the read model itself (table ``appliers``).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from pathlib import Path

import pytest
import trio

from eventbus import Bus, Event, EventStore, ProjectionError, create_filter, open_bus

from ...helpers import ROOT
from .._projection_worker import (
    TYPES,
    LineReader,
    account_events,
    accounts_projection,
    read_appliers,
    read_model,
    replay,
)

WORKER = "tests.integration._projection_worker"
WORKER_START_TIMEOUT = 30.0
POLL_INTERVAL = 0.01  # seconds between looks at another process's progress
TAKEOVER_TIMEOUT = 5.0  # "within a few seconds"


class Worker:
    """A worker process (see ``_projection_worker``), driven one line at a time."""

    def __init__(self, process: trio.Process, log: Path) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.pid = process.pid
        self._stdin = process.stdin
        self.lines = LineReader(process.stdout)
        self._log = log

    async def ask(self, command: str) -> str:
        await self._stdin.send_all(command.encode() + b"\n")
        line = await self.lines.receive_line()
        if line is None:
            code = await self.process.wait()
            raise AssertionError(f"worker {self.pid} ended early ({code}): {self._log.read_text()}")
        return line

    async def kill(self) -> None:
        """SIGKILL: no cleanup of any kind, the connections just drop."""
        self.process.kill()
        await self.process.wait()


@asynccontextmanager
async def open_worker(dsn: str, style: str, log: Path) -> AsyncIterator[Worker]:
    """A worker running the accounts projection in ``style``, once it has started it."""
    with log.open("a") as stderr:
        process = await trio.lowlevel.open_process(
            [sys.executable, "-m", WORKER, dsn, style],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=stderr,
            cwd=ROOT,
        )
    try:
        worker = Worker(process, log)
        with trio.fail_after(WORKER_START_TIMEOUT):
            line = await worker.lines.receive_line()
        assert line == "ready", log.read_text()
        yield worker
    finally:
        with trio.CancelScope(shield=True):
            if process.returncode is None:
                process.kill()
                await process.wait()


async def append_in_chunks(store: EventStore, events: Iterable[Event], size: int) -> int:
    """Append ``events`` ``size`` at a time; return the head."""
    events = list(events)
    for start in range(0, len(events), size):
        await store.append(events[start : start + size])
    return await store.head()


async def stored_checkpoint(bus: Bus, name: str) -> int:
    value = await bus.store.pool.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", name)
    return int(value or 0)


async def poll_until(check: Callable[[], Awaitable[bool]], *, timeout: float) -> None:
    """Look every ``POLL_INTERVAL`` until ``check()`` holds: for other processes' progress."""
    with trio.fail_after(timeout):
        while not await check():
            await trio.sleep(POLL_INTERVAL)


KILL_WINDOWS = [(0.1, 0.3), (0.4, 0.6), (0.7, 0.9)]
"""Where in the replay (as parts of the head) each worker is killed, one after the other."""


async def test_a_projection_killed_in_the_middle_of_100k_events_resumes_and_counts_each_event_once(
    dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "workers.log"
    killed: list[int] = []
    async with open_bus(dsn) as bus:
        head = await append_in_chunks(bus.store, account_events(100_000, seed=1), 1000)
        assert head == 100_000

        for low, high in KILL_WINDOWS:
            async with open_worker(dsn, "batch", log) as worker:

                async def in_the_window(low: float = low, high: float = high) -> bool:
                    return head * low <= await stored_checkpoint(bus, "accounts") <= head * high

                await poll_until(in_the_window, timeout=60)
                await worker.kill()
                killed.append(worker.pid)

        async with open_worker(dsn, "batch", log) as last:
            with trio.fail_after(60):
                assert await last.ask("caught_up") == "caught_up"
            assert await last.ask("status") == f"status live 1 {head}"

        records = (await bus.store.query(create_filter(list(TYPES)))).events
        async with bus.projections.reader("accounts") as tx:
            model = await read_model(tx)
            appliers = await read_appliers(tx)
        assert await stored_checkpoint(bus, "accounts") == head

    assert model == replay(records)
    assert model.tally == head
    # Each process went on from where the one before it died: together they
    # applied 1..head, every event once, none twice, none skipped.
    assert set(appliers) == {*killed, last.pid}
    ranges = [appliers[pid] for pid in [*killed, last.pid]]
    assert [first for _, first, _ in ranges] == [1] + [end + 1 for _, _, end in ranges[:-1]]
    assert all(events == end - first + 1 for events, first, end in ranges)
    assert ranges[-1][2] == head
    for (low, _), (_, _, end) in zip(KILL_WINDOWS, ranges, strict=False):
        assert head * low <= end < head  # killed in the middle, before the end


async def test_two_processes_apply_a_projection_once_and_the_standby_takes_over_when_the_leader_dies(
    dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "workers.log"
    async with open_bus(dsn, poll_interval=0.1) as bus:
        head = await append_in_chunks(bus.store, account_events(500, seed=2), 250)
        async with open_worker(dsn, "each", log) as leader:
            with trio.fail_after(30):
                assert await leader.ask("caught_up") == "caught_up"

            # This process runs the same projection: it stands by.
            await bus.projections.start(accounts_projection(style="each"))

            async def standing_by() -> bool:
                return bus.projections.status()["accounts"].state == "standby"

            await poll_until(standing_by, timeout=10)
            more = list(account_events(4000, seed=3))
            head = await append_in_chunks(bus.store, more[:500], 250)
            with trio.fail_after(30):
                assert await leader.ask("caught_up") == "caught_up"
            assert await leader.ask("status") == f"status live 1 {head}"
            # A standby can wait for the leader, and sees its checkpoint.
            await bus.projections.wait_until_caught_up("accounts", timeout=TAKEOVER_TIMEOUT)
            status = bus.projections.status()["accounts"]
            assert (status.state, status.leader, status.checkpoint) == ("standby", False, head)
            with pytest.raises(ProjectionError, match="led by another process"):
                await bus.projections.rebuild("accounts")
            async with bus.projections.reader("accounts") as tx:
                assert (await read_model(tx)).tally == head
                assert await read_appliers(tx) == {leader.pid: (head, 1, head)}

            # Kill the leader in the middle of the next events.
            before = head
            head = await append_in_chunks(bus.store, more[500:], 250)

            async def in_the_middle() -> bool:
                checkpoint = await stored_checkpoint(bus, "accounts")
                return before + (head - before) // 10 <= checkpoint <= before + (head - before) * 9 // 10

            await poll_until(in_the_middle, timeout=30)
            await leader.kill()
            killed_at = trio.current_time()

        async def leading() -> bool:
            return bus.projections.status()["accounts"].leader

        await poll_until(leading, timeout=TAKEOVER_TIMEOUT)
        took_over_after = trio.current_time() - killed_at
        await bus.projections.wait_until_caught_up("accounts", timeout=60)
        status = bus.projections.status()["accounts"]
        records = (await bus.store.query(create_filter(list(TYPES)))).events
        async with bus.projections.reader("accounts") as tx:
            model = await read_model(tx)
            appliers = await read_appliers(tx)

    assert took_over_after < TAKEOVER_TIMEOUT
    assert (status.state, status.leader, status.checkpoint, status.lag) == ("live", True, head, 0)
    assert model == replay(records)
    assert model.tally == head
    # The dead leader applied 1..k, this process k + 1 onwards: once each.
    k = appliers[leader.pid][2]
    assert before < k < head
    assert appliers == {leader.pid: (k, 1, k), os.getpid(): (head - k, k + 1, head)}


async def test_a_leader_whose_handler_hangs_fails_at_its_deadline_and_lets_a_standby_take_over(
    dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "workers.log"
    async with open_bus(dsn, poll_interval=0.1) as bus, open_worker(dsn, "hang", log) as hung:

        async def it_leads() -> bool:
            return await hung.ask("status") == "status live 1 0"

        async def standing_by() -> bool:
            return bus.projections.status()["accounts"].state == "standby"

        await poll_until(it_leads, timeout=10)
        await bus.projections.start(accounts_projection(style="each"))
        await poll_until(standing_by, timeout=10)
        head = await append_in_chunks(bus.store, account_events(300, seed=4), 100)
        # Its batches pass their deadline twice (a try, a restart); it fails and
        # lets go of the lead; this process, standing by, takes over.
        await bus.projections.wait_until_caught_up("accounts", timeout=TAKEOVER_TIMEOUT + 5)
        hung_status = await hung.ask("status")
        hung_error = await hung.ask("error")
        status = bus.projections.status()["accounts"]
        records = (await bus.store.query(create_filter(list(TYPES)))).events
        async with bus.projections.reader("accounts") as tx:
            model = await read_model(tx)
            appliers = await read_appliers(tx)

    assert hung_status == "status failed 0 0"
    assert re.fullmatch(
        r"error projection accounts: handler for AccountOpened at position 1 passed its deadline of 0.3 s"
        r" \(handler_timeout\); the batch at positions 1 to \d+ was cancelled and rolled back",
        hung_error,
    ), hung_error
    assert (status.state, status.leader, status.checkpoint, status.lag) == ("live", True, head, 0)
    assert model == replay(records)
    assert appliers == {os.getpid(): (head, 1, head)}  # the hung leader committed nothing
