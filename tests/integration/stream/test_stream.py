"""The stream: every committed event reaches every interested subscriber, in
order, exactly once, however late it joins, however slowly it reads.

The law (a property test): subscribers join at random positions while several
tasks append, read at random paces, leave at random times; each receives
exactly the matching events after its start, ascending, with no gap and no
duplicate, in non-empty batches of at most ``max_batch``. Then the promises
around it: backpressure with ``overflow="block"``, subscribers cancelled at
awkward moments, subscriptions refused at once, the bus closing them.

Hypothesis runs every example in a Trio run of its own, so the property test
shares one database for all its examples (one each would be too slow); each
example opens a bus of its own and computes what it expects from positions.
"""

from __future__ import annotations

import functools
import itertools
import math
import os
from collections.abc import AsyncIterator, Iterator, Sequence
from contextlib import asynccontextmanager
from typing import Any

import attrs
import pytest
import trio
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import eventbus._bus
from eventbus import (
    Bus,
    ClosedError,
    Event,
    EventBusError,
    EventFilter,
    EventQuery,
    EventRecord,
    EventStream,
    InvalidFilter,
    Subscription,
    create_filter,
    open_bus,
    open_event_store,
    testing,
)
from eventbus._stream._hub import INBOX_SIZE, RING_SIZE

from ...helpers import TEMPLATE, database_dsn, drop_database

EVERYTHING = create_filter([])
TYPES = ("A", "B", "C")
ENTITIES = ("e1", "e2", "e3")

_numbers = itertools.count()


def events(count: int, event_type: str = "A", entity: str = "e1") -> list[Event]:
    """``count`` events, each with a payload of its own."""
    return [Event(event_type, {"entity": entity, "n": next(_numbers)}) for _ in range(count)]


def key(record: EventRecord) -> tuple[Any, ...]:
    """What a subscriber and the store must agree on for one event."""
    return (record.sequence_number, record.event_id, record.event_type, dict(record.payload))


def keys(records: Sequence[EventRecord]) -> list[tuple[Any, ...]]:
    return [key(record) for record in records]


def flatten(batches: Sequence[Sequence[EventRecord]]) -> list[EventRecord]:
    return [record for batch in batches for record in batch]


class Progress:
    """A number that only grows, and a way to wait until it reaches a value."""

    def __init__(self, value: int = 0) -> None:
        self.value = value
        self._changed = trio.Event()

    def advance_to(self, value: int) -> None:
        if value > self.value:
            self.value = value
            self._changed.set()
            self._changed = trio.Event()

    async def wait_for(self, value: int) -> None:
        while self.value < value:
            await self._changed.wait()


@attrs.define
class Log:
    """What one subscriber received."""

    batches: list[list[EventRecord]] = attrs.field(factory=list)
    position: Progress = attrs.field(factory=Progress)

    def add(self, batch: list[EventRecord]) -> None:
        self.batches.append(batch)
        self.position.advance_to(batch[-1].sequence_number)

    @property
    def records(self) -> list[EventRecord]:
        return flatten(self.batches)


async def follow(sub: Subscription, log: Log) -> None:
    """Read ``sub`` into ``log`` until the subscription ends."""
    async for batch in sub:
        log.add(batch)


async def receive_through(sub: Subscription, position: int) -> list[list[EventRecord]]:
    """Batches from ``sub`` until one reaches ``position``."""
    batches: list[list[EventRecord]] = []
    while not batches or batches[-1][-1].sequence_number < position:
        batches.append(await sub.__anext__())
    return batches


async def everything_after(bus: Bus, filter: EventFilter, after: int) -> list[EventRecord]:
    return (await bus.store.query(EventQuery([filter], after=after))).events


def assert_well_formed(batches: Sequence[Sequence[EventRecord]], max_batch: int) -> None:
    """Non-empty batches of at most ``max_batch``, ascending across batches, no duplicate."""
    assert all(0 < len(batch) <= max_batch for batch in batches), [len(batch) for batch in batches]
    positions = [record.sequence_number for record in flatten(batches)]
    assert positions == sorted(set(positions))


