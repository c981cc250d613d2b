"""A DSN's password never shows on the dashboard: not in the title it gives
the database, not in the notices it shows when the database fails under it.

The test server trusts its private unix socket, so a connection string may
carry any password: here it is a marker to look for on the screen.
"""

from __future__ import annotations

import logging
import uuid
from urllib.parse import urlsplit

import pytest
import trio

from apps.banking.app import open_bank
from chaos._database import with_database
from eventbus import Event, EventStore, StoreUnavailable, call_asyncio, call_trio, open_loop, testing
from tui.run import describe_database, open_dashboard
from tui.state import DashboardState

SECRET = "Pa55-w0rd-8f1c"
WAIT = 30.0  # seconds: a bound, never a wait
ATTEMPTS = 50

DSN_FORMS = [
    pytest.param(f"postgresql://alice:{SECRET}@db.example:5432/bank", id="URL"),
    pytest.param(f"postgresql://alice:{SECRET}@/bank?host=/run/postgresql", id="URL with a socket"),
    pytest.param(f"postgresql://alice@db.example/bank?password={SECRET}", id="password in the query"),
    pytest.param(f"postgres://alice:{SECRET}%40x@db.example/bank", id="quoted"),
    pytest.param(
        f"host=db.example port=5432 user=alice password={SECRET} dbname=bank",
        id="key=value",
    ),
]


@pytest.mark.parametrize("dsn", DSN_FORMS)
def test_the_dashboards_name_for_a_database_never_holds_its_password(dsn: str) -> None:
    described = describe_database(dsn)
    assert SECRET not in described
    assert "bank" in described


async def _terminate_bus_connections(admin_dsn: str, database: str) -> int:
    conn = await testing.connect(admin_dsn, application_name="test-terminator")
    try:
        return int(
            await conn.fetchval(
                "SELECT count(*) FILTER (WHERE pg_terminate_backend(pid)) FROM pg_stat_activity "
                "WHERE datname = $1 AND application_name LIKE 'eventbus%'",
                database,
            )
        )
    finally:
        await conn.close()


async def _append(store: EventStore, event_type: str) -> None:
    """Append one event, again (same id: stored once) while the store is reconnecting."""
    event = Event(event_type, {}, event_id=uuid.uuid4())
    for _ in range(ATTEMPTS):
        try:
            await store.append([event])
            return
        except StoreUnavailable:
            await trio.sleep(0.2)
    raise AssertionError(f"{event_type} could not be appended in {ATTEMPTS} attempts")


async def _wait(state: DashboardState, events: int) -> None:
    with trio.fail_after(WAIT):
        await state.wait_until(lambda s: s.events_seen >= events)


async def test_the_dashboard_shows_no_password_even_when_its_connections_are_cut(
    dsn: str, admin_dsn: str, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.DEBUG)
    database = urlsplit(dsn).path.lstrip("/")
    secret_dsn = with_database(dsn, database, password=SECRET)
    screens: list[str] = []
    async with (
        open_loop(),
        open_bank(secret_dsn) as bank,
        open_dashboard(bank, database=describe_database(secret_dsn)) as app,
    ):

        async def script() -> None:
            async with app.run_test(size=(120, 40)):
                await call_trio(_append, bank.bus.store, "Before")
                await call_trio(_wait, app.state, 1)
                assert await call_trio(_terminate_bus_connections, admin_dsn, database) > 0
                # The bus reconnects; what is appended after the cut shows on the screen.
                await call_trio(_append, bank.bus.store, "After")
                await call_trio(_wait, app.state, 2)
                await app.wait_for_redraw()
                screens.append(app.export_screenshot())
                screens.extend(notice.text for notice in app.state.notices)
                screens.append(str(app.sub_title))

        await call_asyncio(script)
    assert database in screens[-1]
    assert not [screen for screen in screens if SECRET in screen]
    assert SECRET not in caplog.text
