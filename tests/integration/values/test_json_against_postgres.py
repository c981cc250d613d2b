"""The JSON layer against the real PostgreSQL, on random documents.

Two laws:

* ``_json.contains`` answers as jsonb's ``@>`` does, for the texts that
  ``_json.dumps`` writes of the normalized values;
* a payload is either refused before it reaches the database, or it comes
  back from a query equal to its normalized copy (types included), which is
  also equal to what was given.

Hypothesis runs every example in a Trio run of its own, so the tests share one
database for the module instead of the per-test ``dsn`` fixture; each example
looks only at the events it appended.
"""

from __future__ import annotations

import math
import os
import random
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st

from eventbus import Event, EventQuery, InvalidEvent, create_filter, open_event_store, testing
from eventbus._values import _json

from ...helpers import TEMPLATE, database_dsn, drop_database

MAX_PAYLOAD_BYTES = 64 * 1024  # small, so that the size limit is reached by some examples

SETTINGS = settings(
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)

# ---------------------------------------------------------------- strategies

SPECIAL_STRINGS = [
    "",
    "x",
    "Zoë 🚀",
    "ключ",
    "'; DROP TABLE eventbus.events; --",
    "' OR '1'='1",
    '"',
    "\\",
    "\\u0000",  # the six characters, not NUL
    "$1",
    "\u2028\u2029",
    "\x01\x1f\x7f",
    "\ufeff",
    "\U0010ffff",
    "e\u0301",
    "é",
]

# Valid Unicode without NUL: what jsonb holds. Few distinct keys, so that
# patterns made at random still share keys with documents.
TEXT = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), max_size=8) | st.sampled_from(SPECIAL_STRINGS)
KEYS = st.sampled_from(["a", "b", "id", "é", "🔑", "a b", "'", "\\"]) | TEXT


class LongInt(int):
    """An int that Python will not print, with a repr that says so."""

    def __repr__(self) -> str:
        return f"LongInt(<{self.bit_length()} bits>)"


def power_of_ten(exponent: int) -> int:
    return 10**exponent


SPECIAL_NUMBERS: list[int | float] = [
    0,
    1,
    -1,
    2**53,
    2**53 + 1,
    2**63,
    -(2**63) - 1,
    10**16,
    99999999999999991611392,  # 1e23 exactly
    0.0,
    -0.0,
    1.0,
    -1.0,
    0.1,
    1.5,
    9007199254740992.0,
    9999999999999998.0,  # the largest float below 1e16
    1e16,
    1e23,
    1e300,
    -1e300,
    5e-324,
    2.2250738585072014e-308,
    sys.float_info.max,
]
NUMBERS = st.one_of(
    st.just(4299).map(power_of_ten),  # 4300 digits, the most Python prints
    st.integers(-3, 3),
    st.integers(-3, 3).map(float),  # so that 1 meets 1.0
    st.integers(),
    st.integers(-(10**40), 10**40),
    st.floats(allow_nan=False, allow_infinity=False),
    st.sampled_from(SPECIAL_NUMBERS),
)
SCALARS = st.one_of(st.none(), st.booleans(), NUMBERS, TEXT)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(KEYS, inner, max_size=3),
    max_leaves=10,
)
# Arrays of objects and of arrays, over few values, so that containment must
# search among several containers, as it does for lists of records.
SMALL = st.integers(0, 2) | st.sampled_from([True, None, 1.0, "x"])
ARRAYS_OF_CONTAINERS = st.lists(
    st.dictionaries(st.sampled_from(["id", "v"]), SMALL, max_size=2) | st.lists(SMALL, max_size=3),
    min_size=2,
    max_size=4,
)
OBJECTS = st.dictionaries(KEYS, VALUES | ARRAYS_OF_CONTAINERS, max_size=4)


def lookalike(value: Any, rnd: random.Random) -> Any:
    """A value of another type that Python finds equal: 1 for 1.0 or True, and back."""
    if type(value) is bool:
        return int(value)
    if type(value) is int and value in (0, 1) and rnd.random() < 0.5:
        return bool(value)
    if type(value) is float and value.is_integer() and abs(value) < 2**53:
        return int(value)
    if type(value) is int and abs(value) < 2**53:
        return float(value)
    return value


