"""Partitioned projections across processes: a fair share each, rebalanced when
a process dies, joins or stops, every event applied once, and a process that
lost its lease refused at its commit.

The workers (``_projection_worker``, styles ``parts`` and ``parts_slow``) run
the accounts read model in 16 partitions by account; the read model counts
the events applied per account, so an event applied twice shows.
"""

from __future__ import annotations

import os
import signal
from collections import Counter
from pathlib import Path

import pytest
import trio

from eventbus import (
    Bus,
    DatabaseError,
    Event,
    EventRecord,
    Projection,
    ProjectionError,
    Transaction,
    create_filter,
    open_bus,
    testing,
)
from eventbus._projections._leases import HEARTBEAT, LEASE_TTL
from eventbus._projections._routing import partition_of

from .._projection_worker import (
    PARTITIONS,
    TYPES,
    account_events,
    partitioned_projection,
    read_model,
    replay,
)
from .test_partition_counts import NAME, projection
from .test_projections_processes import Worker, append_in_chunks, open_worker, poll_until

REBALANCE_TIMEOUT = LEASE_TTL + 4 * HEARTBEAT + 2.0  # "within a few seconds"


async def live_owners(bus: Bus) -> dict[int, list[int]]:
    """Per process id, the partitions whose live lease it holds."""
    rows = await bus.store.pool.fetch(
        "SELECT owner, partition FROM eventbus.projection_leases WHERE projection = 'accounts'"
        " AND owner IS NOT NULL AND expires_at > now() ORDER BY partition"
    )
    owners: dict[int, list[int]] = {}
    for row in rows:
        owners.setdefault(int(row["owner"].split(":")[-2]), []).append(row["partition"])
    return owners


def fair(owners: dict[int, list[int]], pids: set[int]) -> bool:
    """Every partition held, by exactly the processes ``pids``, in shares that differ by one at most."""
    shares = [len(ks) for ks in owners.values()]
    every = sorted(k for ks in owners.values() for k in ks)
    return set(owners) == pids and every == list(range(PARTITIONS)) and max(shares) - min(shares) <= 1


async def assert_replayed(bus: Bus, head: int) -> None:
    records = (await bus.store.query(create_filter(list(TYPES)))).events
    async with bus.projections.reader("accounts") as tx:
        model = await read_model(tx)
    assert model.tally == head  # each event applied once: no more, no fewer
    assert model == replay(records)  # per account: its balance and its count of events applied
    checkpoints = await bus.store.pool.fetch(
        "SELECT checkpoint FROM eventbus.projection_leases WHERE projection = 'accounts'"
    )
    assert len(checkpoints) == PARTITIONS


@pytest.mark.parametrize("style", ["parts", "parts_field"])  # a key function; a payload field, read by partition
async def test_three_processes_share_16_partitions_through_a_kill_a_join_and_a_stop(
    dsn: str, tmp_path: Path, style: str
) -> None:
    log = tmp_path / "workers.log"
    events = list(account_events(12_000, seed=14))
    async with open_bus(dsn, poll_interval=0.1) as bus:
        head = await append_in_chunks(bus.store, events[:3000], 500)
        async with (
            open_worker(dsn, style, log) as first,
            open_worker(dsn, style, log) as second,
            open_worker(dsn, style, log) as third,
        ):
            pids = {first.pid, second.pid, third.pid}

            async def shared_by(pids: set[int]) -> bool:
                return fair(await live_owners(bus), pids)

            await poll_until(lambda: shared_by(pids), timeout=REBALANCE_TIMEOUT + 10)
            owners = await live_owners(bus)
            for worker in (first, second, third):  # status() shows them, once its next heartbeat is in

                async def shows(worker: Worker = worker) -> bool:
                    return await worker.ask("held") == "held " + ",".join(map(str, owners[worker.pid]))

                await poll_until(shows, timeout=5 * HEARTBEAT)

            async with trio.open_nursery() as nursery:
                # Writes go on through every change below.
                async def write() -> None:
                    for start in range(3000, len(events), 250):
                        await bus.store.append(events[start : start + 250])
                        await trio.sleep(0.05)

                written = trio.Event()

                async def write_all() -> None:
                    await write()
                    written.set()

                nursery.start_soon(write_all)
                await first.kill()
                pids.discard(first.pid)
                killed_at = trio.current_time()
                await poll_until(lambda: shared_by(pids), timeout=REBALANCE_TIMEOUT)
                assert trio.current_time() - killed_at <= REBALANCE_TIMEOUT
                async with open_worker(dsn, style, log) as fourth:
                    pids.add(fourth.pid)
                    await poll_until(lambda: shared_by(pids), timeout=REBALANCE_TIMEOUT)
                    # The second stops (end of its input): it hands its partitions back.
                    await second._stdin.aclose()
                    assert await second.process.wait() == 0
                    pids.discard(second.pid)
                    stopped_at = trio.current_time()
                    await poll_until(lambda: shared_by(pids), timeout=REBALANCE_TIMEOUT)
                    assert trio.current_time() - stopped_at < LEASE_TTL  # handed back, not expired
                    await written.wait()
                    head = await bus.store.head()
                    for worker in (third, fourth):
                        with trio.fail_after(60):
                            assert await worker.ask("caught_up") == "caught_up"
                    await assert_replayed(bus, head)
                    assert head == len(events)


