"""What one append costs the scheduler: an append from a lone caller takes one
step of the store actor (it does not wait a round for an idle write connection)
and about five scheduler rounds, one of them the wait for the server (six
before a reply woke its statement without a round of the asyncio loop)."""

from __future__ import annotations

import trio

from eventbus import Event, open_bus


class _Rounds(trio.abc.Instrument):
    def __init__(self) -> None:
        self.steps: dict[str, int] = {}
        self.rounds = 0

    def before_task_step(self, task: trio.lowlevel.Task) -> None:
        self.steps[task.name] = self.steps.get(task.name, 0) + 1

    def before_io_wait(self, timeout: float) -> None:
        self.rounds += 1


async def test_a_lone_append_takes_one_step_of_the_actor_and_five_rounds(dsn: str) -> None:
    appends = 100
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Warmed", {"n": 0})])
        rounds = _Rounds()
        trio.lowlevel.add_instrument(rounds)
        try:
            for n in range(appends):
                await bus.store.append([Event("Counted", {"n": n})])
        finally:
            trio.lowlevel.remove_instrument(rounds)
    actor = sum(count for name, count in rounds.steps.items() if name.endswith("StoreActor.run"))
    assert actor <= appends * 1.1, rounds.steps
    assert rounds.rounds <= appends * 5.5, (rounds.rounds, rounds.steps)
