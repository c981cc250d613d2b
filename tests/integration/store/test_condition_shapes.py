"""Conditions of any shape fail exactly when the model says, and a condition
whose predicates all have tags is checked by a few index steps, however long
the entities' histories."""

from __future__ import annotations

import json
import random
import uuid
from typing import Any

import trio
import trio.testing

from eventbus import ConcurrencyError, Event, EventQuery, EventRecord, create_filter, open_event_store, testing
from eventbus._store._requests import Request, condition, condition_filters, encoded_size, prepare
from eventbus._store._sql import APPEND_SQL, batch_arguments

from .test_query_plans import _TYPES, _filter, _payload
from .test_store_concurrency import append_lock_key


async def test_every_condition_shape_fails_iff_a_matching_event_is_after_the_position(dsn: str) -> None:
    rng = random.Random(1516)
    async with open_event_store(dsn) as store:
        for _ in range(10):
            await store.append([Event(rng.choice(_TYPES), _payload(rng)) for _ in range(20)])
        everything = (await store.query(create_filter([]))).events
        outcomes = {True: 0, False: 0}
        for _ in range(200):
            filters = [_filter(rng) for _ in range(rng.choice([1, 1, 2, 3, 5]))]
            expected = rng.choice([0, 150, 190, len(everything), len(everything)])
            # in the condition's batch, or alone (each one waits for the last)
            conflict = any(EventQuery(filters, after=expected).matches(r) for r in everything)
            probe = Event("Probe", {"p": 1})
            try:
                everything += await store.append([probe], filters, expected)
            except ConcurrencyError:
                assert conflict, filters
            else:
                assert not conflict, filters
            outcomes[conflict] += 1
        assert min(outcomes.values()) >= 30  # both outcomes, many times


async def test_conditions_in_one_batch_fail_iff_a_stored_event_or_a_stored_batch_mate_matches(dsn: str) -> None:
    rng = random.Random(1517)
    async with open_event_store(dsn, write_connections=1) as store:
        for _ in range(10):
            await store.append([Event(rng.choice(_TYPES), _payload(rng)) for _ in range(20)])
        before = (await store.query(create_filter([]))).events
        head = len(before)
        appends = []
        for _ in range(60):
            filters = [_filter(rng) for _ in range(rng.choice([1, 2, 5]))]
            appends.append(
                (filters, rng.choice([0, 150, 190, head, head, head]), Event(rng.choice(_TYPES), _payload(rng)))
            )
        outcomes: list[bool] = []  # stored, in the order queued

        async def append(filters: list[Any], expected: int, event: Event, index: int) -> None:
            try:
                await store.append([event], filters, expected)
            except ConcurrencyError:
                outcomes[index] = False

        lock = await testing.connect(dsn)
        try:
            await lock.execute("SELECT pg_advisory_lock($1)", append_lock_key())
            async with trio.open_nursery() as nursery:
                # the first append waits for the lock alone; the others queue behind it
                nursery.start_soon(store.append, [Event("Plug", {})])
                await trio.testing.wait_all_tasks_blocked()
                for index, (filters, expected, event) in enumerate(appends):
                    outcomes.append(True)
                    nursery.start_soon(append, filters, expected, event, index)
                    await trio.testing.wait_all_tasks_blocked()  # in this order
                assert store.statistics().queued == len(appends)
                await lock.execute("SELECT pg_advisory_unlock($1)", append_lock_key())
        finally:
            await lock.close()
        assert store.statistics().last_batch_appends == len(appends)
        before = [r for r in (await store.query(create_filter([]))).events if r.sequence_number <= head + 1]
    stored: list[Event] = []  # batch-mates stored before, in order
    for (filters, expected, event), outcome in zip(appends, outcomes, strict=True):
        query = EventQuery(filters, after=expected)
        conflict = any(query.matches(r) for r in before) or any(
            query.matches(EventRecord(head + 2, uuid.uuid4(), e.event_type, e.payload, {}, None)) for e in stored
        )
        assert outcome is not conflict, (filters, expected, event)
        if outcome:
            stored.append(event)
    assert 5 <= len(stored) <= 55  # both outcomes


async def test_a_batch_of_tagged_conditions_is_checked_in_a_few_index_steps_however_long_the_histories(
    dsn: str,
) -> None:
    async with open_event_store(dsn) as store:
        for round_ in range(25):  # 200 events per account, spread over the table
            await store.append(
                [Event("Deposited", {"accountId": f"a{k}", "n": round_ * 8 + i}) for i in range(8) for k in range(40)]
            )
        head = await store.head()
    batch = []
    for append in range(8):  # 8 appends, each on a boundary of 5 accounts
        filters = condition_filters(
            [create_filter(["Deposited"], [{"accountId": f"a{append * 5 + k}"}]) for k in range(5)]
        )
        text = condition(filters, head)
        assert text is not None and text.startswith('{"g":')
        events = prepare([Event("Probe", {"n": append})], 1 << 20)
        batch.append(Request(events, text, head, filters, encoded_size(events, text)))
    async with testing.open_loop():
        conn = await testing.connect(dsn, custom_plans=False)  # as the store's write connections
        try:
            for _ in range(8):  # past the first custom plans, onto the cached one
                await conn.execute("BEGIN")
                try:
                    plan = await conn.fetchval(
                        "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) " + APPEND_SQL, *batch_arguments(batch, "test")
                    )
                finally:
                    await conn.execute("ROLLBACK")
        finally:
            await conn.close()
    top: dict[str, Any] = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    assert top["Actual Rows"] == 1  # the appends' one row: all stored
    # 40 items, two probes each (its tag and tag 0), a few pages per probe,
    # and the 8 inserts; reading the items' histories would touch thousands.
    assert top["Shared Hit Blocks"] + top["Shared Read Blocks"] <= 400, top
