"""A process that holds several partitions applies one stream batch in ONE
transaction: each partition's handlers called on its own share, in
partition order, and every partition's checkpoint moved, fenced by its
lease, in the same commit. A lease lost mid-batch rolls back the whole
batch; the others are applied again without it, each event once."""

from __future__ import annotations

import logging
import random
from collections import defaultdict

import pytest
import trio

from eventbus import Event, EventRecord, Projection, Transaction, open_bus
from eventbus._projections import _partitioned
from eventbus._projections._routing import partition_of

PARTITIONS = 4


def pings(count: int, keys: int) -> list[Event]:
    return [Event("Ping", {"key": f"k-{i % keys}"}) for i in range(count)]


def key_of(record: EventRecord) -> str:
    key: str = record.payload["key"]
    return key


async def test_a_stream_batch_over_several_partitions_is_one_transaction(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    stream_batches: list[list[int]] = []
    apply = _partitioned.PartitionedRunner._apply

    async def recording(
        self: _partitioned.PartitionedRunner, conn: object, sub: object, batch: list[EventRecord]
    ) -> None:
        stream_batches.append([record.sequence_number for record in batch])
        await apply(self, conn, sub, batch)  # type: ignore[arg-type]

    monkeypatch.setattr(_partitioned.PartitionedRunner, "_apply", recording)
    calls: list[tuple[int, int, list[int]]] = []  # (txid, partition, positions) per handler call

    async def handler(tx: Transaction, records: list[EventRecord]) -> None:
        (partition,) = {partition_of(key_of(record), PARTITIONS) for record in records}  # one partition's
        txid = await tx.fetchval("SELECT txid_current()")
        calls.append((txid, partition, [record.sequence_number for record in records]))

    projection = Projection(
        "onetx", batch_size=500, batch_handler=handler, event_types=["Ping"], partitions=PARTITIONS,
        partition_key=key_of,
    )  # fmt: skip
    async with open_bus(dsn) as bus:
        records = await bus.store.append(pings(300, keys=20))
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("onetx", timeout=30)
    # each event once, in position order within its partition
    assert sorted(p for _, _, positions in calls for p in positions) == [r.sequence_number for r in records]
    assert all(positions == sorted(positions) for _, _, positions in calls)
    by_txid: dict[int, list[tuple[int, list[int]]]] = defaultdict(list)
    for txid, partition, positions in calls:
        by_txid[txid].append((partition, positions))
    # one transaction per stream batch, whatever the partitions in it, each partition once, in order
    transactions = []
    for batch in stream_batches:
        txids = {txid for txid, _, positions in calls if set(positions) <= set(batch)}
        assert len(txids) == 1, (batch[0], batch[-1], txids)
        (txid,) = txids
        partitions = [partition for partition, _ in by_txid[txid]]
        assert partitions == sorted(set(partitions))
        transactions.append((txid, partitions))
    assert len(by_txid) == len(stream_batches)
    assert max(len(partitions) for _, partitions in transactions) == PARTITIONS  # the batches did span them


async def test_a_process_holding_some_partitions_applies_full_batches_of_its_own_events(dsn: str) -> None:
    # Two processes (two buses), a partition each; every stream batch is half
    # one's, half the other's. Each transaction still gets batch_size events
    # of the process's own partition (not half a batch), and never more.
    batch_size, count = 50, 400
    keys = {k: [f"k-{i}" for i in range(40) if partition_of(f"k-{i}", 2) == k][:5] for k in (0, 1)}
    events = [Event("Ping", {"key": keys[i % 2][i // 2 % 5]}) for i in range(count)]  # partitions alternate
    calls: dict[str, list[list[int]]] = defaultdict(list)  # process -> positions per handler call

    def projection(process: str) -> Projection:
        async def handler(tx: Transaction, records: list[EventRecord]) -> None:
            calls[process].append([record.sequence_number for record in records])

        return Projection(
            "halves", batch_size=batch_size, batch_handler=handler, event_types=["Ping"], partitions=2,
            partition_key=key_of,
        )  # fmt: skip

    async with open_bus(dsn) as one, open_bus(dsn) as other:
        await one.projections.start(projection("one"))
        await other.projections.start(projection("other"))
        with trio.fail_after(30):
            while sorted(map(len, one.projections.status()["halves"].partitions.values())) != [1, 1] or not all(
                bus.projections.status()["halves"].leader for bus in (one, other)
            ):  # each holds one partition
                await trio.sleep(0.05)
        records = await one.store.append(events)
        for bus in (one, other):
            await bus.projections.wait_until_caught_up("halves", timeout=30)
    applied = sorted(p for positions in calls.values() for call in positions for p in call)
    assert applied == [record.sequence_number for record in records]  # each once
    assert sorted(calls) == ["one", "other"]
    for process, positions in calls.items():
        own = sum(len(call) for call in positions)
        assert own == count // 2, process
        assert max(len(call) for call in positions) == batch_size  # stream batches held half as many
        assert len(positions) <= own // batch_size + 1, [len(call) for call in positions]


async def test_a_lease_lost_mid_batch_rolls_the_batch_back_and_the_rest_is_applied_once(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    keys = 20
    lost = max(partition_of(f"k-{i}", PARTITIONS) for i in range(keys))  # the last share of the batch
    calls: list[int] = []

    async def setup(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS applied (position bigint NOT NULL)")

    async def handler(tx: Transaction, records: list[EventRecord]) -> None:
        (partition,) = {partition_of(key_of(record), PARTITIONS) for record in records}
        if not calls:  # the first share: meanwhile, another process takes the last one
            await bus.store.pool.fetchval(
                "UPDATE eventbus.projection_leases SET epoch = epoch + 1 WHERE projection = 'fenced'"
                " AND partition = $1 RETURNING epoch",
                lost,
            )
        calls.append(partition)
        await tx.executemany("INSERT INTO applied (position) VALUES ($1)", [(r.sequence_number,) for r in records])

    projection = Projection(
        "fenced", setup=setup, batch_size=500, batch_handler=handler, event_types=["Ping"], partitions=PARTITIONS,
        partition_key=key_of,
    )  # fmt: skip
    with caplog.at_level(logging.WARNING, logger="eventbus.projections"):
        async with open_bus(dsn) as bus:
            records = await bus.store.append(pings(300, keys=keys))
            await bus.projections.start(projection)
            await bus.projections.wait_until_caught_up("fenced", timeout=30)
            async with bus.projections.reader("fenced") as tx:
                applied = [row[0] for row in await tx.fetch("SELECT position FROM applied ORDER BY position")]
            epochs = await bus.store.pool.fetch(
                "SELECT partition, epoch, checkpoint FROM eventbus.projection_leases WHERE projection = 'fenced'"
                " ORDER BY partition"
            )
    assert applied == [record.sequence_number for record in records]  # each once: none twice, none skipped
    last = {partition_of(key_of(record), PARTITIONS): record.sequence_number for record in records}
    assert all(row["checkpoint"] >= last[row["partition"]] for row in epochs)  # each moved past its events
    # the first attempt ran every share and was refused; the others went again without the lost one,
    # which was applied once its lease was taken again under the new epoch
    others = sorted(set(calls[:PARTITIONS]) - {lost})
    assert calls[:PARTITIONS] == sorted(calls[:PARTITIONS]) and calls[PARTITIONS:] == [*others, lost]
    assert epochs[lost]["epoch"] == epochs[others[0]]["epoch"] + 1
    refused = [r.getMessage() for r in caplog.records if "was taken by another process" in r.getMessage()]
    assert refused == [f"projection fenced: partition {lost} was taken by another process (or its read model"
                       " swapped by a rebuild): the batch rolled back, applied again without it"]  # fmt: skip


async def test_a_handler_that_fails_in_one_partition_fails_that_event_alone(dsn: str) -> None:
    async def setup(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS applied (position bigint NOT NULL)")

    async def handler(tx: Transaction, records: list[EventRecord]) -> None:
        if any(record.payload.get("bad") for record in records):
            raise ValueError("bad event")
        await tx.executemany("INSERT INTO applied (position) VALUES ($1)", [(r.sequence_number,) for r in records])

    projection = Projection(
        "failing", setup=setup, batch_size=500, batch_handler=handler, event_types=["Ping"], partitions=PARTITIONS,
        partition_key=key_of, on_error="skip",
    )  # fmt: skip
    async with open_bus(dsn) as bus:
        events = pings(300, keys=20)
        events[150] = Event("Ping", {"key": "k-10", "bad": True})
        records = await bus.store.append(events)
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("failing", timeout=30)
        letters = await bus.store.pool.fetch("SELECT sequence_number FROM eventbus.dead_letters")
        status = bus.projections.status()["failing"]
        async with bus.projections.reader("failing") as tx:
            applied = [row[0] for row in await tx.fetch("SELECT position FROM applied ORDER BY position")]
    bad = records[150].sequence_number
    assert applied == [record.sequence_number for record in records if record.sequence_number != bad]  # each once
    assert [row["sequence_number"] for row in letters] == [bad]
    assert status.dead_letters == 1 and status.state == "live"


async def test_a_share_past_its_handler_timeout_rolls_the_batch_back_and_each_event_is_applied_once(dsn: str) -> None:
    hung: list[int] = []

    async def setup(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS applied (position bigint NOT NULL)")

    async def handler(tx: Transaction, records: list[EventRecord]) -> None:
        await tx.executemany("INSERT INTO applied (position) VALUES ($1)", [(r.sequence_number,) for r in records])
        if not hung and partition_of(key_of(records[0]), PARTITIONS) == 2:
            hung.append(records[0].sequence_number)
            await trio.sleep_forever()  # once: past handler_timeout, cancelled

    projection = Projection(
        "hanging", setup=setup, batch_size=500, batch_handler=handler, event_types=["Ping"], partitions=PARTITIONS,
        partition_key=key_of, handler_timeout=0.5,
    )  # fmt: skip
    async with open_bus(dsn) as bus:
        records = await bus.store.append(pings(300, keys=20))
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("hanging", timeout=30)
        async with bus.projections.reader("hanging") as tx:
            applied = [row[0] for row in await tx.fetch("SELECT position FROM applied ORDER BY position")]
    assert hung
    assert applied == [record.sequence_number for record in records]  # the rolled-back shares once, not twice


@pytest.mark.parametrize("key", [key_of, "key"])  # a key function; the payload field, read by partition
async def test_a_runner_stopped_at_any_moment_of_its_batches_applies_each_event_once(dsn: str, key: object) -> None:
    async def setup(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS applied (position bigint NOT NULL)")

    async def handler(tx: Transaction, records: list[EventRecord]) -> None:
        await tx.executemany("INSERT INTO applied (position) VALUES ($1)", [(r.sequence_number,) for r in records])
        await trio.sleep(0.002)

    projection = Projection(
        "stopped", setup=setup, batch_size=100, batch_handler=handler, event_types=["Ping"], partitions=PARTITIONS,
        partition_key=key,  # type: ignore[arg-type]
    )  # fmt: skip
    rng = random.Random(14)
    async with open_bus(dsn) as bus:
        records = await bus.store.append(pings(3000, keys=40))
    for _ in range(12):  # each time a new process, as it were, cancelled somewhere in a batch
        async with open_bus(dsn) as bus:
            await bus.projections.start(projection)
            await trio.sleep(rng.uniform(0.05, 0.6))
            await bus.projections.stop("stopped")
    async with open_bus(dsn) as bus:
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("stopped", timeout=60)
        async with bus.projections.reader("stopped") as tx:
            applied = [row[0] for row in await tx.fetch("SELECT position FROM applied ORDER BY position")]
    assert applied == [record.sequence_number for record in records]  # none twice, none skipped
