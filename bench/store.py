"""`just bench store`: the store actor against raw asyncpg, in one run.

Figures (each beside its baseline, measured in this run on the same server):
1. 64 tasks appending one ~100-byte event each: appends/s and latency, against
   (a) raw asyncpg in a plain-asyncio process inserting the batch size the actor
   achieved, one unnest INSERT per batch, and (b) 64 raw connections committing
   one row each.
2. The same with a per-account condition on every append, over 1M events;
   also the rate in successive segments (no slowdown from generic plans).
3. One task appending sequentially: latency added over a raw single-row commit.
4. One account's 100 events among 1M: query p50 against the same SQL in raw asyncpg.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import time
import uuid
from typing import Any

import asyncpg
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
from bench.workload import account_id, deposit_payload
from eventbus import Event, EventQuery, create_filter, open_event_store, testing
from eventbus.testing import event_tags, query_sql, schema_sql

TASKS = 64
APPENDS_PER_TASK = 150
PRELOAD_ACCOUNTS = 10_000
EVENTS_PER_ACCOUNT = 100
TEMPLATE = "bench_1m_v2"
BOUNDARY_TYPES = ["MoneyDeposited", "MoneyWithdrawn"]


# ------------------------------------------------------------------ preload


def _secondary_indexes() -> list[str]:
    return re.findall(r"CREATE (?:UNIQUE )?INDEX IF NOT EXISTS .*?;", schema_sql(), flags=re.S)


async def _preload(dsn: str) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT value FROM eventbus.meta WHERE key = 'bench_preload'") == "done":
            return
        await conn.execute("TRUNCATE eventbus.events")
        await conn.execute("TRUNCATE eventbus.event_tags")
        await conn.execute("ALTER TABLE eventbus.event_tags DROP CONSTRAINT IF EXISTS event_tags_pkey")
        for name in ("events_event_id", "events_type_position"):
            await conn.execute(f"DROP INDEX IF EXISTS eventbus.{name}")
        total = PRELOAD_ACCOUNTS * EVENTS_PER_ACCOUNT
        now = datetime.datetime.now(datetime.UTC)
        chunk = 100_000
        for start in range(0, total, chunk):
            records = []
            tag_rows = []
            for position in range(start + 1, start + chunk + 1):
                account = (position - 1) % PRELOAD_ACCOUNTS
                kind = BOUNDARY_TYPES[position % 2]
                payload = deposit_payload(position, account)
                records.append((position, uuid.uuid4(), kind, json.dumps(payload), "{}", now))
                tag_rows += [(tag, position) for tag in event_tags(payload)]
            await conn.copy_records_to_table(
                "event_tags", schema_name="eventbus", records=tag_rows, columns=["tag", "sequence_number"]
            )
            await conn.copy_records_to_table(
                "events",
                schema_name="eventbus",
                records=records,
                columns=["sequence_number", "event_id", "event_type", "payload", "metadata", "occurred_at"],
            )
        for statement in _secondary_indexes():
            await conn.execute(statement)
        await conn.execute("ALTER TABLE eventbus.event_tags ADD PRIMARY KEY (tag, sequence_number)")
        await conn.execute(f"SELECT setval('eventbus.event_position', {total})")
        await conn.execute("VACUUM ANALYZE eventbus.events")
        await conn.execute("VACUUM ANALYZE eventbus.event_tags")
        await conn.execute("INSERT INTO eventbus.meta VALUES ('bench_preload', 'done') ON CONFLICT DO NOTHING")
    finally:
        await conn.close()


async def _template(admin: str) -> None:
    """Make the 1M-event template once; later runs reuse it."""
    async with testing.open_loop():
        conn = await testing.connect(admin)
        try:
            exists = bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", TEMPLATE))
        finally:
            await conn.close()
    dsn = await fresh_database(admin, TEMPLATE) if not exists else database_dsn(admin, TEMPLATE)
    await trio.to_thread.run_sync(asyncio.run, _preload(dsn))


# ------------------------------------------------------------------ ours


async def concurrent_appends(dsn: str, *, conditional: bool, first_account: int = 0, items: int = 1) -> dict[str, Any]:
    """64 tasks appending; conditional ones on their account's boundary, of
    ``items`` filters (the account's, and ``items - 1`` that match nothing but
    still probe the index: a DCB condition of several items)."""
    latencies: list[float] = []
    finished: list[float] = []
    async with open_event_store(dsn) as store:

        async def worker(index: int, count: int, record: bool) -> None:
            account = first_account + index
            filter: Any = create_filter(BOUNDARY_TYPES, [{"accountId": account_id(account)}])
            if items > 1:
                others = [create_filter(BOUNDARY_TYPES, [{"accountId": f"{account}-{k}"}]) for k in range(1, items)]
                filter = [filter, *others]
            expected = (await store.query(filter)).max_sequence_number if conditional else None
            for k in range(count):
                event = Event("MoneyDeposited", deposit_payload(k, account))
                started = time.perf_counter()
                if conditional:
                    records = await store.append([event], filter, expected)
                    expected = records[-1].sequence_number
                else:
                    await store.append([event])
                if record:
                    now = time.perf_counter()
                    latencies.append(now - started)
                    finished.append(now)

        async with trio.open_nursery() as nursery:
            for index in range(TASKS):
                nursery.start_soon(worker, index, 10, False)
        before = store.statistics()
        started = time.perf_counter()
        async with trio.open_nursery() as nursery:
            for index in range(TASKS):
                nursery.start_soon(worker, index, APPENDS_PER_TASK, True)
        elapsed = time.perf_counter() - started
        after = store.statistics()
    batches = after.batches - before.batches
    appends = TASKS * APPENDS_PER_TASK
    # the rate in each fifth of the run, by completion time
    finished.sort()
    fifth = len(finished) // 5
    segments = [fifth / (finished[(i + 1) * fifth - 1] - finished[i * fifth]) for i in range(5)]
    return {
        "rate": appends / elapsed,
        "p50": percentile(latencies, 0.5),
        "p99": percentile(latencies, 0.99),
        "batch": appends / batches,
        "segments": segments,
    }


async def sequential_appends(dsn: str, count: int, warmup: int) -> dict[str, float]:
    latencies = []
    async with open_event_store(dsn) as store:
        for k in range(warmup + count):
            event = Event("MoneyDeposited", deposit_payload(k))
            started = time.perf_counter()
            await store.append([event])
            if k >= warmup:
                latencies.append(time.perf_counter() - started)
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99)}


async def account_queries(dsn: str, accounts: list[int], warmup: int) -> dict[str, float]:
    latencies = []
    rows = 0
    async with open_event_store(dsn) as store:
        for k, account in enumerate(accounts):
            filter = create_filter([], [{"accountId": account_id(account)}])
            started = time.perf_counter()
            result = await store.query(filter)
            if k >= warmup:
                latencies.append(time.perf_counter() - started)
                rows += len(result.events)
    return {"p50": percentile(latencies, 0.5), "rows": rows}


# ------------------------------------------------------------------ the run


async def run() -> None:
    admin, _embedded = server()
    report = Report("store: the store actor against raw asyncpg")
    report.note(f"server: {await settings_line(admin)}")
    report.note(f"{TASKS} tasks x {APPENDS_PER_TASK} appends; 1M events = {PRELOAD_ACCOUNTS} accounts x "
                f"{EVENTS_PER_ACCOUNT}")  # fmt: skip

    # 1. unconditional, empty store
    empty = await fresh_database(admin, "bench_store_empty")
    ours = await concurrent_appends(empty, conditional=False)
    batch = max(1, round(ours["batch"]))
    raw_a = run_baseline("raw_store", {"mode": "batch_insert", "dsn": await fresh_database(admin, "bench_raw_a"),
                                       "batch": batch, "total": TASKS * APPENDS_PER_TASK})  # fmt: skip
    raw_b = run_baseline("raw_store", {"mode": "single_commits", "dsn": await fresh_database(admin, "bench_raw_b"),
                                       "connections": TASKS, "per_connection": APPENDS_PER_TASK // 3})  # fmt: skip
    report.row("appends/s, 64 tasks (vs a: raw batched INSERT)", f"{ours['rate']:,.0f}",
               f"{raw_a['rows_per_s']:,.0f}", f"{ours['rate'] / raw_a['rows_per_s']:.2f}x",
               verdict(ours["rate"] / raw_a["rows_per_s"], 0.8))  # fmt: skip
    report.row("appends/s, 64 tasks (vs b: 64 raw single-row commits)", f"{ours['rate']:,.0f}",
               f"{raw_b['rows_per_s']:,.0f}", f"{ours['rate'] / raw_b['rows_per_s']:.2f}x",
               verdict(ours["rate"] / raw_b["rows_per_s"], 3.0))  # fmt: skip
    report.row("  mean appends per batch (a uses the same)", f"{ours['batch']:.1f}", f"{batch}")
    report.row("  append latency p50 / p99", f"{ours['p50'] * 1e3:.2f} / {ours['p99'] * 1e3:.2f} ms")

    # 2. conditional, 1M events
    await _template(admin)
    preloaded = await fresh_database(admin, "bench_store_1m", template=TEMPLATE)
    plain_1m = await concurrent_appends(preloaded, conditional=False, first_account=100)
    cond = await concurrent_appends(preloaded, conditional=True, first_account=200)
    report.row("conditional appends/s over 1M (vs unconditional, same table)", f"{cond['rate']:,.0f}",
               f"{plain_1m['rate']:,.0f}", f"{cond['rate'] / plain_1m['rate']:.2f}x",
               verdict(cond["rate"] / plain_1m["rate"], 0.6))  # fmt: skip
    segs = cond["segments"]
    report.row("  conditional rate by fifth of the run (last / first)", " ".join(f"{s:,.0f}" for s in segs), "",
               f"{segs[-1] / segs[0]:.2f}x", verdict(segs[-1] / segs[0], 0.9))  # fmt: skip
    report.row("  conditional latency p50 / p99", f"{cond['p50'] * 1e3:.2f} / {cond['p99'] * 1e3:.2f} ms")
    five = await concurrent_appends(preloaded, conditional=True, first_account=300, items=5)
    report.row("5-item conditions (DCB query) over 1M (vs 1 item)", f"{five['rate']:,.0f}", f"{cond['rate']:,.0f}",
               f"{five['rate'] / cond['rate']:.2f}x", verdict(five["rate"] / cond["rate"], 0.5))  # fmt: skip

    # 3. sequential latency
    seq_db = await fresh_database(admin, "bench_store_seq")
    ours_seq = await sequential_appends(seq_db, 2000, 200)
    raw_seq = run_baseline("raw_store", {"mode": "sequential", "dsn": await fresh_database(admin, "bench_raw_seq"),
                                         "count": 2000, "warmup": 200})  # fmt: skip
    added = (ours_seq["p50"] - raw_seq["p50"]) * 1e6
    report.row("sequential append p50 (vs raw single-row commit)", f"{ours_seq['p50'] * 1e6:,.0f} us",
               f"{raw_seq['p50'] * 1e6:,.0f} us", f"+{added:,.0f} us",
               f"<= +150 us {'met' if added <= 150 else 'MISSED'}")  # fmt: skip

    # 4. query one account's 100 events among 1M
    accounts = [(k * 7919) % PRELOAD_ACCOUNTS for k in range(600)]
    ours_q = await account_queries(preloaded, accounts, 100)
    args = []
    for account in accounts:
        sql, arg = query_sql(EventQuery([create_filter([], [{"accountId": account_id(account)}])]))
        args.append(arg)
    raw_q = run_baseline("raw_store", {"mode": "query", "dsn": preloaded, "sql": sql, "args": args, "warmup": 100})
    assert ours_q["rows"] == raw_q["rows"], (ours_q["rows"], raw_q["rows"])
    ratio = raw_q["p50"] / ours_q["p50"]
    report.row("query one account's 100 of 1M, p50 (throughput ratio)", f"{ours_q['p50'] * 1e3:.2f} ms",
               f"{raw_q['p50'] * 1e3:.2f} ms", f"{ratio:.2f}x", verdict(ratio, 0.8))  # fmt: skip
    report.print()


def main() -> None:
    trio.run(run)
