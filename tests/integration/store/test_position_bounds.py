"""Positions and counts past PostgreSQL's bigint (2**63 and up) are refused
before anything reaches the database, and the largest one works: a bad
condition must not fail its batch for the others (they would be run again one
by one)."""

from __future__ import annotations

import logging

import pytest
import trio

from eventbus import Event, EventQuery, InvalidEvent, InvalidFilter, create_filter, open_bus

EVERYTHING = create_filter([])
TOP = 2**63 - 1


@pytest.mark.parametrize("field", ["after", "limit"])
async def test_a_query_past_the_largest_position_is_refused_and_the_largest_works(dsn: str, field: str) -> None:
    with pytest.raises(InvalidFilter, match=f"{field} must be a whole number from 0 to 2\\*\\*63 - 1"):
        EventQuery([EVERYTHING], **{field: TOP + 1})  # type: ignore[arg-type]
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("A", {}), Event("B", {})])
        result = await bus.store.query(EventQuery([EVERYTHING], **{field: TOP}))  # type: ignore[arg-type]
        assert len(result.events) == (0 if field == "after" else 2)


async def test_a_condition_past_the_largest_position_is_refused_before_its_batch(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.WARNING)
    refused: list[BaseException] = []
    async with open_bus(dsn) as bus:

        async def append(n: int) -> None:
            expected = TOP + 1 if n == 7 else 0
            try:
                await bus.store.append([Event("A", {"n": n})], create_filter(["A"], [{"n": n}]), expected)
            except InvalidEvent as exc:
                refused.append(exc)

        async with trio.open_nursery() as nursery:
            for n in range(20):
                nursery.start_soon(append, n)
        assert [str(exc) for exc in refused] == [
            f"expected_max_sequence_number must be a whole number from 0 to 2**63 - 1, not {TOP + 1}"
        ]
        assert (await bus.store.head()) == 19
        await bus.store.append([Event("A", {"n": 0})], create_filter(["A"], [{"n": 0}]), TOP)  # the largest works
    assert "refused as a whole" not in caplog.text


async def test_a_subscription_after_the_largest_position_is_refused(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        with pytest.raises(InvalidFilter, match="after must be None or a whole number from 0 to 2\\*\\*63 - 1"):
            bus.subscribe(EVERYTHING, after=TOP + 1)
        async with bus.subscribe(EVERYTHING, after=TOP) as subscription:
            assert subscription.state == "live"
