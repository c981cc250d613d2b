"""A projection's partition count changes (a redeploy): taken over when it is
safe, refused with a clear error when two counts would apply one key twice.

Two buses in one process stand for two processes; the read model counts each
event's applications, so an event applied twice (or not at all) shows.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from eventbus import Bus, Projection, create_filter, open_bus

from .._projection_worker import TYPES, account_events, account_of, apply_event_counted, create_counted_tables
from .._projection_worker import read_applications as applications_of
from .test_projections_processes import poll_until

NAME = "accounts"


def projection(partitions: int) -> Projection:
    if partitions == 1:
        return Projection(NAME, dict.fromkeys(TYPES, apply_event_counted), create_counted_tables, 200)
    return Projection(
        NAME,
        dict.fromkeys(TYPES, apply_event_counted),
        create_counted_tables,
        200,
        partitions=partitions,
        partition_key=account_of,
    )


async def applied_once(bus: Bus) -> None:
    """Every stored event applied exactly once."""
    head = (await bus.store.query(create_filter(list(TYPES)))).max_sequence_number
    async with bus.projections.reader(NAME) as tx:
        applications = await applications_of(tx)
    assert sorted(applications) == list(range(1, head + 1))
    assert set(applications.values()) == {1}


async def leases(bus: Bus) -> list[int]:
    """The stored partitions' checkpoints, by partition."""
    rows = await bus.store.pool.fetch(
        "SELECT checkpoint FROM eventbus.projection_leases WHERE projection = $1 ORDER BY partition", NAME
    )
    return [row[0] for row in rows]


async def run_to_head(dsn: str, partitions: int, events: int, seed: int) -> None:
    """Append ``events`` and apply them with ``partitions`` until every partition stands at the head."""
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.projections.start(projection(partitions))
        records = await bus.store.append(list(account_events(events, seed=seed, accounts=60)))
        head = records[-1].sequence_number
        await bus.projections.wait_until_caught_up(NAME, timeout=30)
        if partitions > 1:  # idle partitions move up to the head too

            async def at_head() -> bool:
                return set(await leases(bus)) == {head}

            await poll_until(at_head, timeout=10)


async def failed_with(bus: Bus, words: str) -> bool:
    status = bus.projections.status()[NAME]
    return status.last_error is not None and words in status.last_error


@pytest.mark.parametrize(("before", "after"), [(1, 4), (4, 8), (8, 4), (4, 1)])
async def test_a_new_count_takes_over_where_every_partition_stood(dsn: str, before: int, after: int) -> None:
    await run_to_head(dsn, before, 600, seed=1)
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.projections.start(projection(after))
        await bus.store.append(list(account_events(600, seed=2, accounts=60)))
        await bus.projections.wait_until_caught_up(NAME, timeout=30)
        await applied_once(bus)
        assert len(await leases(bus)) == (0 if after == 1 else after)


async def two_buses(dsn: str, first: int, second: int, check: Callable[[Bus, Bus], object]) -> None:
    async with open_bus(dsn, poll_interval=0.1) as one, open_bus(dsn, poll_interval=0.1) as two:
        await one.projections.start(projection(first))
        await one.store.append(list(account_events(300, seed=3, accounts=60)))
        await one.projections.wait_until_caught_up(NAME, timeout=30)
        await two.projections.start(projection(second))
        await check(one, two)  # type: ignore[misc]
        await one.store.append(list(account_events(300, seed=4, accounts=60)))
        await one.projections.wait_until_caught_up(NAME, timeout=30)
        await applied_once(one)


async def test_a_second_count_is_refused_while_a_process_runs_the_first(dsn: str) -> None:
    async def refused(one: Bus, two: Bus) -> None:
        await poll_until(lambda: failed_with(two, "has 4 partitions in the database"), timeout=10)
        error = two.projections.status()[NAME].last_error or ""
        assert "waits until the 1 other process(es) that run it stop" in error
        assert len(await leases(one)) == 4

    await two_buses(dsn, 4, 8, refused)


async def test_partitions_are_refused_while_a_single_leader_leads(dsn: str) -> None:
    async def refused(one: Bus, two: Bus) -> None:
        await poll_until(lambda: failed_with(two, "is led by a single leader"), timeout=10)
        assert await leases(one) == []

    await two_buses(dsn, 1, 4, refused)


async def test_a_single_leader_is_refused_while_processes_run_its_partitions(dsn: str) -> None:
    async def refused(one: Bus, two: Bus) -> None:
        await poll_until(lambda: failed_with(two, "1 process(es) run it partitioned now"), timeout=10)
        assert len(await leases(one)) == 4

    await two_buses(dsn, 4, 1, refused)


async def test_partitions_that_stand_apart_are_not_taken_over(dsn: str) -> None:
    await run_to_head(dsn, 4, 300, seed=5)
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.store.pool.fetch(
            "UPDATE eventbus.projection_leases SET checkpoint = checkpoint - 10"
            " WHERE projection = $1 AND partition = 2",
            NAME,
        )
        before = await leases(bus)
        await bus.projections.start(projection(8))
        await poll_until(lambda: failed_with(bus, "stand at positions"), timeout=10)
        assert await leases(bus) == before


