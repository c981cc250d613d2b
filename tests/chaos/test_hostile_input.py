"""Hostile filters and names: predicates and event types made to break the
query, the append condition and the subscription, and event types as the keys
of projection handlers.

Each case is refused with ``InvalidFilter`` before anything reaches the
database, or it selects in PostgreSQL exactly what ``EventFilter.matches``
selects in Python; none reaches the database as a raw error, and none
disturbs the appends after it. (Hostile payloads are in
``tests/integration/values/test_json_against_postgres.py``; secrets and the embedded
server's privacy in ``tests/integration/db/test_security.py``; projection names
in ``tests/integration/projections/test_projections.py``.)
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from typing import Any

import pytest
import trio
from hypothesis import HealthCheck, event, given, settings
from hypothesis import strategies as st

from eventbus import (
    ConcurrencyError,
    Event,
    EventBusError,
    EventRecord,
    InvalidFilter,
    Projection,
    ProjectionError,
    Transaction,
    create_filter,
    open_bus,
    open_event_store,
    testing,
)
from eventbus._values._json import MAX_EVENT_TYPE_LENGTH

from ..helpers import TEMPLATE, database_dsn, drop_database
from ..integration.values.test_json_against_postgres import HOSTILE_KEYS, HOSTILE_VALUES, nested

CAUGHT_UP = 30.0  # seconds: a bound, never a wait

SQL = "'; DROP TABLE eventbus.events; --"
TYPES = ["Hostile", "Hostile 'quoted' \"type\"", SQL, "Ordinary"]
STORED: list[tuple[str, dict[str, Any]]] = [
    ("Hostile", {"k": SQL, "n": 1}),
    ("Hostile", {"k": "' OR '1'='1", "n": 2.5, "nested": {"a": [1, {"b": "é"}]}}),
    ("Hostile", {"🔑": "ключ", "$1": "{a}", '"': "\\", "\x01\n": "\x1f"}),
    ("Hostile", {"n": 10**40, "deep": nested(60)}),
    ("Hostile 'quoted' \"type\"", {"k": "x", "list": [SQL, {"id": 1}]}),
    (SQL, {"k": SQL, "n": 1}),
    ("Ordinary", {"k": SQL, "n": 1.0}),
    ("Ordinary", {}),
]
MATCHING_PREDICATES: list[dict[str, Any]] = [
    {},
    {"k": SQL},
    {"n": 1},
    {"nested": {"a": [{"b": "é"}]}},
    {"🔑": "ключ", "$1": "{a}"},
    {"\x01\n": "\x1f"},
    {"n": 10**40},
    {"deep": nested(60)},
    {"list": [{"id": 1}]},
    {"list": [SQL]},
    {"k": "' OR '1'='1"},
]
PREDICATES = st.one_of(
    st.sampled_from(MATCHING_PREDICATES),
    st.dictionaries(HOSTILE_KEYS, HOSTILE_VALUES, max_size=3),
    st.sampled_from([{"k": "x" * 70_000}, {"k": "\x00"}, {"k\ud800": 1}, {1: SQL}, {"k": nested(300)}]),
)

SETTINGS = settings(
    deadline=None,
    max_examples=60,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.large_base_example],
)


@pytest.fixture(scope="module")
def hostile_dsn(admin_dsn: str) -> Iterator[str]:
    """A database holding ``STORED``, shared by the module's examples."""
    name = f"t_{os.getpid()}_hostile"
    dsn = database_dsn(admin_dsn, name)

    async def create() -> None:
        async with testing.open_loop():
            await testing.create_database(admin_dsn, name, template=TEMPLATE)
        async with open_event_store(dsn) as store:
            await store.append([Event(event_type, payload) for event_type, payload in STORED])

    trio.run(create)
    try:
        yield dsn
    finally:
        trio.run(drop_database, admin_dsn, name)


def ids(records: list[EventRecord]) -> list[Any]:
    return [record.event_id for record in records]


# ------------------------------------------------------------------ predicates


