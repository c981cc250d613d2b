"""A standby must follow the store's primary, not a copy of it.

A standby that was promoted (a failover drill, a split brain) keeps the
primary's system identifier and database oid, and so does a standby of it:
only their history tells them apart. Such a standby, listed in
``replica_dsns``, is down, says why, and serves no read: a read with
``min_position`` gets the primary's event, not the copy's.
"""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
import trio

from eventbus import Event, EventQuery, ReplicaState, create_filter, open_bus, testing
from eventbus.testing import EmbeddedServer

pytestmark = [pytest.mark.replica, pytest.mark.slow]

SETTINGS = {"fsync": "off", "full_page_writes": "off", "shared_buffers": "32MB", "max_connections": "60"}
EVERYTHING = create_filter([])


async def test_a_standby_of_a_promoted_copy_is_down_and_reads_go_to_the_primary(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="eventbus.replicas")
    primary = EmbeddedServer(tmp_path / "primary", settings=SETTINGS)
    servers = [primary]
    try:
        await trio.to_thread.run_sync(primary.start)
        async with testing.open_loop():
            await testing.create_database(primary.dsn(), "bank")
        async with open_bus(primary.dsn("bank")) as bus:
            await bus.store.append([Event("Common", {"n": n}) for n in range(10)])
        copy = await trio.to_thread.run_sync(testing.start_standby, primary, tmp_path / "copy")
        servers.append(copy)
        async with testing.open_loop():
            conn = await testing.connect(copy.dsn("bank"))
            try:
                assert await conn.fetchval("SELECT pg_promote(wait => true)")  # the copy now goes its own way
            finally:
                await conn.close()
        async with open_bus(copy.dsn("bank")) as other:
            await other.store.append([Event("Diverged", {"n": n}) for n in range(20)])
        follower = await trio.to_thread.run_sync(testing.start_standby, copy, tmp_path / "follower")
        servers.append(follower)

        async with open_bus(primary.dsn("bank"), replica_dsns=[follower.dsn("bank")]) as bus:
            [mine] = await bus.store.append([Event("Mine", {})])
            assert mine.sequence_number == 11
            result = await bus.store.query(EventQuery([EVERYTHING], after=10), min_position=11)
            assert [(r.sequence_number, r.event_type) for r in result.events] == [(11, "Mine")]
            async with bus.subscribe(EVERYTHING, after=5) as subscription:
                got: list[str] = []
                async for batch in subscription:
                    got += [record.event_type for record in batch]
                    if len(got) >= 6:
                        break
            assert got == ["Common"] * 5 + ["Mine"]
            [standby] = bus.statistics().store.replicas
            assert standby.state == ReplicaState.DOWN and standby.reads == 0, standby
            assert "not a standby of this store's primary" in (standby.last_error or ""), standby
        # Down from the start: said once in the log, not only in statistics().
        down = [r.getMessage() for r in caplog.records if "is down" in r.getMessage()]
        assert len(down) == 1 and "position" in down[0], down
    finally:
        for server in reversed(servers):
            await trio.to_thread.run_sync(server.stop)
