"""A worker process for the store tests that need a process of their own.

Run as ``python -m tests.integration._store_worker MODE DSN TASKS [APPENDS]``.
In the modes ``race`` and ``write`` the worker opens the store, prints
``ready``, then obeys one line at a time from its standard input:

* mode ``race``: ``race N`` makes TASKS tasks append a ``Claimed`` event for
  round N, each on the condition that no event of round N exists yet; the
  worker answers ``N WINS LOSSES``. ``dcb N`` does the same on a boundary of
  two items (see ``dcb_boundary``), half of the tasks appending an event that
  only the first item matches, half one that only the second matches.
* mode ``write``: ``go`` makes TASKS tasks append APPENDS times each (one to
  three events an append); the worker prints ``ack POSITION EVENT_ID`` for
  every event acknowledged, then ``done``.

End of input (or ``quit``) ends the worker.

Mode ``linger`` (``linger DSN SECONDS``) opens the store with a connect
timeout of half SECONDS, waits SECONDS, appends one event and prints ``ok``:
the timers that connection attempts leave behind come due while it waits.
"""

from __future__ import annotations

import os
import random
import sys
from collections.abc import Callable

import trio

from eventbus import ConcurrencyError, Event, EventFilter, EventStore, create_filter, open_event_store
from eventbus._db import _connections
from tests.helpers import LineReader, say


def round_filter(number: int) -> EventFilter:
    """The consistency boundary of one round: its ``Claimed`` events."""
    return create_filter(["Claimed"], [{"round": number}])


def dcb_boundary(number: int) -> list[EventFilter]:
    """A boundary of two items: the course's definition and capacity, or the student's subscriptions."""
    return [
        create_filter(["CourseDefined", "CourseCapacityChanged"], [{"courseId": f"c{number}"}]),
        create_filter(["StudentSubscribedToCourse"], [{"studentId": f"s{number}"}]),
    ]


def claimed(number: int, task: int) -> Event:
    return Event("Claimed", {"round": number, "by": f"{os.getpid()}-{task}"})


def dcb_claim(number: int, task: int) -> Event:
    """Half of the tasks change the course (the first item), half subscribe the student (the second)."""
    if task % 2:
        return Event("StudentSubscribedToCourse", {"studentId": f"s{number}", "courseId": f"x{os.getpid()}-{task}"})
    return Event("CourseCapacityChanged", {"courseId": f"c{number}", "newCapacity": task})


async def race(
    store: EventStore,
    number: int,
    tasks: int,
    make: Callable[[int, int], Event] = claimed,
    boundary: Callable[[int], EventFilter | list[EventFilter]] = round_filter,
) -> None:
    outcomes: list[bool] = []

    async def claim(task: int) -> None:
        try:
            await store.append([make(number, task)], boundary(number), None)
        except ConcurrencyError:
            outcomes.append(False)
        else:
            outcomes.append(True)

    async with trio.open_nursery() as nursery:
        for task in range(tasks):
            nursery.start_soon(claim, task)
    say(f"{number} {outcomes.count(True)} {outcomes.count(False)}")


async def write(store: EventStore, tasks: int, appends: int) -> None:
    rng = random.Random(os.getpid())
    acks: list[str] = []

    async def writer(task: int) -> None:
        for number in range(appends):
            size = rng.randint(1, 3)
            events = [Event("Written", {"pid": os.getpid(), "task": task, "n": number, "k": k}) for k in range(size)]
            records = await store.append(events)
            acks.extend(f"ack {r.sequence_number} {r.event_id}" for r in records)

    async with trio.open_nursery() as nursery:
        for task in range(tasks):
            nursery.start_soon(writer, task)
    for line in acks:
        say(line)
    say("done")


async def linger(dsn: str, seconds: float) -> None:
    _connections.CONNECT_TIMEOUT = seconds / 2
    async with open_event_store(dsn) as store:
        await trio.sleep(seconds)
        await store.append([Event("Tick", {})])
    say("ok")


async def main(mode: str, dsn: str, tasks: int, appends: int) -> None:
    lines = LineReader(trio.lowlevel.FdStream(os.dup(sys.stdin.fileno())))
    async with open_event_store(dsn) as store:
        say("ready")
        while (line := await lines.receive_line()) not in (None, "quit"):
            assert line is not None
            command, *args = line.split()
            if mode == "race" and command == "race":
                await race(store, int(args[0]), tasks)
            elif mode == "race" and command == "dcb":
                await race(store, int(args[0]), tasks, dcb_claim, dcb_boundary)
            elif mode == "write" and command == "go":
                await write(store, tasks, appends)
            else:
                raise SystemExit(f"unknown command {line!r} in mode {mode}")


if __name__ == "__main__":
    mode, dsn, number, *rest = sys.argv[1:]
    if mode == "linger":
        trio.run(linger, dsn, float(number))
    else:
        trio.run(main, mode, dsn, int(number), int(rest[0]) if rest else 0)
