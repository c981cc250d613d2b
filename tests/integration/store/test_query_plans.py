"""Bounded reads walk the indexes in position order and stop at the limit.

A read of one entity's first events must cost about ``limit`` index steps,
however long the entity's history: the plan PostgreSQL picks (a fresh custom
plan for every read, as the read pool's sessions ask) has the Limit above an
ordered walk of the indexes, no Seq Scan of the events and no Sort, and looks
up no more events than it returns. Also, whatever the shape of a query, it
returns exactly what ``EventQuery.matches`` says, in order.
"""

from __future__ import annotations

import json
import random
from typing import Any

from eventbus import Event, EventFilter, EventQuery, create_filter, open_event_store, testing
from eventbus.testing import query_sql

ACCOUNTS = 30
PER_ACCOUNT = 100


async def _seed_accounts(dsn: str) -> None:
    """3,000 events: account k's events spread evenly over the whole table."""
    async with open_event_store(dsn) as store:
        for round_ in range(PER_ACCOUNT // 10):
            events = [
                Event("Deposited" if i % 2 else "Withdrawn", {"accountId": f"a{k}", "n": round_ * 10 + i})
                for i in range(10)
                for k in range(ACCOUNTS)
            ]
            await store.append(events)
    async with testing.open_loop():
        conn = await testing.connect(dsn)
        try:
            # as autovacuum leaves a table that only grows
            await conn.execute("VACUUM ANALYZE eventbus.events")
            await conn.execute("VACUUM ANALYZE eventbus.event_tags")
        finally:
            await conn.close()


def _nodes(plan: dict[str, Any]) -> list[dict[str, Any]]:
    found = [plan]
    for child in plan.get("Plans", []):
        found += _nodes(child)
    return found


async def _plan(dsn: str, query: EventQuery) -> dict[str, Any]:
    sql, args = query_sql(query)
    async with testing.open_loop():
        conn = await testing.connect(dsn)  # as the read pool: force_custom_plan
        try:
            text = await conn.fetchval("EXPLAIN (ANALYZE, FORMAT JSON) " + sql, *args)
        finally:
            await conn.close()
    plan: dict[str, Any] = (json.loads(text) if isinstance(text, str) else text)[0]["Plan"]
    return plan


def _rows_read(plan: dict[str, Any]) -> int:
    """Rows the scans of the events and their tags read, in all loops
    (those a scan's filter removed too)."""
    return sum(
        round((node["Actual Rows"] + node.get("Rows Removed by Filter", 0)) * node["Actual Loops"])
        for node in _nodes(plan)
        if node.get("Relation Name") in ("events", "event_tags")
    )


def _assert_walks_and_stops(plan: dict[str, Any], limit: int, walks: int) -> None:
    """The limit is on top, nothing scans the events table whole, and the
    walks read at most about ``limit`` rows each (a rejected candidate costs
    a row of the index and one of the table: twice the limit at most here)."""
    assert plan["Node Type"] == "Limit", plan["Node Type"]
    kinds = [node["Node Type"] for node in _nodes(plan)]
    assert "Seq Scan" not in kinds, kinds
    assert "Hash Join" not in kinds and "Merge Join" not in kinds, kinds
    assert _rows_read(plan) <= 4 * walks * limit + walks, (_rows_read(plan), json.dumps(plan, indent=1))


async def test_one_entitys_first_events_cost_the_limit_not_its_history(dsn: str) -> None:
    await _seed_accounts(dsn)
    query = EventQuery([create_filter([], [{"accountId": "a7"}])], limit=10)
    _assert_walks_and_stops(await _plan(dsn, query), 10, walks=2)
    async with open_event_store(dsn) as store:
        result = await store.query(query)
    assert [r.payload["n"] for r in result.events] == list(range(10))


async def test_a_bounded_read_after_a_position_walks_from_there(dsn: str) -> None:
    await _seed_accounts(dsn)
    query = EventQuery([create_filter(["Deposited"], [{"accountId": "a3"}])], after=1500, limit=5)
    _assert_walks_and_stops(await _plan(dsn, query), 5, walks=2)
    async with open_event_store(dsn) as store:
        result = await store.query(query)
    assert len(result.events) == 5
    assert all(r.sequence_number > 1500 and r.event_type == "Deposited" for r in result.events)


async def test_several_predicates_and_filters_merge_in_order(dsn: str) -> None:
    await _seed_accounts(dsn)
    query = EventQuery(
        [
            create_filter(["Deposited"], [{"accountId": "a1"}, {"accountId": "a2"}]),
            create_filter([], [{"accountId": "a3"}]),
            create_filter(["Nothing"]),
        ],
        limit=20,
    )
    _assert_walks_and_stops(await _plan(dsn, query), 20, walks=5)
    async with open_event_store(dsn) as store:
        got = (await store.query(query)).events
        everything = (await store.query(create_filter([]))).events
    expected = [r for r in everything if query.matches(r)][:20]
    assert [r.sequence_number for r in got] == [r.sequence_number for r in expected]


async def test_a_bounded_read_by_types_walks_and_stops(dsn: str) -> None:
    await _seed_accounts(dsn)
    query = EventQuery([create_filter(["Withdrawn", "Deposited"])], after=100, limit=50)
    _assert_walks_and_stops(await _plan(dsn, query), 50, walks=2)


# ---------------------------------------------------------------- what any shape returns

_TYPES = ["A", "B", "C"]
_PREDICATES: list[dict[str, Any]] = [
    {"k": 1},
    {"k": 2},
    {"g": "x"},
    {"g": "y", "k": 1},
    {"list": [3]},
    {},
    {"nested": {"z": True}},
    {"wide": 1},
]


def _payload(rng: random.Random) -> dict[str, Any]:
    payload: dict[str, Any] = {"k": rng.choice([1, 2, 3, 1.0]), "g": rng.choice(["x", "y", "z"])}
    if rng.random() < 0.3:
        payload["list"] = rng.sample([1, 2, 3, 4], 2)
    if rng.random() < 0.2:
        payload["nested"] = {"z": rng.choice([True, False])}
    if rng.random() < 0.05:  # too many leaves to tag one by one: a wide event
        payload.update({f"f{i}": i for i in range(80)}, wide=1)
    return payload


def _filter(rng: random.Random) -> EventFilter:
    types = rng.sample(_TYPES, rng.choice([0, 0, 1, 2]))
    if rng.random() < 0.3:
        return create_filter(types)
    return create_filter(types, rng.sample(_PREDICATES, rng.choice([1, 1, 2, 3])))


async def test_every_query_shape_returns_what_matches_says_in_order(dsn: str) -> None:
    rng = random.Random(1515)
    async with open_event_store(dsn) as store:
        for _ in range(20):
            await store.append([Event(rng.choice(_TYPES), _payload(rng)) for _ in range(20)])
        everything = (await store.query(create_filter([]))).events
        assert len(everything) == 400
        for _ in range(150):
            query = EventQuery(
                [_filter(rng) for _ in range(rng.choice([1, 1, 2, 3]))],
                after=rng.choice([0, 0, 37, 250]),
                limit=rng.choice([None, 1, 7, 60]),
            )
            upto = rng.choice([None, None, 300])
            got = await store.fetch_records(query, upto)
            expected = [r for r in everything if query.matches(r) and (upto is None or r.sequence_number <= upto)]
            expected = expected[: query.limit]
            assert [r.sequence_number for r in got] == [r.sequence_number for r in expected], query


async def test_many_predicates_and_types_still_return_what_matches(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        await store.append([Event(f"T{k % 50}", {"id": k, "g": k % 3}) for k in range(300)])
        everything = (await store.query(create_filter([]))).events
        many_types = create_filter([f"T{k}" for k in range(0, 50, 2)] + [f"U{k}" for k in range(20)])
        many_predicates = create_filter([], [{"id": k} for k in range(0, 300, 7)])
        for query in [
            EventQuery([many_types], limit=40),
            EventQuery([many_predicates], after=20, limit=9),
            EventQuery([many_predicates, many_types, create_filter(["T1"], [{"g": 1}])]),
            EventQuery([many_predicates, many_types], limit=100),
        ]:
            expected = [r.sequence_number for r in everything if query.matches(r)][: query.limit]
            assert [r.sequence_number for r in (await store.query(query)).events] == expected
