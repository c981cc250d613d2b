"""A subscription used as it is not meant to be (entered a second time, after
its block was left or while inside it, or iterated without entering it) gets
a clear error at once, and nothing else is harmed: the other subscribers go on
receiving, and the bus stays open."""

from __future__ import annotations

import pytest
import trio

from eventbus import ClosedError, Event, EventRecord, InvalidFilter, Subscription, create_filter, open_bus

EVERYTHING = create_filter([])


async def _receive(subscription: Subscription, count: int) -> list[EventRecord]:
    got: list[EventRecord] = []
    async for batch in subscription:
        got.extend(batch)
        if len(got) >= count:
            break
    return got


async def test_a_subscription_entered_again_after_its_block_is_refused_and_the_others_go_on(dsn: str) -> None:
    async with open_bus(dsn) as bus, bus.subscribe(EVERYTHING) as bystander:
        for _ in range(3):  # (once was a race the hub could win; three times it lost)
            used = bus.subscribe(EVERYTHING)
            async with used:
                pass
            with pytest.raises(ClosedError, match="subscribe again"):
                async with used:
                    pass
            assert used.state == "closed"
            await bus.store.append([Event("A", {})])
            await trio.testing.wait_all_tasks_blocked()
        # The stream went on: the bystander has every event, and a new subscription works.
        with trio.fail_after(10):
            assert [record.sequence_number for record in await _receive(bystander, 3)] == [1, 2, 3]
            async with bus.subscribe(EVERYTHING, after=0) as fresh:
                assert len(await _receive(fresh, 3)) == 3
        await bus.store.append([Event("B", {})])
        with trio.fail_after(10):
            assert [record.event_type for record in await _receive(bystander, 1)] == ["B"]


async def test_a_subscription_entered_inside_its_own_block_is_refused(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        subscription = bus.subscribe(EVERYTHING)
        async with subscription:
            with pytest.raises(InvalidFilter, match="entered already"):
                async with subscription:
                    pass
            # The refusal changed nothing: it still receives.
            await bus.store.append([Event("A", {})])
            with trio.fail_after(10):
                assert len(await _receive(subscription, 1)) == 1


async def test_a_subscription_iterated_without_entering_it_says_so_at_once(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("A", {})])
        subscription = bus.subscribe(EVERYTHING, after=0)
        with trio.fail_after(5), pytest.raises(InvalidFilter, match="enter the subscription's block"):
            async for _ in subscription:
                pass
        # It can still be entered, and then receives.
        async with subscription:
            with trio.fail_after(10):
                assert len(await _receive(subscription, 1)) == 1


async def test_two_tasks_entering_one_subscription_at_once_are_one_entered_and_one_refused(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        subscription = bus.subscribe(EVERYTHING)  # (after=None: entering reads the head, a moment for the other)
        outcomes: list[str] = []

        async def enter() -> None:
            try:
                async with subscription:
                    outcomes.append("entered")
                    await bus.store.append([Event("A", {})])
                    with trio.fail_after(10):
                        assert len(await _receive(subscription, 1)) == 1
            except InvalidFilter:
                outcomes.append("refused")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(enter)
            nursery.start_soon(enter)
        assert sorted(outcomes) == ["entered", "refused"]
