"""What one append costs the scheduler: an append from a lone caller takes one
step of the store actor (it does not wait a round for an idle write connection)
and about five scheduler rounds, one of them the wait for the server (six
before a reply woke its statement without a round of the asyncio loop)."""

from __future__ import annotations

from eventbus import Event, open_bus

from ...helpers import counting_scheduler


async def test_a_lone_append_takes_one_step_of_the_actor_and_five_rounds(dsn: str) -> None:
    appends = 100
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Warmed", {"n": 0})])
        with counting_scheduler() as count:
            for n in range(appends):
                await bus.store.append([Event("Counted", {"n": n})])
    assert count.steps_of("StoreActor.run") <= appends * 1.1, count.steps
    assert count.rounds <= appends * 5.5, (count.rounds, count.steps)
