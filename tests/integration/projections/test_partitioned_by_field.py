"""A partitioned projection keyed by a payload field (``partition_key="account"``):
each process reads from the store only the events of the partitions it
holds, and still applies every event once, in order per key, through
rebalances; an event whose field holds no key fails alone."""

from __future__ import annotations

from collections import defaultdict

import pytest
import trio

from eventbus import Bus, Event, EventRecord, Projection, ProjectionError, Transaction, create_filter, open_bus
from eventbus._values import field_partition

PARTITIONS = 4


def keyed_pings(count: int, keys: int) -> list[Event]:
    return [Event("Ping", {"account": f"a-{i % keys}", "n": i}) for i in range(count)]


def recorder(name: str, calls: dict[str, list[int]], process: str, **options: object) -> Projection:
    async def apply(tx: Transaction, records: list[EventRecord]) -> None:
        (partition,) = {field_partition(r, "account", r.event_id, PARTITIONS)[0] for r in records}  # one partition's
        calls[process].extend(record.sequence_number for record in records)
        calls[f"{process} {partition}"].extend(record.sequence_number for record in records)

    return Projection(
        name, batch_size=50, batch_handler=apply, event_types=["Ping"], partitions=PARTITIONS,
        partition_key="account", **options,  # type: ignore[arg-type]
    )  # fmt: skip


async def shared(buses: list[Bus], name: str) -> None:
    """Until each bus holds a fair share of the partitions, and every bus says so."""
    with trio.fail_after(30):
        while True:
            held = [bus.projections.status()[name].partitions for bus in buses]
            shares = sorted(len(ks) for ks in held[0].values())
            fair = len(shares) == len(buses) and sum(shares) == PARTITIONS and shares[-1] - shares[0] <= 1
            if fair and all(h == held[0] for h in held) and all(b.projections.status()[name].leader for b in buses):
                return
            await trio.sleep(0.05)


