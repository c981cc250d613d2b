"""The store under concurrency: racing conditions, batches, readers, retries, cancellation.

Some tests run writers in other processes (``_store_worker``), driven one line
at a time over their standard input and output.
"""

from __future__ import annotations

import itertools
import math
import random
import re
import subprocess
import sys
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import pytest
import trio
import trio.testing

from eventbus import (
    ConcurrencyError,
    DatabaseError,
    DuplicateEventId,
    Event,
    EventBusError,
    EventQuery,
    EventRecord,
    EventStore,
    InvalidEvent,
    InvalidFilter,
    create_filter,
    open_event_store,
    testing,
)
from eventbus._values._json import MAX_EVENT_TYPE_LENGTH
from eventbus.testing import schema_sql

from ...helpers import ROOT
from .._store_worker import LineReader

WORKER = "tests.integration._store_worker"
WORKER_START_TIMEOUT = 30.0
ALL = create_filter([])


def ids_of(records: list[EventRecord]) -> list[uuid.UUID]:
    return [r.event_id for r in records]


def positions_of(records: list[EventRecord]) -> list[int]:
    return [r.sequence_number for r in records]


async def everything(store: EventStore) -> list[EventRecord]:
    return (await store.query(ALL)).events


# ---------------------------------------------------------------- worker processes


class Worker:
    """A worker process (see ``_store_worker``), driven one line at a time."""

    def __init__(self, process: trio.Process) -> None:
        assert process.stdin is not None and process.stdout is not None
        self.process = process
        self.stdin = process.stdin
        self._lines = LineReader(process.stdout)

    async def send(self, line: str) -> None:
        await self.stdin.send_all(line.encode() + b"\n")

    async def receive(self) -> str:
        line = await self._lines.receive_line()
        if line is None:
            raise AssertionError(f"worker {self.process.pid} ended early: exit code {await self.process.wait()}")
        return line


@asynccontextmanager
async def open_workers(count: int, *args: str) -> AsyncIterator[list[Worker]]:
    """Start ``count`` workers and wait until each has its store open.

    Leaving the block closes their input and waits for them to end cleanly.
    """
    processes: list[trio.Process] = []
    try:
        for _ in range(count):
            process = await trio.lowlevel.open_process(
                [sys.executable, "-m", WORKER, *args], stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT
            )
            processes.append(process)
        workers = [Worker(process) for process in processes]
        with trio.fail_after(WORKER_START_TIMEOUT):
            for worker in workers:
                assert await worker.receive() == "ready"
        yield workers
        for worker in workers:
            await worker.stdin.aclose()
        with trio.fail_after(10):
            for process in processes:
                assert await process.wait() == 0
    finally:
        with trio.CancelScope(shield=True):
            for process in processes:
                if process.returncode is None:
                    process.kill()
                await process.wait()
                for pipe in (process.stdin, process.stdout):
                    if pipe is not None:
                        await pipe.aclose()


# ---------------------------------------------------------------- racing conditions


@pytest.mark.parametrize("lanes", [1, 2], ids=["one write lane", "two write lanes"])
async def test_of_a_hundred_tasks_racing_on_one_condition_exactly_one_wins(dsn: str, lanes: int) -> None:
    account = create_filter(["Deposited"], [{"accountId": "a1"}])
    async with open_event_store(dsn, write_connections=lanes) as store:
        [opened] = await store.append([Event("Deposited", {"accountId": "a1", "amount": 1})])
        await store.append([Event("Deposited", {"accountId": "a2", "amount": 1})])
        expected = (await store.query(account)).max_sequence_number
        assert expected == 1
        winners: list[list[EventRecord]] = []
        losers: list[ConcurrencyError] = []

        async def contend(amount: int) -> None:
            try:
                records = await store.append(
                    [Event("Deposited", {"accountId": "a1", "amount": amount})], account, expected
                )
            except ConcurrencyError as exc:
                losers.append(exc)
            else:
                winners.append(records)

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for amount in range(100):
                    nursery.start_soon(contend, amount)

        assert len(winners) == 1
        assert len(losers) == 99
        assert {exc.expected_max_sequence_number for exc in losers} == {1}
        [[won]] = winners
        assert won.sequence_number == 3
        assert (await store.query(account)).events == [opened, won]
        assert await store.head() == 3
        assert store.statistics().conflicts == 99