@asynccontextmanager
async def ring_of(size: int) -> AsyncIterator[None]:
    """Buses opened in the block keep a ring of ``size`` records (small ones
    send subscribers that fell behind to the store)."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(eventbus._bus, "EventStream", functools.partial(EventStream, ring_size=size))
        yield


# ---------------------------------------------------------------- the law


@attrs.frozen
class Reader:
    """One subscriber of a scenario.

    ``start``: None subscribes with ``after=None``; else ``(reach_back, f)``
    subscribes after the fraction ``f`` of the positions known when it joins,
    counted from 0 (``reach_back``: events of earlier examples too) or from
    this example's first event. ``join_at``: appends completed (by all
    writers) before it joins. ``leave_after``: batches it reads before it
    leaves (None: it stays to the end). ``pace``: ``eager`` reads as fast as it
    can, ``dawdles`` yields between batches, ``stalls`` reads one batch, then
    nothing until the writers are done.
    """

    filter: EventFilter
    start: tuple[bool, float] | None
    join_at: int
    leave_after: int | None
    pace: str
    max_batch: int
    buffer: int
    overflow: str


@attrs.frozen
class Scenario:
    """Writers, each a list of appends of (type, entity) pairs, through this
    bus's store or, when ``foreign``, through a store of its own (as another
    process would: the bus learns of them from the database)."""

    writers: list[tuple[bool, list[list[tuple[str, str]]]]]
    readers: list[Reader]
    ring_size: int
    poll_interval: float


FILTERS = st.builds(
    create_filter,
    st.lists(st.sampled_from(TYPES), max_size=2, unique=True),
    st.none() | st.lists(st.sampled_from(ENTITIES).map(lambda e: {"entity": e}), min_size=1, max_size=2),
)


@st.composite
def readers(draw: st.DrawFn, appends: int) -> Reader:
    pace = draw(st.sampled_from(["eager", "dawdles", "stalls"]))
    max_batch = draw(st.integers(1, 8))
    return Reader(
        filter=draw(FILTERS),
        start=draw(st.none() | st.tuples(st.booleans(), st.floats(0, 1))),
        join_at=draw(st.integers(0, appends)),
        leave_after=draw(st.none() | st.integers(0, 4)),
        pace=pace,
        max_batch=max_batch,
        buffer=max_batch + draw(st.integers(0, 12)),
        # A blocking subscriber that stalls until the writers are done would
        # hold them back forever: that is what "block" means.
        overflow="catch_up" if pace == "stalls" else draw(st.sampled_from(["catch_up", "block"])),
    )


@st.composite
def scenarios(draw: st.DrawFn) -> Scenario:
    event = st.tuples(st.sampled_from(TYPES), st.sampled_from(ENTITIES))
    appends = st.lists(st.lists(event, min_size=1, max_size=5), min_size=1, max_size=10)
    writers = draw(st.lists(st.tuples(st.booleans(), appends), min_size=1, max_size=3))
    appends_in_all = sum(len(appends) for _, appends in writers)
    return Scenario(
        writers=writers,
        readers=draw(st.lists(readers(appends_in_all), min_size=1, max_size=4)),
        ring_size=draw(st.sampled_from([4, 32, RING_SIZE])),
        poll_interval=draw(st.sampled_from([0.005, 1.0])),
    )


@attrs.define
class ReaderRun:
    after: int | None = None
    start: int = -1
    head_before: int = -1
    head_after: int = -1
    batches: list[list[EventRecord]] = attrs.field(factory=list)
    left_early: bool = False
    most_buffered: int = 0


_database_names = itertools.count()


@pytest.fixture
def shared_dsn(admin_dsn: str) -> Iterator[str]:
    """A database for all the examples of one property test."""
    name = f"t_{os.getpid()}_stream_{next(_database_names)}"

    async def create() -> None:
        async with testing.open_loop():
            await testing.create_database(admin_dsn, name, template=TEMPLATE)

    trio.run(create)
    try:
        yield database_dsn(admin_dsn, name)
    finally:
        trio.run(drop_database, admin_dsn, name)


@settings(
    max_examples=100, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow]
)
@given(scenario=scenarios())
async def test_each_subscriber_receives_exactly_the_matching_events_after_its_start(
    shared_dsn: str, scenario: Scenario
) -> None:
    runs = [ReaderRun() for _ in scenario.readers]
    with trio.fail_after(10):
        async with (
            ring_of(scenario.ring_size),
            open_bus(shared_dsn, poll_interval=scenario.poll_interval) as bus,
            open_event_store(shared_dsn) as foreign_store,
        ):
            base = await bus.store.head()
            known_head = base
            appended = Progress()
            writers_done = trio.Event()
            writing: list[trio.CancelScope] = []  # the readers' "while the writers run" phases

            async def write(foreign: bool, appends: list[list[tuple[str, str]]]) -> None:
                nonlocal known_head
                store = foreign_store if foreign else bus.store
                for pairs in appends:
                    batch = [Event(kind, {"entity": entity, "n": next(_numbers)}) for kind, entity in pairs]
                    records = await store.append(batch)
                    known_head = max(known_head, records[-1].sequence_number)
                    appended.advance_to(appended.value + 1)

            async def read(reader: Reader, run: ReaderRun) -> None:
                await appended.wait_for(reader.join_at)
                if reader.start is not None:
                    reach_back, fraction = reader.start
                    low = 0 if reach_back else base
                    run.after = low + math.floor(fraction * (known_head - low))
                run.head_before = await bus.store.head()
                subscription = bus.subscribe(
                    reader.filter,
                    after=run.after,
                    max_batch=reader.max_batch,
                    buffer=reader.buffer,
                    overflow=reader.overflow,  # type: ignore[arg-type]
                )
                async with subscription as sub:
                    run.start = sub.statistics().position
                    run.head_after = await bus.store.head()

                    def take(batch: list[EventRecord]) -> bool:
                        """Keep the batch; True when the reader leaves now."""
                        run.batches.append(batch)
                        run.most_buffered = max(run.most_buffered, sub.statistics().buffered)
                        run.left_early = len(run.batches) == reader.leave_after
                        return run.left_early

                    if reader.leave_after == 0:
                        run.left_early = True
                        return
                    if not writers_done.is_set():
                        with trio.CancelScope() as phase:
                            writing.append(phase)
                            async for batch in sub:
                                if take(batch):
                                    return
                                if reader.pace == "dawdles":
                                    for _ in range(len(batch)):
                                        await trio.lowlevel.checkpoint()
                                elif reader.pace == "stalls":
                                    await trio.sleep_forever()
                    # The writers are done: read up to the last matching event.
                    expected = await everything_after(bus, reader.filter, run.start)
                    target = expected[-1].sequence_number if expected else run.start
                    while (run.batches[-1][-1].sequence_number if run.batches else run.start) < target:
                        if take(await sub.__anext__()):
                            return

            async with trio.open_nursery() as nursery:
                for reader, run in zip(scenario.readers, runs, strict=True):
                    nursery.start_soon(read, reader, run)
                async with trio.open_nursery() as writers:
                    for foreign, appends in scenario.writers:
                        writers.start_soon(write, foreign, appends)
                writers_done.set()
                for phase in writing:
                    phase.cancel()

            assert bus.statistics().stream.subscriptions == ()
            expectations = [
                await everything_after(bus, reader.filter, run.start)
                for reader, run in zip(scenario.readers, runs, strict=True)
            ]

    for reader, run, expected in zip(scenario.readers, runs, expectations, strict=True):
        if run.after is None:
            assert run.head_before <= run.start <= run.head_after
        else:
            assert run.start == run.after
        assert_well_formed(run.batches, reader.max_batch)
        assert run.most_buffered <= reader.buffer
        received = flatten(run.batches)
        if run.left_early:
            assert keys(received) == keys(expected[: len(received)])
        else:
            assert keys(received) == keys(expected)


async def test_a_subscriber_after_a_position_not_yet_reached_receives_only_what_comes_after_it(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append(events(3))
        async with bus.subscribe(EVERYTHING, after=6) as sub:
            for _ in range(5):  # positions 4 to 8, one append each
                records = await bus.store.append(events(1))
            with trio.fail_after(10):
                batches = await receive_through(sub, records[-1].sequence_number)
    assert [record.sequence_number for record in flatten(batches)] == [7, 8]


async def test_a_live_subscriber_receives_what_is_appended_after_it_joined_and_nothing_before(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append(events(5))
        async with bus.subscribe(create_filter(["B"])) as sub:
            assert sub.statistics().position == 5
            await bus.store.append(events(2, "A") + events(2, "B"))
            records = await bus.store.append(events(1, "B"))
            with trio.fail_after(10):
                batches = await receive_through(sub, records[-1].sequence_number)
    assert [record.sequence_number for record in flatten(batches)] == [8, 9, 10]


async def test_a_subscriber_from_a_position_switches_from_the_store_to_live_without_a_gap(dsn: str) -> None:
    async with ring_of(10), open_bus(dsn) as bus:
        for _ in range(10):
            await bus.store.append(events(50))
        async with bus.subscribe(EVERYTHING, after=123, max_batch=100, buffer=100) as sub:
            first = await sub.__anext__()
            assert sub.statistics().state == "catching_up"
            records = await bus.store.append(events(7))
            with trio.fail_after(10):
                batches = [first, *await receive_through(sub, records[-1].sequence_number)]
            assert sub.statistics().state == "live"
    assert_well_formed(batches, 100)
    assert [record.sequence_number for record in flatten(batches)] == list(range(124, 508))


@pytest.mark.parametrize("source", ["ring", "store"])
async def test_a_subscriber_catching_up_over_events_none_of_which_match_receives_the_next_match(
    dsn: str, source: str
) -> None:
    async with ring_of(RING_SIZE if source == "ring" else 4), open_bus(dsn) as bus:
        await bus.store.append(events(20, "A"))
        async with bus.subscribe(create_filter(["B"]), after=0) as sub:
            records = await bus.store.append(events(1, "B"))
            with trio.fail_after(10):
                batches = await receive_through(sub, records[-1].sequence_number)
    assert keys(flatten(batches)) == keys(records)


# ---------------------------------------------------------------- backpressure


async def test_a_slow_blocking_subscriber_holds_the_appenders_back_and_loses_nothing(dsn: str) -> None:
    buffer, count = 10, 300
    written: list[EventRecord] = []
    finished = trio.Event()
    async with open_bus(dsn) as bus, bus.subscribe(EVERYTHING, max_batch=5, buffer=buffer, overflow="block") as sub:

        async def write() -> None:
            for _ in range(count):
                written.extend(await bus.store.append(events(1)))
            finished.set()

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            # Reading nothing: the hub waits for this subscriber, the store for
            # the hub, the writer for the store. Unheld, the writer would be
            # done in a fraction of this window.
            with trio.move_on_after(1.0):
                await finished.wait()
            assert not finished.is_set()
            # Held back by this subscriber's buffer, one record in the hub's
            # hands and the hub's inbox of committed batches, not more.
            assert buffer <= len(written) <= buffer + 1 + INBOX_SIZE
            stats = sub.statistics()
            assert (stats.state, stats.buffered, stats.delivered, stats.detaches) == ("live", buffer, 0, 0)

            with trio.fail_after(20):
                batches: list[list[EventRecord]] = []
                while len(flatten(batches)) < count:
                    batches.append(await sub.__anext__())
                await finished.wait()
    assert_well_formed(batches, 5)
    assert keys(flatten(batches)) == keys(written)


# ---------------------------------------------------------------- cancellation


async def assert_healthy(bus: Bus) -> None:
    """No subscription is left; appends work; a new subscriber from 0 gets everything."""
    assert bus.statistics().stream.subscriptions == ()
    with trio.fail_after(20):
        records = await bus.store.append(events(3))
        await bus.stream.wait_position(records[-1].sequence_number)
        expected = await everything_after(bus, EVERYTHING, 0)
        async with bus.subscribe(EVERYTHING, after=0) as sub:
            batches = await receive_through(sub, records[-1].sequence_number)
    assert_well_formed(batches, 100)
    assert keys(flatten(batches)) == keys(expected)


@pytest.mark.parametrize("overflow", ["catch_up", "block"])
async def test_a_subscriber_cancelled_while_it_processes_a_batch_leaves_the_bus_healthy(
    dsn: str, overflow: str
) -> None:
    async with open_bus(dsn) as bus:
        processing = trio.Event()
        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:

                async def subscriber(task_status: trio.TaskStatus[trio.CancelScope]) -> None:
                    with trio.CancelScope() as scope:
                        async with bus.subscribe(EVERYTHING, max_batch=4, buffer=8, overflow=overflow) as sub:  # type: ignore[arg-type]
                            task_status.started(scope)
                            async for _batch in sub:
                                processing.set()
                                await trio.sleep_forever()

                scope = await nursery.start(subscriber)
                await bus.store.append(events(4))
                await processing.wait()
                await bus.store.append(events(4))  # more waiting in its buffer
                scope.cancel()
        await assert_healthy(bus)


@pytest.mark.parametrize("source", ["ring", "store"])
@pytest.mark.parametrize("moment", ["before its first batch", "after a few batches"], ids=["at_once", "later"])
async def test_a_subscriber_cancelled_while_it_catches_up_leaves_the_bus_healthy(
    dsn: str, source: str, moment: str
) -> None:
    async with ring_of(RING_SIZE if source == "ring" else 100), open_bus(dsn) as bus:
        for _ in range(30):
            records = await bus.store.append(events(100))
        await bus.stream.wait_position(records[-1].sequence_number)
        assert bus.stream.statistics().ring == (3000 if source == "ring" else 100)
        with trio.fail_after(20), trio.CancelScope() as scope:
            async with bus.subscribe(EVERYTHING, after=0, max_batch=50, buffer=100) as sub:
                if moment == "before its first batch":
                    await trio.lowlevel.checkpoint()  # its catch-up task is reading
                else:
                    batches = [await sub.__anext__() for _ in range(3)]
                    assert [record.sequence_number for record in flatten(batches)] == list(range(1, 151))
                assert sub.statistics().state == "catching_up"
                scope.cancel()
                await trio.sleep_forever()
        await assert_healthy(bus)


async def test_a_blocking_subscriber_cancelled_while_the_hub_waits_for_it_leaves_the_bus_healthy(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        with trio.fail_after(20):
            with trio.CancelScope() as scope:
                async with bus.subscribe(EVERYTHING, max_batch=5, buffer=5, overflow="block") as sub:
                    for _ in range(8):
                        records = await bus.store.append(events(1))
                    # The hub holds the sixth record until this subscriber reads
                    # (the last two wait in its inbox).
                    await bus.stream.wait_position(6)
                    assert bus.stream.statistics().position == 6
                    assert sub.statistics().buffered == 5
                    scope.cancel()
                    await trio.sleep_forever()
            await bus.stream.wait_position(records[-1].sequence_number)
        await assert_healthy(bus)


async def test_a_subscriber_cancelled_while_it_subscribes_leaves_nothing_behind(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        with trio.CancelScope() as scope:
            scope.cancel()
            async with bus.subscribe(EVERYTHING):
                pytest.fail("the subscription was entered under a cancelled scope")
        await assert_healthy(bus)


async def test_a_subscriber_that_leaves_early_is_no_longer_listed(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        async with bus.subscribe(EVERYTHING, name="early") as sub:
            assert [s.name for s in bus.statistics().stream.subscriptions] == ["early"]
            assert sub.statistics().state == "live"
        assert sub.statistics().state == "closed"
        await assert_healthy(bus)


# ---------------------------------------------------------------- refusals


BAD_SUBSCRIPTIONS: list[tuple[str, Any, dict[str, Any], str]] = [
    ("a list of types instead of a filter", ["A"], {}, "EventFilter"),
    ("a query instead of a filter", EventQuery([EVERYTHING]), {}, "EventFilter"),
    ("no filter", None, {}, "EventFilter"),
    ("a negative position", EVERYTHING, {"after": -1}, "after"),
    ("a position as text", EVERYTHING, {"after": "3"}, "after"),
    ("a position as a bool", EVERYTHING, {"after": True}, "after"),
    ("a fractional position", EVERYTHING, {"after": 1.5}, "after"),
    ("batches of zero", EVERYTHING, {"max_batch": 0}, "max_batch"),
    ("batches of minus one", EVERYTHING, {"max_batch": -1}, "max_batch"),
    ("a batch size as text", EVERYTHING, {"max_batch": "10"}, "max_batch"),
    ("a buffer smaller than a batch", EVERYTHING, {"max_batch": 10, "buffer": 9}, "buffer"),
    ("a buffer of zero", EVERYTHING, {"buffer": 0}, "buffer"),
    ("an unknown overflow policy", EVERYTHING, {"overflow": "drop"}, "overflow"),
    ("no overflow policy", EVERYTHING, {"overflow": None}, "overflow"),
]


@pytest.mark.parametrize(
    ("filter", "options", "named"),
    [case[1:] for case in BAD_SUBSCRIPTIONS],
    ids=[case[0] for case in BAD_SUBSCRIPTIONS],
)
async def test_a_bad_subscription_fails_at_once(dsn: str, filter: Any, options: dict[str, Any], named: str) -> None:
    async with open_bus(dsn) as bus:
        with pytest.raises(InvalidFilter, match=named) as caught:
            bus.subscribe(filter, **options)  # refused before any block is entered
        assert isinstance(caught.value, EventBusError)
        assert bus.statistics().stream.subscriptions == ()


# ---------------------------------------------------------------- closing


@pytest.mark.parametrize("how", ["leaves its block", "is cancelled"], ids=["left", "cancelled"])
async def test_leaving_the_bus_ends_every_subscribers_iteration(dsn: str, how: str) -> None:
    ended: list[str] = []
    received: dict[str, int] = {}
    holding = {"holding": trio.Event(), "carrying": trio.Event()}
    release, both_appended = trio.Event(), trio.Event()

    async def subscriber(
        bus: Bus, name: str, filter: EventFilter, options: dict[str, Any], *, task_status: trio.TaskStatus[None]
    ) -> None:
        async with bus.subscribe(filter, name=name, **options) as sub:
            task_status.started()
            received[name] = 0
            if name == "carrying":
                await both_appended.wait()
            async for batch in sub:
                received[name] += len(batch)
                if name in holding:
                    holding[name].set()
                    await release.wait()
        ended.append(name)

    with trio.fail_after(20):
        async with trio.open_nursery() as nursery:
            with trio.CancelScope() as bus_scope:
                async with open_bus(dsn) as bus:
                    await bus.store.append(events(10, "B"))
                    await nursery.start(subscriber, bus, "waiting", create_filter(["A"]), {})
                    await nursery.start(subscriber, bus, "blocking", create_filter(["A"]), {"overflow": "block"})
                    # One batch of one, then it holds: the rest waits in its buffer and its catch-up.
                    options = {"after": 0, "max_batch": 1, "buffer": 1}
                    await nursery.start(subscriber, bus, "holding", EVERYTHING, options)
                    # Two batches of two wait in its buffer; it takes three, then holds.
                    options = {"max_batch": 3, "buffer": 6}
                    await nursery.start(subscriber, bus, "carrying", create_filter(["C"]), options)
                    await bus.store.append(events(2, "C"))
                    records = await bus.store.append(events(2, "C"))
                    await bus.stream.wait_position(records[-1].sequence_number)
                    both_appended.set()
                    await holding["holding"].wait()
                    await holding["carrying"].wait()
                    states = {s.name: (s.state, s.buffered) for s in bus.statistics().stream.subscriptions}
                    assert states == {
                        "waiting": ("live", 0),
                        "blocking": ("live", 0),
                        "holding": ("catching_up", 1),
                        "carrying": ("live", 1),
                    }
                    if how == "is cancelled":
                        bus_scope.cancel()
                        await trio.sleep_forever()
            assert bus.stream.statistics().subscriptions == ()
            release.set()  # their next step ends the iteration: what was buffered is dropped
    assert sorted(ended) == ["blocking", "carrying", "holding", "waiting"]
    assert received == {"waiting": 0, "blocking": 0, "holding": 1, "carrying": 3}


@pytest.mark.parametrize("after", [None, 0, 3, 100], ids=["live", "behind", "at_the_head", "ahead"])
async def test_subscribing_to_a_bus_that_has_closed_fails_with_closed_error(dsn: str, after: int | None) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append(events(3))
    with trio.fail_after(10), pytest.raises(ClosedError):
        async with bus.subscribe(EVERYTHING, after=after) as sub:
            pytest.fail(f"subscribed to a closed bus: {sub.statistics()}")
    assert bus.stream.statistics().subscriptions == ()
