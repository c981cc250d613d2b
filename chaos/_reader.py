"""The reader: a process that watches the store while the faults strike.

``python -m chaos._reader --out FILE --lifetime SECONDS`` (the database from
``EVENTBUS_DSN``) opens a bus and watches every committed event in two ways
at once:

* it polls the store, asking for the events after the last position it saw;
* it subscribes to the bus from position 0 (the hub catches up, then follows
  live, across lost connections and server restarts).

With a hot standby (``CHAOS_REPLICA_DSN``) its bus reads through it: the
polls and the subscription's catch-up see what the standby shows. A third
watcher then asks, again and again, for the event at the position the hub
has reached, with ``min_position`` at that position: the standby must show
it, or the primary answer; a read without it is a miss.

It prints ``ready`` once the bus is open. On SIGTERM or SIGINT (or at the end
of its lifetime) it reads the head, goes on until both ways have reached it
(at most ``FINISH_TIMEOUT`` seconds), writes what it saw to FILE as JSON and
exits 0. The harness then compares what it saw with the final store: a
position the poller passed over but the final store holds is a gap that was
filled later; the subscription must have delivered every event once, in order.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from eventbus import Bus, EventQuery, EventRecord, EventStore, StoreUnavailable, create_filter, open_bus

REPLICA_VARIABLE: Final = "CHAOS_REPLICA_DSN"
"""The standby's connection string, when the run has one."""

POLL_INTERVAL: Final = 0.05
"""Seconds between polls when the last one reached the head."""

POLL_LIMIT: Final = 5000
"""Events one poll asks for, at most."""

RETRY_DELAY: Final = 0.2
"""Seconds between attempts while the store is unavailable."""

FINISH_TIMEOUT: Final = 60.0
"""Seconds, after the stop signal, to reach the head."""

SUBSCRIPTION_BUFFER: Final = 20_000
"""Events the subscription may hold unread."""

EVERYTHING: Final = create_filter([])


@attrs.define
class Seen:
    """What one way of watching saw, in the order it saw it."""

    positions: list[int] = attrs.Factory(list)
    ids: list[str] = attrs.Factory(list)
    disorder: list[str] = attrs.Factory(list)
    errors: int = 0

    @property
    def last(self) -> int:
        """The highest position seen; 0 before the first event."""
        return self.positions[-1] if self.positions else 0

    def add(self, records: list[EventRecord]) -> None:
        """Note a batch; a position not after the last one is noted as disorder."""
        for record in records:
            if record.sequence_number <= self.last:
                self.disorder.append(f"position {record.sequence_number} came after position {self.last}")
                continue
            self.positions.append(record.sequence_number)
            self.ids.append(str(record.event_id))

    def to_json(self) -> dict[str, Any]:
        """As plain JSON values."""
        return attrs.asdict(self)


class _Progress:
    """A condition the watchers signal after every batch."""

    def __init__(self) -> None:
        self._event = trio.Event()

    def notify(self) -> None:
        self._event.set()
        self._event = trio.Event()

    async def wait(self) -> None:
        await self._event.wait()


async def _poll(store: EventStore, seen: Seen, progress: _Progress) -> None:
    while True:
        try:
            records = (await store.query(EventQuery([EVERYTHING], after=seen.last, limit=POLL_LIMIT))).events
        except StoreUnavailable:
            seen.errors += 1
            await trio.sleep(RETRY_DELAY)
            continue
        seen.add(records)
        progress.notify()
        if len(records) < POLL_LIMIT:
            await trio.sleep(POLL_INTERVAL)  # polling is the point: it is the independent witness


@attrs.define
class AtPosition:
    """Reads with ``min_position``: how many, and those that missed it."""

    reads: int = 0
    misses: list[str] = attrs.Factory(list)
    errors: int = 0

    def to_json(self) -> dict[str, Any]:
        """As plain JSON values."""
        return attrs.asdict(self)


async def _at_position(bus: Bus, seen: AtPosition) -> None:
    while True:
        position = bus.stream.position  # the hub delivered it: it is committed
        if position:
            query = EventQuery([EVERYTHING], after=position - 1, limit=1)
            try:
                events = (await bus.store.query(query, min_position=position)).events
            except StoreUnavailable:
                seen.errors += 1
                await trio.sleep(RETRY_DELAY)
                continue
            seen.reads += 1
            if not events or events[0].sequence_number != position:
                got = [event.sequence_number for event in events]
                seen.misses.append(f"a read with min_position={position} returned {got}")
        await trio.sleep(POLL_INTERVAL)


async def _follow(bus: Bus, seen: Seen, progress: _Progress) -> None:
    async with bus.subscribe(
        EVERYTHING, after=0, max_batch=1000, buffer=SUBSCRIPTION_BUFFER, name="chaos reader"
    ) as sub:
        async for batch in sub:
            seen.add(batch)
            progress.notify()


async def _head(store: EventStore) -> int:
    with trio.fail_after(FINISH_TIMEOUT):
        while True:
            try:
                return await store.head()
            except StoreUnavailable:
                await trio.sleep(RETRY_DELAY)


async def _until_stopped(
    lifetime: float, stopped: trio.Event, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED
) -> None:
    with trio.open_signal_receiver(signal.SIGTERM, signal.SIGINT) as signals:
        task_status.started()
        with trio.move_on_after(lifetime):
            async for _ in signals:
                break
    stopped.set()


async def watch(out: Path, lifetime: float) -> None:
    """Watch the store until told to stop (or ``lifetime`` ends); write what was seen to ``out``.

    Raises:
        StoreUnavailable: the database could not be reached at the start.
    """
    polled, followed, at_position = Seen(), Seen(), AtPosition()
    progress = _Progress()
    stopped = trio.Event()
    replica = os.environ.get(REPLICA_VARIABLE, "").strip()
    async with open_bus(replica_dsns=[replica] if replica else None) as bus, trio.open_nursery() as nursery:
        # The signals are caught before "ready": the harness may ask to stop at once.
        await nursery.start(_until_stopped, lifetime, stopped)
        nursery.start_soon(_poll, bus.store, polled, progress)
        nursery.start_soon(_follow, bus, followed, progress)
        if replica:
            nursery.start_soon(_at_position, bus, at_position)
        print("ready", flush=True)
        await stopped.wait()
        target = await _head(bus.store)
        with trio.move_on_after(FINISH_TIMEOUT):
            while polled.last < target or followed.last < target:
                await progress.wait()
        nursery.cancel_scope.cancel()
        replicas = [attrs.asdict(stats) for stats in bus.store.statistics().replicas]
    result = {
        "target": target,
        "polled": polled.to_json(),
        "followed": followed.to_json(),
        "at_position": at_position.to_json(),
        "replicas": replicas,
    }
    temporary = out.with_suffix(".tmp")
    temporary.write_text(json.dumps(result))
    os.replace(temporary, out)


def main(argv: list[str] | None = None) -> int:
    """The reader's command line; the exit status."""
    parser = argparse.ArgumentParser(prog="python -m chaos._reader", description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, required=True, help="where to write what was seen (JSON)")
    parser.add_argument("--lifetime", type=float, required=True, help="seconds to watch at most")
    args = parser.parse_args(argv)
    try:
        trio.run(watch, args.out, args.lifetime)
    except StoreUnavailable as exc:
        print(f"the database is unavailable: {exc}", file=sys.stderr)
        return 3
    return 0


if __name__ == "__main__":
    sys.exit(main())
