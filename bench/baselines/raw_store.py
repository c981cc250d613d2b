"""Raw asyncpg on plain asyncio, for the store benchmark. Reads a JSON spec on
stdin, prints a JSON result on stdout's last line."""

from __future__ import annotations

import asyncio
import json
import sys
import time
import uuid
from typing import Any

import asyncpg

from bench.workload import deposit_payload
from eventbus.testing import event_tags

# The same rows eventbus writes: the events and their payload tags (the
# store's inverted index). Positions come from the sequence, without a lock.
INSERT_BATCH = """
WITH e AS (
    INSERT INTO eventbus.events (sequence_number, event_id, event_type, payload, metadata, occurred_at)
    SELECT nextval('eventbus.event_position'), n.id, n.typ, n.payload::jsonb, '{}'::jsonb, now()
    FROM unnest($1::uuid[], $2::text[], $3::text[]) WITH ORDINALITY AS n(id, typ, payload, ord)
    RETURNING event_id, sequence_number
)
INSERT INTO eventbus.event_tags (tag, sequence_number)
SELECT t.tag, e.sequence_number FROM unnest($4::uuid[], $5::bigint[]) AS t(id, tag) JOIN e ON e.event_id = t.id
"""
INSERT_ONE = """
WITH e AS (
    INSERT INTO eventbus.events (sequence_number, event_id, event_type, payload, metadata, occurred_at)
    VALUES (nextval('eventbus.event_position'), $1, $2, $3::jsonb, '{}'::jsonb, now())
    RETURNING sequence_number
)
INSERT INTO eventbus.event_tags (tag, sequence_number) SELECT t, e.sequence_number FROM e, unnest($4::bigint[]) AS t
"""
SETTINGS = {"plan_cache_mode": "force_custom_plan"}


async def batch_insert(spec: dict[str, Any]) -> dict[str, Any]:
    conn = await asyncpg.connect(spec["dsn"], server_settings=SETTINGS)
    batch, total = spec["batch"], spec["total"]
    counter = 0

    async def one_batch() -> None:
        nonlocal counter
        ids = [uuid.uuid4() for _ in range(batch)]
        raw = [deposit_payload(counter + i) for i in range(batch)]
        tags = [event_tags(p) for p in raw]
        tag_ids = [i for i, ts in zip(ids, tags, strict=True) for _ in ts]
        counter += batch
        await conn.execute(INSERT_BATCH, ids, ["MoneyDeposited"] * batch, [json.dumps(p) for p in raw],
                           tag_ids, [t for ts in tags for t in ts])  # fmt: skip

    for _ in range(20):
        await one_batch()
    started = time.perf_counter()
    done = 0
    while done < total:
        await one_batch()
        done += batch
    elapsed = time.perf_counter() - started
    await conn.close()
    return {"rows_per_s": done / elapsed}


async def single_commits(spec: dict[str, Any]) -> dict[str, Any]:
    conns = [await asyncpg.connect(spec["dsn"], server_settings=SETTINGS) for _ in range(spec["connections"])]
    per = spec["per_connection"]

    async def worker(index: int, conn: asyncpg.Connection, count: int) -> None:
        for k in range(count):
            payload = deposit_payload(index * 100000 + k)
            await conn.execute(INSERT_ONE, uuid.uuid4(), "MoneyDeposited", json.dumps(payload), event_tags(payload))

    await asyncio.gather(*(worker(i, c, 10) for i, c in enumerate(conns)))
    started = time.perf_counter()
    await asyncio.gather(*(worker(i, c, per) for i, c in enumerate(conns)))
    elapsed = time.perf_counter() - started
    for conn in conns:
        await conn.close()
    return {"rows_per_s": len(conns) * per / elapsed}


async def sequential(spec: dict[str, Any]) -> dict[str, Any]:
    conn = await asyncpg.connect(spec["dsn"], server_settings=SETTINGS)
    latencies = []
    for k in range(spec["warmup"] + spec["count"]):
        payload = deposit_payload(k)
        started = time.perf_counter()
        await conn.execute(INSERT_ONE, uuid.uuid4(), "MoneyDeposited", json.dumps(payload), event_tags(payload))
        if k >= spec["warmup"]:
            latencies.append(time.perf_counter() - started)
    await conn.close()
    latencies.sort()
    return {"p50": latencies[len(latencies) // 2], "p99": latencies[int(len(latencies) * 0.99)]}


async def query(spec: dict[str, Any]) -> dict[str, Any]:
    conn = await asyncpg.connect(spec["dsn"], server_settings=SETTINGS)
    # Payloads as Python objects, as eventbus returns them (asyncpg's documented way).
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    latencies = []
    rows = 0
    for k, args in enumerate(spec["args"]):
        started = time.perf_counter()
        result = await conn.fetch(spec["sql"], *args)
        if k >= spec["warmup"]:
            latencies.append(time.perf_counter() - started)
            rows += len(result)
    await conn.close()
    latencies.sort()
    return {"p50": latencies[len(latencies) // 2], "rows": rows}


async def round_trips(spec: dict[str, Any]) -> dict[str, Any]:
    """``SELECT 1`` on one connection, ``count`` times: processor time and wall time per round trip."""
    conn = await asyncpg.connect(spec["dsn"])
    for _ in range(spec["warmup"]):
        await conn.fetchval("SELECT 1")
    cpu, wall = time.thread_time(), time.perf_counter()
    for _ in range(spec["count"]):
        await conn.fetchval("SELECT 1")
    cpu, wall = time.thread_time() - cpu, time.perf_counter() - wall
    await conn.close()
    return {"cpu": cpu / spec["count"], "wall": wall / spec["count"]}


MODES = {"batch_insert": batch_insert, "single_commits": single_commits, "sequential": sequential, "query": query,
         "round_trips": round_trips}  # fmt: skip

if __name__ == "__main__":
    spec = json.loads(sys.stdin.read())
    # A plain asyncio loop: importing eventbus (for event_tags) makes asyncio.run use trio-asyncio's.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        print(json.dumps(runner.run(MODES[spec["mode"]](spec))))
