"""`just bench scale`: a partitioned projection over several processes.

1. Throughput with 1, 2 and 4 worker processes sharing a 16-partition
   projection whose batch handler waits ~5 ms per batch on a (simulated)
   external call: events/s from the first append until every partition's
   checkpoint has reached the head, as a ratio against 1 worker. The key is
   a payload field, so each worker reads its own partitions' events alone.
   Each worker reports the CPU time it used and the batches it applied: what
   share of the run its external waits were, and whether the cores were the
   limit. The machine's
   load average is printed with each run: the figures are only as good as
   the cores that were free.
2. Rebalance time after a kill -9: with 4 workers, one is killed with SIGKILL
   and a new one started; the time from the kill until the survivors hold
   every partition under a live lease. p50 and max over 10 kills.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time

import attrs
import trio

from bench._common import ROOT, Report, fresh_database, percentile, server, settings_line, verdict
from bench._scale_worker import EXTERNAL_CALL, NAME, PARTITIONS
from eventbus import Event, open_bus

EVENTS = 100_000
"""Enough that a run is the handler's work, not the first lease round or the last idle checkpoint."""
ACCOUNTS = 2000
KILLS = 10
WORKERS = (1, 2, 4)


def start_worker(dsn: str) -> subprocess.Popen[bytes]:
    process = subprocess.Popen(
        [sys.executable, "-m", "bench._scale_worker", dsn], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
    )
    assert process.stdout is not None
    assert process.stdout.readline().strip() == b"ready"
    return process


@attrs.frozen
class Done:
    """What a worker said when it stopped: CPU seconds since it was ready,
    batches applied, seconds their external calls took in all."""

    cpu: float
    batches: int
    waited: float


def stop(process: subprocess.Popen[bytes]) -> Done | None:
    """Stop a worker (end of its input); what it said, if it said it."""
    if process.poll() is not None:
        return None
    assert process.stdin is not None and process.stdout is not None
    process.stdin.close()
    try:
        said = process.stdout.read().split()
        process.wait(10)
    except subprocess.TimeoutExpired:
        process.kill()
        process.wait()
        return None
    if len(said) == 4 and said[0] == b"done":
        return Done(float(said[1]), int(said[2]), float(said[3]))
    return None


@attrs.frozen
class Run:
    """One throughput run."""

    rate: float
    elapsed: float
    done: tuple[Done, ...]
    load: tuple[float, float]  # the 1-minute load average before and after


async def owners(bus: object, pids: set[int]) -> bool:
    """Whether exactly ``pids`` hold every partition under a live lease, in fair shares."""
    rows = await bus.store.pool.fetch(  # type: ignore[attr-defined]
        "SELECT owner, partition FROM eventbus.projection_leases WHERE projection = $1"
        " AND owner IS NOT NULL AND expires_at > now()",
        NAME,
    )
    shares: dict[int, int] = {}
    for row in rows:
        pid = int(row["owner"].split(":")[-2])
        shares[pid] = shares.get(pid, 0) + 1
    return (
        set(shares) == pids and sum(shares.values()) == PARTITIONS and max(shares.values()) - min(shares.values()) <= 1
    )


async def wait_for(check: object, timeout: float) -> None:
    with trio.fail_after(timeout):
        while not await check():  # type: ignore[operator]
            await trio.sleep(0.02)