async def test_two_processes_racing_on_one_condition_have_exactly_one_winner_per_round(dsn: str) -> None:
    rounds, tasks = 25, 4
    wins_by_worker = [0, 0]
    async with open_workers(2, "race", dsn, str(tasks)) as workers:
        for number in range(1, rounds + 1):
            with trio.fail_after(10):
                # Both workers wait on their input: one line starts the round in
                # both (sent first to each in turn).
                for worker in workers if number % 2 else workers[::-1]:
                    await worker.send(f"race {number}")
                replies = [[int(x) for x in (await worker.receive()).split()] for worker in workers]
            assert [reply[0] for reply in replies] == [number, number]
            assert sum(reply[1] for reply in replies) == 1, f"round {number}: {replies}"
            assert sum(reply[2] for reply in replies) == 2 * tasks - 1, f"round {number}: {replies}"
            for index, reply in enumerate(replies):
                wins_by_worker[index] += reply[1]
    assert sum(wins_by_worker) == rounds
    async with open_event_store(dsn) as store:
        claimed = (await store.query(create_filter(["Claimed"]))).events
    assert sorted(record.payload["round"] for record in claimed) == list(range(1, rounds + 1))


async def test_conditional_appends_on_unrelated_filters_all_succeed(dsn: str) -> None:
    histories: dict[int, list[EventRecord]] = {}

    def account(number: int) -> dict[str, str]:
        return {"accountId": f"acc-{number}"}

    async with open_event_store(dsn) as store:

        async def open_and_deposit(number: int) -> None:
            boundary = create_filter([], [account(number)])
            [opened] = await store.append([Event("Opened", account(number))], boundary, None)
            # Other accounts' events land after `opened`: they must not count.
            [deposited] = await store.append(
                [Event("Deposited", {**account(number), "amount": 5})], boundary, opened.sequence_number
            )
            histories[number] = [opened, deposited]

        with trio.fail_after(20):
            async with trio.open_nursery() as nursery:
                for number in range(100):
                    nursery.start_soon(open_and_deposit, number)

        assert sorted(histories) == list(range(100))
        for number, history in histories.items():
            assert (await store.query(create_filter([], [account(number)]))).events == history
        assert await store.head() == 200
        assert store.statistics().conflicts == 0


# ---------------------------------------------------------------- one batch, many outcomes


def append_lock_key() -> int:
    """The advisory lock ``append_events`` takes (see _schema.sql)."""
    match = re.search(r"pg_advisory_xact_lock\((\d+)\)", schema_sql().split("FUNCTION eventbus.append_events", 1)[1])
    assert match is not None
    return int(match.group(1))


async def test_a_batch_fails_only_its_bad_conflicting_and_clashing_appends(dsn: str) -> None:
    clash_id = uuid.uuid4()
    a1 = create_filter([], [{"accountId": "a1"}])
    c1 = create_filter([], [{"accountId": "c1"}])
    async with open_event_store(dsn, write_connections=1) as store:
        [stored_a1] = await store.append([Event("Opened", {"accountId": "a1"})])
        await store.append([Event("Noted", {"text": "first"}, event_id=clash_id)])
        outcomes: dict[str, list[EventRecord] | BaseException] = {}

        def appender(name: str, events: list[Event], *condition: Any) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                try:
                    outcomes[name] = await store.append(events, *condition)
                except (InvalidEvent, ConcurrencyError, DuplicateEventId) as exc:
                    outcomes[name] = exc

            return run

        lock = await testing.connect(dsn)
        try:
            # The first append waits for the append lock on the store's only
            # write connection; the others queue behind it and then go as one batch.
            await lock.execute("SELECT pg_advisory_lock($1)", append_lock_key())
            before = store.statistics()
            async with trio.open_nursery() as nursery:
                for name, events, condition in [
                    ("plug", [Event("Plug", {})], ()),
                    ("good", [Event("Deposited", {"accountId": "b1", "amount": 1})], ()),
                    ("bad", [Event("Deposited", {"accountId": "b1", "amount": math.nan})], ()),
                    ("conflicting", [Event("Deposited", {"accountId": "a1", "amount": 1})], (a1, 0)),
                    ("clashing", [Event("Noted", {"text": "second"}, event_id=clash_id)], ()),
                    ("good conditional", [Event("Opened", {"accountId": "c1"})], (c1, None)),
                    ("conflicting with a batch-mate", [Event("Opened", {"accountId": "c1"})], (c1, None)),
                    ("good, two events", [Event("A", {"n": 1}), Event("B", {"n": 2})], ()),
                ]:
                    nursery.start_soon(appender(name, events, *condition))
                    await trio.testing.wait_all_tasks_blocked()  # in this order
                assert store.statistics().queued == 6
                await lock.execute("SELECT pg_advisory_unlock($1)", append_lock_key())
        finally:
            await lock.close()

        after = store.statistics()
        assert after.batches - before.batches == 2
        assert after.last_batch_appends == 6
        assert isinstance(outcomes["bad"], InvalidEvent)
        assert "amount" in str(outcomes["bad"])
        conflicting = outcomes["conflicting"]
        assert isinstance(conflicting, ConcurrencyError)
        assert f"position {stored_a1.sequence_number}" in str(conflicting)
        assert isinstance(outcomes["clashing"], DuplicateEventId)
        assert isinstance(outcomes["conflicting with a batch-mate"], ConcurrencyError)
        assert "same batch" in str(outcomes["conflicting with a batch-mate"])
        committed = [outcomes[name] for name in ("plug", "good", "good conditional", "good, two events")]
        assert all(isinstance(records, list) for records in committed)
        stored = await everything(store)
        assert positions_of(stored) == [1, 2, 3, 4, 5, 6, 7]
        assert stored[2:] == [record for records in committed for record in records]
        assert stored[1].payload == {"text": "first"}


