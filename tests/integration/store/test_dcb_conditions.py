"""Append conditions as DCB queries: several items, OR'd, each with its own types and tags.

The course-subscription scenarios of the DCB specification's examples: a
course's capacity, a student's limit of subscriptions, a unique course id.
Each decision reads its boundary with ``EventQuery(items)`` and appends on the
same items, so a concurrent change to any part of the boundary is a conflict,
and a change outside it is not.
"""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Sequence

import pytest
import trio

from eventbus import (
    ConcurrencyError,
    Event,
    EventFilter,
    EventQuery,
    EventStore,
    InvalidEvent,
    create_filter,
    open_event_store,
)

from ...helpers import ROOT
from .._store_worker import dcb_boundary

STUDENT_LIMIT = 3


def course_items(course: str) -> list[EventFilter]:
    return [
        create_filter(["CourseDefined", "CourseCapacityChanged"], [{"courseId": course}]),
        create_filter(["StudentSubscribedToCourse"], [{"courseId": course}]),
    ]


def student_items(student: str) -> list[EventFilter]:
    return [create_filter(["StudentSubscribedToCourse"], [{"studentId": student}])]


class Refused(Exception):
    pass


async def subscribe(store: EventStore, student: str, course: str) -> None:
    """Decide on the boundary read, append on it; read again after a conflict."""
    items = course_items(course) + student_items(student)
    while True:
        result = await store.query(EventQuery(items))
        capacity = None
        taken = 0
        mine = 0
        for record in result.events:
            payload = record.payload
            if record.event_type == "CourseDefined":
                capacity = payload["capacity"]
            elif record.event_type == "CourseCapacityChanged":
                capacity = payload["newCapacity"]
            elif payload["courseId"] == course:
                taken += 1
                if payload["studentId"] == student:
                    raise Refused("already subscribed")
            if record.event_type == "StudentSubscribedToCourse" and payload["studentId"] == student:
                mine += 1
        if capacity is None:
            raise Refused("no such course")
        if taken >= capacity:
            raise Refused("course full")
        if mine >= STUDENT_LIMIT:
            raise Refused("student limit")
        event = Event("StudentSubscribedToCourse", {"studentId": student, "courseId": course})
        try:
            await store.append([event], items, result.max_sequence_number)
            return
        except ConcurrencyError:
            continue


async def outcomes(store: EventStore, attempts: Sequence[tuple[str, str]]) -> list[str]:
    results: list[str] = []

    async def attempt(student: str, course: str) -> None:
        try:
            await subscribe(store, student, course)
        except Refused as exc:
            results.append(str(exc))
        else:
            results.append("ok")

    async with trio.open_nursery() as nursery:
        for student, course in attempts:
            nursery.start_soon(attempt, student, course)
    return sorted(results)