def part_of(value: Any, rnd: random.Random, spares: list[Any]) -> Any:
    """Mostly a part of ``value`` (so contained), sometimes changed a little.

    Chosen with ``rnd`` (which Hypothesis draws) rather than by drawing from
    strategies at every node: that is many times faster to generate.
    """
    roll = rnd.randrange(20)
    if roll == 0:
        return rnd.choice(spares)  # anything at all
    if type(value) is dict:
        part = {key: part_of(item, rnd, spares) for key, item in value.items() if rnd.random() < 0.75}
        if roll == 1:
            part[rnd.choice(["a", "b", "id", "é"])] = rnd.choice(spares)
        return part
    if type(value) is list:
        part_list = [part_of(rnd.choice(value), rnd, spares) for _ in range(rnd.randrange(4))] if value else []
        if roll == 1:
            part_list.insert(rnd.randrange(len(part_list) + 1), rnd.choice(spares))
        return part_list
    if roll == 1:
        return rnd.choice(spares)
    if roll == 2:
        return [value]
    if roll in (3, 4):
        return lookalike(value, rnd)
    return value


@st.composite
def doc_and_pattern(draw: st.DrawFn) -> tuple[Any, Any]:
    """A document and a pattern that it contains more often than not.

    Most are objects, as payloads and predicates are; one in ten is any value,
    since ``@>`` (and so ``contains``) takes any.
    """
    roll = draw(st.integers(0, 9))
    doc = draw(OBJECTS if roll else VALUES)
    if roll == 1:
        return doc, draw(OBJECTS)
    rnd = draw(st.randoms())
    if roll == 0 and type(doc) is list and doc and rnd.random() < 0.5:
        return doc, rnd.choice(doc)  # at the top, an array contains its scalar elements
    pattern = part_of(doc, rnd, draw(st.lists(VALUES, min_size=1, max_size=3)))
    return doc, pattern if roll == 0 or type(pattern) is dict else {}


def nested(levels: int, leaf: Any = 1) -> Any:
    """``levels`` arrays and objects in turn, around ``leaf``."""
    value = leaf
    for level in range(levels):
        value = [value] if level % 2 else {"k": value}
    return value


class Opaque:
    """An object with no JSON form."""

    def __repr__(self) -> str:
        return "Opaque()"


HOSTILE_SCALARS = st.one_of(
    SCALARS,
    st.floats(),  # NaN, infinities, -0.0, subnormals
    st.sampled_from(
        [
            math.nan,
            math.inf,
            -math.inf,
            "a\x00b",
            "\x00",
            "\ud800",
            "x\udfff",
            "\ud83d\ude80",
            "é" * 20_000,  # 40 000 bytes: within the limit
            "x" * 70_000,  # over it
        ]
    ),
    st.sampled_from([4300, 5000]).map(lambda digits: LongInt(power_of_ten(digits))),
    st.sampled_from([4300, 5000]).map(lambda digits: LongInt(-power_of_ten(digits))),
    st.text(max_size=6),  # any code point but surrogates, NUL included
    st.text(st.characters(categories=["Cs"]), min_size=1, max_size=2),
    st.binary(max_size=3),
    st.sets(st.integers(), max_size=2),
    st.tuples(st.integers()),
    st.decimals(allow_nan=False, places=2),
    st.builds(Opaque),
    st.integers(250, 260).map(nested),  # around MAX_DEPTH
)
HOSTILE_KEYS = st.one_of(
    KEYS, st.integers(-2, 2), st.none(), st.booleans(), st.sampled_from(["\x00", "k\ud800", ("a",)])
)
HOSTILE_VALUES = st.recursive(
    HOSTILE_SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(HOSTILE_KEYS, inner, max_size=3),
    max_leaves=8,
)
HOSTILE_PAYLOADS = st.dictionaries(HOSTILE_KEYS, HOSTILE_VALUES, max_size=4) | st.sampled_from(
    [{"deep": nested(255)}, {"deep": nested(256)}, {"deep": nested(300)}]
)
EVENT_TYPES = st.one_of(
    st.sampled_from(
        ["Deposited", "Zoë 🚀", "'; DROP TABLE eventbus.events; --", '"quoted"', "a\\b", "", "a\x00", "\udc00"]
    ),
    st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=10),
)