async def test_a_batch_numbers_its_stored_appends_around_retries_and_conflicts(dsn: str) -> None:
    retried_id, retried_too_id = uuid.uuid4(), uuid.uuid4()
    a1 = create_filter([], [{"accountId": "a1"}])
    async with open_event_store(dsn, write_connections=1) as store:
        [first] = await store.append([Event("Opened", {"accountId": "a1"})])
        [retried] = await store.append([Event("Noted", {"n": 1}, event_id=retried_id)])
        [retried_too] = await store.append([Event("Noted", {"n": 2}, event_id=retried_too_id)])
        outcomes: dict[str, list[EventRecord] | BaseException] = {}

        def appender(name: str, events: list[Event], *condition: Any) -> Callable[[], Awaitable[None]]:
            async def run() -> None:
                try:
                    outcomes[name] = await store.append(events, *condition)
                except ConcurrencyError as exc:
                    outcomes[name] = exc

            return run

        lock = await testing.connect(dsn)
        try:
            await lock.execute("SELECT pg_advisory_lock($1)", append_lock_key())
            before = store.statistics()
            async with trio.open_nursery() as nursery:
                for name, events, condition in [
                    ("plug", [Event("Plug", {})], ()),
                    ("one", [Event("A", {"n": 1})], ()),
                    ("retry", [Event("Noted", {"n": 1}, event_id=retried_id)], ()),
                    ("conflicting", [Event("Opened", {"accountId": "a1"})], (a1, 0)),
                    ("two", [Event("B", {"n": 2}), Event("C", {"n": 3})], ()),
                    ("retry, conditional", [Event("Noted", {"n": 2}, event_id=retried_too_id)], (a1, 0)),
                    ("three", [Event("D", {"n": 4})], (a1, first.sequence_number)),
                ]:
                    nursery.start_soon(appender(name, events, *condition))
                    await trio.testing.wait_all_tasks_blocked()  # in this order
                await lock.execute("SELECT pg_advisory_unlock($1)", append_lock_key())
        finally:
            await lock.close()

        assert store.statistics().batches - before.batches == 2
        assert store.statistics().last_batch_appends == 6
        assert outcomes["retry"] == [retried]
        assert outcomes["retry, conditional"] == [retried_too]
        assert isinstance(outcomes["conflicting"], ConcurrencyError)
        stored = await everything(store)
        assert positions_of(stored) == [1, 2, 3, 4, 5, 6, 7, 8]
        assert stored[4:] == [record for name in ("one", "two", "three") for record in outcomes[name]]  # type: ignore[union-attr]