async def test_a_course_takes_no_more_students_than_its_capacity_however_many_race(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        await store.append([Event("CourseDefined", {"courseId": "c1", "capacity": 3})])
        results = await outcomes(store, [(f"s{n}", "c1") for n in range(20)])
        assert results == ["course full"] * 17 + ["ok"] * 3
        subscribed = await store.query(create_filter(["StudentSubscribedToCourse"], [{"courseId": "c1"}]))
        assert len(subscribed.events) == 3


async def test_a_student_subscribes_to_no_more_courses_than_the_limit_however_many_race(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        await store.append([Event("CourseDefined", {"courseId": f"c{n}", "capacity": 10}) for n in range(8)])
        results = await outcomes(store, [("s1", f"c{n}") for n in range(8)])
        assert results == ["ok"] * STUDENT_LIMIT + ["student limit"] * (8 - STUDENT_LIMIT)


async def test_a_course_id_is_defined_once_however_many_race(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        defined = create_filter(["CourseDefined"], [{"courseId": "c1"}])
        won: list[int] = []

        async def define(capacity: int) -> None:
            try:
                await store.append([Event("CourseDefined", {"courseId": "c1", "capacity": capacity})], [defined], 0)
            except ConcurrencyError:
                return
            won.append(capacity)

        async with trio.open_nursery() as nursery:
            for capacity in range(1, 31):
                nursery.start_soon(define, capacity)
        assert len(won) == 1
        assert [r.payload["capacity"] for r in (await store.query(defined)).events] == won


async def test_a_change_to_any_item_of_the_boundary_conflicts_and_a_change_outside_it_does_not(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        await store.append([Event("CourseDefined", {"courseId": "c1", "capacity": 5})])
        items = course_items("c1") + student_items("s1")
        read = (await store.query(EventQuery(items))).max_sequence_number
        unrelated = [
            Event("CourseCapacityChanged", {"courseId": "c2", "newCapacity": 1}),
            Event("StudentSubscribedToCourse", {"studentId": "s2", "courseId": "c2"}),
            Event("CourseRenamed", {"courseId": "c1", "title": "a type no item names"}),
        ]
        await store.append(unrelated)
        [ok] = await store.append(
            [Event("StudentSubscribedToCourse", {"studentId": "s1", "courseId": "c1"})], items, read
        )
        read = ok.sequence_number
        for change in (
            Event("CourseCapacityChanged", {"courseId": "c1", "newCapacity": 9}),  # the first item
            Event("StudentSubscribedToCourse", {"studentId": "s9", "courseId": "c1"}),  # the second
            Event("StudentSubscribedToCourse", {"studentId": "s1", "courseId": "c7"}),  # the third
        ):
            [changed] = await store.append([change])
            with pytest.raises(ConcurrencyError) as caught:
                await store.append([Event("Probe", {"courseId": "c1"})], items, read)
            assert caught.value.expected_max_sequence_number == read
            assert f"position {changed.sequence_number}" in str(caught.value)
            read = changed.sequence_number


async def test_a_batch_mate_that_matches_any_item_conflicts_in_the_same_batch(dsn: str) -> None:
    async with open_event_store(dsn, write_connections=1) as store:
        items = dcb_boundary(1)
        results: dict[str, str] = {}

        async def append(name: str, event: Event) -> None:
            try:
                await store.append([event], items, 0)
            except ConcurrencyError:
                results[name] = "conflict"
            else:
                results[name] = "ok"

        # Many at once so that they share batches: exactly one of them wins.
        async with trio.open_nursery() as nursery:
            for n in range(40):
                if n % 2:
                    event = Event("StudentSubscribedToCourse", {"studentId": "s1", "courseId": f"k{n}"})
                else:
                    event = Event("CourseCapacityChanged", {"courseId": "c1", "newCapacity": n})
                nursery.start_soon(append, f"a{n}", event)
        assert sorted(results.values()).count("ok") == 1


@pytest.mark.parametrize("bad", [[], [None], ["CourseDefined"], "CourseDefined", {"courseId": "c1"}, 7])
async def test_a_condition_that_is_not_a_list_of_filters_is_refused_before_anything_is_stored(
    dsn: str, bad: object
) -> None:
    async with open_event_store(dsn) as store:
        with pytest.raises(InvalidEvent):
            await store.append([Event("X", {})], bad, 0)  # type: ignore[arg-type]
        assert await store.head() == 0


async def test_the_single_filter_form_keeps_working_as_before(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        account = create_filter(["Deposited"], [{"accountId": "a1"}])
        await store.append([Event("Deposited", {"accountId": "a1"})], account, 0)
        with pytest.raises(ConcurrencyError):
            await store.append([Event("Deposited", {"accountId": "a1"})], account, 0)
        await store.append([Event("Deposited", {"accountId": "a1"})], account, 1)
        assert len((await store.query([account])).events) == 2


async def test_a_hundred_racers_in_two_processes_on_a_two_item_boundary_have_one_winner_per_round(dsn: str) -> None:
    rounds, tasks = 10, 50  # 100 racers a round, half on each item
    code = [sys.executable, "-m", "tests.integration._store_worker", "race", dsn, str(tasks)]
    processes = [
        subprocess.Popen(code, stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT) for _ in range(2)
    ]
    try:
        for process in processes:
            assert process.stdout is not None and process.stdout.readline().strip() == "ready"
        for number in range(1, rounds + 1):
            for process in processes:
                assert process.stdin is not None
                process.stdin.write(f"dcb {number}\n")
                process.stdin.flush()
            replies = [[int(x) for x in process.stdout.readline().split()] for process in processes]  # type: ignore[union-attr]
            assert sum(reply[1] for reply in replies) == 1, f"round {number}: {replies}"
            assert sum(reply[2] for reply in replies) == 2 * tasks - 1
    finally:
        for process in processes:
            if process.stdin:
                process.stdin.close()
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
    async with open_event_store(dsn) as store:
        for number in range(1, rounds + 1):
            assert len((await store.query(EventQuery(dcb_boundary(number)))).events) == 1


@pytest.mark.parametrize("after", [None, 0])
async def test_a_subscription_to_several_items_gets_what_matches_any_in_order_once(dsn: str, after: int | None) -> None:
    from eventbus import open_bus

    async with open_bus(dsn) as bus:
        items = course_items("c1") + student_items("s1")
        before = await bus.store.append(
            [
                Event("CourseDefined", {"courseId": "c1", "capacity": 2}),
                Event("CourseDefined", {"courseId": "c2", "capacity": 2}),
            ]
        )
        async with bus.subscribe(items, after=after, max_batch=2, buffer=2) as sub:
            assert sub.filters == tuple(items) and sub.filter == items[0]
            live = await bus.store.append(
                [
                    Event("StudentSubscribedToCourse", {"studentId": "s1", "courseId": "c2"}),  # third item
                    Event("StudentSubscribedToCourse", {"studentId": "s2", "courseId": "c2"}),  # none
                    Event("StudentSubscribedToCourse", {"studentId": "s2", "courseId": "c1"}),  # second item
                    Event("CourseCapacityChanged", {"courseId": "c1", "newCapacity": 5}),  # first item
                ]
            )
            expected = ([before[0].sequence_number] if after == 0 else []) + [
                live[0].sequence_number,
                live[2].sequence_number,
                live[3].sequence_number,
            ]
            seen: list[int] = []
            with trio.fail_after(10):
                async for batch in sub:
                    seen += [record.sequence_number for record in batch]
                    if seen and seen[-1] >= live[3].sequence_number:
                        break
            assert seen == expected
        with pytest.raises(Exception, match="non-empty list"):
            bus.subscribe([])
