"""`just bench replicas`: reads from a hot standby, consistent with positions.

1. Read your own write: append one event, then at once ``query`` its
   account's events with ``min_position`` = its position, through a bus whose
   reads go to the standby; against the same pairs on a bus that reads the
   primary. p50 / p99 of the query alone, and what the standby adds.
2. Lag under the maximum append rate: 64 tasks append one event each as fast
   as they can; a sampler takes the position the latest append returned and
   looks at the standby until it shows it (the replication delay), and notes
   how many positions and WAL bytes the standby was behind. The append rate
   with the standby streaming against the same load with it stopped.

The servers: a primary and a hot standby made fresh for the run from the
embedded binaries, with the embedded server's default settings (fsync on),
in ``$EVENTBUS_BENCH_DIR/replicas``. With ``EVENTBUS_DSN`` set, also set
``EVENTBUS_REPLICA_DSN`` to an admin DSN of a hot standby of that server.
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable

import trio

from bench._common import BENCH_DIR, Report, database_dsn, fresh_database, percentile, settings_line
from bench.workload import deposit_payload
from eventbus import Bus, Event, EventBusError, create_filter, open_bus, testing
from eventbus.testing import EmbeddedServer, dsn_from_environment, start_standby

PRELOAD = 20_000
ROUNDS = 1000
WRITERS = 64
LOAD_SECONDS = 5.0
STANDBY_READY = 60.0  # seconds: a bound, never a wait
LOOK = 0.005  # seconds between looks at the standby, which has no change notification


def servers() -> tuple[str, str, EmbeddedServer | None, Callable[[], None]]:
    """Admin DSNs of a primary and a hot standby of it, the standby's server
    if embedded, and what stops them."""
    external = dsn_from_environment()
    if external:
        replica = os.environ.get("EVENTBUS_REPLICA_DSN", "").strip()
        if not replica:
            raise SystemExit("with EVENTBUS_DSN set, set EVENTBUS_REPLICA_DSN to a hot standby of that server")
        return external, replica, None, lambda: None
    folder = BENCH_DIR / "replicas"
    shutil.rmtree(folder, ignore_errors=True)  # a fresh pair: the standby's slot and copy match the primary
    primary = EmbeddedServer(folder / "primary")
    primary.start()
    standby = start_standby(primary, folder / "standby")

    def stop() -> None:
        standby.stop()
        primary.stop()
        shutil.rmtree(folder, ignore_errors=True)

    return primary.dsn(), standby.dsn(), standby, stop


async def standby_shows(standby_dsn: str, position: int) -> None:
    """Until the standby shows ``position`` (bounded by ``STANDBY_READY``)."""
    async with testing.open_loop():
        await _standby_shows(standby_dsn, position)


async def _standby_shows(standby_dsn: str, position: int) -> None:
    with trio.fail_after(STANDBY_READY):
        while True:
            try:
                conn = await testing.connect(standby_dsn)
            except EventBusError:
                await trio.sleep(LOOK)
                continue
            try:
                while True:
                    if await conn.fetchval("SELECT to_regclass('eventbus.events') IS NOT NULL"):
                        head = await conn.fetchval("SELECT coalesce(max(sequence_number), 0) FROM eventbus.events")
                        if head >= position:
                            return
                    await trio.sleep(LOOK)
            finally:
                await conn.close()


# ------------------------------------------------------------------ read your own write


async def own_writes(primary: Bus, standby: Bus, rounds: int) -> dict[str, list[float] | int]:
    """Append-then-query pairs, alternately through ``primary`` (a bus that
    reads the primary) and ``standby`` (one that reads the standby), so that
    both see the same load: seconds per query, and the reads that missed
    their append (must be 0). Each pair appends to an account of its own,
    so each query reads one event."""
    took: dict[str, list[float] | int] = {"primary": [], "standby": [], "missed": 0}
    for k in range(2 * rounds):
        name, bus = ("primary", primary) if k % 2 == 0 else ("standby", standby)
        payload = deposit_payload(k, 100_000 + k)
        [record] = await bus.store.append([Event("MoneyDeposited", payload)])
        started = time.perf_counter()
        result = await bus.store.query(
            create_filter(["MoneyDeposited"], [{"accountId": payload["accountId"]}]),
            min_position=record.sequence_number,
        )
        took[name].append(time.perf_counter() - started)  # type: ignore[union-attr]
        took["missed"] += result.events[-1].sequence_number != record.sequence_number  # type: ignore[operator]
    return took


# ------------------------------------------------------------------ lag under load


async def load(bus: Bus, standby_dsn: str | None) -> dict[str, float]:
    """Appends/s of ``WRITERS`` tasks for ``LOAD_SECONDS``; with ``standby_dsn``,
    the replication delay and the standby's lag while they run."""
    count = 0
    latest = (0, 0.0)
    delays: list[float] = []
    behind: list[int] = []
    lag_bytes: list[int] = []

    async def writer(index: int) -> None:
        nonlocal count, latest
        k = 0
        while True:
            [record] = await bus.store.append([Event("MoneyDeposited", deposit_payload(k, index))])
            if record.sequence_number > latest[0]:
                latest = (record.sequence_number, time.perf_counter())
            count += 1
            k += 1

    async def sample(dsn: str) -> None:
        conn = await testing.connect(dsn)
        try:
            while True:
                position, returned = latest
                head = 0
                while head < position:
                    head = await conn.fetchval("SELECT coalesce(max(sequence_number), 0) FROM eventbus.events")
                    behind.append(max(0, latest[0] - head))
                if position:
                    delays.append(time.perf_counter() - returned)
                for replica in bus.store.statistics().replicas:
                    if replica.lag_bytes is not None:
                        lag_bytes.append(replica.lag_bytes)
                await trio.sleep(0.01)
        finally:
            await conn.close()

    async with trio.open_nursery() as nursery:
        for index in range(WRITERS):
            nursery.start_soon(writer, index)
        if standby_dsn is not None:
            nursery.start_soon(sample, standby_dsn)
        await trio.sleep(LOAD_SECONDS)
        nursery.cancel_scope.cancel()
    return {
        "rate": count / LOAD_SECONDS,
        "delay_p50": percentile(delays, 0.5),
        "delay_p99": percentile(delays, 0.99),
        "delay_max": max(delays, default=float("nan")),
        "behind_p50": percentile(behind, 0.5),
        "behind_max": max(behind, default=0),
        "bytes_max": max(lag_bytes, default=0),
    }