async def test_a_process_in_a_long_batch_shows_the_partitions_it_takes_at_once(dsn: str) -> None:
    release = trio.Event()
    blocked = trio.Event()

    async def record(tx: Transaction, records: list[EventRecord]) -> None:
        # In the transaction: a batch rolled back (a partition taken meanwhile)
        # and applied again counts once, as its effects do.
        await tx.executemany("INSERT INTO projection_long.applied VALUES ($1)", [(r.sequence_number,) for r in records])

    async def apply(tx: Transaction, records: list[EventRecord]) -> None:
        if not release.is_set():
            blocked.set()
            await release.wait()
        await record(tx, records)

    async def setup(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS projection_long.applied (seq bigint)")

    def projection(handler: object) -> Projection:
        return Projection("long", batch_handler=handler, event_types=["Ping"], partitions=4,  # type: ignore[arg-type]
                          partition_key=lambda record: record.payload["k"], setup=setup)  # fmt: skip

    async def ignore(tx: Transaction, records: list[EventRecord]) -> None:
        await record(tx, records)

    async with open_bus(dsn) as one, open_bus(dsn) as other:
        await other.projections.start(projection(ignore))
        await one.projections.start(projection(apply))
        with trio.fail_after(30):
            while sorted(map(len, one.projections.status()["long"].partitions.values())) != [2, 2]:
                await trio.sleep(0.05)
        records = await other.store.append([Event("Ping", {"k": f"k-{i}"}) for i in range(40)])
        with trio.fail_after(30):
            await blocked.wait()  # one's batch runs, and runs on
        await other.projections.stop("long")  # hands its partitions back: one takes them, mid-batch
        with trio.fail_after(10 * HEARTBEAT):
            while [len(ks) for ks in one.projections.status()["long"].partitions.values()] != [4]:
                await trio.sleep(0.05)
        assert one.projections.status()["long"].leader and one.projections.status()["long"].batch_running is not None
        release.set()
        await one.projections.wait_until_caught_up("long", timeout=30)
        applied = [row[0] for row in await one.store.pool.fetch("SELECT seq FROM projection_long.applied ORDER BY seq")]
    assert applied == [record.sequence_number for record in records]  # each once


async def test_a_process_paused_past_its_lease_is_refused_at_its_commit_and_applies_nothing_twice(
    dsn: str, tmp_path: Path
) -> None:
    log = tmp_path / "workers.log"
    async with open_bus(dsn, poll_interval=0.1) as bus:
        head = await append_in_chunks(bus.store, account_events(800, seed=15), 400)
        async with open_worker(dsn, "parts_slow", log) as paused:
            # Alone, it holds every partition, and applies slowly (a second a batch).
            await poll_until(lambda: _holds_all(bus, paused.pid), timeout=REBALANCE_TIMEOUT)

            async def applying() -> bool:
                return int(await bus.store.pool.fetchval(
                    "SELECT count(*) FROM eventbus.projection_leases WHERE projection = 'accounts' AND checkpoint > 0"
                )) >= 2  # fmt: skip

            await poll_until(applying, timeout=30)
            os.kill(paused.pid, signal.SIGSTOP)  # mid-batch: its heartbeat stops with it
            try:
                # (the same projection at full speed: what is left is applied in a moment, not 40 s)
                async with open_worker(dsn, "parts", log) as other:
                    # Its leases expire; the other process takes every partition with a new epoch.
                    await poll_until(lambda: _holds_all(bus, other.pid), timeout=REBALANCE_TIMEOUT + 5)
                    with trio.fail_after(120):
                        # It applies everything, the paused one's batch too; then that one wakes
                        # and commits its batch: refused, or those events would be applied twice.
                        assert await other.ask("caught_up") == "caught_up"
                        os.kill(paused.pid, signal.SIGCONT)
                        assert await paused.ask("caught_up") == "caught_up"
                    await assert_replayed(bus, head)
            finally:
                os.kill(paused.pid, signal.SIGCONT)
    refused = [line for line in log.read_text().splitlines() if "was taken by another process" in line]
    assert refused and all(line.startswith(f"{paused.pid} ") for line in refused), log.read_text()


async def _holds_all(bus: Bus, pid: int) -> bool:
    return await live_owners(bus) == {pid: list(range(PARTITIONS))}


# ------------------------------------------------------------------ one process, the public API


async def test_a_key_function_that_raises_sends_its_event_to_the_dead_letters(dsn: str) -> None:
    def key(record: object) -> object:
        payload = record.payload  # type: ignore[attr-defined]
        return payload["account"]  # KeyError for events without one

    projection = partitioned_projection(on_error="skip")
    projection = Projection(
        projection.name, projection.handlers, projection.setup, on_error="skip", partitions=4, partition_key=key
    )
    async with open_bus(dsn) as bus:
        events = list(account_events(200, seed=16))
        await bus.store.append(events[:100])
        from eventbus import Event

        await bus.store.append([Event(TYPES[1], {"amount": 5})])  # no account
        await bus.store.append(events[100:])
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("accounts", timeout=30)
        status = bus.projections.status()["accounts"]
        assert status.dead_letters == 1 and status.state == "live" and status.lag == 0
        assert sorted(k for ks in status.partitions.values() for k in ks) == [0, 1, 2, 3]
        letters = await bus.store.pool.fetch("SELECT sequence_number, error FROM eventbus.dead_letters")
        assert [row["sequence_number"] for row in letters] == [101]
        assert "partition_key raised KeyError" in letters[0]["error"]
        async with bus.projections.reader("accounts") as tx:
            assert (await read_model(tx)).tally == 200


def test_partitions_are_a_stable_hash_of_the_key_and_need_a_key_function() -> None:
    # The same in every process and every run (not Python's randomized hash()).
    assert [partition_of(f"a-{i}", 16) for i in range(6)] == [6, 15, 5, 14, 7, 7]
    assert (partition_of(7, 16), partition_of({"b": 1, "a": 2}, 16)) == (2, 1)  # any JSON value, keys in order
    spread = Counter(partition_of(f"account-{i}", 16) for i in range(16_000))
    assert set(spread) == set(range(16)) and min(spread.values()) > 800
    with pytest.raises(ProjectionError, match="needs a partition_key"):
        Projection("p", {"A": _noop}, partitions=4)
    with pytest.raises(ProjectionError, match="partitions must be"):
        Projection("p", {"A": _noop}, partitions=0, partition_key=str)


async def _noop(tx: object, record: object) -> None:
    return None


async def test_a_reader_with_min_position_waits_for_every_partition_to_apply_it(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.projections.start(partitioned_projection())
        await bus.projections.wait_until_caught_up("accounts", timeout=30)
        for round_ in range(3):
            records = await bus.store.append(list(account_events(300, seed=20 + round_)))
            position = records[-1].sequence_number
            async with bus.projections.reader("accounts", min_position=position, timeout=30) as tx:
                assert (await read_model(tx)).tally == position  # every event up to it, in every partition


async def test_a_commit_under_a_lease_that_is_not_held_is_refused_by_its_fence(dsn: str) -> None:
    # (the test above is refused before its commit: its heartbeat sees the lease gone. This is
    # the fence in the database, for a commit that comes before the heartbeat does.)
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.projections.start(projection(4))
        await bus.store.append(list(account_events(40, seed=11, accounts=8)))
        await bus.projections.wait_until_caught_up(NAME, timeout=30)
        [row] = await bus.store.pool.fetch(
            "SELECT owner, epoch, checkpoint FROM eventbus.projection_leases WHERE projection = $1 AND partition = 0",
            NAME,
        )
        assert row["checkpoint"] > 0
        async with testing.open_loop():
            conn = await testing.connect(dsn)
            try:
                for owner, epoch in ((row["owner"], row["epoch"] - 1), ("another process", row["epoch"])):
                    with pytest.raises(DatabaseError) as refused:
                        await conn.execute("SELECT eventbus.advance_lease($1, 0, $2, $3, $4)",
                                           NAME, owner, epoch, row["checkpoint"] + 100)  # fmt: skip
                    assert refused.value.sqlstate == "EB001", refused.value
                checkpoint = "SELECT checkpoint FROM eventbus.projection_leases WHERE projection = $1 AND partition = 0"
                assert await conn.fetchval(checkpoint, NAME) == row["checkpoint"]
                await conn.execute("SELECT eventbus.advance_lease($1, 0, $2, $3, $4)",
                                   NAME, row["owner"], row["epoch"], row["checkpoint"] + 100)  # fmt: skip
                assert await conn.fetchval(checkpoint, NAME) == row["checkpoint"] + 100
            finally:
                await conn.close()
