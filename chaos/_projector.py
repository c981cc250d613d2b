"""The projectors: processes that run the ledger projection, whose handler hangs on demand,
and a partitioned projection whose partitions they share.

``python -m chaos._projector --index K --folder DIR --lifetime SECONDS`` (the
database from ``EVENTBUS_DSN``) opens a bus and starts the ledger projection:
a row per event applied (``projection_chaos_ledger.applied``, no key, so an
event applied twice shows as two rows). Two projectors run it at once: one
leads, the other stands by.

They also run ``chaos_parts``, the same kind of ledger in ``PARTS``
partitions by account: each row also says the partition, and the owner and
epoch of the lease it was committed under (read in the batch's transaction),
so the checks see an event applied twice, a partition routed differently by
two processes, and a partition applied by two owners at once. The harness
kills projectors that hold partitions (SIGKILL) and starts them again.

While the file ``DIR/hang-K`` exists, projector K's handler never returns:
its batches pass their deadline (``HANG_DEADLINE``), are cancelled, rolled
back and counted; after the restart limit the projection is ``failed`` and
lets go of the lead, and the other projector takes over. Once the file is
gone the projector restarts its failed projection, as an operator would.

Every ``SAMPLE_INTERVAL`` it notes its status in ``DIR/projector-K.json``
(whether it leads, what it saw: the longest batch, deadline failures, a
failed projection that kept the lead). It prints ``ready`` once the bus is
open; on SIGTERM or SIGINT (or at the end of its lifetime) it waits until
the ledger has caught up (at most ``FINISH_TIMEOUT``), writes the file a last
time with ``done`` set and exits 0.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from apps.banking.domain import ACCOUNT_EVENT_TYPES
from eventbus import (
    Bus,
    EventBusError,
    EventRecord,
    EventStore,
    Projection,
    RestartPolicy,
    StoreUnavailable,
    Transaction,
    open_bus,
)
from eventbus.testing import partition_of

ROOT: Final = Path(__file__).resolve().parent.parent
"""The project's folder: the projectors run from there."""

LEDGER: Final = "chaos_ledger"
"""The projection's name."""

PROJECTORS: Final = 2
"""Projector processes in a run."""

HANG_DEADLINE: Final = 1.5
"""Seconds a ledger batch may take (its ``handler_timeout``)."""

RESTART: Final = RestartPolicy(max_restarts=2, initial=0.1, maximum=0.5)
"""The ledger's restart policy: a hung leader fails after three deadlines."""

HANG_SECONDS: Final = 8.0
"""How long a hang lasts: past the three deadlines and two backoffs after which the leader fails."""

SLACK: Final = 3.0
"""Seconds a batch may run past its deadline before it is seen to have ended
(the rollback, bounded at 2 s, and the sampling)."""

SAMPLE_INTERVAL: Final = 0.1
"""Seconds between looks at the projection's status."""

FINISH_TIMEOUT: Final = 60.0
"""Seconds, after the stop signal, to catch up."""

READY_TIMEOUT: Final = 60.0
"""Seconds a projector has to open its bus."""

STOP_TIMEOUT: Final = FINISH_TIMEOUT + 30.0
"""Seconds a projector has to stop after SIGTERM."""

PARTS: Final = "chaos_parts"
"""The partitioned projection's name."""

PARTITIONS: Final = 8
"""Its partitions."""

_SETUP = "CREATE TABLE IF NOT EXISTS applied (position bigint NOT NULL, event_id uuid NOT NULL)"
_INSERT = "INSERT INTO applied SELECT * FROM unnest($1::bigint[], $2::uuid[])"
_PARTS_SETUP = """CREATE TABLE IF NOT EXISTS applied (position bigint NOT NULL, event_id uuid NOT NULL,
    partition int NOT NULL, owner text NOT NULL, epoch bigint NOT NULL)"""
_PARTS_INSERT = "INSERT INTO applied SELECT p, e, $3, $4, $5 FROM unnest($1::bigint[], $2::uuid[]) AS u (p, e)"
_LEASE = "SELECT owner, epoch FROM eventbus.projection_leases WHERE projection = $1 AND partition = $2"


@attrs.define
class Seen:
    """What a projector saw of its projection."""

    index: int
    leader: bool = False
    state: str = "starting"
    hangs: int = 0
    longest_batch: float = 0.0
    deadline_failures: int = 0
    hangs_interrupted: int = 0
    failed: int = 0
    failed_holding_lead: int = 0
    restarts_asked: int = 0
    done: bool = False
    partitions: int = 0
    incarnations: int = 0

    def write(self, folder: Path) -> None:
        """Write (atomically) ``projector-K.json``."""
        out = status_path(folder, self.index)
        temporary = out.with_suffix(".tmp")
        temporary.write_text(json.dumps(attrs.asdict(self)))
        os.replace(temporary, out)