async def at_one_position(bus: Bus, partitions: int, head: int) -> bool:
    """Every stored partition (or the single leader's checkpoint) stands at ``head``."""
    if partitions > 1:
        return set(await leases(bus)) == {head}
    checkpoint = await bus.store.pool.fetchval("SELECT checkpoint FROM eventbus.projections WHERE name = $1", NAME)
    return bool(checkpoint == head)


@pytest.mark.parametrize(("before", "after"), [(4, 8), (1, 4), (4, 1)])
async def test_a_rolling_redeploy_stands_by_and_takes_over_when_the_old_count_stops(
    dsn: str, before: int, after: int
) -> None:
    async with open_bus(dsn, poll_interval=0.1) as new:
        async with open_bus(dsn, poll_interval=0.1) as old:
            await old.projections.start(projection(before))
            records = await old.store.append(list(account_events(300, seed=6, accounts=60)))
            await old.projections.wait_until_caught_up(NAME, timeout=30)
            await new.projections.start(projection(after))
            await poll_until(lambda: failed_with(new, "partition"), timeout=10)
            assert new.projections.status()[NAME].state == "standby"  # waiting, not failed
            await poll_until(lambda: at_one_position(old, before, records[-1].sequence_number), timeout=10)
        # The old count stopped: the new one takes over by itself, and says so.
        await new.store.append(list(account_events(300, seed=7, accounts=60)))
        await new.projections.wait_until_caught_up(NAME, timeout=30)
        status = new.projections.status()[NAME]
        assert (status.state, status.last_error) == ("live", None)
        await applied_once(new)


def _rekeyed(key: Callable[..., object] | str) -> Projection:
    return Projection(NAME, dict.fromkeys(TYPES, apply_event_counted), create_counted_tables, 200, partitions=4,
                      partition_key=key)  # type: ignore[arg-type]  # fmt: skip


@pytest.mark.parametrize("new_key", ["field", "function"])
async def test_a_changed_partition_key_stands_by_until_a_rebuild_with_it_swaps_in(dsn: str, new_key: str) -> None:
    await run_to_head(dsn, 4, 300, seed=41)  # applied with account_of
    # The same key as a payload field hashes differently; a function of another key routes otherwise.
    changed = _rekeyed("account" if new_key == "field" else lambda record: f"{account_of(record)}!")
    async with open_bus(dsn, poll_interval=0.1) as bus:
        await bus.projections.start(changed)
        await poll_until(lambda: _state(bus, "standby"), timeout=10)
        status = bus.projections.status()[NAME]
        assert status.partitions == {} and "partition_key" in (status.last_error or ""), status
        more = await bus.store.append(list(account_events(50, seed=42, accounts=60)))
        await bus.projections.rebuild(NAME)  # from this process: its key
        await poll_until(lambda: _state(bus, "live"), timeout=10)  # it joins at its next look
        await bus.projections.wait_until_caught_up(NAME, timeout=30)
        assert more[-1].sequence_number <= await bus.store.head()
        await bus.store.append(list(account_events(50, seed=45, accounts=60)))  # applied with the new key
        await bus.projections.wait_until_caught_up(NAME, timeout=30)
        await applied_once(bus)
    async with open_bus(dsn, poll_interval=0.1) as bus:  # the old key, once the new one has applied events
        await bus.projections.start(_rekeyed(account_of))
        await poll_until(lambda: _state(bus, "standby"), timeout=10)


async def test_the_same_key_joins_again_without_a_second_look(dsn: str) -> None:
    await run_to_head(dsn, 4, 300, seed=43)
    async with open_bus(dsn, poll_interval=0.1) as bus:  # a function equal to the first: the same routes
        await bus.projections.start(_rekeyed(lambda record: record.payload["account"]))
        await bus.store.append(list(account_events(50, seed=44, accounts=60)))
        await bus.projections.wait_until_caught_up(NAME, timeout=30)
        assert bus.projections.status()[NAME].state == "live"
        await applied_once(bus)


async def _state(bus: Bus, state: str) -> bool:
    return bus.projections.status()[NAME].state == state


async def test_two_processes_of_different_keys_both_stand_by_once_either_has_applied_and_a_rebuild_ends_it(
    dsn: str,
) -> None:
    # Nothing applied yet: both join, and the first batches show the keys differ.
    async with open_bus(dsn, poll_interval=0.1) as old, open_bus(dsn, poll_interval=0.1) as new:
        await old.projections.start(_rekeyed(account_of))
        await new.projections.start(_rekeyed(lambda record: f"{account_of(record)}!"))
        await old.store.append(list(account_events(200, seed=46, accounts=60)))
        await poll_until(lambda: _state(old, "standby"), timeout=10)
        await poll_until(lambda: _state(new, "standby"), timeout=10)
        for bus in (old, new):
            assert "partition_key" in (bus.projections.status()[NAME].last_error or "")
        await old.projections.stop(NAME)  # the operator stops the old key, then rebuilds with the new
        await new.projections.rebuild(NAME)
        await poll_until(lambda: _state(new, "live"), timeout=10)
        await new.store.append(list(account_events(50, seed=47, accounts=60)))
        await new.projections.wait_until_caught_up(NAME, timeout=30)
        await applied_once(new)
