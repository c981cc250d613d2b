"""The store's query and condition semantics, as a table of cases.

Every case runs against the same eight stored events, in a database of its own.
"""

from __future__ import annotations

from typing import Any

import pytest

from eventbus import ConcurrencyError, Event, EventQuery, create_filter, open_event_store

STORED: list[tuple[str, dict[str, Any]]] = [
    ("A", {"accountId": "a1", "amount": 10}),  # 1
    ("B", {"accountId": "a1", "amount": 5}),  # 2
    ("A", {"accountId": "a2", "amount": 7, "tags": ["x", "y"]}),  # 3
    ("C", {"accountId": "a1", "nested": {"k": {"z": 1}}}),  # 4
    ("B", {"accountId": "a3", "amount": 1.5}),  # 5
    ("A", {"accountId": "a2", "amount": 7.0, "flag": True}),  # 6
    ("D", {"list": [{"id": 1, "v": "a"}, {"id": 2, "v": "b"}], "name": "Zoë 🚀"}),  # 7
    ("A", {"accountId": "a1", "amount": 10, "flag": False}),  # 8
]

F = create_filter

QUERY_CASES: list[tuple[str, Any, list[int]]] = [
    ("one type", F(["A"]), [1, 3, 6, 8]),
    ("no types means any type", F([]), [1, 2, 3, 4, 5, 6, 7, 8]),
    ("two types", F(["A", "B"]), [1, 2, 3, 5, 6, 8]),
    ("type and predicate", F(["A"], [{"accountId": "a1"}]), [1, 8]),
    ("predicate on any type", F([], [{"accountId": "a1"}]), [1, 2, 4, 8]),
    ("predicates are alternatives", F([], [{"accountId": "a1"}, {"accountId": "a3"}]), [1, 2, 4, 5, 8]),
    ("nested object", F([], [{"nested": {"k": {"z": 1}}}]), [4]),
    ("empty nested object", F([], [{"nested": {}}]), [4]),
    ("array element", F([], [{"tags": ["x"]}]), [3]),
    ("array order does not matter", F([], [{"tags": ["y", "x"]}]), [3]),
    ("a scalar does not match an array", F([], [{"tags": "x"}]), []),
    ("numbers compare by value", F(["A"], [{"amount": 7}]), [3, 6]),
    ("a float predicate matches an int", F(["A"], [{"amount": 10.0}]), [1, 8]),
    ("true", F([], [{"flag": True}]), [6]),
    ("false is not a missing key", F([], [{"flag": False}]), [8]),
    ("a fraction", F([], [{"amount": 1.5}]), [5]),
    ("object inside an array", F([], [{"list": [{"id": 2}]}]), [7]),
    ("unicode", F([], [{"name": "Zoë 🚀"}]), [7]),
    ("unknown type", F(["Z"]), []),
    ("a string is not a number", F([], [{"amount": "10"}]), []),
    ("keys are case-sensitive", F([], [{"AccountId": "a1"}]), []),
    ("empty predicate list means none", F(["B"], []), [2, 5]),
    ("empty predicate matches all", F(["B"], [{}]), [2, 5]),
    ("after", EventQuery([F(["A"])], after=3), [6, 8]),
    ("limit", EventQuery([F([])], limit=2), [1, 2]),
    ("after and limit", EventQuery([F([])], after=2, limit=2), [3, 4]),
    ("filters are alternatives", EventQuery([F(["A"], [{"accountId": "a2"}]), F(["B"])]), [2, 3, 5, 6]),
    ("no filters match nothing", EventQuery([]), []),
    ("after the head", EventQuery([F([])], after=8), []),
]


async def _seed(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        for event_type, payload in STORED:
            await store.append([Event(event_type, payload)])


@pytest.mark.parametrize(("query", "expected"), [c[1:] for c in QUERY_CASES], ids=[c[0] for c in QUERY_CASES])
async def test_query(dsn: str, query: Any, expected: list[int]) -> None:
    await _seed(dsn)
    async with open_event_store(dsn) as store:
        result = await store.query(query)
    assert [r.sequence_number for r in result.events] == expected
    assert result.max_sequence_number == (expected[-1] if expected else 0)


CONDITION_CASES: list[tuple[str, Any, int | None, bool]] = [
    ("nothing after the last match", F(["A"], [{"accountId": "a1"}]), 8, True),
    ("a match after the position read", F(["A"], [{"accountId": "a1"}]), 1, False),
    ("a later position than the last match", F(["A"], [{"accountId": "a1"}]), 100, True),
    ("no event matches at all", F(["Z"]), None, True),
    ("None means no match may exist", F(["A"]), None, False),
    ("the last match is after the position", F(["A"], [{"accountId": "a1"}]), 7, False),
    ("another account's later event does not count", F(["B"], [{"accountId": "a1"}]), 2, True),
    ("an earlier position fails", F(["B"], [{"accountId": "a1"}]), 1, False),
    ("any type, one account", F([], [{"accountId": "a3"}]), 5, True),
    ("any type, any payload, at the head", F([]), 8, True),
    ("any type, any payload, behind the head", F([]), 7, False),
    ("alternatives: one of them moved on", F([], [{"accountId": "a3"}, {"accountId": "a2"}]), 5, False),
]


@pytest.mark.parametrize(
    ("filter", "expected", "succeeds"), [c[1:] for c in CONDITION_CASES], ids=[c[0] for c in CONDITION_CASES]
)
async def test_condition(dsn: str, filter: Any, expected: int | None, succeeds: bool) -> None:
    await _seed(dsn)
    async with open_event_store(dsn) as store:
        probe = [Event("Probe", {"accountId": "a1"})]
        if succeeds:
            records = await store.append(probe, filter, expected)
            assert [r.sequence_number for r in records] == [9]
        else:
            with pytest.raises(ConcurrencyError):
                await store.append(probe, filter, expected)
            assert await store.head() == 8


async def test_own_events_do_not_count_against_the_condition(dsn: str) -> None:
    async with open_event_store(dsn) as store:
        filter = F(["Opened"], [{"id": "x"}])
        records = await store.append([Event("Opened", {"id": "x"}), Event("Opened", {"id": "x"})], filter, None)
        assert [r.sequence_number for r in records] == [1, 2]
        with pytest.raises(ConcurrencyError) as caught:
            await store.append([Event("Opened", {"id": "x"})], filter, None)
        assert caught.value.expected_max_sequence_number == 0
