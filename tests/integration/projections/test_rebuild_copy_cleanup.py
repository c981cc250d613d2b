"""A rebuild that ends without swapping drops its copy, whatever state its
connection was left in: a transaction still open on it (a batch cancelled as
its BEGIN came back) or the connection terminated (a statement that could not
be cancelled cleanly)."""

from __future__ import annotations

from eventbus import _db, open_bus
from eventbus._projections._shadow import create_shadow, drop_shadow

EXISTS = "SELECT EXISTS (SELECT FROM pg_namespace WHERE nspname = $1)"


async def test_a_copy_is_dropped_when_its_connection_was_left_in_a_transaction(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        conn = await _db.connect(dsn)
        try:
            shadow = await create_shadow(conn, "leftover")
            await conn.execute("BEGIN")  # as a batch leaves it when cancelled between BEGIN and its try
            await drop_shadow(conn, shadow)
        finally:
            await conn.close()  # rolls back whatever the connection still had open
        assert await bus.store.pool.fetchval(EXISTS, shadow.schema) is False


async def test_a_copy_is_dropped_on_the_fallback_when_its_connection_was_terminated(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        conn = await _db.connect(dsn)
        shadow = await create_shadow(conn, "leftover")
        conn.terminate()
        await drop_shadow(conn, shadow)  # no fallback: the next rebuild drops it
        assert await bus.store.pool.fetchval(EXISTS, shadow.schema) is True
        await drop_shadow(conn, shadow, bus.store.pool)
        assert await bus.store.pool.fetchval(EXISTS, shadow.schema) is False