def _previous(folder: Path, index: int) -> Seen | None:
    try:
        return Seen(**json.loads(status_path(folder, index).read_text()))
    except (OSError, ValueError, TypeError):
        return None


def status_path(folder: Path, index: int) -> Path:
    """Where projector ``index`` notes what it sees."""
    return folder / f"projector-{index}.json"


def hang_path(folder: Path, index: int) -> Path:
    """While this file exists, projector ``index``'s handler hangs."""
    return folder / f"hang-{index}"


class _Ledger:
    def __init__(self, hang_file: Path, seen: Seen) -> None:
        self._hang_file = hang_file
        self._seen = seen

    async def apply(self, tx: Transaction, records: list[EventRecord]) -> None:
        if self._hang_file.exists():
            self._seen.hangs += 1
            await trio.sleep_forever()  # until the deadline cancels the batch
        await tx.execute(_INSERT, [r.sequence_number for r in records], [r.event_id for r in records])


async def _setup(tx: Transaction) -> None:
    await tx.execute(_SETUP)


def ledger_projection(apply: Any) -> Projection:
    """The ledger, applied by ``apply(tx, records)``."""
    return Projection(LEDGER, {}, _setup, batch_size=500, batch_handler=apply, event_types=ACCOUNT_EVENT_TYPES,
                      restart=RESTART, handler_timeout=HANG_DEADLINE)  # fmt: skip


def account_key(record: EventRecord) -> str:
    """The partition key of ``chaos_parts``: the account an event is about (its
    id for an event without one, which the simulators do not write)."""
    payload = record.payload
    key = payload.get("accountId") or payload.get("fromAccountId")
    return key if isinstance(key, str) else str(record.event_id)


async def _apply_parts(tx: Transaction, records: list[EventRecord]) -> None:
    partition = partition_of(account_key(records[0]), PARTITIONS)  # one partition per batch
    lease = await tx.fetchrow(_LEASE, PARTS, partition)
    assert lease is not None  # the runner made it before it took the partition
    await tx.execute(_PARTS_INSERT, [r.sequence_number for r in records], [r.event_id for r in records],
                     partition, lease["owner"], lease["epoch"])  # fmt: skip


async def _parts_setup(tx: Transaction) -> None:
    await tx.execute(_PARTS_SETUP)


def parts_projection() -> Projection:
    """``chaos_parts``: a ledger in ``PARTITIONS`` partitions by account."""
    return Projection(PARTS, {}, _parts_setup, batch_size=200, batch_handler=_apply_parts,
                      event_types=ACCOUNT_EVENT_TYPES, restart=RESTART, partitions=PARTITIONS,
                      partition_key=account_key)  # fmt: skip


async def _caught_up(bus: Bus, name: str) -> None:
    try:
        await bus.projections.wait_until_caught_up(name, timeout=FINISH_TIMEOUT)
    except (TimeoutError, EventBusError) as exc:
        print(f"{name} did not catch up: {exc}", file=sys.stderr)


