"""Projections under faults of their own: names that look like a rebuild's,
read models dropped under them, handlers that hang or swallow errors.

The read model is the accounts one of ``_projection_worker``; every model is
compared with a replay from scratch of the stored events.
"""

from __future__ import annotations

import contextlib
import re

import pytest
import trio

from eventbus import (
    Bus,
    DatabaseError,
    Event,
    EventRecord,
    HandlerFailed,
    Projection,
    ProjectionError,
    ProjectionStatus,
    RestartPolicy,
    Transaction,
    create_filter,
    open_bus,
)

from .._projection_worker import (
    DEPOSITED,
    TYPES,
    Model,
    account_events,
    accounts_projection,
    apply_event,
    create_tables,
    read_model,
    replay,
)

CAUGHT_UP = 30.0  # seconds: a bound, never a wait
SAMPLE_INTERVAL = 0.005  # seconds between looks at a status, which has no change notification
DEADLINE = 0.3  # seconds: the handler deadline of the hanging projections
QUICK = RestartPolicy(max_restarts=1, initial=0.01, maximum=0.01)


async def stored(bus: Bus) -> list[EventRecord]:
    return (await bus.store.query(create_filter(list(TYPES)))).events


async def model_of(bus: Bus, name: str) -> Model:
    async with bus.projections.reader(name) as tx:
        return await read_model(tx)


async def schemas(bus: Bus, like: str) -> list[str]:
    rows = await bus.store.pool.fetch("SELECT nspname FROM pg_namespace WHERE nspname LIKE $1 ORDER BY 1", like)
    return [row["nspname"] for row in rows]


# ---------------------------------------------------------------- a rebuild touches only its own copy


async def test_a_rebuild_leaves_projections_named_like_its_copies_untouched(dsn: str) -> None:
    names = ["acct", "acct__old", "acct__shadow", "acct_shadow"]
    events = list(account_events(51, seed=21))
    async with open_bus(dsn) as bus:
        await bus.store.append(events[:50])
        for name in names:
            await bus.projections.start(accounts_projection(name))
        for name in names:
            await bus.projections.wait_until_caught_up(name, timeout=CAUGHT_UP)
        await bus.projections.rebuild("acct")
        await bus.store.append(events[50:])
        for name in names:
            await bus.projections.wait_until_caught_up(name, timeout=CAUGHT_UP)
        records = await stored(bus)
        models = {name: await model_of(bus, name) for name in names}
        status = bus.projections.status()
        left = await schemas(bus, "projection_acct%")

    assert len(records) == 51
    for name in names:
        assert models[name] == replay(records), name
        assert status[name] == ProjectionStatus("live", 51, 0, 0, None, 0, True), name
    assert left == ["projection_acct", "projection_acct__old", "projection_acct__shadow", "projection_acct_shadow"]


