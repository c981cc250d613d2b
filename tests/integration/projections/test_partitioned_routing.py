"""A process reads every event of a partitioned projection, whatever it holds:
the routing of an event to its partition is paid for every one, so it must
stay cheap. A string key is hashed once per process, not once per event, and
the partition is the one the key's JSON text gives (the same in every process
and every release: the checkpoints depend on it)."""

from __future__ import annotations

import hashlib
import json

import pytest

from eventbus import Event, EventRecord, Projection, Transaction, open_bus
from eventbus._projections import _routing
from eventbus._projections._routing import partition_of


def reference_partition(key: object, partitions: int) -> int:
    text = json.dumps(key, sort_keys=True, separators=(",", ":"), ensure_ascii=False, allow_nan=False)
    return int.from_bytes(hashlib.blake2b(text.encode(), digest_size=8).digest(), "big") % partitions


@pytest.mark.parametrize("key", ["a-1", "", "é", "日本", 'quo"te', "back\\slash", "\u2028\n\x00\x7f", "\U0001f600"])
def test_a_string_key_goes_where_its_json_text_says(key: str) -> None:
    for partitions in (1, 7, 16):
        assert partition_of(key, partitions) == reference_partition(key, partitions)


class StrKey(str):
    pass


def test_other_keys_go_where_their_json_text_says() -> None:
    for key in (7, True, 1.5, None, ["a", 1], {"b": 1, "a": 2}, StrKey("a-1")):
        assert partition_of(key, 16) == reference_partition(key, 16)


@pytest.mark.parametrize(("keys", "hashes"), [(5, 5), (0, 400)])
async def test_a_process_hashes_each_string_key_once_unless_it_is_too_long_to_remember(
    dsn: str, monkeypatch: pytest.MonkeyPatch, keys: int, hashes: int
) -> None:
    hashed: list[object] = []

    def counting(key: object, partitions: int) -> int:
        hashed.append(key)
        return partition_of(key, partitions)

    monkeypatch.setattr(_routing, "partition_of", counting)
    applied: list[int] = []

    async def apply(tx: Transaction, records: list[EventRecord]) -> None:
        applied.extend(record.sequence_number for record in records)

    projection = Projection(
        "routed", batch_size=50, batch_handler=apply, event_types=["Ping"], partitions=4,
        partition_key=lambda record: record.payload["key"],
    )  # fmt: skip
    async with open_bus(dsn) as bus:
        key = "k" * (_routing.ROUTED_KEY_CHARS + 1)  # keys=0: one key, too long to remember
        records = await bus.store.append([Event("Ping", {"key": f"k-{i % keys}" if keys else key}) for i in range(400)])
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("routed", timeout=30)
    assert sorted(applied) == [record.sequence_number for record in records]  # each once
    # each key once, not each of the 400 events, unless too long to remember
    assert sorted(hashed) == ([f"k-{i}" for i in range(keys)] if keys else [key] * hashes)


async def test_a_process_that_meets_more_keys_than_it_remembers_still_routes_each_event_right(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(_routing, "ROUTES_REMEMBERED", 3)
    seen: dict[int, set[str]] = {}

    async def apply(tx: Transaction, records: list[EventRecord]) -> None:
        keys = {record.payload["key"] for record in records}
        (partition,) = {partition_of(key, 4) for key in keys}  # a batch is one partition's
        seen.setdefault(partition, set()).update(keys)

    projection = Projection(
        "forgetful", batch_size=7, batch_handler=apply, event_types=["Ping"], partitions=4,
        partition_key=lambda record: record.payload["key"],
    )  # fmt: skip
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Ping", {"key": f"k-{i % 11}"}) for i in range(200)])
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("forgetful", timeout=30)
    assert sorted(key for keys in seen.values() for key in keys) == sorted(f"k-{i}" for i in range(11))


async def test_a_string_key_that_is_not_text_fails_its_event_every_time_it_comes(dsn: str) -> None:
    applied: list[str] = []

    async def apply(tx: Transaction, records: list[EventRecord]) -> None:
        applied.extend(record.payload["key"] for record in records)

    def key(record: EventRecord) -> str:
        text: str = record.payload["key"]
        return "\ud800" if text == "bad" else text  # a lone surrogate: no UTF-8, no partition

    projection = Projection(
        "unkeyable", batch_size=10, batch_handler=apply, event_types=["Ping"], partitions=4, partition_key=key,
        on_error="skip",
    )  # fmt: skip
    async with open_bus(dsn) as bus:
        keys = ["a", "bad", "b", "bad", "bad", "c"]
        await bus.store.append([Event("Ping", {"key": k}) for k in keys])
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("unkeyable", timeout=30)
        dead = await bus.store.pool.fetchval(
            "SELECT count(*) FROM eventbus.dead_letters WHERE projection = $1", "unkeyable"
        )
    assert sorted(applied) == ["a", "b", "c"]
    assert dead == 3  # each of the three, not only the first