# ---------------------------------------------------------------- helpers


@pytest.fixture(scope="module")
def store_dsn(admin_dsn: str) -> Iterator[str]:
    """A database with the eventbus schema, shared by the module's examples."""
    name = f"t_{os.getpid()}_json"

    async def create() -> None:
        async with testing.open_loop():
            await testing.create_database(admin_dsn, name, template=TEMPLATE)

    trio.run(create)
    try:
        yield database_dsn(admin_dsn, name)
    finally:
        trio.run(drop_database, admin_dsn, name)


def same(a: Any, b: Any) -> bool:
    """Equal and of the same types all the way down (-0.0 is not 0.0)."""
    if type(a) is not type(b):
        return False
    if type(a) is dict:
        return a.keys() == b.keys() and all(same(a[key], b[key]) for key in a)
    if type(a) is list:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b, strict=True))
    if type(a) is float:
        return a == b and math.copysign(1.0, a) == math.copysign(1.0, b)
    return bool(a == b)


def storable(event_type: str, payload: Any) -> tuple[bool, Any]:
    """Whether the layer accepts the event, and the payload it would store."""
    if not event_type:
        return False, None
    try:
        _json.normalize(event_type, "event_type")
        normalized, _ = _json.encode(payload, "payload", max_bytes=MAX_PAYLOAD_BYTES)
    except _json.JSONRefused:
        return False, None
    return True, normalized


# ---------------------------------------------------------------- containment


@settings(SETTINGS, max_examples=80)
@example(
    cases=[
        ({"a": -0.0}, {"a": 0}),
        ({"a": 1e16}, {"a": 10**16}),
        ({"a": 1e23}, {"a": 100000000000000000000000}),
        ({"a": 9007199254740992.0}, {"a": 9007199254740993}),
        ({"a": 0.1}, {"a": 0.1}),
        ({"a": 5e-324}, {"a": 0}),
        ({"a": True}, {"a": 1}),
        ({"a": 0}, {"a": False}),
        ({"a": [1, [2]]}, {"a": [[2], 1]}),
        ({"a": [[1, 2]]}, {"a": [1]}),
        ({"a": [1]}, {"a": 1}),
        ({"a": [{}]}, {"a": [[]]}),
        ({"a": [{"x": 1}, {"y": 2}]}, {"a": [{"x": 1, "y": 2}]}),
        ({"a": "é"}, {"a": "e\u0301"}),
        ([1, "x"], "x"),
        ([[1]], 1),
        (1, [1]),
        ({"a": 1}, 1),
        ([{"a": 1}], {"a": 1}),
    ]
)
@given(cases=st.lists(doc_and_pattern(), min_size=1, max_size=25))
async def test_contains_agrees_with_jsonb_containment(admin_dsn: str, cases: list[tuple[Any, Any]]) -> None:
    normalized = [(_json.normalize(doc), _json.normalize(pattern)) for doc, pattern in cases]
    async with testing.open_loop():
        conn = await testing.connect(admin_dsn)
        try:
            answers = await conn.fetchval(
                "SELECT array_agg(d::jsonb @> p::jsonb ORDER BY n)"
                " FROM unnest($1::text[], $2::text[]) WITH ORDINALITY AS t(d, p, n)",
                [_json.dumps(doc) for doc, _ in normalized],
                [_json.dumps(pattern) for _, pattern in normalized],
            )
        finally:
            await conn.close()
    for (doc, pattern), answer in zip(normalized, answers, strict=True):
        assert _json.contains(doc, pattern) is answer, (doc, pattern)


# ---------------------------------------------------------------- round trip

REFUSED: Any = None  # append raises InvalidEvent
AS_GIVEN: Any = "as given"  # stored, and read back, as given

