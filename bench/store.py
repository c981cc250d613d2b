"""`just bench store`: the store actor against raw asyncpg and the peer, in one run.

Every figure stands beside a baseline measured in the same run on the same
server; the peer is eventsourcing's PostgreSQL DCB recorder (its own tables
and SQL functions, psycopg 3, a thread and a connection per writer; see
bench/baselines/peer.py). Rounds of compared runs are interleaved, and the
medians kept (``EVENTBUS_BENCH_ROUNDS``, 3 by default).

1. Writers: 64, 256 and 1,024 tasks appending one ~100-byte event each, on an
   empty store: appends/s and p99 (in the steady state: from every writer's
   first answer to the first writer's last; the whole run's beside it),
   against raw asyncpg in a plain-asyncio process inserting batches of the
   size the actor achieved (one unnest INSERT per batch); and 64 tasks
   against 64 raw connections committing one row each.
2. Conditions over 1M events: 64 tasks, each conditional on its account's
   boundary, against the same unconditionally (interleaved), the rate by
   fifth of the run, and 5-item conditions; the peer doing the same.
3. One task appending sequentially: latency over a raw single-row commit, and
   conditional appends against the peer's.
4. One account's 100 events among 1M: reads against the same SQL in raw
   asyncpg and against the peer's read.
5. One connection's ``SELECT 1`` round trip, processor and wall time: the
   crossing from Trio into asyncpg against asyncpg on plain asyncio.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Awaitable, Callable
from typing import Any

import trio

from bench._common import (
    Report,
    database_dsn,
    fresh_database,
    percentile,
    run_baseline,
    server,
    settings_line,
    verdict,
)
from bench.preload import BOUNDARY_TYPES, exists, template
from bench.workload import account_id, deposit_payload
from eventbus import Event, EventQuery, create_filter, open_event_store, testing
from eventbus.testing import query_sql

__all__ = ["BOUNDARY_TYPES", "TEMPLATE", "_template"]

WRITERS = (64, 256, 1024)
APPENDS = 9600
"""Appends per measured run (spread over the writers)."""
MIN_APPENDS_PER_WRITER = 30
"""At least this many appends per writer in the writers' rows: with 9 each,
1,024 writers' first appends (all started at once) were a ninth of the run."""
PEER_APPENDS_PER_WRITER = 40
PRELOAD_ACCOUNTS = 10_000
EVENTS_PER_ACCOUNT = 100
TEMPLATE = "bench_1m_v2"
PEER_TEMPLATE = "bench_peer_1m_v1"
ROUNDS = int(os.environ.get("EVENTBUS_BENCH_ROUNDS") or 3)


async def _template(admin: str) -> None:
    """Make the 1M-event template once; later runs reuse it."""
    await template(admin, TEMPLATE, accounts=PRELOAD_ACCOUNTS, per_account=EVENTS_PER_ACCOUNT)


async def _peer_template(admin: str) -> None:
    """The same 1M events in the peer's own tables, once (a table marks the
    build done; an interrupted one is made again)."""
    if await exists(admin, PEER_TEMPLATE):
        async with testing.open_loop():
            conn = await testing.connect(database_dsn(admin, PEER_TEMPLATE))
            try:
                if await conn.fetchval("SELECT to_regclass('public.peer_bench_done') IS NOT NULL"):
                    return
            finally:
                await conn.close()
    await _recreate(admin, PEER_TEMPLATE)
    spec = {"mode": "preload", "dsn": database_dsn(admin, PEER_TEMPLATE), "accounts": PRELOAD_ACCOUNTS,
            "per_account": EVENTS_PER_ACCOUNT}  # fmt: skip
    await trio.to_thread.run_sync(run_baseline, "peer", spec)


async def _recreate(admin: str, name: str, template: str | None = None) -> str:
    async with testing.open_loop():
        conn = await testing.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
            from_template = f' TEMPLATE "{template}" STRATEGY FILE_COPY' if template else ""
            await conn.execute(f'CREATE DATABASE "{name}"{from_template}')
        finally:
            await conn.close()
    return database_dsn(admin, name)


# ------------------------------------------------------------------ ours


def _boundary(account: int, items: int) -> Any:
    """The account's boundary, and ``items - 1`` filters that match nothing
    but still probe the index: a DCB condition of several items."""
    filter = create_filter(BOUNDARY_TYPES, [{"accountId": account_id(account)}])
    if items == 1:
        return filter
    return [filter, *(create_filter(BOUNDARY_TYPES, [{"accountId": f"{account}-{k}"}]) for k in range(1, items))]