# ------------------------------------------------------------------ the run


async def run(primary_admin: str, standby_admin: str, standby: EmbeddedServer | None) -> None:
    report = Report("replicas: reads from a hot standby, consistent with positions")
    report.note(f"primary: {await settings_line(primary_admin)}")
    db = await fresh_database(primary_admin, "bench_replicas")
    standby_db = database_dsn(standby_admin, "bench_replicas")
    async with open_bus(db) as bus:
        for start in range(0, PRELOAD, 1000):
            await bus.store.append([Event("MoneyDeposited", deposit_payload(k, 3)) for k in range(start, start + 1000)])
        head = await bus.store.head()
    async with testing.open_loop():
        conn = await testing.connect(db)
        try:
            await conn.execute("ANALYZE")  # the plans autovacuum's statistics would give (replayed by the standby)
        finally:
            await conn.close()
    await standby_shows(standby_db, head)
    report.note(f"{PRELOAD:,} events stored; {ROUNDS} append-then-query pairs each way, one at a time, alternating")

    async with open_bus(db) as via_primary, open_bus(db, replica_dsns=[standby_db]) as via_standby:
        took = await own_writes(via_primary, via_standby, ROUNDS)
        [stats] = via_standby.store.statistics().replicas
    primary_took, standby_took = took["primary"], took["standby"]
    assert isinstance(primary_took, list) and isinstance(standby_took, list)
    p50, p99 = percentile(primary_took, 0.5), percentile(primary_took, 0.99)
    s50, s99 = percentile(standby_took, 0.5), percentile(standby_took, 0.99)
    report.row("query after append, primary: p50 / p99", f"{p50 * 1e3:.2f} / {p99 * 1e3:.2f} ms")
    report.row("query(min_position) after append, standby: p50 / p99",
               f"{s50 * 1e3:.2f} / {s99 * 1e3:.2f} ms", f"{p50 * 1e3:.2f} / {p99 * 1e3:.2f} ms",
               f"{s50 / p50:.2f}x / {s99 / p99:.2f}x")  # fmt: skip
    report.row("  added by the standby: p50 / p99", f"{(s50 - p50) * 1e3:+.2f} / {(s99 - p99) * 1e3:+.2f} ms")
    report.row("  reads that waited for replay / went to the primary",
               f"{stats.waited} / {stats.fallbacks} of {ROUNDS}")  # fmt: skip
    report.row("  reads that missed their own append", f"{took['missed']}", "", "", "0")

    async with open_bus(db, replica_dsns=[standby_db]) as bus:
        loaded = await load(bus, standby_db)
    report.row(f"append rate, {WRITERS} tasks, standby streaming", f"{loaded['rate']:,.0f}/s")
    report.row("  replication delay (append returned -> standby shows it): p50 / p99 / max",
               f"{loaded['delay_p50'] * 1e3:.2f} / {loaded['delay_p99'] * 1e3:.2f} / "
               f"{loaded['delay_max'] * 1e3:.2f} ms")  # fmt: skip
    report.row("  standby behind the latest append: p50 / max",
               f"{loaded['behind_p50']:,.0f} / {loaded['behind_max']:,.0f} positions")  # fmt: skip
    report.row("  WAL lag the store's statistics saw: max", f"{loaded['bytes_max'] / 1024:,.0f} kB")
    if standby is not None:
        await trio.to_thread.run_sync(standby.stop)
        try:
            async with open_bus(db) as bus:
                alone = await load(bus, None)
        finally:
            await trio.to_thread.run_sync(standby.start)
        report.row(f"append rate, {WRITERS} tasks, standby stopped", f"{alone['rate']:,.0f}/s", "", "",
                   f"streaming: {loaded['rate'] / alone['rate']:.2f}x")  # fmt: skip
    report.print()


def main() -> None:
    primary, standby_admin, standby, stop = servers()
    try:
        trio.run(run, primary, standby_admin, standby)
    finally:
        stop()
