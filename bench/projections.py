"""`just bench projections`: a projection against raw asyncpg, in one run.

1. Replay 1M events into an accounts-style read model: events/s of a
   projection whose batch handler applies one unnest upsert per batch, against
   raw asyncpg reading the same events and applying the same upsert and a
   checkpoint per batch, in a plain-asyncio process.
2. Projection lag p99 (from the hand-over of an event to the stream to the end
   of the batch that applies it) while 64 tasks append with a per-account
   condition as fast as the store takes them.
"""

from __future__ import annotations

import time
from decimal import Decimal

import trio

from bench._common import Report, fresh_database, percentile, run_baseline, server, settings_line, verdict
from bench.accounts_model import SETUP_SQL, UPSERT_SQL, deltas
from bench.store import BOUNDARY_TYPES, TEMPLATE, _template
from bench.workload import account_id, deposit_payload
from eventbus import Event, EventRecord, Projection, Transaction, create_filter, open_bus

BATCH = 2000
LOAD_SECONDS = 8.0


async def _setup(tx: Transaction) -> None:
    await tx.execute(SETUP_SQL)


def accounts_projection(batch_size: int, on_batch: object = None) -> Projection:
    async def apply(tx: Transaction, records: list[EventRecord]) -> None:
        ids, amounts, counts = deltas((r.event_type, r.payload) for r in records)
        await tx.execute(UPSERT_SQL, ids, amounts, counts)
        if callable(on_batch):
            on_batch(records)

    return Projection(name="bench_accounts", setup=_setup, batch_size=batch_size, batch_handler=apply,
                      event_types=BOUNDARY_TYPES)  # fmt: skip


async def replay(dsn: str) -> dict[str, float | str]:
    async with open_bus(dsn) as bus:
        head = await bus.store.head()
        started = time.perf_counter()
        await bus.projections.start(accounts_projection(BATCH))
        await bus.projections.wait_until_caught_up("bench_accounts", timeout=3600)
        elapsed = time.perf_counter() - started
        async with bus.projections.reader("bench_accounts") as tx:
            total = await tx.fetchval("SELECT sum(balance) FROM accounts")
    return {"events_per_s": head / elapsed, "total": str(total or Decimal(0))}


async def lag_under_load(dsn: str) -> dict[str, float]:
    handed: dict[int, float] = {}
    lags: list[float] = []

    def on_batch(records: list[EventRecord]) -> None:
        now = time.perf_counter()
        lags.extend(now - handed.pop(r.sequence_number) for r in records if r.sequence_number in handed)

    appended = 0
    async with open_bus(dsn) as bus:
        publish = bus.stream.publish

        async def timed_publish(records: list[EventRecord]) -> None:
            now = time.perf_counter()
            for record in records:
                handed[record.sequence_number] = now
            await publish(records)

        bus.stream.publish = timed_publish  # type: ignore[method-assign]
        await bus.projections.start(accounts_projection(500, on_batch))
        await bus.projections.wait_until_caught_up("bench_accounts", timeout=3600)
        lags.clear()

        async def writer(index: int) -> None:
            nonlocal appended
            account = 5000 + index
            filter = create_filter(BOUNDARY_TYPES, [{"accountId": account_id(account)}])
            expected = (await bus.store.query(filter)).max_sequence_number
            k = 0
            while True:
                records = await bus.store.append([Event("MoneyDeposited", deposit_payload(k, account))], filter,
                                                 expected)  # fmt: skip
                expected = records[-1].sequence_number
                appended += 1
                k += 1

        with trio.move_on_after(LOAD_SECONDS):
            async with trio.open_nursery() as nursery:
                for index in range(64):
                    nursery.start_soon(writer, index)
        await bus.projections.wait_until_caught_up("bench_accounts", timeout=60)
    return {"p50": percentile(lags, 0.5), "p99": percentile(lags, 0.99), "rate": appended / LOAD_SECONDS,
            "count": len(lags)}  # fmt: skip


async def run() -> None:
    admin, _embedded = server()
    report = Report("projections: a projection against raw asyncpg")
    report.note(f"server: {await settings_line(admin)}")
    await _template(admin)
    ours_db = await fresh_database(admin, "bench_proj_ours", template=TEMPLATE)
    raw_db = await fresh_database(admin, "bench_proj_raw", template=TEMPLATE)
    report.note(f"replay of 1M events ({len(BOUNDARY_TYPES)} types, 10,000 accounts), batches of {BATCH}")
    ours = await replay(ours_db)
    raw = run_baseline("raw_projection", {"dsn": raw_db, "types": BOUNDARY_TYPES, "batch": BATCH})
    assert ours["total"] == raw["total"], (ours["total"], raw["total"])
    ratio = float(ours["events_per_s"]) / raw["events_per_s"]
    report.row("replay events/s into the read model (vs raw unnest upsert)", f"{float(ours['events_per_s']):,.0f}",
               f"{raw['events_per_s']:,.0f}", f"{ratio:.2f}x", verdict(ratio, 0.7))  # fmt: skip
    lag = await lag_under_load(await fresh_database(admin, "bench_proj_lag", template=TEMPLATE))
    report.row(f"projection lag p50 / p99 under {lag['rate']:,.0f} conditional appends/s",
               f"{lag['p50'] * 1e3:.1f} / {lag['p99'] * 1e3:.1f} ms", "", "",
               f"p99 <= 100 ms {'met' if lag['p99'] <= 0.1 else 'MISSED'}")  # fmt: skip
    report.print()


def main() -> None:
    trio.run(run)
