"""A batch's conditions, as the store sends them: the condition's text, and
which appends of the batch a later condition depends on.

``dependencies`` indexes only what the batch's conditions look up; it must
find exactly the pairs a check of every earlier event against every later
condition finds.
"""

from __future__ import annotations

import json
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from eventbus import Event, EventFilter, create_filter
from eventbus._store._requests import Request, condition, condition_filters, dependencies, prepare
from eventbus._values import _tags

TYPES = ["Opened", "Deposited"]
KEYS = ["account", "currency"]
VALUES = ["a-1", "a-2", "EUR", 1, 1.0, True]

leaf = st.sampled_from(VALUES)
payloads = st.one_of(
    st.dictionaries(st.sampled_from(KEYS), leaf, max_size=2),
    st.dictionaries(st.sampled_from(KEYS), st.dictionaries(st.sampled_from(KEYS), leaf, max_size=1), max_size=1),
    st.dictionaries(st.sampled_from(KEYS), st.lists(leaf, max_size=2), max_size=1),
    # more leaves than one event is tagged by: stored under the wide tag
    st.just({f"k{n}": n for n in range(_tags.MAX_TAGS + 1)} | {"account": "a-1"}),
)
filters = st.builds(
    create_filter,
    st.lists(st.sampled_from(TYPES), max_size=2, unique=True),
    st.one_of(
        st.none(),
        st.lists(
            # {} has no leaf (so no tag): a filter with it is looked up by type, or scans the batch
            st.one_of(st.dictionaries(st.sampled_from(KEYS), leaf, max_size=1), st.just({"account": {}})),
            min_size=1,
            max_size=2,
        ),
    ),
)
appends = st.tuples(
    st.lists(st.tuples(st.sampled_from(TYPES), payloads), min_size=1, max_size=3),
    st.one_of(st.none(), st.lists(filters, min_size=1, max_size=3)),
)


def _request(events: list[tuple[str, dict[str, Any]]], condition_of: list[EventFilter] | None) -> Request:
    filters = condition_filters(condition_of)
    text = None if filters is None else condition(filters, 0)
    return Request(prepare([Event(t, p) for t, p in events], 1 << 20), text, 0, filters)


def _every_pair(batch: list[Request]) -> tuple[list[int], list[int]]:
    dep_of: list[int] = []
    dep_on: list[int] = []
    for j, later in enumerate(batch, 1):
        for i, earlier in enumerate(batch[: j - 1], 1):
            if later.filters and any(f.matches(e) for f in later.filters for e in earlier.events):
                dep_of.append(j)
                dep_on.append(i)
    return dep_of, dep_on


@settings(max_examples=200, deadline=None)
@given(st.lists(appends, min_size=1, max_size=8))
def test_a_batchs_dependencies_are_exactly_the_earlier_events_each_condition_matches(
    batch: list[tuple[list[tuple[str, dict[str, Any]]], list[EventFilter] | None]],
) -> None:
    requests = [_request(events, condition_of) for events, condition_of in batch]
    assert dependencies(requests) == _every_pair(requests)


def test_a_later_condition_on_an_earlier_events_tag_depends_on_it_and_one_on_another_does_not() -> None:
    first = _request([("Deposited", {"account": "a-1", "amount": 5})], None)
    same = _request([("Deposited", {"account": "a-9"})], [create_filter(TYPES, [{"account": "a-1"}])])
    other = _request([("Deposited", {"account": "a-2"})], [create_filter(TYPES, [{"account": "a-3"}])])
    assert dependencies([first, same, other]) == ([2], [1])


def test_a_wide_event_is_looked_at_by_every_tagged_condition_after_it() -> None:
    wide = _request([("Opened", {f"k{n}": n for n in range(_tags.MAX_TAGS + 1)} | {"account": "a-1"})], None)
    assert wide.events[0].tags == [_tags.WIDE]
    matching = _request([("Opened", {})], [create_filter(TYPES, [{"account": "a-1"}])])
    not_matching = _request([("Opened", {})], [create_filter(TYPES, [{"account": "a-2"}])])
    assert dependencies([wide, not_matching, matching]) == ([3], [1])


@given(st.lists(filters, min_size=1, max_size=4), st.integers(min_value=0, max_value=2**62))
def test_a_conditions_text_is_its_filters_at_the_position(items: list[EventFilter], position: int) -> None:
    text = condition(condition_filters(items), position)
    assert text is not None
    parsed = json.loads(text)
    tagged = all(f.predicate_tags and None not in f.predicate_tags for f in items)
    listed = parsed["g"] if tagged else (parsed if len(items) > 1 else [parsed])
    # (equal filters may share one text: the same types and predicates, in another order)
    assert [_item(item["t"], item["p"], item["a"]) for item in listed] == [
        _item(f.event_types, f.payload_predicates, position) for f in items
    ]


def _item(types: Any, predicates: Any, position: int) -> tuple[list[str], list[str] | None, int]:
    return sorted(types), None if predicates is None else sorted(json.dumps(p) for p in predicates), position