async def throughput(dsn: str, workers: int) -> Run:
    load_before = os.getloadavg()[0]
    processes = [start_worker(dsn) for _ in range(workers)]
    reports: list[Done] = []
    try:
        async with open_bus(dsn) as bus:
            pids = {p.pid for p in processes}
            await wait_for(lambda: owners(bus, pids), 30)
            events = [Event("Ping", {"account": f"a-{i % ACCOUNTS}"}) for i in range(EVENTS)]
            started = time.perf_counter()
            for start in range(0, EVENTS, 2000):
                await bus.store.append(events[start : start + 2000])
            head = await bus.store.head()

            async def done() -> bool:
                low = await bus.store.pool.fetchval(
                    "SELECT min(checkpoint) FROM eventbus.projection_leases WHERE projection = $1", NAME
                )
                return int(low or 0) >= head

            await wait_for(done, 300)
            elapsed = time.perf_counter() - started
            total = await bus.store.pool.fetchval("SELECT sum(events) FROM projection_scale.accounts")
            assert total == EVENTS, (total, EVENTS)  # each event applied once
    finally:
        for process in processes:
            said = stop(process)
            if said is not None:
                reports.append(said)
    return Run(EVENTS / elapsed, elapsed, tuple(reports), (load_before, os.getloadavg()[0]))


async def rebalance(dsn: str) -> list[float]:
    processes = [start_worker(dsn) for _ in range(4)]
    times: list[float] = []
    try:
        async with open_bus(dsn) as bus:
            await wait_for(lambda: owners(bus, {p.pid for p in processes}), 30)
            for _ in range(KILLS):
                victim = processes.pop(0)
                victim.kill()
                victim.wait()
                killed = time.perf_counter()
                survivors = {p.pid for p in processes}
                await wait_for(lambda s=survivors: owners(bus, s), 60)
                times.append(time.perf_counter() - killed)
                processes.append(start_worker(dsn))
                await wait_for(lambda: owners(bus, {p.pid for p in processes}), 30)
    finally:
        for process in processes:
            stop(process)
    return times


async def run() -> None:
    admin, _embedded = server()
    report = Report("scale: a partitioned projection over worker processes")
    report.note(f"server: {await settings_line(admin)}")
    report.note(
        f"{PARTITIONS} partitions, {EVENTS:,} events over {ACCOUNTS} keys, a 5 ms external call per batch;"
        " the library's lease settings (LEASE_TTL 3 s, HEARTBEAT 0.5 s)"
    )
    runs = {}
    for workers in WORKERS:
        runs[workers] = await throughput(await fresh_database(admin, f"bench_scale_{workers}"), workers)
    rates = {workers: run.rate for workers, run in runs.items()}
    for workers in WORKERS:
        ratio = rates[workers] / rates[1]
        target = verdict(ratio, 3.0) if workers == 4 else ""
        report.row(f"events/s with {workers} worker(s) (vs 1 worker)", f"{rates[workers]:,.0f}",
                   f"{rates[1]:,.0f}", f"{ratio:.2f}x", target)  # fmt: skip
    for workers, run in runs.items():
        cpu = " / ".join(f"{done.cpu:.1f}" for done in run.done)
        batches = sum(done.batches for done in run.done)
        waits = batches * EXTERNAL_CALL / workers / run.elapsed
        per_batch = run.elapsed * workers / batches * 1000 if batches else float("nan")
        call = sum(done.waited for done in run.done) / batches * 1000 if batches else float("nan")
        report.note(
            f"{workers} worker(s): {run.elapsed:.1f} s; CPU s per worker {cpu} (of {run.elapsed:.1f} s x"
            f" {os.cpu_count()} cores); {batches:,} batches, {per_batch:.0f} ms each in its worker"
            f" ({EXTERNAL_CALL * 1000:g} ms of it the external call: {waits:.0%} of each worker's time; that"
            f" call took {call:.1f} ms on average: past {EXTERNAL_CALL * 1000:g} ms, the process waited for a"
            f" core); load average {run.load[0]:.1f} before, {run.load[1]:.1f} after"
        )
    times = await rebalance(await fresh_database(admin, "bench_scale_kill"))
    p50, worst = percentile(times, 0.5), max(times)
    report.row(f"rebalance after kill -9, p50 / max of {KILLS}", f"{p50:.2f} / {worst:.2f} s", "", "",
               f"<= 5 s {'met' if worst <= 5.0 else 'MISSED'}")  # fmt: skip
    report.print()


def main() -> None:
    trio.run(run)
