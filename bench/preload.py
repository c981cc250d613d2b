"""Stores of 1M and 10M events, built once as template databases and kept
between runs (in the bench server's folder), so a run only copies them.

Account k's events are spread evenly over the whole table: account
``(position - 1) % accounts``, deposits and withdrawals in turn, about 100
bytes of payload each, tagged as the store tags them.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import re
import uuid

import asyncpg
import trio

from bench._common import database_dsn, fresh_database
from bench.workload import deposit_payload
from eventbus import testing
from eventbus.testing import event_tags, schema_sql

BOUNDARY_TYPES = ["MoneyDeposited", "MoneyWithdrawn"]
ACCOUNTS = 10_000
CHUNK = 100_000


def _secondary_indexes() -> list[str]:
    return re.findall(r"CREATE (?:UNIQUE )?INDEX IF NOT EXISTS .*?;", schema_sql(), flags=re.S)


async def _preload(dsn: str, accounts: int, per_account: int) -> None:
    conn = await asyncpg.connect(dsn)
    try:
        if await conn.fetchval("SELECT value FROM eventbus.meta WHERE key = 'bench_preload'") == "done":
            return
        await conn.execute("TRUNCATE eventbus.events")
        await conn.execute("TRUNCATE eventbus.event_tags")
        # Indexes are built after the load: much faster than row by row.
        await conn.execute("ALTER TABLE eventbus.event_tags DROP CONSTRAINT IF EXISTS event_tags_pkey")
        for name in ("events_event_id", "events_type_position"):
            await conn.execute(f"DROP INDEX IF EXISTS eventbus.{name}")
        total = accounts * per_account
        now = datetime.datetime.now(datetime.UTC)
        for start in range(0, total, CHUNK):
            records = []
            tag_rows = []
            for position in range(start + 1, min(total, start + CHUNK) + 1):
                account = (position - 1) % accounts
                payload = deposit_payload(position, account)
                records.append((position, uuid.uuid4(), BOUNDARY_TYPES[position % 2], json.dumps(payload), "{}", now))
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
        await conn.execute("SET maintenance_work_mem = '1GB'")
        for statement in _secondary_indexes():
            await conn.execute(statement)
        await conn.execute("ALTER TABLE eventbus.event_tags ADD PRIMARY KEY (tag, sequence_number)")
        await conn.execute(f"SELECT setval('eventbus.event_position', {total})")
        await conn.execute("VACUUM ANALYZE eventbus.events")
        await conn.execute("VACUUM ANALYZE eventbus.event_tags")
        await conn.execute("INSERT INTO eventbus.meta VALUES ('bench_preload', 'done') ON CONFLICT DO NOTHING")
    finally:
        await conn.close()


async def exists(admin: str, name: str) -> bool:
    async with testing.open_loop():
        conn = await testing.connect(admin)
        try:
            return bool(await conn.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", name))
        finally:
            await conn.close()


async def template(admin: str, name: str, *, accounts: int = ACCOUNTS, per_account: int) -> None:
    """Make the template ``name`` of ``accounts x per_account`` events once;
    later runs find it done (an interrupted build is finished)."""
    dsn = database_dsn(admin, name) if await exists(admin, name) else await fresh_database(admin, name)
    await trio.to_thread.run_sync(asyncio.run, _preload(dsn, accounts, per_account))


async def working_copy(admin: str, name: str, template_name: str, *, drift: int) -> str:
    """A database copied from ``template_name``, kept between runs while it
    holds at most ``drift`` events more than the template (a copy of a large
    template takes minutes; a run appends a few thousand events)."""
    if await exists(admin, name):
        async with testing.open_loop():
            conn = await testing.connect(database_dsn(admin, name))
            try:
                marked = await conn.fetchval("SELECT value FROM eventbus.meta WHERE key = 'bench_copy_of'")
            finally:
                await conn.close()
        if marked is not None and int(marked.split(":")[1]) + drift >= await _head(admin, name):
            return database_dsn(admin, name)
    dsn = await fresh_database(admin, name, template=template_name)
    head = await _head(admin, name)
    async with testing.open_loop():
        conn = await testing.connect(dsn)
        try:
            await conn.execute(
                "INSERT INTO eventbus.meta VALUES ('bench_copy_of', $1) ON CONFLICT (key) DO UPDATE SET value = $1",
                f"{template_name}:{head}",
            )
        finally:
            await conn.close()
    return dsn


async def _head(admin: str, name: str) -> int:
    async with testing.open_loop():
        conn = await testing.connect(database_dsn(admin, name))
        try:
            return int(await conn.fetchval("SELECT coalesce(max(sequence_number), 0) FROM eventbus.events"))
        finally:
            await conn.close()
