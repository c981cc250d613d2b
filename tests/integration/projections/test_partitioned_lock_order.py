"""A process's heartbeat takes the lease rows in the order a batch's commit
does (by partition), so the two never deadlock.

A batch's transaction fences its partitions one after another, in partition
order. Here such a transaction has fenced partition 0 when the process's next
heartbeat comes; it then fences partition 15. Had the heartbeat locked the
rows in the table's order (partition 0's row was rewritten last, so it comes
last there), it would hold 15 and wait for 0: PostgreSQL would abort one of
them for a deadlock, and the runner would restart. The planner reads so
small a table in its own order whenever it likes; here it is told to.
"""

from __future__ import annotations

import trio

from eventbus import open_bus, testing

from .._projection_worker import account_events
from .test_partition_counts import NAME, projection


async def test_a_heartbeat_waits_for_a_batch_in_partition_order_and_never_deadlocks(dsn: str) -> None:
    async with testing.open_loop():
        conn = await testing.connect(dsn)
        try:  # every session of the database reads tables in their own order
            database = await conn.fetchval("SELECT current_database()")
            await conn.execute(f'ALTER DATABASE "{database}" SET enable_indexscan = off')
            await conn.execute(f'ALTER DATABASE "{database}" SET enable_bitmapscan = off')
        finally:
            await conn.close()
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.projections.start(projection(16))
        await bus.store.append(list(account_events(200, seed=9, accounts=50)))
        await bus.projections.wait_until_caught_up(NAME, timeout=30)
        async with testing.open_loop():
            conn = await testing.connect(dsn)
            try:
                leases = {row["partition"]: row for row in await conn.fetch(
                    "SELECT partition, owner, epoch, checkpoint FROM eventbus.projection_leases"
                    " WHERE projection = $1", NAME)}  # fmt: skip
                assert len({row["owner"] for row in leases.values()}) == 1  # this process holds them all
                await conn.execute(  # partition 0's row now comes last in the table
                    "UPDATE eventbus.projection_leases SET checkpoint = checkpoint WHERE projection = $1"
                    " AND partition = 0", NAME)  # fmt: skip

                def fence(k: int) -> str:
                    row = leases[k]
                    return (f"SELECT eventbus.advance_lease('{NAME}', {k}, '{row['owner']}', {row['epoch']},"
                            f" {row['checkpoint']})")  # fmt: skip

                await conn.execute("BEGIN")
                await conn.execute(fence(0))
                with trio.fail_after(10):  # the next heartbeat comes, and waits for this transaction
                    while not await conn.fetchval(
                        "SELECT count(*) FROM pg_stat_activity WHERE application_name = $1"
                        " AND wait_event_type = 'Lock'", f"eventbus-leases {NAME}"
                    ):  # fmt: skip
                        await trio.sleep(0.01)
                await conn.execute(fence(15))  # a deadlock fails this (or the heartbeat)
                await conn.execute("COMMIT")
            finally:
                await conn.close()
        await bus.store.append(list(account_events(50, seed=10, accounts=50)))
        await bus.projections.wait_until_caught_up(NAME, timeout=30)
        status = bus.projections.status()[NAME]
        assert (status.restarts, status.last_error) == (0, None)
