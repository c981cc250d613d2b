"""Projections in one process: poison events, restarts, rebuilds, definitions, listeners.

The read model is the accounts one of ``_projection_worker``; every final
model is compared with a replay from scratch of the stored events.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Callable
from typing import Any

import pytest
import trio

from eventbus import (
    Bus,
    Event,
    EventBusError,
    EventRecord,
    NotCaughtUp,
    Projection,
    ProjectionError,
    ProjectionStatus,
    RestartPolicy,
    Transaction,
    create_filter,
    create_projection_config,
    open_bus,
    start_projection_listener,
)

from .._projection_worker import (
    DEPOSITED,
    OPENED,
    TYPES,
    Model,
    account_events,
    accounts_projection,
    apply_event,
    apply_events,
    create_tables,
    read_model,
    replay,
)

CAUGHT_UP = 30.0  # seconds: a bound, never a wait
WRITE_PACE = 0.02  # seconds between the live appends during a rebuild: about 100 events/s
SAMPLE_INTERVAL = 0.002  # seconds between looks at a status, which has no change notification
STAYS_FAILED = 0.5  # seconds: many restart delays of the policies below


async def stored(bus: Bus) -> list[EventRecord]:
    return (await bus.store.query(create_filter(list(TYPES)))).events


async def model_of(bus: Bus, name: str) -> Model:
    async with bus.projections.reader(name) as tx:
        return await read_model(tx)


async def append_accounts(bus: Bus, count: int, *, seed: int, size: int = 100) -> int:
    events = list(account_events(count, seed=seed))
    for start in range(0, len(events), size):
        await bus.store.append(events[start : start + size])
    return await bus.store.head()


class Poisoned:
    """The accounts handler, broken for events whose payload says ``poison``
    until ``fixed`` is set."""

    def __init__(self) -> None:
        self.fixed = False
        self.calls_on_poison = 0

    async def __call__(self, tx: Transaction, record: EventRecord) -> None:
        if record.payload.get("poison") and not self.fixed:
            self.calls_on_poison += 1
            raise ValueError(f"cannot apply event {record.sequence_number}")
        await apply_event(tx, record)


def poisoned_projection(handler: Poisoned, **options: Any) -> Projection:
    return Projection("ledger", dict.fromkeys(TYPES, handler), create_tables, batch_size=50, **options)


async def append_with_one_poison(bus: Bus) -> EventRecord:
    """300 account events; the 151st is a deposit marked ``poison``. Returns that one."""
    await append_accounts(bus, 150, seed=5)
    account = (await stored(bus))[0].payload["account"]
    [poison] = await bus.store.append([Event(DEPOSITED, {"account": account, "amount": 7, "poison": True})])
    await append_accounts(bus, 149, seed=6)
    return poison


def poison_message(poison: EventRecord) -> str:
    """What a projection says when its handler fails on ``poison``."""
    position = poison.sequence_number
    return (
        f"projection ledger: handler for {DEPOSITED} at position {position} "
        f"raised ValueError: cannot apply event {position}"
    )


async def record_states(bus: Bus, name: str, states: list[str], until: str) -> None:
    """Append each new state of ``name`` to ``states`` until it is ``until``."""
    with trio.fail_after(CAUGHT_UP):
        while not states or states[-1] != until:
            state = bus.projections.status()[name].state
            if not states or states[-1] != state:
                states.append(state)
            await trio.sleep(SAMPLE_INTERVAL)


# ---------------------------------------------------------------- a handler that fails


async def test_a_failing_handler_with_retry_restarts_then_fails_visibly_and_others_carry_on(dsn: str) -> None:
    handler = Poisoned()
    async with open_bus(dsn) as bus:
        poison = await append_with_one_poison(bus)
        policy = RestartPolicy(max_restarts=2, initial=0.05, maximum=0.1)
        await bus.projections.start(poisoned_projection(handler, on_error="retry", restart=policy))
        await bus.projections.start(accounts_projection("audit"))
        states: list[str] = []
        async with trio.open_nursery() as nursery:
            nursery.start_soon(record_states, bus, "ledger", states, "failed")
            with pytest.raises(
                ProjectionError, match=re.escape(f"projection 'ledger' failed: {poison_message(poison)}")
            ):
                await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        await bus.projections.wait_until_caught_up("audit", timeout=CAUGHT_UP)
        failed = bus.projections.status()["ledger"]
        audit = bus.projections.status()["audit"]
        records = await stored(bus)
        ledger_model = await model_of(bus, "ledger")
        audit_model = await model_of(bus, "audit")

        # Fixed: restart lets it try again, and it goes on from its checkpoint.
        handler.fixed = True
        bus.projections.restart("ledger")
        await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        fixed = bus.projections.status()["ledger"]
        fixed_model = await model_of(bus, "ledger")

    assert "restarting" in states
    assert states.index("restarting") < states.index("failed") == len(states) - 1
    assert handler.calls_on_poison == 3  # the first attempt and two restarts
    message = poison_message(poison)
    assert (failed.state, failed.restarts, failed.last_error, failed.leader) == ("failed", 2, message, False)
    # What it applied before the poison's batch stays, and nothing of that batch.
    assert failed.checkpoint < poison.sequence_number
    assert ledger_model == replay(records[: failed.checkpoint])
    # The other projection, started alongside, never noticed.
    assert audit == ProjectionStatus("live", len(records), 0, 0, None, 0, True)
    assert audit_model == replay(records)
    assert (fixed.state, fixed.checkpoint, fixed.lag) == ("live", len(records), 0)
    assert fixed_model == replay(records)


async def test_a_failing_handler_with_skip_dead_letters_the_event_and_applies_the_rest(dsn: str) -> None:
    handler = Poisoned()
    async with open_bus(dsn) as bus:
        poison = await append_with_one_poison(bus)
        await bus.projections.start(poisoned_projection(handler, on_error="skip"))
        await bus.projections.start(accounts_projection("audit"))
        await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        await bus.projections.wait_until_caught_up("audit", timeout=CAUGHT_UP)
        ledger = bus.projections.status()["ledger"]
        records = await stored(bus)
        ledger_model = await model_of(bus, "ledger")
        audit_model = await model_of(bus, "audit")
        dead = await bus.store.pool.fetch(
            "SELECT projection, sequence_number, event_id, event_type, payload, error FROM eventbus.dead_letters"
        )

    message = poison_message(poison)
    assert [tuple(row) for row in dead] == [
        ("ledger", poison.sequence_number, poison.event_id, DEPOSITED, dict(poison.payload), message)
    ]
    assert handler.calls_on_poison == 1
    assert ledger == ProjectionStatus("live", len(records), 0, 0, None, 1, True)
    assert ledger_model == replay([r for r in records if r.sequence_number != poison.sequence_number])
    assert audit_model == replay(records)


async def test_a_failing_batch_handler_with_skip_dead_letters_only_the_event_it_fails_on(dsn: str) -> None:
    async def apply_unless_poisoned(tx: Transaction, records: list[EventRecord]) -> None:
        if any(r.payload.get("poison") for r in records):
            raise ValueError("poison in the batch")
        await apply_events(tx, records)

    projection = Projection(
        "ledger", {}, create_tables, 50, "skip", batch_handler=apply_unless_poisoned, event_types=TYPES
    )
    async with open_bus(dsn) as bus:
        poison = await append_with_one_poison(bus)
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        records = await stored(bus)
        model = await model_of(bus, "ledger")
        await bus.projections.rebuild("ledger")  # the copy meets the same poison, one event at a time
        rebuilt = await model_of(bus, "ledger")
        dead = await bus.store.pool.fetch("SELECT projection, sequence_number, error FROM eventbus.dead_letters")
        status = bus.projections.status()["ledger"]

    assert rebuilt == model
    assert [tuple(row) for row in dead] == [
        (
            "ledger",
            poison.sequence_number,
            f"projection ledger: handler for {DEPOSITED} at position {poison.sequence_number} "
            "raised ValueError: poison in the batch",
        )
    ]
    assert (status.state, status.checkpoint, status.dead_letters) == ("live", len(records), 1)
    assert model == replay([r for r in records if r.sequence_number != poison.sequence_number])


class BreaksAfterThePoison:
    """An event handler that fails on the poison event, and a batch handler
    that from then on fails on batches of several events after it: the batch
    handler fails on what is left of a batch once part of it is committed."""

    def __init__(self) -> None:
        self.poison_at: int | None = None

    async def on_event(self, tx: Transaction, record: EventRecord) -> None:
        if record.payload.get("poison"):
            self.poison_at = record.sequence_number
            raise ValueError("poison")

    async def on_batch(self, tx: Transaction, records: list[EventRecord]) -> None:
        if self.poison_at is not None and len(records) > 1 and records[0].sequence_number > self.poison_at:
            raise ValueError("several events after the poison")
        await apply_events(tx, records)


async def test_a_batch_handler_failing_after_a_skip_goes_on_from_there_one_event_at_a_time(dsn: str) -> None:
    handler = BreaksAfterThePoison()
    projection = Projection("ledger", {DEPOSITED: handler.on_event}, create_tables, 50, "skip",
                            batch_handler=handler.on_batch, event_types=TYPES)  # fmt: skip
    async with open_bus(dsn) as bus:
        poison = await append_with_one_poison(bus)
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        records = await stored(bus)
        model = await model_of(bus, "ledger")
        dead = await bus.store.pool.fetch("SELECT sequence_number FROM eventbus.dead_letters")
        status = bus.projections.status()["ledger"]

    assert handler.poison_at == poison.sequence_number
    assert [row["sequence_number"] for row in dead] == [poison.sequence_number]
    assert (status.state, status.checkpoint, status.restarts) == ("live", len(records), 0)
    assert model == replay([r for r in records if r.sequence_number != poison.sequence_number])


async def test_waiting_for_a_projection_that_does_not_catch_up_in_time_raises_not_caught_up(dsn: str) -> None:
    let_go = trio.Event()

    async def held(tx: Transaction, record: EventRecord) -> None:
        await let_go.wait()

    async with open_bus(dsn) as bus:
        await bus.store.append([Event(DEPOSITED, {"account": "a", "amount": 1})])
        await bus.projections.start(Projection("held", {DEPOSITED: held}))
        with pytest.raises(NotCaughtUp, match=re.escape("'held' is not at position 1 after 0.05 s")) as late:
            await bus.projections.wait_until_caught_up("held", timeout=0.05)
        assert isinstance(late.value, TimeoutError) and late.value.position == 1  # (as before: a TimeoutError)
        for mistyped in (-1, float("nan"), "5", True):
            with pytest.raises(ProjectionError, match="timeout must be None or a number of seconds >= 0"):
                await bus.projections.wait_until_caught_up("held", timeout=mistyped)  # type: ignore[arg-type]
        let_go.set()
        await bus.projections.wait_until_caught_up("held", timeout=CAUGHT_UP)


async def test_restart_is_seen_at_once_so_waiting_right_after_it_does_not_report_the_old_failure(dsn: str) -> None:
    handler = Poisoned()
    policy = RestartPolicy(max_restarts=0, initial=0.01, maximum=0.01)
    async with open_bus(dsn) as bus:
        await append_with_one_poison(bus)
        await bus.projections.start(poisoned_projection(handler, restart=policy))
        with pytest.raises(ProjectionError, match="failed"):
            await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        handler.fixed = True
        bus.projections.restart("ledger")
        state = bus.projections.status()["ledger"].state
        await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        records = await stored(bus)
        model = await model_of(bus, "ledger")

    assert state == "restarting"
    assert model == replay(records)


async def test_restart_of_a_projection_that_has_not_failed_changes_nothing(dsn: str) -> None:
    handler = Poisoned()
    policy = RestartPolicy(max_restarts=1, initial=0.01, maximum=0.01)
    async with open_bus(dsn) as bus:
        await append_accounts(bus, 100, seed=4)
        await bus.projections.start(poisoned_projection(handler, restart=policy))
        await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        bus.projections.restart("ledger")
        before = bus.projections.status()["ledger"]
        # A later failure still ends in "failed", and stays there.
        await append_with_one_poison(bus)
        with pytest.raises(ProjectionError, match="failed"):
            await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        # Nothing to await here: what is checked is that nothing happens meanwhile.
        await trio.sleep(STAYS_FAILED)
        after = bus.projections.status()["ledger"]

    assert (before.state, before.restarts) == ("live", 0)
    assert (after.state, after.restarts) == ("failed", 1)
    assert handler.calls_on_poison == 2


async def test_a_setup_that_raises_fails_its_projection_and_not_the_bus(dsn: str) -> None:
    async def broken_setup(tx: Transaction) -> None:
        raise RuntimeError("no tables today")

    policy = RestartPolicy(max_restarts=1, initial=0.01, maximum=0.01)
    async with open_bus(dsn) as bus:
        await append_accounts(bus, 100, seed=4)
        await bus.projections.start(
            Projection("ledger", dict.fromkeys(TYPES, apply_event), broken_setup, restart=policy)
        )
        await bus.projections.start(accounts_projection("audit"))
        with pytest.raises(
            ProjectionError,
            match=re.escape(
                "projection 'ledger' failed: projection ledger: setup raised RuntimeError: no tables today"
            ),
        ):
            await bus.projections.wait_until_caught_up("ledger", timeout=CAUGHT_UP)
        await bus.projections.wait_until_caught_up("audit", timeout=CAUGHT_UP)
        ledger = bus.projections.status()["ledger"]
        audit_model = await model_of(bus, "audit")
        records = await stored(bus)

    assert (ledger.state, ledger.restarts, ledger.checkpoint) == ("failed", 1, 0)
    assert audit_model == replay(records)


# ---------------------------------------------------------------- stop and start


async def test_a_projection_stopped_and_started_again_goes_on_from_its_checkpoint(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await append_accounts(bus, 300, seed=7)
        await bus.projections.start(accounts_projection())
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        await bus.projections.stop("accounts")
        assert "accounts" not in bus.projections.status()
        head = await append_accounts(bus, 300, seed=8)
        await bus.projections.start(accounts_projection())
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        model = await model_of(bus, "accounts")
        records = await stored(bus)

    assert model == replay(records)
    assert model.tally == head == 600


# ---------------------------------------------------------------- rebuild


async def test_a_rebuild_under_live_writes_never_shows_readers_an_empty_or_partial_model(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await append_accounts(bus, 3000, seed=9, size=500)
        await bus.projections.start(accounts_projection(batch_size=100))
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        # A row no event explains: only a rebuild from the events removes it.
        async with bus.store.pool.acquire() as conn:
            await conn.execute("INSERT INTO projection_accounts.accounts VALUES ('stray', 0, 0)")
        before = await model_of(bus, "accounts")
        assert before.accounts["stray"] == (0, 0)
        opened = [r.payload["account"] for r in await stored(bus) if r.event_type == OPENED]

        progress: list[tuple[int, int]] = []
        seen: list[tuple[int, int]] = []  # (tally, sum of per-account events), one snapshot each
        rebuilt = trio.Event()

        async def write() -> None:
            for number in range(10_000):
                if rebuilt.is_set():
                    return
                account = opened[number % len(opened)]
                await bus.store.append([Event(DEPOSITED, {"account": account, "amount": k}) for k in (1, 2)])
                await trio.sleep(WRITE_PACE)
            raise AssertionError("the rebuild did not end within the writes")

        async def read() -> None:
            for _ in range(1_000_000):
                if rebuilt.is_set():
                    return
                async with bus.projections.reader("accounts") as tx:
                    row = await tx.fetchrow(
                        "SELECT (SELECT events FROM tallies WHERE name = 'accounts') AS tally,"
                        " (SELECT sum(events) FROM accounts) AS events"
                    )
                assert row is not None
                seen.append((row["tally"], row["events"]))
            raise AssertionError("the rebuild did not end within the reads")

        async with trio.open_nursery() as nursery:
            nursery.start_soon(write)
            nursery.start_soon(read)
            with trio.fail_after(60):
                await bus.projections.rebuild("accounts", progress=lambda done, total: progress.append((done, total)))
            rebuilt.set()

        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        after = await model_of(bus, "accounts")
        records = await stored(bus)
        status = bus.projections.status()["accounts"]

    # The reader saw a whole model every time, and never one older than the last.
    assert len(seen) >= 10
    assert all(tally == events for tally, events in seen)
    tallies = [tally for tally, _ in seen]
    assert tallies[0] >= before.tally == 3000
    assert tallies == sorted(tallies)
    # Progress in positions, never backwards, ending at the total.
    assert len(progress) >= 2
    assert [done for done, _ in progress] == sorted(done for done, _ in progress)
    assert progress[-1][0] >= progress[-1][1] >= 3000
    assert after == replay(records)
    assert "stray" not in after.accounts
    assert (status.state, status.checkpoint, status.lag) == ("live", len(records), 0)


async def test_a_rebuild_whose_projection_is_stopped_fails_and_leaves_no_shadow(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await append_accounts(bus, 3000, seed=13, size=500)
        await bus.projections.start(accounts_projection(batch_size=100))
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        copying = trio.Event()
        async with trio.open_nursery() as nursery:

            async def stop_once_copying() -> None:
                await copying.wait()
                await bus.projections.stop("accounts")

            nursery.start_soon(stop_once_copying)
            with trio.fail_after(CAUGHT_UP), pytest.raises(ProjectionError, match=r"no longer leads|stopped"):
                await bus.projections.rebuild("accounts", progress=lambda done, total: copying.set())
        async with bus.store.pool.acquire() as conn:
            schemas = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'projection_accounts%'")

    assert [row["nspname"] for row in schemas] == ["projection_accounts"]


async def start_with_a_stray_row(bus: Bus) -> None:
    """The accounts projection, caught up on 300 events, with a row no event
    explains: only a rebuild (a swap) removes it."""
    await append_accounts(bus, 300, seed=11)
    await bus.projections.start(accounts_projection())
    await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
    async with bus.store.pool.acquire() as conn:
        await conn.execute("INSERT INTO projection_accounts.accounts VALUES ('stray', 0, 0)")


async def a_lock_on_the_read_model_is_awaited(bus: Bus) -> None:
    """Return once a session waits for a lock on a table of the accounts read
    model (the swap, blocked by a reader). PostgreSQL tells no one, so look."""
    with trio.fail_after(CAUGHT_UP):
        while True:
            async with bus.store.pool.acquire() as conn:
                waiting = await conn.fetchval(
                    "SELECT count(*) FROM pg_locks l JOIN pg_class c ON c.oid = l.relation"
                    " JOIN pg_namespace n ON n.oid = c.relnamespace"
                    " WHERE NOT l.granted AND n.nspname = 'projection_accounts'"
                )
            if waiting:
                return
            await trio.sleep(SAMPLE_INTERVAL)


@pytest.mark.parametrize("tables", [("tallies", "accounts"), ("accounts", "tallies")])
async def test_a_reader_touching_the_tables_in_any_order_during_a_swap_does_not_deadlock(
    dsn: str, tables: tuple[str, str]
) -> None:
    first, second = tables
    async with open_bus(dsn) as bus:
        await start_with_a_stray_row(bus)
        async with trio.open_nursery() as nursery, bus.projections.reader("accounts") as tx:
            counts = [await tx.fetchval(f"SELECT count(*) FROM {first}")]
            nursery.start_soon(bus.projections.rebuild, "accounts")
            await a_lock_on_the_read_model_is_awaited(bus)  # the swap waits for this reader
            counts.append(await tx.fetchval(f"SELECT count(*) FROM {second}"))
        after = await model_of(bus, "accounts")
        records = await stored(bus)

    assert all(count >= 1 for count in counts)
    assert after == replay(records)  # swapped: the stray row is gone


class GaveWay(logging.Handler):
    """Sets ``event`` when a swap logs that it gave way."""

    def __init__(self) -> None:
        super().__init__()
        self.event = trio.Event()
        self.count = 0

    def emit(self, record: logging.LogRecord) -> None:
        if "gave way" in record.getMessage():
            self.count += 1
            self.event.set()


async def test_a_swap_gives_way_to_a_long_reader_and_swaps_once_it_is_done(
    dsn: str, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    monkeypatch.setattr("eventbus._projections._swap.SWAP_LOCK_TIMEOUT", 0.05)
    caplog.set_level(logging.INFO, logger="eventbus.projections")
    gave_way = GaveWay()
    logging.getLogger("eventbus.projections").addHandler(gave_way)
    try:
        async with open_bus(dsn) as bus:
            await start_with_a_stray_row(bus)
            async with trio.open_nursery() as nursery, bus.projections.reader("accounts") as tx:
                await tx.fetchval("SELECT count(*) FROM tallies")
                nursery.start_soon(bus.projections.rebuild, "accounts")
                await gave_way.event.wait()  # a new reader waits one lock timeout at most
                async with bus.projections.reader("accounts") as other:
                    assert await other.fetchval("SELECT count(*) FROM accounts WHERE id = 'stray'") == 1
            after = await model_of(bus, "accounts")
            records = await stored(bus)
    finally:
        logging.getLogger("eventbus.projections").removeHandler(gave_way)

    assert gave_way.count >= 1
    assert after == replay(records)


async def test_a_swap_that_never_gets_its_locks_fails_the_rebuild_and_the_live_model_goes_on(
    dsn: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr("eventbus._projections._swap.SWAP_LOCK_TIMEOUT", 0.02)
    monkeypatch.setattr("eventbus._projections._swap.SWAP_ATTEMPTS", 3)
    async with open_bus(dsn) as bus:
        await start_with_a_stray_row(bus)
        async with bus.projections.reader("accounts") as tx:
            await tx.fetchval("SELECT count(*) FROM accounts")
            with pytest.raises(ProjectionError, match=r"did not swap: .*lock timeout"):
                await bus.projections.rebuild("accounts")
        head = await append_accounts(bus, 100, seed=12)
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        after = await model_of(bus, "accounts")
        records = await stored(bus)
        status = bus.projections.status()["accounts"]
        async with bus.store.pool.acquire() as conn:
            schemas = await conn.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE 'projection_accounts%'")

    assert after.accounts.pop("stray") == (0, 0)  # the old model, still serving
    assert after == replay(records)
    assert (status.state, status.checkpoint) == ("live", head)
    assert [row["nspname"] for row in schemas] == ["projection_accounts"]  # the shadow is gone


# ---------------------------------------------------------------- definitions


async def on_event(tx: Transaction, record: EventRecord) -> None:
    pass


def not_async(tx: Transaction, record: EventRecord) -> None:
    pass


async def on_batch(tx: Transaction, records: list[EventRecord]) -> None:
    pass


async def on_record(record: EventRecord) -> None:
    pass


BAD_DEFINITIONS: list[tuple[str, Callable[[], object], str]] = [
    ("unknown error policy", lambda: Projection("p", {"A": on_event}, on_error="ignore"), "on_error"),
    ("handler not async", lambda: Projection("p", {"A": not_async}), "must be an async function"),
    ("setup not async", lambda: Projection("p", {"A": on_event}, setup=not_async), "setup must be an async"),
    ("no handlers", lambda: Projection("p", {}), "has no handlers"),
    ("handlers not a mapping", lambda: Projection("p", [on_event]), "handlers must be a mapping"),
    ("empty event type", lambda: Projection("p", {"": on_event}), "event types must be non-empty"),
    ("upper case name", lambda: Projection("Accounts", {"A": on_event}), "not a safe identifier"),
    ("dash in name", lambda: Projection("a-b", {"A": on_event}), "not a safe identifier"),
    ("SQL in name", lambda: Projection("x; DROP TABLE", {"A": on_event}), "not a safe identifier"),
    ("quote in name", lambda: Projection('x"y', {"A": on_event}), "not a safe identifier"),
    ("empty name", lambda: Projection("", {"A": on_event}), "not a safe identifier"),
    ("41 characters", lambda: Projection("a" * 41, {"A": on_event}), "not a safe identifier"),
    ("leading digit", lambda: Projection("1a", {"A": on_event}), "not a safe identifier"),
    ("leading underscore", lambda: Projection("_a", {"A": on_event}), "not a safe identifier"),
    ("non-ASCII letter", lambda: Projection("konto_ä", {"A": on_event}), "not a safe identifier"),
    ("trailing newline", lambda: Projection("a\n", {"A": on_event}), "not a safe identifier"),
    ("name not a string", lambda: Projection(None, {"A": on_event}), "not a safe identifier"),
    ("batch size 0", lambda: Projection("p", {"A": on_event}, batch_size=0), "batch_size"),
    ("batch size too big", lambda: Projection("p", {"A": on_event}, batch_size=100_001), "batch_size"),
    ("batch size a float", lambda: Projection("p", {"A": on_event}, batch_size=1.0), "batch_size"),
    ("listener handler not async", lambda: create_projection_config(["A"], {"A": not_async}), "async function"),
    (
        "event types as one string",
        lambda: Projection("p", {}, batch_handler=on_batch, event_types="MoneyDeposited"),
        "event_types must be a list of event types",
    ),
    (
        "an empty event type",
        lambda: Projection("p", {}, batch_handler=on_batch, event_types=["A", ""]),
        "event types must be non-empty strings",
    ),
    (
        "listener event types as one string",
        lambda: create_projection_config("UserRegistered", {"UserRegistered": on_record}),
        "event_types must be a list of event types",
    ),
]


@pytest.mark.parametrize(("make", "message"), [c[1:] for c in BAD_DEFINITIONS], ids=[c[0] for c in BAD_DEFINITIONS])
def test_a_bad_definition_fails_at_once_with_a_projection_error(make: Callable[[], object], message: str) -> None:
    with pytest.raises(ProjectionError, match=message):
        make()


def test_projection_error_is_an_eventbus_error() -> None:
    assert issubclass(ProjectionError, EventBusError)


def test_good_definitions_are_accepted_at_the_edges() -> None:
    assert Projection("a" * 40, {"A": on_event}, batch_size=100_000).schema == "projection_" + "a" * 40
    assert Projection("a", {"A": on_event}, batch_size=1).filter.event_types == ("A",)
    both = Projection("b", {"A": on_event}, batch_handler=on_batch, event_types=iter(["B"]))
    assert (both.event_types, both.filter.event_types) == (("B",), ("A", "B"))


async def test_start_refuses_a_second_projection_of_the_same_name_and_unknown_names_are_errors(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.projections.start(accounts_projection())
        with pytest.raises(ProjectionError, match="started already"):
            await bus.projections.start(accounts_projection())
        with pytest.raises(ProjectionError, match="no projection named 'other'"):
            await bus.projections.wait_until_caught_up("other")
        with pytest.raises(ProjectionError, match="no projection named 'other'"):
            await bus.projections.rebuild("other")
        with pytest.raises(ProjectionError, match="no projection named 'other'"):
            bus.projections.restart("other")


async def test_the_longest_name_and_event_types_with_quotes_work_end_to_end(dsn: str) -> None:
    quoted = 'Customer\'s "VIP" status; DROP TABLE eventbus.events; --'
    seen: list[int] = []

    async def on_quoted(tx: Transaction, record: EventRecord) -> None:
        seen.append(record.sequence_number)
        await tx.execute("INSERT INTO seen (position, event_type) VALUES ($1, $2)", record.sequence_number,
                         record.event_type)  # fmt: skip

    async def setup(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS seen (position bigint PRIMARY KEY, event_type text NOT NULL)")

    name = "p" + "0123456789" * 3 + "_abcdefgh"
    assert len(name) == 40
    async with open_bus(dsn) as bus:
        await bus.projections.start(Projection(name, {quoted: on_quoted}, setup))
        await bus.store.append([Event(quoted, {"n": 1}), Event("Other", {}), Event(quoted, {"n": 2})])
        await bus.projections.wait_until_caught_up(name, timeout=CAUGHT_UP)
        async with bus.projections.reader(name) as tx:
            rows = await tx.fetch("SELECT position, event_type FROM seen ORDER BY position")
        assert await bus.store.head() == 3

    assert seen == [1, 3]
    assert [tuple(row) for row in rows] == [(1, quoted), (3, quoted)]


async def test_a_reader_for_a_name_with_sql_in_it_cannot_inject(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("A", {})])
        with pytest.raises(ProjectionError, match="is not a projection name"):
            async with bus.projections.reader('x", public; DROP TABLE eventbus.events; --') as tx:
                await tx.fetchval("SELECT count(*) FROM events")
        assert await bus.store.head() == 1


# ---------------------------------------------------------------- the original's style


async def test_a_projection_listener_calls_its_handlers_for_live_events_until_stopped(dsn: str) -> None:
    calls: list[tuple[str, int]] = []
    later: list[int] = []
    three = trio.Event()
    later_seen = trio.Event()

    async def on_registered(record: EventRecord) -> None:
        calls.append((record.event_type, record.payload["n"]))
        if record.payload["n"] == 2:
            raise RuntimeError("a failing handler is logged and the listener goes on")
        if len(calls) == 3:
            three.set()

    async def on_later(record: EventRecord) -> None:
        later.append(record.payload["n"])
        later_seen.set()

    async with open_bus(dsn) as bus:
        await bus.store.append([Event("UserRegistered", {"n": 0})])  # before: not seen
        stop = await start_projection_listener(
            bus, create_projection_config(["UserRegistered"], {"UserRegistered": on_registered})
        )
        await bus.store.append([Event("UserRegistered", {"n": 1}), Event("UserRenamed", {"n": 9})])
        await bus.store.append([Event("UserRegistered", {"n": 2})])
        await bus.store.append([Event("UserRegistered", {"n": 3})])
        with trio.fail_after(CAUGHT_UP):
            await three.wait()
        await stop()
        # A second listener hears the next event; the stopped one must not.
        stop_later = await start_projection_listener(
            bus, create_projection_config(["UserRegistered"], {"UserRegistered": on_later})
        )
        await bus.store.append([Event("UserRegistered", {"n": 4})])
        with trio.fail_after(CAUGHT_UP):
            await later_seen.wait()
        await stop_later()

    assert calls == [("UserRegistered", 1), ("UserRegistered", 2), ("UserRegistered", 3)]
    assert later == [4]


def test_a_listener_config_keeps_its_event_types_and_handlers() -> None:
    async def handler(record: EventRecord) -> None:
        pass

    config = create_projection_config(iter(["A", "B"]), {"A": handler})
    assert (config.event_types, dict(config.handlers)) == (("A", "B"), {"A": handler})