async def test_the_append_function_answers_a_batch_of_stored_events_with_one_row(dsn: str) -> None:
    async with testing.open_loop():
        conn = await testing.connect(dsn)
        try:
            await testing.install_schema(conn)
            ids = [uuid.uuid4() for _ in range(100)]
            rows = await conn.fetch(
                "SELECT * FROM eventbus.append_events($1, $2, $3, $4, $5, $6, $7, NULL, '{}', '{}', false, 'x')",
                list(range(1, 101)), ids, ["A"] * 100, ["{}"] * 100, ["{}"] * 100, [], [],
            )  # fmt: skip
            assert [(r["outcome"], r["sequence_number"], r["events_stored"]) for r in rows] == [("ok", 1, 100)]
            stored = await conn.fetch("SELECT sequence_number, event_id FROM eventbus.events ORDER BY 1")
            assert [(r["sequence_number"], r["event_id"]) for r in stored] == list(enumerate(ids, 1))
        finally:
            await conn.close()


# ---------------------------------------------------------------- readers and writers in other processes


async def test_a_polling_reader_sees_exactly_the_acknowledged_events_of_two_writing_processes(dsn: str) -> None:
    tasks, appends = 8, 40
    seen: list[EventRecord] = []
    acknowledged: set[tuple[int, uuid.UUID]] = set()
    writers_done = trio.Event()
    async with open_event_store(dsn) as store:

        async def poll() -> None:
            last = 0
            for _ in range(200_000):
                final = writers_done.is_set()
                events = (await store.query(EventQuery([ALL], after=last))).events
                seen.extend(events)
                if events:
                    last = events[-1].sequence_number
                elif final:
                    return
                else:
                    await trio.sleep(0.001)  # the writers are other processes
            raise AssertionError("the reader polled too often")

        async with open_workers(2, "write", dsn, str(tasks), str(appends)) as workers:
            with trio.fail_after(40):
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(poll)
                    for worker in workers:
                        await worker.send("go")
                    for worker in workers:
                        while (line := await worker.receive()) != "done":
                            _, position, event_id = line.split()
                            acknowledged.add((int(position), uuid.UUID(event_id)))
                    writers_done.set()
        stored = await everything(store)

    positions = positions_of(seen)
    assert all(a < b for a, b in itertools.pairwise(positions)), "positions must strictly increase"
    assert len(acknowledged) >= 2 * tasks * appends
    # A position the reader had passed and that appeared later would be
    # stored but not seen: the reader's events are exactly what is stored.
    assert {(r.sequence_number, r.event_id) for r in seen} == acknowledged
    assert seen == stored


# ---------------------------------------------------------------- idempotent retries


async def test_retrying_an_append_with_the_same_ids_returns_the_stored_records(dsn: str) -> None:
    events = [Event("A", {"n": 1}, event_id=uuid.uuid4()), Event("B", {"n": 2}, event_id=uuid.uuid4())]
    async with open_event_store(dsn) as store:
        first = await store.append(events)
        await store.append([Event("C", {"n": 3})])
        assert await store.append(events) == first
        assert await store.append(events) == first
        assert positions_of(first) == [1, 2]
        assert ids_of(first) == [e.event_id for e in events]
        assert positions_of(await everything(store)) == [1, 2, 3]
        assert store.statistics().events == 3


async def test_retrying_a_conditional_append_returns_its_records_not_a_conflict(dsn: str) -> None:
    account = create_filter(["Deposited"], [{"accountId": "a1"}])
    events = [Event("Deposited", {"accountId": "a1", "amount": 5}, event_id=uuid.uuid4())]
    async with open_event_store(dsn) as store:
        first = await store.append(events, account, None)
        # Its own event (and now another one) match the filter after 0.
        [later] = await store.append([Event("Deposited", {"accountId": "a1", "amount": 7})])
        assert await store.append(events, account, None) == first
        assert (await store.query(account)).events == [*first, later]
        with pytest.raises(ConcurrencyError):
            await store.append([Event("Deposited", {"accountId": "a1", "amount": 5})], account, None)


async def test_a_retry_returns_what_is_stored_not_its_own_equal_content(dsn: str) -> None:
    # PostgreSQL holds 1 and 1.0 equal in JSON, so each retry below is a retry of
    # the stored append; what it returns is what is stored, as a query shows it.
    plain, conditional = uuid.uuid4(), uuid.uuid4()
    account = create_filter(["Deposited"], [{"accountId": "a1"}])
    async with open_event_store(dsn) as store:
        await store.append([Event("Opened", {"v": 1, "w": 2.5}, metadata={"m": 1}, event_id=plain)])
        await store.append([Event("Deposited", {"accountId": "a1", "v": 1.0}, event_id=conditional)], account, 0)
        stored = {record.event_id: record for record in await everything(store)}
        [retried] = await store.append([Event("Opened", {"w": 2.50, "v": 1.0}, metadata={"m": 1.0}, event_id=plain)])
        [retried_conditional] = await store.append(
            [Event("Deposited", {"accountId": "a1", "v": 1}, event_id=conditional)], account, 0
        )
        for record in (retried, retried_conditional):
            assert repr(record) == repr(stored[record.event_id])
        assert type(retried.payload["v"]) is int and type(retried.metadata["m"]) is int
        assert type(retried_conditional.payload["v"]) is float
        assert await store.head() == 2


