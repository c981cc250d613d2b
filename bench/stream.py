"""`just bench stream`: the stream actor against a pure Trio fan-out, in one run.

1. Fan-out to 1, 4 and 16 subscribers, batches of 100: deliveries/s of the
   hub (fed committed records, subscribers with ``overflow="block"`` so both
   sides have backpressure) against a producer sending lists of 100 records
   straight into one Trio memory channel per consumer.
2. Commit-to-subscriber latency, p50 and p99, at 80% of the maximum append
   rate measured in the same run.
3. One subscriber stalled (never reads): the others' throughput against a run
   with none stalled, and the process's peak memory growth.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import time
import uuid
from typing import Any

import asyncpg
import trio

from bench._common import Report, fresh_database, percentile, server, settings_line, verdict
from bench.workload import deposit_payload
from eventbus import Event, EventRecord, EventStream, create_filter, open_bus, open_event_store

BATCH = 100
RECORDS = 200_000
SUBSCRIBER_COUNTS = (1, 4, 16)
PUBLISH_CHUNK = 1000
MEMORY_BOUND_MB = 64


def _records(count: int) -> list[EventRecord]:
    now = datetime.datetime.now(datetime.UTC)
    payload = {"accountId": "acc-000001", "amount": "1.00"}
    return [EventRecord(n, uuid.uuid4(), "MoneyDeposited", payload, {}, now) for n in range(1, count + 1)]


async def _preload(dsn: str, records: list[EventRecord]) -> None:
    """Store the records, so that any catch-up from the store finds them."""
    conn = await asyncpg.connect(dsn)
    try:
        rows = [
            (r.sequence_number, r.event_id, r.event_type, json.dumps(r.payload), "{}", r.occurred_at) for r in records
        ]
        await conn.copy_records_to_table(
            "events",
            schema_name="eventbus",
            records=rows,
            columns=["sequence_number", "event_id", "event_type", "payload", "metadata", "occurred_at"],
        )
        await conn.execute(f"SELECT setval('eventbus.event_position', {len(records)})")
    finally:
        await conn.close()


# ------------------------------------------------------------------ fan-out


async def hub_fanout(dsn: str, records: list[EventRecord], subscribers: int, *, stalled: int = 0,
                     overflow: str = "block") -> float:  # fmt: skip
    """Deliveries/s to the reading subscribers."""
    async with open_event_store(dsn) as store:
        stream = EventStream(store, 0)
        async with trio.open_nursery() as nursery:
            await nursery.start(stream.run)
            done = trio.Event()
            finished = 0
            ready = 0
            all_ready = trio.Event()

            async def consume(read: bool) -> None:
                nonlocal finished, ready
                # A stalled subscriber must not hold the others up: it catches up.
                policy = overflow if read else "catch_up"
                async with stream.subscribe(
                    create_filter([]),
                    after=0,
                    max_batch=BATCH,
                    buffer=10 * BATCH,
                    overflow=policy,  # type: ignore[arg-type]
                ) as sub:
                    ready += 1
                    if ready == subscribers + stalled:
                        all_ready.set()
                    if not read:
                        await done.wait()
                        return
                    seen = 0
                    async for batch in sub:
                        seen += len(batch)
                        if seen >= len(records):
                            break
                finished += 1
                if finished == subscribers:
                    done.set()

            for _ in range(subscribers):
                nursery.start_soon(consume, True)
            for _ in range(stalled):
                nursery.start_soon(consume, False)
            await all_ready.wait()
            started = time.perf_counter()
            for start in range(0, len(records), PUBLISH_CHUNK):
                await stream.publish(records[start : start + PUBLISH_CHUNK])
            await done.wait()
            elapsed = time.perf_counter() - started
            nursery.cancel_scope.cancel()
    return subscribers * len(records) / elapsed


async def channel_fanout(records: list[EventRecord], subscribers: int) -> float:
    """The baseline: lists of BATCH records into one memory channel per consumer."""
    async with trio.open_nursery() as nursery:
        senders = []
        for _ in range(subscribers):
            send, receive = trio.open_memory_channel[list[EventRecord]](10)
            senders.append(send)

            async def consume(receive: trio.MemoryReceiveChannel[list[EventRecord]] = receive) -> None:
                async with receive:
                    async for _batch in receive:
                        pass

            nursery.start_soon(consume)
        started = time.perf_counter()
        for start in range(0, len(records), BATCH):
            chunk = records[start : start + BATCH]
            for send in senders:
                await send.send(chunk)
        for send in senders:
            await send.aclose()
    return subscribers * len(records) / (time.perf_counter() - started)


# ------------------------------------------------------------------ latency


async def max_append_rate(dsn: str, seconds: float = 3.0) -> float:
    async with open_bus(dsn) as bus:
        count = 0
        with trio.move_on_after(seconds):
            async with trio.open_nursery() as nursery:

                async def writer(index: int) -> None:
                    nonlocal count
                    k = 0
                    while True:
                        await bus.store.append([Event("MoneyDeposited", deposit_payload(k, index))])
                        count += 1
                        k += 1

                for index in range(64):
                    nursery.start_soon(writer, index)
    return count / seconds


async def commit_latency(dsn: str, rate: float, seconds: float = 5.0) -> dict[str, float]:
    """Appends paced at ``rate``; latency from the hand-over to the stream to the subscriber."""
    latencies: list[float] = []
    async with open_bus(dsn) as bus:
        handed: dict[int, float] = {}
        publish = bus.stream.publish

        async def timed_publish(records: list[EventRecord]) -> None:
            now = time.perf_counter()
            for record in records:
                handed[record.sequence_number] = now
            await publish(records)

        bus.stream.publish = timed_publish  # type: ignore[method-assign]
        async with trio.open_nursery() as nursery, bus.subscribe(create_filter([])) as sub:

            async def receive() -> None:
                async for batch in sub:
                    now = time.perf_counter()
                    # (a record read back from the database, not handed over, has no time)
                    latencies.extend(now - handed.pop(r.sequence_number) for r in batch if r.sequence_number in handed)

            nursery.start_soon(receive)
            writers = 16
            interval = writers / rate
            with trio.move_on_after(seconds):
                async with trio.open_nursery() as pacing:
                    for index in range(writers):

                        async def writer(index: int = index) -> None:
                            next_at = trio.current_time() + index * interval / writers
                            k = 0
                            while True:
                                await trio.sleep_until(next_at)
                                next_at += interval
                                await bus.store.append([Event("MoneyDeposited", deposit_payload(k, index))])
                                k += 1

                        pacing.start_soon(writer)
            await bus.stream.wait_position(await bus.store.head())
            nursery.cancel_scope.cancel()
    return {"p50": percentile(latencies, 0.5), "p99": percentile(latencies, 0.99), "count": len(latencies)}


def _rss_mb() -> float:
    with open("/proc/self/status") as status:
        for line in status:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def _peak_rss_during(fn: Any, *args: Any, **kwargs: Any) -> tuple[Any, float]:
    """Run ``fn`` while sampling the resident set; return its result and the peak growth in MB."""
    before = _rss_mb()
    peak = before
    async with trio.open_nursery() as nursery:

        async def sample() -> None:
            nonlocal peak
            while True:
                peak = max(peak, _rss_mb())
                await trio.sleep(0.02)

        nursery.start_soon(sample)
        result = await fn(*args, **kwargs)
        nursery.cancel_scope.cancel()
    return result, peak - before


# ------------------------------------------------------------------ the run


async def run() -> None:
    admin, _embedded = server()
    report = Report("stream: the hub against a pure Trio fan-out")
    report.note(f"server: {await settings_line(admin)}")
    records = _records(RECORDS)
    db = await fresh_database(admin, "bench_stream")
    await trio.to_thread.run_sync(asyncio.run, _preload(db, records))
    report.note(f"{RECORDS:,} records, batches of {BATCH}, buffers of {10 * BATCH}")

    for count in SUBSCRIBER_COUNTS:
        ours = await hub_fanout(db, records, count)
        base = await channel_fanout(records, count)
        target = verdict(ours / base, 0.5)
        if count == 16:
            target += f"; >= 1M/s {'met' if ours >= 1e6 else 'MISSED'}"
        report.row(f"fan-out deliveries/s, {count} subscriber(s)", f"{ours:,.0f}", f"{base:,.0f}",
                   f"{ours / base:.2f}x", target)  # fmt: skip

    rate = await max_append_rate(await fresh_database(admin, "bench_stream_rate"))
    lat = await commit_latency(await fresh_database(admin, "bench_stream_latency"), 0.8 * rate)
    report.row("max append rate (64 tasks, one event each)", f"{rate:,.0f}/s")
    report.row(f"commit-to-subscriber p50 / p99 at {0.8 * rate:,.0f} appends/s",
               f"{lat['p50'] * 1e3:.2f} / {lat['p99'] * 1e3:.2f} ms", "", "",
               f"p99 <= 10 ms {'met' if lat['p99'] <= 0.010 else 'MISSED'}")  # fmt: skip

    calm = await hub_fanout(db, records, 4)
    stalled, grown = await _peak_rss_during(hub_fanout, db, records, 4, stalled=1)
    report.row("4 readers' deliveries/s with a 5th stalled (vs none stalled)", f"{stalled:,.0f}", f"{calm:,.0f}",
               f"{stalled / calm:.2f}x", verdict(stalled / calm, 0.9))  # fmt: skip
    report.row("  peak memory growth during the stalled run", f"{grown:.1f} MB", "", "",
               f"<= {MEMORY_BOUND_MB} MB {'met' if grown <= MEMORY_BOUND_MB else 'MISSED'}")  # fmt: skip
    report.print()


def main() -> None:
    trio.run(run)
