"""Run the dashboard: the bank, its bus and the feeds in Trio, the app on trio-asyncio.

``banking dashboard [--dsn URL]`` and ``just banking`` call
:func:`run_dashboard`. Tests use :func:`open_dashboard` on a bank of their own
and drive the app with ``App.run_test()``.
"""

from __future__ import annotations

import os
import re
import select
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from apps.banking.app import Bank, open_bank
from eventbus import call_asyncio, open_loop

from .app import DashboardApp
from .control import Controller
from .feed import RETRY_DELAY, Refresher, feed_accounts, feed_events, feed_figures
from .state import DashboardState

CLOSE_TIMEOUT = 3.0
"""Seconds the dashboard waits, when closing, for the simulator's commands and
the read of the accounts under way."""


def describe_database(dsn: str | None) -> str:
    """Where the dashboard's database is, never with a password: ``bank on db.example:5432``.

    Takes a URL (``postgresql://user:secret@host/bank``) or libpq's
    ``key=value`` form (``host=db dbname=bank password=secret``).
    """
    if dsn is None:
        return "embedded database"
    if "://" in dsn:
        parts = urlsplit(dsn)
        name = unquote(parts.path.lstrip("/"))
        host = parts.hostname or parse_qs(parts.query).get("host", [""])[0]
        try:
            port = str(parts.port) if parts.port else ""
        except ValueError:  # its text may be part of a password: never shown
            port = "?"
    else:
        settings = dict(_CONNINFO_PAIR.findall(dsn))
        name, host, port = (settings.get(key, "").strip("'") for key in ("dbname", "host", "port"))
    name = name or "?"
    if not host or host.startswith("/"):
        return f"{name} (local socket)"
    return f"{name} on {host}{':' + port if port else ''}"


_CONNINFO_PAIR = re.compile(r"(\w+)\s*=\s*('(?:[^'\\]|\\.)*'|\S+)")


def _dsn_from_environment() -> str | None:
    for name in ("EVENTBUS_DSN", "DATABASE_URL"):
        value = os.environ.get(name, "").strip()
        if value:
            return value
    return None


async def _supervised(state: DashboardState, what: str, fn: Callable[..., Awaitable[object]], *args: Any) -> None:
    """Run ``fn(*args)`` again whenever it fails, saying so on the screen; until cancelled."""
    while True:
        try:
            await fn(*args)
            return
        except Exception as exc:  # a bug or an outage: the rest of the dashboard goes on
            state.notice(f"The {what} failed ({exc}); restarting it.", "error")
            await trio.sleep(RETRY_DELAY)


@asynccontextmanager
async def open_dashboard(bank: Bank, *, database: str = "") -> AsyncIterator[DashboardApp]:
    """Feed a new dashboard from ``bank`` for the duration of the block; yield the app, not yet running.

    The event log is subscribed before the block starts, so every event
    committed from then on shows. Run the app in the block, through
    ``call_asyncio(app.run_async)`` (or ``app.run_test()`` in tests). Leaving
    the block stops the feeds, the simulator and any rebuild.
    """
    state = DashboardState(database=database)
    refresher = Refresher()
    async with trio.open_nursery() as nursery:
        await nursery.start(feed_events, bank.bus, state)
        nursery.start_soon(_supervised, state, "throughput figures", feed_figures, bank.bus, state)
        nursery.start_soon(_supervised, state, "accounts feed", feed_accounts, bank, state, refresher)
        controller = Controller(bank, state, nursery, refresher)
        try:
            yield DashboardApp(state, controller)
        finally:
            # Let the work under way end rather than cut it off halfway (see
            # feed_accounts); then cancel whatever is left.
            refresher.close()
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await controller.aclose()
                await refresher.stopped.wait()
            nursery.cancel_scope.cancel()


HANGUP_CHECK = 0.5
"""Seconds between checks that the terminal is still there."""


async def _exit(app: DashboardApp) -> None:
    app.exit()


async def quit_when_the_terminal_goes(app: DashboardApp) -> None:
    """Quit the app (closing the bus) on SIGHUP or SIGTERM, or when its terminal hangs up; until cancelled.

    A terminal can vanish without a signal reaching this process (a killed
    tmux server, with ``just`` between it and the pane): Textual's input
    thread would then spin on the dead descriptor for ever, so the terminal
    is polled for a hang-up too.
    """
    stdin = sys.__stdin__
    poller = None
    if stdin is not None and stdin.isatty():
        poller = select.poll()
        poller.register(stdin.fileno(), 0)  # a hang-up, an error or a closed descriptor is reported anyway
    with trio.open_signal_receiver(signal.SIGHUP, signal.SIGTERM) as signals:
        while poller is None or not poller.poll(0):
            with trio.move_on_after(HANGUP_CHECK):
                await signals.__anext__()
                break
    await call_asyncio(_exit, app)


async def run_dashboard(dsn: str | None = None) -> None:
    """Open the bank on ``dsn`` and run the dashboard until the person quits.

    ``dsn`` None means ``EVENTBUS_DSN``, then ``DATABASE_URL``, else the
    embedded server. On a database that other processes write (attach mode)
    their events show live, and their read models are read as they lead
    them. Quitting closes the bus (shielded, bounded) before returning.

    Raises:
        StoreUnavailable: the database could not be reached at open.
    """
    print("Opening the bank…", file=sys.stderr, flush=True)
    async with (
        open_loop(),
        open_bank(dsn) as bank,  # refuses a malformed connection string before it is described
        open_dashboard(bank, database=describe_database(dsn or _dsn_from_environment())) as app,
        trio.open_nursery() as nursery,
    ):
        nursery.start_soon(quit_when_the_terminal_goes, app)
        await call_asyncio(app.run_async)
        nursery.cancel_scope.cancel()