async def concurrent_appends(
    dsn: str, *, conditional: bool, first_account: int = 0, items: int = 1, tasks: int = 64, appends: int = APPENDS
) -> dict[str, Any]:
    """``tasks`` tasks appending ``appends`` events in all, one per append;
    conditional ones on their own account's boundary."""
    per_task = max(1, appends // tasks)
    latencies: list[float] = []
    finished: list[float] = []
    spans: list[tuple[float, float]] = []  # each measured append's start and end
    answered: list[tuple[float, float]] = []  # each writer's first and last answer
    read: dict[int, int] = {}  # each task's position for its condition, read in the warm-up (as the peer does)
    async with open_event_store(dsn) as store:

        async def worker(index: int, count: int, record: bool) -> None:
            account = first_account + index
            filter = _boundary(account, items)
            expected = None
            if conditional:
                expected = read[index] if index in read else (await store.query(filter)).max_sequence_number
            first = now = 0.0
            for k in range(count):
                event = Event("MoneyDeposited", deposit_payload(k, account))
                started = time.perf_counter()
                if conditional:
                    records = await store.append([event], filter, expected)
                    expected = read[index] = records[-1].sequence_number
                else:
                    await store.append([event])
                if record:
                    now = time.perf_counter()
                    latencies.append(now - started)
                    finished.append(now)
                    spans.append((started, now))
                    first = now if k == 0 else first
            if record:
                answered.append((first, now))

        async with trio.open_nursery() as nursery:
            for index in range(tasks):
                nursery.start_soon(worker, index, 5, False)
        before = store.statistics()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(tasks):
                nursery.start_soon(worker, index, per_task, True)
        elapsed = time.perf_counter() - started
        after = store.statistics()
    batches = after.batches - before.batches
    total = tasks * per_task
    # the rate in each fifth of the run, by completion time
    finished.sort()
    fifth = len(finished) // 5
    segments = [fifth / (finished[(i + 1) * fifth - 1] - finished[i * fifth]) for i in range(5)]
    # Steady state: from the moment every writer has had an answer (the
    # writers all start at once, and their first appends wait for all of them
    # to be prepared) to the moment the first one is done (then fewer are in
    # flight); the appends that started and ended within it.
    since, until = max(a for a, _ in answered), min(b for _, b in answered)
    steady = [end - start for start, end in spans if start >= since and end <= until] or latencies
    return {
        "rate": total / elapsed,
        "p50": percentile(steady, 0.5),
        "p99": percentile(steady, 0.99),
        "p99_all": percentile(latencies, 0.99),
        "batch": total / batches,
        "segments": segments,
    }


async def sequential_appends(dsn: str, count: int, warmup: int, *, account: int | None = None) -> dict[str, float]:
    """One task appending; conditional on ``account``'s boundary if given."""
    latencies = []
    async with open_event_store(dsn) as store:
        filter = None if account is None else _boundary(account, 1)
        expected = None if filter is None else (await store.query(filter)).max_sequence_number
        for k in range(warmup + count):
            event = Event("MoneyDeposited", deposit_payload(k, account))
            started = time.perf_counter()
            records = await store.append([event], filter, expected)
            if filter is not None:
                expected = records[-1].sequence_number
            if k >= warmup:
                latencies.append(time.perf_counter() - started)
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}


async def account_queries(dsn: str, accounts: list[int], warmup: int, limit: int | None = None) -> dict[str, float]:
    """Each account's boundary read (its first ``limit`` events, or all)."""
    latencies = []
    rows = 0
    async with open_event_store(dsn) as store:
        for k, account in enumerate(accounts):
            query = EventQuery([create_filter(BOUNDARY_TYPES, [{"accountId": account_id(account)}])], limit=limit)
            started = time.perf_counter()
            result = await store.query(query)
            if k >= warmup:
                latencies.append(time.perf_counter() - started)
                rows += len(result.events)
    return {"p50": percentile(latencies, 0.5), "rows": rows}


# ------------------------------------------------------------------ rounds