async def test_each_process_reads_only_its_partitions_events_and_applies_each_once(dsn: str) -> None:
    calls: dict[str, list[int]] = defaultdict(list)
    async with open_bus(dsn) as writer, open_bus(dsn) as one, open_bus(dsn) as other:
        await one.projections.start(recorder("byfield", calls, "one"))
        await other.projections.start(recorder("byfield", calls, "other"))
        await shared([one, other], "byfield")
        ingested = {bus: bus.stream.statistics().ingested for bus in (one, other)}
        records = []
        for _ in range(10):  # appended by another process: the workers' hubs read them from the store
            records += await writer.store.append(keyed_pings(200, keys=40))
        for bus in (one, other):
            await bus.projections.wait_until_caught_up("byfield", timeout=30)
        read = {bus: bus.stream.statistics().ingested - ingested[bus] for bus in (one, other)}
    assert sorted(calls["one"] + calls["other"]) == [r.sequence_number for r in records]  # each once
    for name, positions in calls.items():
        assert positions == sorted(positions) or name in ("one", "other"), name  # in order per partition, so per key
    assert sum(len(positions) for name, positions in calls.items() if " " in name) == len(records)
    # each hub took in about its half, not all 2000: the other partitions' rows were never sent
    assert all(len(records) // 4 < count < len(records) * 3 // 4 for count in read.values()), read
    assert sum(read.values()) == len(records)


async def test_a_process_left_alone_applies_the_partitions_it_takes_over(dsn: str) -> None:
    calls: dict[str, list[int]] = defaultdict(list)
    async with open_bus(dsn) as writer, open_bus(dsn) as one:
        async with open_bus(dsn) as other:
            await other.projections.start(recorder("takeover", calls, "other"))
            await shared([other], "takeover")
            await one.projections.start(recorder("takeover", calls, "one"))  # joins: it reads its share alone
            await shared([one, other], "takeover")
            first = await writer.store.append(keyed_pings(300, keys=40))
            for bus in (one, other):
                await bus.projections.wait_until_caught_up("takeover", timeout=30)
            with trio.fail_after(30):  # every checkpoint at the head: those taken over are not behind `one`
                while await writer.store.pool.fetchval(
                    "SELECT min(checkpoint) FROM eventbus.projection_leases WHERE projection = 'takeover'"
                ) != first[-1].sequence_number:
                    await trio.sleep(0.05)
            await other.projections.stop("takeover")  # hands its partitions back
        with trio.fail_after(30):
            while len(one.projections.status()["takeover"].partitions.get(next(iter(
                one.projections.status()["takeover"].partitions), ""), ())) != PARTITIONS:  # fmt: skip
                await trio.sleep(0.05)
        second = await writer.store.append(keyed_pings(300, keys=40))
        await one.projections.wait_until_caught_up("takeover", timeout=30)
    applied = sorted(calls["one"] + calls["other"])
    assert applied == [r.sequence_number for r in first + second]  # each once, none lost in the hand-over
    assert set(calls["one"]) >= {r.sequence_number for r in second}  # the taken partitions' events too


async def test_an_event_whose_field_holds_no_key_fails_alone(dsn: str) -> None:
    calls: dict[str, list[int]] = defaultdict(list)
    events = keyed_pings(40, keys=8)
    bad = {5: {"n": 5}, 12: {"account": 1.5}, 20: {"account": {"id": "a-1"}}, 31: {"account": None}}
    for index, payload in bad.items():
        events[index] = Event("Ping", payload)
    async with open_bus(dsn) as bus:
        records = await bus.store.append(events)
        await bus.projections.start(recorder("unkeyed", calls, "one", on_error="skip"))
        await bus.projections.wait_until_caught_up("unkeyed", timeout=30)
        letters = await bus.store.pool.fetch(
            "SELECT sequence_number, error FROM eventbus.dead_letters WHERE projection = 'unkeyed'"
            " ORDER BY sequence_number"
        )
    skipped = [records[index].sequence_number for index in bad]
    assert sorted(calls["one"]) == [r.sequence_number for r in records if r.sequence_number not in skipped]
    assert [row["sequence_number"] for row in letters] == skipped
    assert "payload field 'account' is missing" in letters[0]["error"]
    assert "is a float, not a string or a whole number" in letters[1]["error"]


async def test_rows_written_by_someone_else_with_a_payload_that_is_no_object_fail_alone(dsn: str) -> None:
    calls: dict[str, list[int]] = defaultdict(list)
    async with open_bus(dsn) as writer, open_bus(dsn) as bus:
        await bus.projections.start(recorder("foreign", calls, "one", on_error="skip"))
        before = await writer.store.append(keyed_pings(20, keys=5))
        head = before[-1].sequence_number
        foreign = [head + 1, head + 2, head + 3]
        await writer.store.pool.fetchval(
            "INSERT INTO eventbus.events (sequence_number, event_id, event_type, payload, occurred_at)"
            " SELECT p, gen_random_uuid(), 'Ping', v, now()"
            " FROM unnest($1::bigint[], ARRAY['[1, 2]', '\"a-1\"', 'null']::jsonb[]) AS u (p, v)",
            foreign,
        )
        await writer.store.pool.fetchval("SELECT setval('eventbus.event_position', $1)", foreign[-1])
        after = await writer.store.append(keyed_pings(20, keys=5))
        await bus.projections.wait_until_caught_up("foreign", timeout=30)
        letters = await bus.store.pool.fetch(
            "SELECT sequence_number, error FROM eventbus.dead_letters WHERE projection = 'foreign' ORDER BY 1"
        )
        status = bus.projections.status()["foreign"]
    assert sorted(calls["one"]) == [r.sequence_number for r in before + after]  # the bus read on, each once
    assert [row["sequence_number"] for row in letters] == foreign
    assert "the payload is a list, not an object" in letters[0]["error"]
    assert status.state == "live" and status.dead_letters == 3


@pytest.mark.parametrize("key", ["", "x" * 201, "a\x00b", 5, b"account"])
def test_a_partition_key_is_a_field_name_or_a_plain_function(key: object) -> None:
    async def apply(tx: Transaction, records: list[EventRecord]) -> None:
        pass

    with pytest.raises(ProjectionError, match="partition_key"):
        Projection("p", batch_handler=apply, event_types=["Ping"], partitions=4, partition_key=key)  # type: ignore[arg-type]
    Projection("p", batch_handler=apply, event_types=["Ping"], partitions=4, partition_key="account")
    Projection("p", batch_handler=apply, event_types=["Ping"], partitions=4, partition_key=lambda r: r.payload["a"])


async def test_beside_other_subscribers_in_its_process_every_subscriber_gets_all_it_asked_for(dsn: str) -> None:
    # A plain subscription (a dashboard, say) and a second projection by another field share the hub
    # of a process whose first projection reads its partitions alone: the hub then reads everything.
    calls: dict[str, list[int]] = defaultdict(list)

    async def by_n(tx: Transaction, records: list[EventRecord]) -> None:
        calls["by n"].extend(record.sequence_number for record in records)

    second = Projection(
        "byn", batch_size=30, batch_handler=by_n, event_types=["Ping"], partitions=3, partition_key="n"
    )
    async with open_bus(dsn) as writer, open_bus(dsn) as bus, open_bus(dsn) as other:
        await other.projections.start(recorder("shares", calls, "other"))
        await bus.projections.start(recorder("shares", calls, "one"))
        await shared([bus, other], "shares")
        await bus.projections.start(second)
        seen: list[int] = []
        async with bus.subscribe(create_filter(["Ping"])) as sub:
            records = []
            for _ in range(5):
                records += await writer.store.append(keyed_pings(100, keys=30))
            with trio.fail_after(30):
                async for batch in sub:
                    seen.extend(record.sequence_number for record in batch)
                    if seen[-1] == records[-1].sequence_number:
                        break
        for b in (bus, other):
            await b.projections.wait_until_caught_up("shares", timeout=30)
        await bus.projections.wait_until_caught_up("byn", timeout=30)
    positions = [r.sequence_number for r in records]
    assert seen == positions
    assert sorted(calls["by n"]) == positions
    assert sorted(calls["one"] + calls["other"]) == positions


async def test_a_subscriber_that_comes_while_a_narrowed_poll_is_out_misses_nothing(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: dict[str, list[int]] = defaultdict(list)
    async with open_bus(dsn) as writer, open_bus(dsn) as bus, open_bus(dsn) as other:
        await other.projections.start(recorder("race", calls, "other"))
        await bus.projections.start(recorder("race", calls, "one"))
        await shared([bus, other], "race")
        out, attached = trio.Event(), trio.Event()
        fetch = bus.store.fetch_records

        async def held_up(*args: object, **options: object) -> object:
            found = await fetch(*args, **options)  # type: ignore[arg-type]
            if options.get("partition") is not None and not attached.is_set():
                out.set()  # a narrowed poll has read its rows: a plain subscriber comes now
                await attached.wait()
            return found

        monkeypatch.setattr(bus.store, "fetch_records", held_up)
        position = bus.stream.position
        records = await writer.store.append(keyed_pings(100, keys=30))
        with trio.fail_after(30):
            await out.wait()
        async with bus.subscribe(create_filter(["Ping"]), after=position) as sub:
            attached.set()
            seen: list[int] = []
            with trio.fail_after(30):
                async for batch in sub:
                    seen.extend(record.sequence_number for record in batch)
                    if seen[-1] == records[-1].sequence_number:
                        break
    assert seen == [r.sequence_number for r in records]  # not only the partitions the poll was narrowed to
