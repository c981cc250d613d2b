"""Connections read their socket in pieces that come from the heap, and a
large result still comes back whole."""

from __future__ import annotations

from eventbus import _db, open_bus
from eventbus._db._connections import READ_SIZE


async def test_a_connection_reads_at_most_read_size_at_a_time_and_a_large_result_comes_back_whole(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        conn = await _db.connect(dsn)
        try:
            # asyncpg's transport, where the setting lives: should it move, this fails.
            assert conn._raw._transport.max_size == READ_SIZE
            text = await conn.fetchval("SELECT repeat('x', 3 * 1024 * 1024 + 17)")
            assert text == "x" * (3 * 1024 * 1024 + 17)
        finally:
            await conn.close()
        async with bus.store.pool.acquire() as pooled:
            assert pooled._raw._transport.max_size == READ_SIZE