@SETTINGS
@given(predicate=PREDICATES, types=st.lists(st.sampled_from(TYPES), max_size=3))
async def test_a_hostile_predicate_is_refused_or_selects_what_matches_selects_in_queries_and_conditions(
    hostile_dsn: str, predicate: Any, types: list[str]
) -> None:
    try:
        filter = create_filter(types, [predicate])
    except InvalidFilter:
        event("refused")
        return  # refused before anything reached the database
    async with open_event_store(hostile_dsn) as store:
        everything = (await store.query(create_filter([]))).events
        found = await store.query(filter)
        assert ids(found.events) == [record.event_id for record in everything if filter.matches(record)]
        event("accepted, some match" if found.events else "accepted, none match")

        # As an append's condition: nothing matching after what was read, so it goes through ...
        [probe] = await store.append([Event("Probe", {"after": found.max_sequence_number})], filter,
                                     found.max_sequence_number)  # fmt: skip
        # ... and a read that missed the last match is refused, the store unchanged.
        if found.events:
            with pytest.raises(ConcurrencyError):
                await store.append([Event("Probe", {"refused": True})], filter, found.max_sequence_number - 1)
        assert await store.head() == probe.sequence_number


@pytest.mark.parametrize("predicate", MATCHING_PREDICATES[1:], ids=repr)
async def test_a_subscription_with_a_hostile_predicate_gets_the_same_events_from_the_store_and_live(
    hostile_dsn: str, predicate: dict[str, Any]
) -> None:
    filter = create_filter(TYPES, [predicate])
    async with open_bus(hostile_dsn) as bus:
        stored = [record for record in (await bus.store.query(create_filter([]))).events if filter.matches(record)]
        async with bus.subscribe(filter, after=0) as sub:
            [live] = await bus.store.append([Event(TYPES[0], {**predicate, "live": True})])
            received: list[EventRecord] = []
            with trio.fail_after(CAUGHT_UP):
                async for batch in sub:
                    received += batch
                    if received[-1].sequence_number >= live.sequence_number:
                        break
    assert ids(received) == [*ids(stored), live.event_id]


@pytest.mark.parametrize(
    "event_type",
    ["T\x00", "\x00", "\udc00", "type \ud800", "", 1, None, b"bytes"],
    ids=["NUL inside", "NUL", "lone surrogate", "surrogate inside", "empty", "int", "None", "bytes"],
)
def test_an_event_type_jsonb_cannot_hold_is_refused_by_every_filter(event_type: Any) -> None:
    with pytest.raises(InvalidFilter) as caught:
        create_filter(["Ordinary", event_type])
    assert isinstance(caught.value, EventBusError)


# ------------------------------------------------------------------ projection handler keys

HOSTILE_HANDLER_KEYS = [
    SQL,
    "Robert'); DROP TABLE projection_keys.seen;--",
    'quote " and backslash \\',
    "$1 $$ dollar $$",
    "ünïcødé 🚀 тип",
    "\u2028\u2029 line separators",
    "e\u0301 combining",
    "x" * MAX_EVENT_TYPE_LENGTH,
]


async def test_hostile_event_types_as_handler_keys_reach_exactly_their_own_handlers(hostile_dsn: str) -> None:
    def recorder(key: str) -> Any:
        async def handle(tx: Transaction, record: EventRecord) -> None:
            await tx.execute("INSERT INTO seen (position, handler) VALUES ($1, $2)", record.sequence_number, key)

        return handle

    async def setup(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS seen (position bigint PRIMARY KEY, handler text NOT NULL)")

    projection = Projection("keys", {key: recorder(key) for key in HOSTILE_HANDLER_KEYS}, setup)
    async with open_bus(hostile_dsn) as bus:
        head = await bus.store.head()
        await bus.projections.start(projection)
        records = await bus.store.append(
            [Event(key, {"k": key}) for key in HOSTILE_HANDLER_KEYS] + [Event("Decoy", {"k": SQL}), Event(SQL[:-1], {})]
        )
        await bus.projections.wait_until_caught_up("keys", timeout=CAUGHT_UP)
        async with bus.projections.reader("keys") as tx:
            rows = await tx.fetch("SELECT position, handler FROM seen WHERE position > $1 ORDER BY position", head)
        assert await bus.store.head() == records[-1].sequence_number
    assert [tuple(row) for row in rows] == [
        (r.sequence_number, r.event_type) for r in records[: len(HOSTILE_HANDLER_KEYS)]
    ]


@pytest.mark.parametrize("event_type", ["T\x00", "\udc00"], ids=["NUL", "lone surrogate"])
def test_a_handler_key_no_filter_can_hold_is_refused_at_definition(event_type: str) -> None:
    async def handle(tx: Transaction, record: EventRecord) -> None:
        pass

    with pytest.raises(ProjectionError, match="is not a valid event type"):
        Projection("unholdable", {event_type: handle, "Ordinary": handle})