async def test_the_same_ids_with_different_content_are_refused_and_store_nothing(dsn: str) -> None:
    one, two = uuid.uuid4(), uuid.uuid4()
    async with open_event_store(dsn) as store:
        [stored] = await store.append([Event("A", {"n": 1}, event_id=one)])
        for changed in [
            [Event("A", {"n": 2}, event_id=one)],
            [Event("Other", {"n": 1}, event_id=one)],
            [Event("A", {"n": 1}, metadata={"by": "me"}, event_id=one)],
            [Event("A", {"n": 1}, event_id=one), Event("B", {}, event_id=two)],  # only some are stored
            [Event("B", {}, event_id=two), Event("A", {"n": 1}, event_id=one)],
        ]:
            with pytest.raises(DuplicateEventId):
                await store.append(changed)
            with pytest.raises(DuplicateEventId):
                await store.append(changed, create_filter(["A"]), 1)
        assert await everything(store) == [stored]


async def test_concurrent_retries_of_one_append_store_it_once(dsn: str) -> None:
    events = [Event("A", {"n": n}, event_id=uuid.uuid4()) for n in range(3)]
    results: list[list[EventRecord]] = []
    async with open_event_store(dsn) as store:

        async def append() -> None:
            results.append(await store.append(events))

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for _ in range(20):
                    nursery.start_soon(append)
        assert len(results) == 20
        assert all(records == results[0] for records in results)
        assert await everything(store) == results[0]


async def test_clashing_ids_in_concurrent_appends_store_one_of_them(dsn: str) -> None:
    event_id = uuid.uuid4()
    outcomes: list[list[EventRecord] | DuplicateEventId] = []
    async with open_event_store(dsn) as store:

        async def append(n: int) -> None:
            try:
                outcomes.append(await store.append([Event("A", {"n": n}, event_id=event_id)]))
            except DuplicateEventId as exc:
                outcomes.append(exc)

        with trio.fail_after(10):
            async with trio.open_nursery() as nursery:
                for n in range(10):
                    nursery.start_soon(append, n)
        stored = [records for records in outcomes if isinstance(records, list)]
        assert len(stored) == 1
        assert len(outcomes) == 10
        assert await everything(store) == stored[0]


# ---------------------------------------------------------------- cancellation


