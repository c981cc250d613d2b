"""Standbys at the edges: one that is not a standby of the store's own
database, and a read that asks for a position no event has yet."""

from __future__ import annotations

from urllib.parse import urlsplit

import pytest
import trio

from eventbus import ReplicaState, create_filter, open_bus, testing
from eventbus.testing import install_schema

from ...helpers import ReplicaDatabase, drop_database, wait_for_schema
from .test_replicas import NOTED, note, replica, until

pytestmark = pytest.mark.replica


async def test_a_standby_dsn_naming_another_database_is_down_and_the_primary_serves(
    replica_db: ReplicaDatabase,
) -> None:
    servers = replica_db.servers
    other = urlsplit(replica_db.primary_dsn).path.lstrip("/") + "_other"
    async with testing.open_loop():
        await testing.create_database(servers.primary.dsn(), other)
        conn = await testing.connect(servers.primary.dsn(other))
        try:
            await install_schema(conn)
        finally:
            await conn.close()
    try:
        async with testing.open_loop():
            await wait_for_schema(servers.standby.dsn(other))
        with trio.fail_after(30):
            async with open_bus(replica_db.primary_dsn, replica_dsns=[servers.standby.dsn(other)]) as bus:
                stats = replica(bus.store)
                assert stats.state is ReplicaState.DOWN
                assert "not a standby of this store's database" in (stats.last_error or "")
                position = await note(bus, 1, 0)
                result = await bus.store.query(create_filter([NOTED]), min_position=position)
        assert [record.payload for record in result.events] == [{"task": 1, "i": 0}]
    finally:
        with trio.CancelScope(shield=True):
            await drop_database(servers.primary.dsn(), other)


async def test_a_read_past_the_head_does_not_keep_the_standby_out_of_service(replica_db: ReplicaDatabase) -> None:
    async with open_bus(replica_db.primary_dsn, replica_dsns=[replica_db.standby_dsn], replica_wait=0.2) as bus:
        position = await note(bus, 0, 0)
        await bus.store.query(create_filter([NOTED]), min_position=10**12)
        await until(lambda: replica(bus.store).state is ReplicaState.UP, "up again")
        served = replica(bus.store).reads
        result = await bus.store.query(create_filter([NOTED]), min_position=position)
        assert [record.sequence_number for record in result.events] == [position]
        assert replica(bus.store).reads == served + 1