HOSTILE_CASES: list[Any] = [
    # (what, event type, payload, what the record and a query hold)
    ("-0.0 comes back as 0.0", "T", {"z": -0.0}, {"z": 0.0}),
    ("0.1 comes back as 0.1", "T", {"f": 0.1}, {"f": 0.1}),
    ("the least float", "T", {"f": 5e-324}, {"f": 5e-324}),
    ("the least normal float", "T", {"f": 2.2250738585072014e-308}, {"f": 2.2250738585072014e-308}),
    ("the largest float below 1e16", "T", {"f": 9999999999999998.0}, {"f": 9999999999999998.0}),
    ("1e16 comes back as an int", "T", {"f": 1e16}, {"f": 10**16}),
    ("1e300 comes back as its exact int", "T", {"f": -1e300}, {"f": int(-1e300)}),
    ("the largest float", "T", {"f": sys.float_info.max}, {"f": int(sys.float_info.max)}),
    (
        "ints past 64 bits",
        "T",
        {"n": [2**63, -(2**63) - 1, 2**64, 10**40]},
        {"n": [2**63, -(2**63) - 1, 2**64, 10**40]},
    ),
    ("an int of 4300 digits", "T", {"n": 10**4299}, {"n": 10**4299}),
    ("an int of 4301 digits", "T", {"n": LongInt(10**4300)}, REFUSED),
    ("NaN", "T", {"f": math.nan}, REFUSED),
    ("infinity", "T", {"f": [math.inf]}, REFUSED),
    ("minus infinity", "T", {"f": {"g": -math.inf}}, REFUSED),
    ("NUL in a value", "T", {"s": "a\x00b"}, REFUSED),
    ("NUL in a key", "T", {"\x00": 1}, REFUSED),
    ("NUL in the event type", "T\x00", {}, REFUSED),
    ("a lone surrogate in a value", "T", {"s": "\ud800"}, REFUSED),
    ("a lone surrogate in a key", "T", {"k\udfff": 1}, REFUSED),
    ("a lone surrogate in the event type", "\udc00", {}, REFUSED),
    ("an empty event type", "", {}, REFUSED),
    ("an int key", "T", {1: "a"}, REFUSED),
    ("a None key", "T", {"a": {None: "a"}}, REFUSED),
    ("bytes", "T", {"b": b"\x00"}, REFUSED),
    ("a set", "T", {"s": {1, 2}}, REFUSED),
    ("a tuple", "T", {"t": (1,)}, REFUSED),
    ("an object", "T", {"o": Opaque()}, REFUSED),
    ("control characters", "T", {"\x01\n": "\x1f\x7f\t"}, AS_GIVEN),
    ("unicode everywhere", "Zoë 🚀", {"ключ 🔑": ["значение", "\U0010ffff", "\ufeff"]}, AS_GIVEN),
    (
        "quotes and SQL",
        "'; DROP TABLE eventbus.events; --",
        {"'; DELETE FROM eventbus.events; --": "' OR '1'='1", '"': "\\", "$1": "{a}"},
        AS_GIVEN,
    ),
    ("256 levels of nesting", "T", {"d": nested(255)}, AS_GIVEN),
    ("257 levels of nesting", "T", {"d": nested(256)}, REFUSED),
    ("a long string within the size limit", "T", {"s": "é" * 30_000}, AS_GIVEN),
    ("a long string over the size limit", "T", {"s": "x" * 70_000}, REFUSED),
]


@pytest.mark.parametrize(
    ("event_type", "payload", "expected"), [c[1:] for c in HOSTILE_CASES], ids=[c[0] for c in HOSTILE_CASES]
)
async def test_hostile_values(store_dsn: str, event_type: str, payload: Any, expected: Any) -> None:
    accepted = expected is not REFUSED
    if expected is AS_GIVEN:
        expected = payload
    async with open_event_store(store_dsn, max_payload_bytes=MAX_PAYLOAD_BYTES) as store:
        head = await store.head()
        if accepted:
            [record] = await store.append([Event(event_type, payload)])
            assert same(record.payload, expected)  # the record holds what the database returns
        else:
            with pytest.raises(InvalidEvent):
                await store.append([Event(event_type, payload)])
        await store.append([Event("After", {"ok": True})])  # a refusal disturbs nothing
        found = (await store.query(EventQuery([create_filter([])], after=head))).events
    assert [(r.event_type, r.payload) for r in found[:-1]] == ([(event_type, payload)] if accepted else [])
    if accepted:
        assert same(found[0].payload, expected)
    assert (found[-1].event_type, found[-1].payload) == ("After", {"ok": True})


