"""Tags are what the store's index holds: the fast paths write exactly the
tags the general walk does, and the values stay those already stored."""

from __future__ import annotations

from typing import Any

from hypothesis import given
from hypothesis import strategies as st

from eventbus._values import _json, _tags

GOLDEN: list[tuple[dict[str, Any], list[int]]] = [
    (
        {"accountId": "acc-000017", "amount": "10.50", "currency": "EUR", "reference": "ref-0000000001"},
        [-8654488980479733618, 4087597077347260322, 5055336144198443255, 9169252966065321389],
    ),
    (
        {"n": 1, "f": 1.0, "b": True, "z": None, "neg": -10, "big": 10**20},
        [
            -7965862446638195732,
            -7767540568231808386,
            -4070019998213249094,
            -1859683193674052905,
            512006930197650834,
            1305242762628158154,
        ],
    ),
    (
        {"a": {"b": ["x", 2.5, {"c": False}]}, "ü": "Zoë 🚀"},
        [-8783135867348527264, -5697552749715472599, 1820974391998711831, 5407120446905294118],
    ),
    ({}, []),
]


def _reference(payload: dict[str, Any]) -> list[int]:
    """The tags as the general walk writes them (the definition)."""
    out = {_tags._tag(path, scalar) for path, scalar in _tags._leaves(payload)}
    return [_tags.WIDE] if len(out) > _tags.MAX_TAGS else sorted(out)


def test_the_tags_of_known_payloads_are_those_stored_already() -> None:
    for payload, tags in GOLDEN:
        assert _tags.event_tags(payload) == tags
        assert _tags.event_tags(payload) == tags  # remembered, the same


def test_one_one_point_zero_and_true_under_one_key_are_different_leaves_even_remembered() -> None:
    first = [_tags.event_tags({"k": value}) for value in (1, 1.0, True, "1")]
    again = [_tags.event_tags({"k": value}) for value in ("1", True, 1.0, 1)][::-1]
    assert first == again
    assert first[0] == first[1]  # numbers by value: 1 and 1.0 agree, as in jsonb
    assert len({tuple(t) for t in first}) == 3


SCALARS = st.one_of(
    st.none(), st.booleans(), st.integers(), st.floats(allow_nan=False, allow_infinity=False), st.text(max_size=8)
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=4), inner, max_size=4),
    max_leaves=20,
)


@given(st.dictionaries(st.text(max_size=6), JSON, max_size=80))
def test_the_fast_path_writes_what_the_general_walk_writes(payload: dict[str, Any]) -> None:
    try:
        normalized = _json.normalize_object(payload, "payload")
    except _json.JSONRefused:
        return
    assert _tags.event_tags(normalized) == _reference(normalized)
    assert _tags.event_tags(normalized) == _reference(normalized)  # once remembered
