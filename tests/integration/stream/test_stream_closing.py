"""A subscription entered while the bus is closing, from a task outside the
bus's block, either starts and then ends with the bus, or is refused with
ClosedError: never an error from inside the stream (its catch-ups' nursery
closes before the stream says it is closed, and the store closes before the
stream's last catch-ups read from it)."""

from __future__ import annotations

import trio

from eventbus import Bus, ClosedError, Event, create_filter, open_bus

EVERYTHING = create_filter([])


async def enter_again_and_again(
    buses: trio.MemoryReceiveChannel[Bus], closing: trio.Event, outcomes: dict[str, int]
) -> None:
    """Enter a subscription that catches up, again and again, until the bus refuses one after ``closing``."""
    bus = await buses.receive()
    while True:
        try:
            async with bus.stream.subscribe(EVERYTHING, after=0, buffer=8, max_batch=4):
                outcome = "entered"
        except ClosedError:
            outcome = "refused"
        outcomes[outcome] = outcomes.get(outcome, 0) + 1
        if outcome == "refused" and closing.is_set():
            return
        await trio.lowlevel.cancel_shielded_checkpoint()  # one scheduler round, never cancelled


async def test_subscriptions_entered_while_the_bus_closes_start_or_are_refused_with_closed_error(dsn: str) -> None:
    outcomes: dict[str, int] = {}
    for _ in range(30):
        send, receive = trio.open_memory_channel[Bus](1)
        closing = trio.Event()
        async with trio.open_nursery() as outside:
            outside.start_soon(enter_again_and_again, receive, closing, outcomes)
            async with open_bus(dsn) as bus:
                await bus.store.append([Event("Deposited", {"n": n}) for n in range(50)])
                send.send_nowait(bus)
                for _ in range(5):
                    await trio.lowlevel.checkpoint()
                closing.set()
    assert outcomes.get("refused", 0) >= 30 and outcomes.get("entered", 0) > 0, outcomes
