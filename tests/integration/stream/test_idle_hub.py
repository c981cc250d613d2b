"""A bus with nothing subscribed reads only the store's head for what other
processes append, never their events; once something subscribes, every event
after its start reaches it, once, in order, with no gap (the hub's position
was up to a tick old, the subscription's start is not). A bus opened with
``listen=False`` holds no listening connection and hears the others at its ticks."""

from __future__ import annotations

import functools

import pytest
import trio

from eventbus import (
    Event,
    EventRecord,
    InvalidOption,
    Projection,
    Subscription,
    Transaction,
    create_filter,
    open_bus,
    run_bus,
    testing,
)

EVERYTHING = create_filter([])


def deposits(count: int, start: int = 0) -> list[Event]:
    return [Event("Deposited", {"n": start + n}) for n in range(count)]


async def positions_up_to(sub: Subscription, last: int, timeout: float) -> list[int]:
    """The positions ``sub`` receives, until one at ``last`` or past it."""
    got: list[int] = []
    with trio.fail_after(timeout):
        async for batch in sub:
            got.extend(r.sequence_number for r in batch)
            if got[-1] >= last:
                break
    return got


async def test_a_bus_with_nothing_subscribed_reads_no_events_of_others_and_subscribers_get_every_one_after(
    dsn: str,
) -> None:
    async with open_bus(dsn) as writer, open_bus(dsn, poll_interval=0.1) as idle:
        for start in range(0, 3000, 300):
            await writer.store.append(deposits(300, start))
        with trio.fail_after(30):
            while idle.statistics().stream.position < 3000:  # its ticks follow the head
                await trio.sleep(0.05)
        assert idle.statistics().stream.ingested == 0  # and nothing of the events was read
        # From a position before its own: read from the store, then live.
        async with idle.subscribe(EVERYTHING, after=100) as sub:
            await writer.store.append(deposits(5, 3000))
            assert await positions_up_to(sub, 3005, 30) == list(range(101, 3006))


async def test_the_first_subscriber_of_an_idle_hub_gets_what_is_appended_at_once_not_at_the_next_tick(
    dsn: str,
) -> None:
    async with open_bus(dsn) as writer, open_bus(dsn, poll_interval=3600.0) as idle:
        await writer.store.append(deposits(10))
        for round_ in range(5):
            async with idle.subscribe(EVERYTHING) as sub:  # after=None: from the head on
                head = await writer.store.head()
                await writer.store.append(deposits(3, 100 * round_))
                # The poll tick is an hour away: only a notification brings them.
                assert await positions_up_to(sub, head + 3, 10) == [head + 1, head + 2, head + 3]


async def test_subscribers_coming_and_going_while_others_append_miss_nothing_and_get_nothing_twice(
    dsn: str,
) -> None:
    total = 2000
    async with open_bus(dsn) as writer, open_bus(dsn, poll_interval=0.05) as idle:
        done = trio.Event()

        async def append() -> None:
            for start in range(0, total, 20):
                await writer.store.append(deposits(20, start))
                await trio.sleep(0.002)
            done.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(append)
            while not done.is_set():
                # Each one alone: the hub goes idle between them, its position a tick old.
                after = await writer.store.head()
                if after >= total:
                    break
                async with idle.subscribe(EVERYTHING, after=after) as sub:
                    target = min(after + 15, total)
                    got = await positions_up_to(sub, target, 30)
                assert got[: target - after] == list(range(after + 1, target + 1))
                await trio.sleep(0.06)  # a tick or so with nothing subscribed


async def test_a_bus_that_does_not_listen_holds_no_listening_connection_and_hears_others_at_its_ticks(
    dsn: str,
) -> None:
    async with open_bus(dsn) as writer, open_bus(dsn, listen=False, poll_interval=0.2) as quiet:
        async with quiet.subscribe(EVERYTHING) as sub:
            head = await writer.store.head()
            await writer.store.append(deposits(3))
            # A tick, not a notification, brings them.
            assert await positions_up_to(sub, head + 3, 10) == [head + 1, head + 2, head + 3]
        listener = quiet.statistics().listener
        assert (listener.connected, listener.notifications) == (False, 0)
        names = await writer.store.pool.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
        )
        assert sum(row["application_name"] == "eventbus-listen" for row in names) == 1  # the writer's alone


@pytest.mark.parametrize("listen", [None, 0, "no"])
async def test_listen_must_be_true_or_false(dsn: str, listen: object) -> None:
    with pytest.raises(InvalidOption, match="listen must be True or False"):
        async with open_bus(dsn, listen=listen):  # type: ignore[arg-type]
            pass


@pytest.mark.parametrize("poll_interval", [-1, 0, 0.0001, float("nan"), float("inf"), "1", True, None])
async def test_poll_interval_must_be_a_number_of_seconds_that_lets_the_processor_rest(
    dsn: str, poll_interval: object
) -> None:
    with pytest.raises(InvalidOption, match="poll_interval must be a number of seconds"):
        async with open_bus(dsn, poll_interval=poll_interval):  # type: ignore[arg-type]
            pass
    async with trio.open_nursery() as nursery:
        with pytest.raises(InvalidOption, match="poll_interval"):
            await nursery.start(functools.partial(run_bus, dsn, poll_interval=poll_interval))  # type: ignore[arg-type]
        nursery.cancel_scope.cancel()


async def test_a_first_subscription_of_a_bus_that_does_not_listen_reads_what_is_stored_at_once(dsn: str) -> None:
    async with open_bus(dsn) as writer, open_bus(dsn, listen=False, poll_interval=3600.0) as quiet:
        for round_ in range(3):
            before = await writer.store.head()
            await writer.store.append(deposits(50, 100 * round_))
            # Its ticks are an hour apart: its position is stale, and no notification comes.
            async with quiet.subscribe(EVERYTHING, after=before + 10) as sub:
                got = await positions_up_to(sub, before + 50, 10)
            assert got == list(range(before + 11, before + 51))


async def _ignore(tx: Transaction, record: EventRecord) -> None:
    return None


async def test_a_bus_that_does_not_listen_but_runs_a_projection_is_registered_and_never_notified(dsn: str) -> None:
    """It registers (for eventbus status), marked as not listening: writers
    of other processes still send no notification on its account."""
    heard: list[str] = []
    registered = "SELECT listening FROM eventbus.listeners WHERE origin = $1"
    async with open_bus(dsn, listen=False, poll_interval=0.1) as quiet, open_bus(dsn, listen=False) as writer:
        await quiet.projections.start(Projection("quiet", {"Deposited": _ignore}))
        with trio.fail_after(20):
            while await writer.store.pool.fetchval(registered, quiet.store.origin) is None:
                await trio.sleep(0.02)
        # A session that LISTENs without registering hears whatever writers send.
        ear = await testing.connect(dsn)
        try:
            await ear.add_listener("eventbus_events", heard.append)
            await writer.store.append(deposits(1))  # only a bus that does not listen: no notification
            async with open_bus(dsn) as listening:
                with trio.fail_after(20):
                    while await writer.store.pool.fetchval(registered, listening.store.origin) is not True:
                        await trio.sleep(0.02)
                [record] = await writer.store.append(deposits(1))
                with trio.fail_after(20):
                    while not heard:
                        await trio.sleep(0.01)
        finally:
            await ear.close()
        names = await writer.store.pool.fetch(
            "SELECT application_name FROM pg_stat_activity WHERE datname = current_database()"
        )
    # Notifications come in commit order: the first append sent none.
    assert heard == [f"{writer.store.origin} {record.sequence_number}"]
    assert sum(row["application_name"] == "eventbus-presence" for row in names) == 1
