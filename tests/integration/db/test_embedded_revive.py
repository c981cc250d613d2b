"""The embedded server's postmaster dies under the processes using it: they start it again and carry on.

Each test runs an embedded server of its own (``EVENTBUS_DATA_DIR`` in the
test's folder), reached with no connection string, as a program would. Where
a test waits for the killed postmaster to be gone, it polls the process
table: that is the operating system's state, not something to await.
"""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from decimal import Decimal
from pathlib import Path

import psutil
import pytest
import trio

from eventbus import (
    Event,
    EventRecord,
    EventStore,
    InvalidDSN,
    StoreUnavailable,
    create_filter,
    open_bus,
    open_event_store,
    testing,
)
from eventbus.testing import EmbeddedServer

from ...helpers import ROOT, LineReader

RECONNECT_TIMEOUT = 0.5
CLIENT_BACKOFF = 0.05  # seconds a writer waits after StoreUnavailable before it tries again
RECOVERY = 120  # seconds: a bound, never a wait

WORKER = """
import logging, sys, uuid, trio
from eventbus import Event, StoreUnavailable, open_event_store

logging.basicConfig(level=logging.WARNING, stream=sys.stderr, format="%(name)s %(message)s")

async def main():
    async with open_event_store(reconnect_timeout=0.5) as store:
        print("ready", flush=True)
        for line in sys.stdin:
            event = Event("FromWorker", {}, event_id=uuid.uuid4())
            while True:
                try:
                    [record] = await store.append([event])
                    break
                except StoreUnavailable:
                    await trio.sleep(0.05)
            print(record.sequence_number, flush=True)

trio.run(main)
"""


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    folder = tmp_path / "embedded"
    monkeypatch.delenv("EVENTBUS_DSN", raising=False)
    monkeypatch.delenv("DATABASE_URL", raising=False)
    monkeypatch.setenv("EVENTBUS_DATA_DIR", str(folder))
    return folder


def kill_postmaster(server: EmbeddedServer) -> int:
    pid = server.pid()
    assert pid is not None
    process = psutil.Process(pid)
    process.kill()
    process.wait(timeout=30)
    return pid


async def append_until_stored(store: EventStore, event: Event) -> tuple[EventRecord, int]:
    """Append ``event`` (the same id each time) until it is stored; the record and the failures before."""
    failures = 0
    with trio.fail_after(RECOVERY):
        while True:
            try:
                [record] = await store.append([event])
                return record, failures
            except StoreUnavailable:
                failures += 1
                await trio.sleep(CLIENT_BACKOFF)


async def test_a_killed_embedded_postmaster_is_started_again_by_the_bus_using_it(
    data_dir: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="eventbus.embedded")
    server = EmbeddedServer(data_dir)
    async with open_bus(reconnect_timeout=RECONNECT_TIMEOUT) as bus, bus.subscribe(create_filter([])) as sub:
        await bus.store.append([Event("Before", {})])
        # A connection string that cannot be read is refused as such, embedded server held or not.
        with pytest.raises(InvalidDSN):
            await testing.connect("postgresql://alice:secret@[::1/app")
        killed = kill_postmaster(server)
        record, _ = await append_until_stored(bus.store, Event("After", {}, event_id=uuid.uuid4()))
        assert record.sequence_number == 2
        assert server.pid() not in (None, killed)
        with trio.fail_after(RECOVERY):
            seen: list[str] = []
            async for batch in sub:
                seen += [r.event_type for r in batch]
                if "After" in seen:
                    break
        assert seen == ["Before", "After"]
        assert await bus.store.head() == 2
    assert [r.getMessage() for r in caplog.records if r.name == "eventbus.embedded"] == [
        f"the embedded PostgreSQL server at {data_dir} was down; this process started it again"
    ]
    assert server.pid() is None  # the last process to let go stopped it


async def test_the_bank_on_the_embedded_server_starts_it_again_when_it_dies(data_dir: Path) -> None:
    from apps.banking.app import open_bank

    server = EmbeddedServer(data_dir)
    async with open_bank(projections=False) as bank:
        first = await bank.open_account(owner="Ada", account_type="checking", currency="EUR", initial_deposit="5")
        killed = kill_postmaster(server)
        with trio.fail_after(RECOVERY):
            while True:  # (a command id, so a retry is the same deposit)
                try:
                    await bank.deposit(first.account_id, "1.00", command_id=uuid.UUID(int=7))
                    break
                except StoreUnavailable:
                    await trio.sleep(CLIENT_BACKOFF)
        assert server.pid() not in (None, killed)
        assert (await bank.get_account(first.account_id)).balance == Decimal("6.00")
    assert server.pid() is None


async def test_processes_sharing_the_embedded_server_start_it_again_once_and_all_carry_on(
    data_dir: Path, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING, logger="eventbus.embedded")
    server = EmbeddedServer(data_dir)
    errors = tmp_path / "worker.err"
    async with open_event_store(reconnect_timeout=RECONNECT_TIMEOUT) as store:
        await store.append([Event("Before", {})])
        with errors.open("wb") as stderr:
            worker = await trio.lowlevel.open_process(
                [sys.executable, "-c", WORKER], cwd=ROOT, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=stderr
            )
        try:
            assert worker.stdin is not None and worker.stdout is not None
            stdin, lines = worker.stdin, LineReader(worker.stdout)
            with trio.fail_after(RECOVERY):
                assert await lines.receive_line() == "ready"
            kill_postmaster(server)
            positions: list[int] = []

            async def in_worker() -> None:
                await stdin.send_all(b"append\n")
                with trio.fail_after(RECOVERY):
                    line = await lines.receive_line()
                assert line is not None, errors.read_text()
                positions.append(int(line))

            async def here() -> None:
                record, _ = await append_until_stored(store, Event("Here", {}, event_id=uuid.uuid4()))
                positions.append(record.sequence_number)

            async with trio.open_nursery() as nursery:
                nursery.start_soon(in_worker)
                nursery.start_soon(here)
            assert sorted(positions) == [2, 3]
            await stdin.aclose()
            with trio.fail_after(RECOVERY):
                assert await worker.wait() == 0, errors.read_text()
        finally:
            if worker.returncode is None:
                worker.kill()
                await worker.wait()
        assert await store.head() == 3
    restarts = [r for r in caplog.records if r.name == "eventbus.embedded"]
    restarts_in_worker = errors.read_text().count("started it again")
    assert len(restarts) + restarts_in_worker == 1, errors.read_text()


async def test_a_server_this_process_only_names_by_dsn_is_not_started_again(embedded_server: EmbeddedServer) -> None:
    # Started and stopped by someone else (a test, an operator): connections fail, nothing starts it.
    dsn = embedded_server.dsn()
    embedded_server.stop(mode="immediate")
    with pytest.raises(StoreUnavailable):
        async with open_event_store(dsn):
            pass
    assert embedded_server.pid() is None
