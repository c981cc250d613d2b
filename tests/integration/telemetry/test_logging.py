"""What eventbus logs: each event an operator must see, at its level, with a
traceback where one helps, and never a password."""

from __future__ import annotations

import functools
import logging
import subprocess
import sys
import textwrap
from urllib.parse import urlsplit, urlunsplit

import pytest
import trio
import trio.testing

from eventbus import (
    DatabaseError,
    Event,
    HandlerFailed,
    Projection,
    ProjectionError,
    RestartPolicy,
    StoreUnavailable,
    Transaction,
    create_filter,
    open_bus,
    open_event_store,
    testing,
)
from eventbus.testing import EmbeddedServer

from ...helpers import ROOT

PASSWORD = "n0t-4-l0g"


def records(caplog: pytest.LogCaptureFixture, logger: str, level: int, text: str) -> list[logging.LogRecord]:
    return [r for r in caplog.records if r.name == logger and r.levelno == level and text in r.getMessage()]


def with_password(dsn: str) -> str:
    """``dsn`` with a user and password (the test server trusts every connection)."""
    parts = urlsplit(dsn)
    netloc = parts.netloc.rpartition("@")[2]
    return urlunsplit(parts._replace(netloc=f"postgres:{PASSWORD}@{netloc}"))


def test_the_library_adds_a_null_handler_and_configures_nothing() -> None:
    code = textwrap.dedent(
        """
        import logging
        import eventbus
        logging.getLogger("eventbus.store").warning("an outage")
        assert logging.getLogger().handlers == []
        assert [type(h).__name__ for h in logging.getLogger("eventbus").handlers] == ["NullHandler"]
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stderr == ""  # not printed through logging's last resort either


async def test_an_outage_of_the_store_is_logged_when_it_starts_and_when_it_ends_with_its_length(
    embedded_server: EmbeddedServer, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    async with testing.open_loop():
        await testing.create_database(embedded_server.dsn(), "events")
        dsn = with_password(embedded_server.dsn("events"))
        async with open_event_store(dsn, reconnect_timeout=0.2) as store:
            await store.append([Event("Tick", {})])
            await trio.to_thread.run_sync(functools.partial(embedded_server.stop, mode="immediate"))
            with pytest.raises(StoreUnavailable):
                await store.append([Event("Tick", {})])
            lost = records(caplog, "eventbus.store", logging.WARNING, "lost the connection to the database")
            assert len(lost) == 1
            assert records(caplog, "eventbus.store", logging.WARNING, "restored") == []
            with pytest.raises(StoreUnavailable):  # the same outage: not logged again
                await store.append([Event("Tick", {})])
            assert len(records(caplog, "eventbus.store", logging.WARNING, "lost the connection")) == 1
            await trio.to_thread.run_sync(embedded_server.start)
            with trio.fail_after(20):
                while True:
                    try:
                        await store.append([Event("Tick", {})])
                        break
                    except StoreUnavailable:
                        await trio.sleep(0.05)  # the store backs off between attempts
    [restored] = records(caplog, "eventbus.store", logging.WARNING, "connection to the database restored after")
    seconds = float(restored.getMessage().split("after ")[1].split(" s")[0])
    assert seconds > 0
    assert PASSWORD not in caplog.text


async def test_a_batch_refused_as_a_whole_is_logged_before_its_appends_run_one_by_one(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with testing.open_loop():
        admin = await testing.connect(dsn)
        try:
            await admin.execute(
                "CREATE FUNCTION refuse_forbidden() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN"
                " IF NEW.event_type = 'Forbidden' THEN RAISE EXCEPTION 'forbidden here'; END IF;"
                " RETURN NEW; END $$;"
                " CREATE TRIGGER refuse_forbidden BEFORE INSERT ON eventbus.events"
                " FOR EACH ROW EXECUTE FUNCTION refuse_forbidden()"
            )
        finally:
            await admin.close()
        async with open_event_store(dsn) as store:
            with pytest.raises(DatabaseError):
                await store.append([Event("Forbidden", {})])
    [line] = records(caplog, "eventbus.store", logging.WARNING, "refused as a whole")
    assert "a batch of 1 appends" in line.getMessage() and "forbidden here" in line.getMessage()


async def setup_counts(tx: Transaction) -> None:
    await tx.execute("CREATE TABLE IF NOT EXISTS counts (n int)")


async def count(tx: Transaction, record: object) -> None:
    await tx.execute("INSERT INTO counts VALUES (1)")


async def test_taking_and_losing_the_lead_of_a_projection_is_logged(dsn: str, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO)
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Tick", {})])
        await bus.projections.start(Projection("ticks", {"Tick": count}, setup=setup_counts))
        await bus.projections.wait_until_caught_up("ticks", timeout=20)
        assert len(records(caplog, "eventbus.projections", logging.INFO, "ticks: this process leads it now")) == 1
        assert records(caplog, "eventbus.projections", logging.INFO, "no longer leads") == []
        await bus.projections.stop("ticks")
    assert len(records(caplog, "eventbus.projections", logging.INFO, "ticks: this process no longer leads it")) == 1


async def test_a_restarting_projection_is_logged_with_the_traceback_and_its_failure_as_an_error(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)

    async def explode(tx: Transaction, record: object) -> None:
        raise ValueError("no currency")

    projection = Projection("poisoned", {"Tick": explode}, restart=RestartPolicy(max_restarts=2, initial=0.01))
    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Tick", {})])
        await bus.projections.start(projection)
        with pytest.raises(ProjectionError, match="failed"):
            await bus.projections.wait_until_caught_up("poisoned", timeout=20)
    restarting = records(caplog, "eventbus.projections", logging.WARNING, "poisoned: restarting in")
    assert len(restarting) == 2
    for line in restarting:
        assert line.exc_info is not None and isinstance(line.exc_info[1], HandlerFailed)
        assert "no currency" in line.getMessage()
    [failed] = records(caplog, "eventbus.projections", logging.ERROR, "projection poisoned failed after 2 restarts")
    assert failed.exc_info is not None
    text = caplog.text
    assert "Traceback" in text and "ValueError: no currency" in text and "in explode" in text


async def test_a_rebuild_is_logged_when_it_starts_when_it_swaps_and_when_it_fails(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    breaking = False

    async def fragile(tx: Transaction, record: object) -> None:
        if breaking:
            raise RuntimeError("broken on replay")
        await count(tx, record)

    async with open_bus(dsn) as bus:
        await bus.store.append([Event("Tick", {}) for _ in range(5)])
        await bus.projections.start(Projection("rebuilt", {"Tick": fragile}, setup=setup_counts))
        await bus.projections.wait_until_caught_up("rebuilt", timeout=20)
        with trio.fail_after(30):
            await bus.projections.rebuild("rebuilt")
        assert len(records(caplog, "eventbus.projections", logging.INFO, "rebuilt: rebuild started")) == 1
        [swapped] = records(caplog, "eventbus.projections", logging.INFO, "rebuilt: rebuild swapped in")
        assert swapped.getMessage().endswith("at position 5")
        breaking = True
        with pytest.raises(HandlerFailed), trio.fail_after(30):
            await bus.projections.rebuild("rebuilt")
    [failed] = records(caplog, "eventbus.projections", logging.ERROR, "rebuilt: rebuild failed")
    assert failed.exc_info is not None and "broken on replay" in caplog.text


async def test_a_subscription_detached_for_a_full_buffer_and_re_attached_is_logged(
    dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    async with (
        open_bus(dsn) as bus,
        bus.subscribe(create_filter([]), max_batch=1, buffer=1, name="slow reader") as sub,
    ):
        for n in range(3):
            await bus.store.append([Event("Tick", {"n": n})])
        await trio.testing.wait_all_tasks_blocked()
        [detached] = records(caplog, "eventbus.stream", logging.INFO, "subscription slow reader detached")
        assert "at position 1" in detached.getMessage()
        seen = 0
        with trio.fail_after(10):
            async for batch in sub:
                seen += len(batch)
                if seen == 3:
                    break
        await trio.testing.wait_all_tasks_blocked()
    reattached = records(caplog, "eventbus.stream", logging.INFO, "subscription slow reader re-attached at position 3")
    assert len(reattached) == 1
