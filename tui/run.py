"""Run the dashboard: the bank, its bus and the feeds in Trio, the app on a loop and a thread of its own.

``banking dashboard [--dsn URL]`` and ``just banking`` call
:func:`run_dashboard`: the app in the main thread, the bus on Trio in another
(see ``tui/bridge.py``). Tests use :func:`open_dashboard` on a bank of their
own and drive the app with ``App.run_test()`` in a thread of its own.
"""

from __future__ import annotations

import asyncio
import re
import select
import signal
import sys
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from apps.banking import database
from apps.banking.app import Bank, open_bank
from eventbus import open_loop

from .app import DashboardApp
from .bridge import Bridge, run_in_main_thread
from .control import Controller
from .feed import RETRY_DELAY, Refresher, feed_accounts, feed_dead_letters, feed_events, feed_figures
from .state import DashboardState

CLOSE_TIMEOUT = 3.0
"""Seconds the dashboard waits, when closing, for the simulator's commands and
the read of the accounts under way."""


def describe_database(dsn: str | None) -> str:
    """Where the dashboard's database is, never with a password: ``bank on db.example:5432``.

    Takes a URL (``postgresql://user:secret@host/bank``) or libpq's
    ``key=value`` form (``host=db dbname=bank password=secret``); None is the
    bank's own database on the embedded server.
    """
    if dsn is None:
        return database.describe(None)
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
    stored from then on shows. Run the app in the block on a loop of its own
    in another thread (:func:`tui.bridge.run_app_in_thread`, with
    ``app.run_test()`` in tests); it reaches this Trio run through
    ``app.bridge``. Leaving the block stops the feeds, the simulator and any
    rebuild: the app must have ended first.
    """
    state = DashboardState(database=database)
    refresher = Refresher()
    async with trio.open_nursery() as nursery:
        await nursery.start(feed_events, bank.bus, state)
        nursery.start_soon(_supervised, state, "throughput figures", feed_figures, bank, state)
        nursery.start_soon(_supervised, state, "accounts feed", feed_accounts, bank, state, refresher)
        nursery.start_soon(_supervised, state, "dead letters feed", feed_dead_letters, bank, state)
        controller = Controller(bank, state, nursery, refresher)
        try:
            yield DashboardApp(state, controller, Bridge(trio.lowlevel.current_trio_token()))
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


async def run_until_quit(app: DashboardApp) -> None:
    """Run ``app`` on this thread's loop, with the terminal, until the person
    quits, SIGHUP, SIGTERM or SIGINT comes, or the terminal hangs up.

    A terminal can vanish without a signal reaching this process (a killed
    tmux server, with ``just`` between it and the pane): Textual's input
    thread would then spin on the dead descriptor for ever, so the terminal
    is polled for a hang-up too. Must run in the main thread (signals).
    """
    loop = asyncio.get_running_loop()
    for signum in QUIT_SIGNALS:
        loop.add_signal_handler(signum, app.exit)
    watch = loop.create_task(_exit_on_hangup(app))
    try:
        await app.run_async()
    finally:
        watch.cancel()
        for signum in QUIT_SIGNALS:
            loop.remove_signal_handler(signum)


QUIT_SIGNALS = (signal.SIGHUP, signal.SIGTERM, signal.SIGINT)
"""Signals that quit the dashboard as ``q`` does (the terminal is put back, the bus closed)."""


async def _exit_on_hangup(app: DashboardApp) -> None:
    stdin = sys.__stdin__
    if stdin is None or not stdin.isatty():
        return
    poller = select.poll()
    poller.register(stdin.fileno(), 0)  # a hang-up, an error or a closed descriptor is reported anyway
    while not poller.poll(0):  # noqa: ASYNC110 - a hang-up is seen by asking: nothing wakes us for it
        await asyncio.sleep(HANGUP_CHECK)
    app.exit()


def run_dashboard(dsn: str | None = None) -> None:
    """Open the bank on ``dsn`` and run the dashboard until the person quits.

    ``dsn`` None means ``EVENTBUS_DSN``, then ``DATABASE_URL``, else the
    bank's own database on the embedded server. On a database that other
    processes write (attach mode) their events show live, and their read
    models are read as they lead them. Blocks the main thread, which the app
    needs; the bus runs on Trio in another. Quitting closes the bus
    (shielded, bounded) before returning.

    Raises:
        StoreUnavailable: the database could not be reached at open.
    """
    print("Opening the bank…", file=sys.stderr, flush=True)
    named = database.named_dsn(dsn)
    database.check_dsn(named)  # a malformed connection string is refused before it is described
    where = describe_database(named)

    @asynccontextmanager
    async def serve() -> AsyncIterator[DashboardApp]:
        async with open_loop(), open_bank(dsn) as bank, open_dashboard(bank, database=where) as app:
            yield app

    run_in_main_thread(serve, run_until_quit, DashboardApp.exit)