async def _until_stopped(
    lifetime: float, stopped: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        with trio.move_on_after(lifetime):
            async for _ in signals:
                break
    stopped.set()


async def project(index: int, folder: Path, lifetime: float) -> None:
    """Run the ledger until told to stop, noting what is seen.

    Raises:
        StoreUnavailable: the database could not be reached at the start.
    """
    seen = _previous(folder, index) or Seen(index)  # a projector started again goes on counting
    seen.incarnations += 1
    seen.leader, seen.state, seen.partitions, seen.done = False, "starting", 0, False
    hang_file = hang_path(folder, index)
    stopped = trio.Event()
    async with open_bus() as bus, trio.open_nursery() as nursery:
        await nursery.start(_until_stopped, lifetime, stopped)
        await bus.projections.start(ledger_projection(_Ledger(hang_file, seen).apply))
        await bus.projections.start(parts_projection())
        print("ready", flush=True)
        last_error: str | None = None
        hangs_before = seen.hangs
        while not stopped.is_set():
            status = bus.projections.status()[LEDGER]
            seen.longest_batch = max(seen.longest_batch, status.batch_running or 0.0)
            if status.last_error != last_error:
                if "passed its deadline" in (status.last_error or ""):
                    seen.deadline_failures += 1
                elif status.last_error and seen.hangs > hangs_before:
                    # A hang ended by another fault first (its connection ended, the server crashed).
                    seen.hangs_interrupted += 1
                hangs_before = seen.hangs
            last_error = status.last_error
            if status.state == "failed" and seen.state != "failed":
                seen.failed += 1
                seen.failed_holding_lead += status.leader
            if status.state == "failed" and not hang_file.exists():
                bus.projections.restart(LEDGER)
                seen.restarts_asked += 1
            seen.leader, seen.state = status.leader, str(status.state)
            parts = bus.projections.status()[PARTS]
            seen.partitions = sum(len(held) for owner, held in (parts.partitions or {}).items()
                                  if owner.split(":")[-2] == str(os.getpid()))  # fmt: skip
            seen.write(folder)
            with trio.move_on_after(SAMPLE_INTERVAL):
                await stopped.wait()
        async with trio.open_nursery() as catching_up:
            catching_up.start_soon(_caught_up, bus, LEDGER)
            catching_up.start_soon(_caught_up, bus, PARTS)
        seen.done = True
        seen.write(folder)
        nursery.cancel_scope.cancel()


@attrs.frozen
class PartsRow:
    """A row of ``chaos_parts``: an event applied, under which lease."""

    position: int
    event_id: str
    partition: int
    owner: str
    epoch: int


async def read_parts(store: EventStore) -> tuple[list[PartsRow], dict[int, int]]:
    """The rows of ``chaos_parts``, and each partition's stored checkpoint."""
    rows = await store.pool.fetch("SELECT * FROM projection_chaos_parts.applied ORDER BY position")
    leases = await store.pool.fetch(
        "SELECT partition, checkpoint FROM eventbus.projection_leases WHERE projection = $1", PARTS
    )
    return (
        [PartsRow(int(r["position"]), str(r["event_id"]), r["partition"], r["owner"], int(r["epoch"])) for r in rows],
        {row["partition"]: int(row["checkpoint"]) for row in leases},
    )


async def read_ledger(store: EventStore) -> tuple[list[tuple[int, str]], int | None]:
    """The ledger's rows (position, event id) and its checkpoint."""
    rows = await store.pool.fetch("SELECT position, event_id FROM projection_chaos_ledger.applied ORDER BY 1")
    checkpoint = await store.pool.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", LEDGER)
    return [(int(row[0]), str(row[1])) for row in rows], None if checkpoint is None else int(checkpoint)


class ProjectorProcess:
    """A projector, started before the load and stopped after it (by the harness)."""

    def __init__(self, index: int, *, dsn: str, folder: Path, lifetime: float) -> None:
        self.index = index
        self._dsn = dsn
        self._folder = folder
        self.stderr = folder / f"projector-{index}.err.log"
        self._lifetime = lifetime
        self._process: trio.Process | None = None
        self.problem: str | None = None
        self.kills = 0

    def seen(self) -> Seen | None:
        """What it noted last, if anything."""
        return _previous(self._folder, self.index)

    async def kill_and_start(self) -> int | None:
        """SIGKILL it (what it had noted last stays), wait for it, start it again;
        the process id killed, or None if it was not running."""
        process = self._process
        if process is None or process.returncode is not None:
            return None
        process.kill()
        self.kills += 1
        with trio.move_on_after(10.0):
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
        await self.start()
        return process.pid

    async def start(self) -> None:
        """Start it and wait (at most ``READY_TIMEOUT``) until its bus is open; a
        projector that does not start is noted in ``problem``."""
        argv = [sys.executable, "-m", "chaos._projector", "--index", str(self.index),
                "--folder", str(self._folder), "--lifetime", repr(self._lifetime)]  # fmt: skip
        env = {name: value for name, value in os.environ.items() if name not in ("DATABASE_URL", "EVENTBUS_DSN")}
        env["EVENTBUS_DSN"] = self._dsn
        with self.stderr.open("ab") as err:
            process = await trio.lowlevel.open_process(argv, stdout=subprocess.PIPE, stderr=err, cwd=ROOT, env=env)
        self._process = process
        assert process.stdout is not None
        said = b""
        with trio.move_on_after(READY_TIMEOUT):
            while b"ready\n" not in said and len(said) < 4096:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    break
                said += chunk
        if b"ready\n" not in said:
            self.problem = f"projector {self.index} did not start"

    async def finish(self) -> None:
        """Ask it to stop and wait (at most ``STOP_TIMEOUT``); what went wrong goes to ``problem``."""
        process = self._process
        if process is None:
            return
        if process.returncode is None:
            process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
        if process.returncode is None:
            process.kill()
            self.problem = self.problem or f"projector {self.index} did not stop in time"
            with trio.move_on_after(10.0):
                await process.wait()
        elif process.returncode != 0:
            self.problem = self.problem or f"projector {self.index} ended with status {process.returncode}"

    def kill(self) -> None:
        """Kill it if it runs (the harness is ending early)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()


def main(argv: list[str] | None = None) -> int:
    """The projector's command line; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m chaos._projector", description=__doc__.split("\n\n")[0])
    parser.add_argument("--index", type=int, required=True, help="the projector's number")
    parser.add_argument("--folder", type=Path, required=True, help="the run's folder")
    parser.add_argument("--lifetime", type=float, required=True, help="seconds to run at most")
    args = parser.parse_args(argv)
    try:
        trio.run(project, args.index, args.folder, args.lifetime)
    except StoreUnavailable as exc:
        print(f"the database is unavailable: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