async def interleaved(runs: dict[str, Callable[[int], Awaitable[dict[str, Any]]]]) -> dict[str, dict[str, Any]]:
    """Each run ``ROUNDS`` times, in turn (the order rotating each round);
    the median of each figure. A run is told its round (to pick fresh
    accounts)."""
    results: dict[str, list[dict[str, Any]]] = {name: [] for name in runs}
    names = list(runs)
    for round_ in range(ROUNDS):
        for name in names[round_ % len(names) :] + names[: round_ % len(names)]:
            results[name].append(await runs[name](round_))
    medians: dict[str, dict[str, Any]] = {}
    for name, rounds in results.items():
        medians[name] = {}
        for key, value in rounds[0].items():
            if isinstance(value, (int, float)):
                medians[name][key] = statistics.median(r[key] for r in rounds)
            else:  # lists (segments): those of the median-rate round
                middle = sorted(rounds, key=lambda r: r["rate"])[len(rounds) // 2]
                medians[name][key] = middle[key]
    return medians


def _peer(mode: str, **spec: Any) -> Callable[[int], Awaitable[dict[str, Any]]]:
    """A run of the peer (in its own process); fresh accounts each round."""

    async def run(round_: int) -> dict[str, Any]:
        first = spec.get("first_account", 0) + 1000 * round_
        return await trio.to_thread.run_sync(run_baseline, "peer", {"mode": mode, **spec, "first_account": first})

    return run


# ------------------------------------------------------------------ the run


async def writers(report: Report, admin: str) -> None:
    """1. appends/s and p99 by number of writer tasks, against raw batched inserts."""
    rates = {}
    for tasks in WRITERS:
        appends = max(APPENDS, tasks * MIN_APPENDS_PER_WRITER)
        ours = await concurrent_appends(await fresh_database(admin, "bench_store_empty"), conditional=False,
                                        tasks=tasks, appends=appends)  # fmt: skip
        batch = max(1, round(ours["batch"]))
        raw = run_baseline("raw_store", {"mode": "batch_insert", "dsn": await fresh_database(admin, "bench_raw_a"),
                                         "batch": batch, "total": appends})  # fmt: skip
        rates[tasks] = ours["rate"]
        ratio = ours["rate"] / raw["rows_per_s"]
        report.row(f"appends/s, {tasks} tasks (vs raw batched INSERT of the same batch)", f"{ours['rate']:,.0f}",
                   f"{raw['rows_per_s']:,.0f}", f"{ratio:.2f}x", verdict(ratio, 0.8))  # fmt: skip
        report.row(f"  {tasks} tasks: appends per batch; latency p50 / p99 steady (p99 of the whole run)",
                   f"{ours['batch']:.1f}; {ours['p50'] * 1e3:.1f} / {ours['p99'] * 1e3:.1f} "
                   f"({ours['p99_all'] * 1e3:.1f}) ms", f"{batch}", "",
                   f"p99 <= 50 ms {'met' if ours['p99'] <= 0.05 else 'MISSED'}" if tasks == 1024 else "")  # fmt: skip
    scale = rates[WRITERS[-1]] / rates[WRITERS[0]]
    report.row(f"  rate at {WRITERS[-1]} tasks (vs at {WRITERS[0]})", f"{rates[WRITERS[-1]]:,.0f}",
               f"{rates[WRITERS[0]]:,.0f}", f"{scale:.2f}x", verdict(scale, 2.5))  # fmt: skip
    ours64 = await concurrent_appends(await fresh_database(admin, "bench_store_empty"), conditional=False)
    raw_b = run_baseline("raw_store", {"mode": "single_commits", "dsn": await fresh_database(admin, "bench_raw_b"),
                                       "connections": 64, "per_connection": 50})  # fmt: skip
    ratio = ours64["rate"] / raw_b["rows_per_s"]
    report.row("appends/s, 64 tasks (vs 64 raw single-row commits)", f"{ours64['rate']:,.0f}",
               f"{raw_b['rows_per_s']:,.0f}", f"{ratio:.2f}x", verdict(ratio, 3.0))  # fmt: skip


async def conditions(report: Report, admin: str, preloaded: str, peer_db: str) -> None:
    """2. conditional appends over 1M: against unconditional, and the peer."""

    def ours(conditional: bool, base: int, items: int = 1) -> Callable[[int], Awaitable[dict[str, Any]]]:
        async def run(round_: int) -> dict[str, Any]:
            return await concurrent_appends(preloaded, conditional=conditional, items=items,
                                            first_account=base + 1000 * round_)  # fmt: skip

        return run

    got = await interleaved({
        "plain": ours(False, 100), "cond": ours(True, 200), "five": ours(True, 300, 5),
        "peer": _peer("concurrent", dsn=peer_db, writers=64, count=PEER_APPENDS_PER_WRITER, first_account=200),
        "peer5": _peer("concurrent", dsn=peer_db, writers=64, count=PEER_APPENDS_PER_WRITER, first_account=300,
                       items=5),
    })  # fmt: skip
    plain, cond, five, peer, peer5 = got["plain"], got["cond"], got["five"], got["peer"], got["peer5"]
    ratio = cond["rate"] / plain["rate"]
    report.row("conditional appends/s over 1M, 64 tasks (vs unconditional, same table)", f"{cond['rate']:,.0f}",
               f"{plain['rate']:,.0f}", f"{ratio:.2f}x", verdict(ratio, 0.8))  # fmt: skip
    segs = cond["segments"]
    report.row("  conditional rate by fifth of the run (last / first)", " ".join(f"{s:,.0f}" for s in segs), "",
               f"{segs[-1] / segs[0]:.2f}x", verdict(segs[-1] / segs[0], 0.9))  # fmt: skip
    ratio = cond["rate"] / peer["rate"]
    report.row("  the same against the peer (64 threads, its conditional append)", f"{cond['rate']:,.0f}", "",
               f"{ratio:.1f}x", verdict(ratio, 10), peer=f"{peer['rate']:,.0f}")  # fmt: skip
    report.row("  conditional latency p50 / p99", f"{cond['p50'] * 1e3:.1f} / {cond['p99'] * 1e3:.1f} ms",
               peer=f"{peer['p50'] * 1e3:.1f} / {peer['p99'] * 1e3:.1f} ms")  # fmt: skip
    ratio = five["rate"] / cond["rate"]
    report.row("5-item conditions (DCB query) over 1M (vs 1 item)", f"{five['rate']:,.0f}", f"{cond['rate']:,.0f}",
               f"{ratio:.2f}x", verdict(ratio, 0.5), peer=f"{peer5['rate']:,.0f}")  # fmt: skip
    ratio = five["rate"] / peer5["rate"]
    report.row("  5-item conditions against the peer", f"{five['rate']:,.0f}", "", f"{ratio:.1f}x",
               verdict(ratio, 10), peer=f"{peer5['rate']:,.0f}")  # fmt: skip


async def sequential(report: Report, admin: str, preloaded: str, peer_db: str) -> None:
    """3. one writer: latency over a raw commit; conditional against the peer."""

    async def ours_plain(round_: int) -> dict[str, Any]:
        return await sequential_appends(await fresh_database(admin, "bench_store_seq"), 1000, 100)

    async def raw(round_: int) -> dict[str, Any]:
        spec = {"mode": "sequential", "dsn": await fresh_database(admin, "bench_raw_seq"), "count": 1000, "warmup": 100}
        return await trio.to_thread.run_sync(run_baseline, "raw_store", spec)

    async def ours_cond(round_: int) -> dict[str, Any]:
        return await sequential_appends(preloaded, 500, 50, account=500 + round_)

    got = await interleaved({"plain": ours_plain, "raw": raw, "cond": ours_cond,
                             "peer": _peer("sequential", dsn=peer_db, account=500, count=500, warmup=50)})  # fmt: skip
    added = (got["plain"]["p50"] - got["raw"]["p50"]) * 1e6
    report.row("sequential append p50 (vs raw single-row commit)", f"{got['plain']['p50'] * 1e6:,.0f} us",
               f"{got['raw']['p50'] * 1e6:,.0f} us", f"{added:+,.0f} us",
               f"<= +150 us {'met' if added <= 150 else 'MISSED'}")  # fmt: skip
    cond, peer = got["cond"], got["peer"]
    ratio = cond["p50"] / peer["p50"]
    report.row("sequential conditional append over 1M, p50 / p99 (vs the peer)",
               f"{cond['p50'] * 1e3:.2f} / {cond['p99'] * 1e3:.2f} ms", "", f"{ratio:.2f}x",
               verdict(ratio, 0.8, higher_is_better=False),
               peer=f"{peer['p50'] * 1e3:.2f} / {peer['p99'] * 1e3:.2f} ms")  # fmt: skip


async def reads(report: Report, preloaded: str, peer_db: str) -> None:
    """4. one account's 100 events among 1M: against raw asyncpg and the peer."""
    accounts = [(k * 7919) % PRELOAD_ACCOUNTS for k in range(600)]
    sql, _ = query_sql(EventQuery([create_filter(BOUNDARY_TYPES, [{"accountId": account_id(0)}])]))
    args = [query_sql(EventQuery([create_filter(BOUNDARY_TYPES, [{"accountId": account_id(a)}])]))[1]
            for a in accounts]  # fmt: skip

    async def raw(round_: int) -> dict[str, Any]:
        spec = {"mode": "query", "dsn": preloaded, "sql": sql, "args": args, "warmup": 100}
        return await trio.to_thread.run_sync(run_baseline, "raw_store", spec)

    async def ours(round_: int) -> dict[str, Any]:
        return await account_queries(preloaded, accounts, 100)

    async def peer(round_: int) -> dict[str, Any]:
        spec = {"mode": "reads", "dsn": peer_db, "accounts": accounts, "warmup": 100}
        return await trio.to_thread.run_sync(run_baseline, "peer", spec)

    got = await interleaved({"ours": ours, "raw": raw, "peer": peer})
    assert got["ours"]["rows"] == got["raw"]["rows"], (got["ours"]["rows"], got["raw"]["rows"])
    ratio = got["raw"]["p50"] / got["ours"]["p50"]
    report.row("read one account's 100 of 1M, p50 (throughput ratio vs raw)", f"{got['ours']['p50'] * 1e3:.2f} ms",
               f"{got['raw']['p50'] * 1e3:.2f} ms", f"{ratio:.2f}x", verdict(ratio, 0.8))  # fmt: skip
    ratio = got["peer"]["p50"] / got["ours"]["p50"]
    report.row("  the same against the peer's read (throughput ratio)", f"{got['ours']['p50'] * 1e3:.2f} ms", "",
               f"{ratio:.2f}x", verdict(ratio, 1.5), peer=f"{got['peer']['p50'] * 1e3:.2f} ms")  # fmt: skip


async def round_trips(report: Report, admin: str) -> None:
    """5. one connection's ``SELECT 1`` round trip: against asyncpg on plain asyncio."""
    spec = {"dsn": admin, "count": 3000, "warmup": 200}

    async def ours(round_: int) -> dict[str, Any]:
        conn = await testing.connect(admin)
        try:
            for _ in range(spec["warmup"]):
                await conn.fetchval("SELECT 1")
            cpu, wall = time.thread_time(), time.perf_counter()
            for _ in range(spec["count"]):
                await conn.fetchval("SELECT 1")
            cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
        finally:
            await conn.close()
        return {"cpu": cpu / spec["count"], "wall": wall / spec["count"]}

    async def raw(round_: int) -> dict[str, Any]:
        return await trio.to_thread.run_sync(run_baseline, "raw_store", {"mode": "round_trips", **spec})

    got = await interleaved({"ours": ours, "raw": raw})
    for key, what in (("cpu", "processor time"), ("wall", "wall time")):
        ratio = got["raw"][key] / got["ours"][key]
        ours_us, raw_us = got["ours"][key] * 1e6, got["raw"][key] * 1e6
        report.row(f"a SELECT 1 round trip on one connection, {what} (throughput ratio vs asyncpg on plain asyncio)",
                   f"{ours_us:,.0f} us", f"{raw_us:,.0f} us", f"{ratio:.2f}x")  # fmt: skip


async def run() -> None:
    admin, _embedded = server()
    report = Report("store: the store actor against raw asyncpg and the peer")
    report.note(f"server: {await settings_line(admin)}")
    report.note(f"{APPENDS} appends per run; 1M events = {PRELOAD_ACCOUNTS} accounts x {EVENTS_PER_ACCOUNT}; "
                f"medians of {ROUNDS} interleaved rounds; peer: eventsourcing {_peer_version()} "
                f"PostgresDCBRecorderTT")  # fmt: skip
    await writers(report, admin)
    await _template(admin)
    await _peer_template(admin)
    preloaded = await fresh_database(admin, "bench_store_1m", template=TEMPLATE)
    peer_db = await _recreate(admin, "bench_peer_1m", PEER_TEMPLATE)
    await conditions(report, admin, preloaded, peer_db)
    await sequential(report, admin, preloaded, peer_db)
    await reads(report, preloaded, peer_db)
    async with testing.open_loop():
        await round_trips(report, admin)
    report.print()


def _peer_version() -> str:
    from importlib.metadata import version

    return version("eventsourcing")


def main() -> None:
    trio.run(run)