async def test_cancelled_appends_are_stored_at_most_once_and_retries_never_duplicate(dsn: str) -> None:
    rng = random.Random(20240601)
    acknowledged: list[list[EventRecord]] = []
    cancelled: list[list[Event]] = []
    async with open_event_store(dsn) as store:
        [warm_up] = await store.append([Event("WarmUp", {})])
        # The appends' own latency on this machine now, under the same load of 40 tasks.
        timings: list[float] = []

        async def timed() -> None:
            started = trio.current_time()
            await store.append([Event("WarmUp", {})])
            timings.append(trio.current_time() - started)

        async with trio.open_nursery() as nursery:
            for _ in range(40):
                nursery.start_soon(timed)
        latency = sorted(timings)[len(timings) // 2]

        async def appender(task: int) -> None:
            for number in range(25):
                events = [Event("Step", {"task": task, "n": number, "part": k}, event_id=uuid.uuid4()) for k in (0, 1)]
                # Around the appends' own latency: some are cancelled while
                # queued, some while their batch commits, some not at all.
                with trio.move_on_after(rng.expovariate(1 / latency)) as scope:
                    records = await store.append(events)
                if scope.cancelled_caught:
                    cancelled.append(events)
                else:
                    assert ids_of(records) == [e.event_id for e in events]
                    acknowledged.append(records)

        with trio.fail_after(30):
            async with trio.open_nursery() as nursery:
                for task in range(40):
                    nursery.start_soon(appender, task)

            # The store is healthy.
            [healthy] = await store.append([Event("Healthy", {})])
            assert store.statistics().connected
            stored = {r.event_id: r for r in await everything(store)}
            assert stored[healthy.event_id] == healthy

            # Every acknowledged append is stored once, as acknowledged.
            for records in acknowledged:
                assert [stored[r.event_id] for r in records] == records
            # A cancelled append is stored whole or not at all.
            for events in cancelled:
                assert len({e.event_id in stored for e in events}) == 1
            committed_anyway = sum(events[0].event_id in stored for events in cancelled)
            assert acknowledged
            assert 0 < committed_anyway < len(cancelled), "cancelled appends: some should commit, some not"

            # Retries of the cancelled appends: the stored ones come back as they are.
            retried = []
            for events in cancelled:
                records = await store.append(events)
                if events[0].event_id in stored:
                    assert [stored[e.event_id] for e in events] == records
                retried.append(records)
            # And retrying everything at once stores nothing new.
            head = await store.head()
            async with trio.open_nursery() as nursery:
                for records in acknowledged + retried:
                    events = [Event(r.event_type, r.payload, event_id=r.event_id) for r in records]
                    nursery.start_soon(store.append, events)
            assert await store.head() == head

        final = await everything(store)
        assert final[0] == warm_up
        expected = 2 * (len(acknowledged) + len(cancelled)) + 2 + len(timings)
        assert len(final) == len({r.event_id for r in final}) == expected


async def test_an_event_type_too_long_for_the_index_is_refused_before_the_database(dsn: str) -> None:
    longest = "T" * MAX_EVENT_TYPE_LENGTH
    async with open_event_store(dsn) as store:
        with pytest.raises(InvalidEvent, match=f"has {MAX_EVENT_TYPE_LENGTH + 1} characters"):
            await store.append([Event(longest + "T", {})])
        with pytest.raises(InvalidEvent, match=f"more than the {MAX_EVENT_TYPE_LENGTH} an event type may"):
            await store.append([Event("\U0001f680" * 1000, {})])  # 4 kB: more than an index entry holds
        with pytest.raises(InvalidFilter, match=f"has {MAX_EVENT_TYPE_LENGTH + 1} characters"):
            create_filter([longest + "T"])
        [record] = await store.append([Event(longest, {})])
        assert (await store.query(create_filter([longest]))).events == [record]


async def test_a_batch_the_database_refuses_as_a_whole_fails_only_the_append_it_refuses(dsn: str) -> None:
    async with open_event_store(dsn, write_connections=1) as store:
        admin = await testing.connect(dsn)
        try:
            # A rule of the database's own (a trigger of the operator's, say)
            # that no check in the library knows of.
            await admin.run_script(
                "CREATE FUNCTION refuse_forbidden() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.event_type = 'Forbidden' THEN RAISE EXCEPTION 'forbidden here'; END IF;"
                " RETURN NEW; END $$;"
                " CREATE TRIGGER refuse_forbidden BEFORE INSERT ON eventbus.events"
                " FOR EACH ROW EXECUTE FUNCTION refuse_forbidden()"
            )
            outcomes: dict[str, list[EventRecord] | BaseException] = {}

            async def append(name: str, events: list[Event]) -> None:
                try:
                    outcomes[name] = await store.append(events)
                except EventBusError as exc:
                    outcomes[name] = exc

            await admin.execute("SELECT pg_advisory_lock($1)", append_lock_key())
            async with trio.open_nursery() as nursery:
                nursery.start_soon(append, "plug", [Event("Plug", {})])
                await trio.testing.wait_all_tasks_blocked()
                for name, events in [
                    ("before", [Event("Good", {"n": 1})]),
                    ("forbidden", [Event("Good", {"n": 2}), Event("Forbidden", {})]),
                    ("after", [Event("Good", {"n": 3})]),
                ]:
                    nursery.start_soon(append, name, events)
                    await trio.testing.wait_all_tasks_blocked()
                assert store.statistics().queued == 3
                await admin.execute("SELECT pg_advisory_unlock($1)", append_lock_key())
        finally:
            await admin.close()
        stored = await everything(store)

    forbidden = outcomes.pop("forbidden")
    assert isinstance(forbidden, DatabaseError) and "forbidden here" in str(forbidden)
    assert all(isinstance(records, list) for records in outcomes.values())
    assert [r.payload for r in stored] == [{}, {"n": 1}, {"n": 3}]  # the refused append stored nothing
