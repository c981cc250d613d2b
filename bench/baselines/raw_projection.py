"""Raw asyncpg on plain asyncio, for the projection benchmark: read the events
in pages, fold each page per account, and apply it with ONE unnest upsert and
the checkpoint in one transaction. Reads a JSON spec on stdin, prints JSON."""

from __future__ import annotations

import asyncio
import json
import sys
import time
from decimal import Decimal
from typing import Any

import asyncpg

from bench.accounts_model import SETUP_SQL, UPSERT_SQL, deltas

PAGE_SQL = """
SELECT sequence_number, event_type, payload FROM eventbus.events
WHERE sequence_number > $1 AND event_type = ANY($2::text[])
ORDER BY sequence_number LIMIT $3
"""


async def replay(spec: dict[str, Any]) -> dict[str, Any]:
    conn = await asyncpg.connect(spec["dsn"], server_settings={"plan_cache_mode": "force_custom_plan"})
    await conn.set_type_codec("jsonb", encoder=json.dumps, decoder=json.loads, schema="pg_catalog")
    await conn.execute("CREATE SCHEMA IF NOT EXISTS raw_model")
    await conn.execute("SET search_path TO raw_model")
    await conn.execute(SETUP_SQL)
    await conn.execute("CREATE TABLE IF NOT EXISTS checkpoint (position bigint NOT NULL)")
    await conn.execute("INSERT INTO checkpoint SELECT 0 WHERE NOT EXISTS (SELECT 1 FROM checkpoint)")
    started = time.perf_counter()
    position = 0
    events = 0
    while True:
        rows = await conn.fetch(PAGE_SQL, position, spec["types"], spec["batch"])
        if not rows:
            break
        ids, amounts, counts = deltas((row["event_type"], row["payload"]) for row in rows)
        async with conn.transaction():
            await conn.execute(UPSERT_SQL, ids, amounts, counts)
            await conn.execute("UPDATE checkpoint SET position = $1", rows[-1]["sequence_number"])
        position = rows[-1]["sequence_number"]
        events += len(rows)
    elapsed = time.perf_counter() - started
    total = await conn.fetchval("SELECT sum(balance) FROM accounts")
    await conn.close()
    return {"events_per_s": events / elapsed, "events": events, "total": str(total or Decimal(0))}


if __name__ == "__main__":
    # A plain asyncio loop: once eventbus is imported, asyncio.run uses trio-asyncio's.
    with asyncio.Runner(loop_factory=asyncio.SelectorEventLoop) as runner:
        print(json.dumps(runner.run(replay(json.loads(sys.stdin.read())))))
