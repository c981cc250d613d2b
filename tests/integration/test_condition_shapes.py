"""Conditions of any shape fail exactly when the model says, and a condition
whose predicates all have tags is checked by a few index steps, however long
the entities' histories."""

from __future__ import annotations

import json
import random
from typing import Any

from eventbus import ConcurrencyError, Event, EventQuery, create_filter, open_event_store, testing
from eventbus._store._requests import condition, condition_filters

from .test_query_plans import _TYPES, _filter, _payload


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


async def test_a_tagged_condition_is_checked_in_a_few_index_steps_however_long_the_history(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        for round_ in range(20):  # 50 events per account, spread over the table
            await store.append([Event("Deposited", {"accountId": f"a{k}", "n": round_}) for k in range(100)])
            await store.append([Event("Deposited", {"accountId": f"a{k}", "n": round_ + 100}) for k in range(100)])
        head = await store.head()
    filters = condition_filters([create_filter(["Deposited"], [{"accountId": f"a{k}"}]) for k in range(5)])
    text = condition(filters, head)
    assert text is not None and text.startswith('{"g":')
    async with testing.open_loop():
        conn = await testing.connect(dsn, custom_plans=False)  # as the store's write connections
        try:
            for _ in range(8):  # past the first custom plans, onto the cached one
                plan = await conn.fetchval(
                    "EXPLAIN (ANALYZE, BUFFERS, FORMAT JSON) SELECT eventbus.first_match_tagged($1::jsonb -> 'g')", text
                )
                found = await conn.fetchval("SELECT eventbus.first_match_tagged($1::jsonb -> 'g')", text)
                assert found is None
        finally:
            await conn.close()
    top: dict[str, Any] = (json.loads(plan) if isinstance(plan, str) else plan)[0]["Plan"]
    # Five items, two probes each (its tag and tag 0), a few pages per probe;
    # reading the items' histories would touch hundreds.
    assert top["Shared Hit Blocks"] + top["Shared Read Blocks"] <= 40, top