@settings(SETTINGS, max_examples=40)
@given(
    events=st.lists(st.tuples(EVENT_TYPES, HOSTILE_PAYLOADS), min_size=1, max_size=6),
    data=st.data(),
)
async def test_a_payload_is_refused_or_comes_back_as_normalized(
    store_dsn: str, events: list[tuple[str, Any]], data: st.DataObject
) -> None:
    async with open_event_store(store_dsn, max_payload_bytes=MAX_PAYLOAD_BYTES) as store:
        head = await store.head()
        stored: list[tuple[Any, Any]] = []  # (given, normalized), in the order appended
        records = []
        for event_type, payload in events:
            accepted, normalized = storable(event_type, payload)
            if not accepted:
                with pytest.raises(InvalidEvent):
                    await store.append([Event(event_type, payload)])
                continue
            [record] = await store.append([Event(event_type, payload)])
            assert same(record.payload, normalized)
            stored.append((payload, normalized))
            records.append(record)

        # A refused event in a batch refuses the batch, and only that batch.
        if len(stored) < len(events):
            bad_type, bad_payload = next(e for e in events if not storable(*e)[0])
            with pytest.raises(InvalidEvent):
                await store.append([Event("Good", {"ok": True}), Event(bad_type, bad_payload)])
        [last] = await store.append([Event("Good", {"after": "refusals"})])

        found = (await store.query(EventQuery([create_filter([])], after=head))).events
        assert [r.event_id for r in found] == [r.event_id for r in records] + [last.event_id]
        for record, (given_payload, normalized), read in zip(records, stored, found[:-1], strict=True):
            assert read.event_type == record.event_type
            assert same(read.payload, normalized)
            assert read.payload == given_payload

        # The database and EventFilter.matches select the same events.
        for _, normalized in stored[:3]:
            pattern = part_of(normalized, data.draw(st.randoms()), [{}, None, 1, "x"])
            pattern = pattern if type(pattern) is dict else {}
            selected = (await store.query(EventQuery([create_filter([], [pattern])], after=head))).events
            wanted = create_filter([], [pattern])
            assert [r.event_id for r in selected] == [r.event_id for r in found if wanted.matches(r)]


@settings(SETTINGS, max_examples=60)
@example(docs=[{"a": 1e-05}, {"a": 1e-07}, {"a": 2**64}, {"a": -(2**63)}, {"a": 5e-324}, {"a": "\u2028\x7f\x1f"}])
@given(docs=st.lists(OBJECTS, min_size=1, max_size=20))
async def test_the_fast_encoder_and_the_standard_one_write_the_same_jsonb(
    admin_dsn: str, docs: list[dict[str, Any]]
) -> None:
    """orjson (the "fast" extra) writes some numbers otherwise (1e-7 for
    1e-07) and refuses ints past 64 bits, which the standard library then
    writes: PostgreSQL reads every text as the same jsonb, to the digit."""
    normalized = [_json.normalize(doc) for doc in docs]
    fast = [_json._orjson_dumps(doc) for doc in normalized]
    standard = [_json._stdlib_dumps(doc) for doc in normalized]
    async with testing.open_loop():
        conn = await testing.connect(admin_dsn)
        try:
            rows = await conn.fetch(
                "SELECT f::jsonb::text AS f, s::jsonb::text AS s FROM unnest($1::text[], $2::text[]) AS t(f, s)",
                fast,
                standard,
            )
        finally:
            await conn.close()
    assert [row["f"] for row in rows] == [row["s"] for row in rows]
    assert [_json.loads(text) for text in fast] == normalized
