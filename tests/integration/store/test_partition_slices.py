"""A partition by a payload field is the same in PostgreSQL as in Python, so a
read narrowed to some partitions returns exactly the records Python would
route there: for every kind of key, and for values that are no key."""

from __future__ import annotations

import random

from eventbus import Event, EventFilter, open_bus
from eventbus._store._queries import partition_sql
from eventbus._values import EventQuery, PartitionSlice, field_partition


def awkward_strings() -> list[str]:
    rng = random.Random(14)
    fixed = [
        "", "a", "a-1", "A-1", "12", "-3", "1.0", "true", "null", "é", "e\u0301", "ß", "İ", "ǅ", "日本語", "😀",
        "\U0001d518\U0001d52b", "\u2028\u2029", "\ufeff", "\x7f", "a\"b", "a\\b", "\\u0041", "/", "</script>",
        "tab\there", "line\nbreak", "cr\r", "\b\f", "\x01\x1f", " lead", "trail ", "x" * 300, "ü" * 200,
        "'; DROP TABLE x; --",
    ]  # fmt: skip
    alphabet = [chr(c) for c in [*range(1, 0x80), 0xA0, 0xE9, 0x3B1, 0x4E2D, 0xFFFD, 0x1F600, 0x10FFFF]]
    randoms = ["".join(rng.choices(alphabet, k=rng.randint(1, 12))) for _ in range(400)]
    return fixed + randoms


def awkward_values() -> list[object]:
    numbers: list[object] = [0, 1, -1, 7, 2**31, 2**63, -(2**63) - 1, 10**30, 123456789]
    no_keys: list[object] = [1.5, 1.0, -0.0, 1e-7, 1e300, True, False, None, {"a": 1}, [1, "a"], {}, []]
    return [*awkward_strings(), *numbers, *no_keys]


async def test_postgresql_and_python_put_every_value_in_the_same_partition(dsn: str) -> None:
    values = awkward_values()
    events = [Event("Keyed", {"key": value}) for value in values] + [Event("Keyed", {"other": 1})]
    async with open_bus(dsn) as bus:
        records = await bus.store.append(events)
        read = (await bus.store.query(EventQuery([EventFilter(["Keyed"])]))).events  # as the hub reads them
        for partitions in (1, 2, 3, 16, 1024):
            rows = await bus.store.pool.fetch(
                f"SELECT e.sequence_number, {partition_sql('$1::text', '$2::int')} AS partition"
                " FROM eventbus.events e ORDER BY e.sequence_number",
                "key",
                partitions,
            )
            in_sql = {row["sequence_number"]: row["partition"] for row in rows}
            in_python = {
                r.sequence_number: field_partition(r, "key", r.event_id, partitions)[0] for r in records
            }
            assert in_sql == in_python, partitions
            read_back = {r.sequence_number: field_partition(r, "key", r.event_id, partitions)[0] for r in read}
            assert read_back == in_python, partitions
    keyed = {repr(v): field_partition(r, "key", r.event_id, 16)[1] for v, r in zip(values, records, strict=False)}
    assert all(keyed[repr(v)] for v in values if type(v) in (str, int))
    assert not any(keyed[repr(v)] for v in [1.5, True, False, None, {"a": 1}, [1, "a"], {}, []])
    assert not field_partition(records[-1], "key", records[-1].event_id, 16)[1]  # no such field
    assert len({field_partition(r, "key", r.event_id, 1024)[0] for r in records}) > 200  # spread, not one bucket


async def test_a_foreign_whole_number_too_long_for_an_int_is_a_key_in_postgresql_and_python_alike(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.pool.fetchval(  # as another program would write them (the store refuses them)
            "INSERT INTO eventbus.events (sequence_number, event_id, event_type, payload, occurred_at)"
            " SELECT o, gen_random_uuid(), 'Keyed', jsonb_build_object('key', v), now()"
            " FROM unnest(ARRAY['1e5000', '-1e5000', '12e4400']::numeric[]) WITH ORDINALITY AS u (v, o)"
        )
        await bus.store.pool.fetchval("SELECT setval('eventbus.event_position', 3)")
        read = (await bus.store.query(EventQuery([EventFilter(["Keyed"])]))).events
        rows = await bus.store.pool.fetch(
            f"SELECT e.sequence_number, {partition_sql('$1::text', '$2::int')} AS partition"
            " FROM eventbus.events e ORDER BY e.sequence_number",
            "key",
            1024,
        )
    assert [field_partition(r, "key", r.event_id, 1024) for r in read] == [(row["partition"], True) for row in rows]


async def test_a_read_narrowed_to_some_partitions_returns_exactly_their_events(dsn: str) -> None:
    rng = random.Random(7)
    events = [Event(rng.choice(["A", "B"]), {"account": f"acc-{rng.randint(0, 300)}"}) for _ in range(3000)]
    async with open_bus(dsn) as bus:
        records = await bus.store.append(events)
        for wanted in ({0}, {1, 5, 15}, set(range(8)), set()):
            chosen = PartitionSlice("account", 16, frozenset(wanted))
            query = EventQuery([EventFilter(["A"])], after=records[100].sequence_number)
            read = await bus.store.fetch_records(query, records[-200].sequence_number, partition=chosen)
            expected = [
                r for r in records[101:-199] if r.event_type == "A" and chosen.partition(r) in wanted
            ]
            assert [r.sequence_number for r in read] == [r.sequence_number for r in expected]
            assert read == expected


async def test_a_field_of_any_name_is_read_alike(dsn: str) -> None:
    names = ["a'b\"c", "ключ", "$1", "a.b", "{a,b}", "x" * 200, " ", "\\", "null"]
    async with open_bus(dsn) as bus:
        records = await bus.store.append([Event("Keyed", {name: f"v-{i}" for name in names}) for i in range(50)])
        for name in names:
            chosen = PartitionSlice(name, 4, frozenset({1, 2}))
            read = await bus.store.fetch_records(EventQuery([EventFilter(["Keyed"])]), partition=chosen)
            assert read == [r for r in records if chosen.partition(r) in {1, 2}], name
            assert all(field_partition(r, name, r.event_id, 4)[1] for r in records)  # each has its key