async def test_a_rebuild_refuses_a_schema_of_its_copys_name_that_it_did_not_make_and_leaves_it(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append(list(account_events(20, seed=22)))
        await bus.projections.start(accounts_projection())
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        async with bus.store.pool.acquire() as conn:
            await conn.run_script(
                'CREATE SCHEMA "projection_accounts$shadow"; CREATE TABLE "projection_accounts$shadow".mine (v int);'
                ' INSERT INTO "projection_accounts$shadow".mine VALUES (7)'
            )
        with pytest.raises(ProjectionError, match=re.escape("schema projection_accounts$shadow exists and was not")):
            await bus.projections.rebuild("accounts")
        mine = await bus.store.pool.fetchval('SELECT v FROM "projection_accounts$shadow".mine')
        status = bus.projections.status()["accounts"]

    assert mine == 7
    assert (status.state, status.checkpoint, status.restarts) == ("live", 20, 0)


async def test_a_rebuild_drops_the_leftover_copy_of_a_rebuild_that_was_killed(dsn: str) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append(list(account_events(20, seed=23)))
        await bus.projections.start(accounts_projection())
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        # What a rebuild killed in the middle leaves: its marked copy, half built.
        async with bus.store.pool.acquire() as conn:
            await conn.run_script(
                'CREATE SCHEMA "projection_accounts$shadow"; CREATE TABLE "projection_accounts$shadow".half (v int);'
                ' COMMENT ON SCHEMA "projection_accounts$shadow" IS'
                " 'eventbus: the copy a rebuild of projection accounts builds'"
            )
        await bus.projections.rebuild("accounts")
        model = await model_of(bus, "accounts")
        records = await stored(bus)
        left = await schemas(bus, "projection_accounts%")
        comment = await bus.store.pool.fetchval(
            "SELECT obj_description(oid, 'pg_namespace') FROM pg_namespace WHERE nspname = 'projection_accounts'"
        )

    assert model == replay(records)
    assert left == ["projection_accounts"]
    assert comment is None


async def test_a_swap_refuses_a_copy_replaced_under_the_rebuild_and_leaves_that_schema_alone(dsn: str) -> None:
    gate: dict[str, trio.Event | None] = {"held": None, "open": None}

    async def gated(tx: Transaction, record: EventRecord) -> None:
        held, opened = gate["held"], gate["open"]
        if held is not None and opened is not None and record.sequence_number == 50:
            held.set()
            await opened.wait()
        await apply_event(tx, record)

    async with open_bus(dsn) as bus:
        await bus.store.append(list(account_events(100, seed=26)))
        await bus.projections.start(Projection("accounts", dict.fromkeys(TYPES, gated), create_tables, batch_size=10))
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        before = await model_of(bus, "accounts")
        gate["held"], gate["open"] = trio.Event(), trio.Event()
        async with trio.open_nursery() as nursery:

            async def replace_the_copy() -> None:
                held, opened = gate["held"], gate["open"]
                assert held is not None and opened is not None
                await held.wait()  # the copy is half built
                async with bus.store.pool.acquire() as conn:
                    await conn.run_script(
                        'ALTER SCHEMA "projection_accounts$shadow" RENAME TO moved;'
                        ' CREATE SCHEMA "projection_accounts$shadow";'
                        ' CREATE TABLE "projection_accounts$shadow".accounts (LIKE moved.accounts INCLUDING ALL);'
                        ' CREATE TABLE "projection_accounts$shadow".tallies (LIKE moved.tallies INCLUDING ALL);'
                        ' CREATE TABLE "projection_accounts$shadow".appliers (LIKE moved.appliers INCLUDING ALL)'
                    )
                opened.set()

            nursery.start_soon(replace_the_copy)
            with pytest.raises(ProjectionError, match=re.escape("not the copy this rebuild made")):
                await bus.projections.rebuild("accounts")
        after = await model_of(bus, "accounts")
        left = await schemas(bus, "projection_accounts%")
        status = bus.projections.status()["accounts"]

    assert after == before
    assert left == ["projection_accounts", "projection_accounts$shadow"]  # not ours: left alone
    assert (status.state, status.checkpoint, status.restarts) == ("live", 100, 0)


# ---------------------------------------------------------------- a read model dropped under its projection


async def test_a_projection_whose_tables_vanished_fails_naming_them_and_a_rebuild_builds_them_again(dsn: str) -> None:
    events = list(account_events(51, seed=24))
    async with open_bus(dsn) as bus:
        await bus.store.append(events[:50])
        await bus.projections.start(accounts_projection(restart=QUICK))
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        async with bus.store.pool.acquire() as conn:
            await conn.execute("DROP SCHEMA projection_accounts CASCADE")
        await bus.store.append(events[50:])
        with pytest.raises(ProjectionError) as failed:
            await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        status = bus.projections.status()["accounts"]

        await bus.projections.rebuild("accounts")
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        model = await model_of(bus, "accounts")
        records = await stored(bus)
        after = bus.projections.status()["accounts"]

    message = (
        "projection accounts: its tables accounts, appliers, tallies are gone while its checkpoint is at 50: "
        "it will not carry on over an empty read model; rebuild it (bus.projections.rebuild('accounts')) "
        "to build them again from the events"
    )
    assert str(failed.value) == f"projection 'accounts' failed: {message}"
    # Without its tables the model reflects no event: its checkpoint says so.
    assert (status.state, status.checkpoint, status.last_error, status.leader) == ("failed", 0, message, True)
    assert model == replay(records)
    assert (after.state, after.checkpoint, after.lag, after.last_error) == ("live", 51, 0, None)


async def test_a_projection_restarted_over_tables_dropped_while_it_was_stopped_fails_and_restart_tries_again(
    dsn: str,
) -> None:
    async with open_bus(dsn) as bus:
        await bus.store.append(list(account_events(30, seed=25)))
        await bus.projections.start(accounts_projection())
        await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        await bus.projections.stop("accounts")
        async with bus.store.pool.acquire() as conn:
            await conn.execute("DROP TABLE projection_accounts.tallies")
        await bus.projections.start(accounts_projection())
        with pytest.raises(ProjectionError, match=r"its tables tallies are gone while its checkpoint is at 30"):
            await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        # Nothing was recreated: the model stays as the user left it.
        tallies = await bus.store.pool.fetchval("SELECT to_regclass('projection_accounts.tallies')")
        # restart tries again from the start: the same finding.
        bus.projections.restart("accounts")
        with pytest.raises(ProjectionError, match=r"its tables tallies are gone"):
            await bus.projections.wait_until_caught_up("accounts", timeout=CAUGHT_UP)
        status = bus.projections.status()["accounts"]

    assert tallies is None
    assert (status.state, status.restarts, status.leader) == ("failed", 1, True)


# ---------------------------------------------------------------- a handler that hangs or swallows errors


async def hangs(tx: Transaction, record: EventRecord) -> None:
    await trio.sleep_forever()


async def sleeps_in_postgres(tx: Transaction, record: EventRecord) -> None:
    await tx.execute("SELECT pg_sleep(1000)")


async def swallows(tx: Transaction, record: EventRecord) -> None:
    with contextlib.suppress(DatabaseError):  # the transaction is aborted: its commit fails
        await tx.execute("SELECT 1 / 0")


async def the_batch_runs(bus: Bus, name: str, longer_than: float) -> ProjectionStatus:
    """The status once it shows a batch under way for more than ``longer_than`` seconds."""
    with trio.fail_after(CAUGHT_UP):
        while True:
            status = bus.projections.status()[name]
            if status.batch_running is not None and status.batch_running > longer_than:
                return status
            await trio.sleep(SAMPLE_INTERVAL)


@pytest.mark.parametrize("handler", [hangs, sleeps_in_postgres], ids=["sleep_forever", "pg_sleep"])
async def test_a_hung_handler_is_cancelled_at_its_deadline_counted_and_fails_letting_go_of_the_lead(
    dsn: str, handler: object
) -> None:
    projection = Projection("hung", {DEPOSITED: handler}, handler_timeout=DEADLINE, restart=QUICK)  # type: ignore[dict-item]
    async with open_bus(dsn) as bus:
        await bus.store.append([Event(DEPOSITED, {"account": "a", "amount": 1})])
        await bus.projections.start(projection)
        running = await the_batch_runs(bus, "hung", DEADLINE / 2)
        began = trio.current_time()
        with pytest.raises(ProjectionError, match="passed its deadline") as failed:
            await bus.projections.wait_until_caught_up("hung", timeout=CAUGHT_UP)
        took = trio.current_time() - began
        status = bus.projections.status()["hung"]
        sessions = await bus.store.pool.fetch(
            "SELECT state, query FROM pg_stat_activity WHERE application_name = 'eventbus-projection hung'"
            " OR query LIKE 'SELECT pg_sleep(1000)%'"
        )
        lead_is_free = await bus.store.pool.fetchval(
            "SELECT NOT EXISTS (SELECT FROM pg_locks WHERE locktype = 'advisory' AND granted)"
        )

    message = (
        f"projection hung: handler for {DEPOSITED} at position 1 passed its deadline of 0.3 s (handler_timeout);"
        " the batch at positions 1 to 1 was cancelled and rolled back"
    )
    assert str(failed.value) == f"projection 'hung' failed: {message}"
    assert (running.state in ("live", "catching_up"), running.checkpoint, running.last_error) == (True, 0, None)
    assert took < 4 * DEADLINE + 2  # the first try's rest, one restart, never the handler's own end
    assert (status.state, status.checkpoint, status.restarts, status.last_error) == ("failed", 0, 1, message)
    assert (status.leader, status.batch_running) == (False, None)
    assert [tuple(row) for row in sessions] == []  # no session idle in transaction, no query left running
    assert lead_is_free


async def test_a_handler_that_swallows_a_database_error_counts_as_failing_and_the_projection_fails(dsn: str) -> None:
    policy = RestartPolicy(max_restarts=2, initial=0.01, maximum=0.01)
    async with open_bus(dsn) as bus:
        await bus.store.append([Event(DEPOSITED, {"account": "a", "amount": 1})])
        await bus.projections.start(Projection("swallows", {DEPOSITED: swallows}, restart=policy))
        with pytest.raises(ProjectionError, match="current transaction is aborted") as failed:
            await bus.projections.wait_until_caught_up("swallows", timeout=10)
        status = bus.projections.status()["swallows"]

    assert str(failed.value).startswith(
        f"projection 'swallows' failed: projection swallows: the commit after the handler for {DEPOSITED} at "
        "position 1 failed: "
    )
    assert (status.state, status.checkpoint, status.restarts, status.leader) == ("failed", 0, 2, False)


async def test_with_skip_a_batch_whose_commit_fails_dead_letters_only_the_event_whose_handler_swallowed(
    dsn: str,
) -> None:
    async def swallows_on_poison(tx: Transaction, record: EventRecord) -> None:
        if record.payload.get("poison"):
            await swallows(tx, record)
        else:
            await tx.execute("INSERT INTO seen VALUES ($1)", record.sequence_number)

    async def setup(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS seen (position bigint PRIMARY KEY)")

    events = [Event(DEPOSITED, {"account": "a", "amount": 1, "poison": n == 3}) for n in range(6)]
    async with open_bus(dsn) as bus:
        await bus.store.append(events)
        await bus.projections.start(Projection("skips", {DEPOSITED: swallows_on_poison}, setup, on_error="skip"))
        await bus.projections.wait_until_caught_up("skips", timeout=CAUGHT_UP)
        async with bus.projections.reader("skips") as tx:
            seen = [row[0] for row in await tx.fetch("SELECT position FROM seen ORDER BY 1")]
        dead = await bus.store.pool.fetch("SELECT sequence_number FROM eventbus.dead_letters")
        status = bus.projections.status()["skips"]

    assert seen == [1, 2, 3, 5, 6]
    assert [row[0] for row in dead] == [4]
    assert (status.state, status.checkpoint, status.dead_letters, status.restarts) == ("live", 6, 1, 0)


async def test_a_rebuild_whose_copy_swallows_a_database_error_fails_and_the_live_model_stays(dsn: str) -> None:
    broken = False

    async def sometimes_swallows(tx: Transaction, record: EventRecord) -> None:
        if broken and record.sequence_number == 10:
            await swallows(tx, record)
        else:
            await tx.execute("INSERT INTO seen VALUES ($1)", record.sequence_number)

    async def setup(tx: Transaction) -> None:
        await tx.execute("CREATE TABLE IF NOT EXISTS seen (position bigint PRIMARY KEY)")

    async with open_bus(dsn) as bus:
        await bus.store.append([Event(DEPOSITED, {"account": "a", "amount": 1}) for _ in range(20)])
        await bus.projections.start(Projection("copied", {DEPOSITED: sometimes_swallows}, setup, batch_size=5))
        await bus.projections.wait_until_caught_up("copied", timeout=CAUGHT_UP)
        broken = True
        with pytest.raises(
            HandlerFailed, match=r"copied: the commit of the batch at positions 6 to 10 failed: .*aborted"
        ):
            await bus.projections.rebuild("copied")
        async with bus.projections.reader("copied") as tx:
            seen = await tx.fetchval("SELECT count(*) FROM seen")
        left = await schemas(bus, "projection_copied%")

    assert seen == 20
    assert left == ["projection_copied"]


def test_the_handler_deadline_is_a_keyword_with_a_default_and_refuses_nonsense() -> None:
    async def on_event(tx: Transaction, record: EventRecord) -> None:
        pass

    assert Projection("p", {"A": on_event}).handler_timeout == 30.0
    assert Projection("p", {"A": on_event}, handler_timeout=None).handler_timeout is None
    for bad in (0, -1, float("inf"), float("nan"), "5", True):
        with pytest.raises(ProjectionError, match="handler_timeout must be a positive number"):
            Projection("p", {"A": on_event}, handler_timeout=bad)  # type: ignore[arg-type]


async def test_an_event_someone_else_wrote_with_a_payload_that_is_no_object_can_be_a_dead_letter(dsn: str) -> None:
    async def apply(tx: Transaction, record: EventRecord) -> None:
        record.payload["account"]  # fails on a list, a string, null

    projection = Projection("strict", {"Ping": apply}, on_error="skip")
    async with open_bus(dsn) as bus:
        good = await bus.store.append([Event("Ping", {"account": "a"})])
        position = good[-1].sequence_number
        await bus.store.pool.fetchval(
            "INSERT INTO eventbus.events (sequence_number, event_id, event_type, payload, occurred_at)"
            " SELECT $1 + o, gen_random_uuid(), 'Ping', v, now()"
            " FROM unnest(ARRAY['[1, 2]', '\"text\"', 'null']::jsonb[]) WITH ORDINALITY AS u (v, o)",
            position,
        )
        await bus.store.pool.fetchval("SELECT setval('eventbus.event_position', $1)", position + 3)
        await bus.projections.start(projection)
        await bus.projections.wait_until_caught_up("strict", timeout=30)
        letters = await bus.store.pool.fetch("SELECT payload FROM eventbus.dead_letters ORDER BY sequence_number")
    assert [row["payload"] for row in letters] == [[1, 2], "text", None]
