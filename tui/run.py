"""Run the dashboard: the screen in this process, the bank, its bus and the feeds in another.

``banking dashboard [--dsn URL]`` and ``just banking`` call
:func:`run_dashboard`: the app in this process's main thread, the bus on
Trio in a child process (``tui/bus_side.py``), the two over a socket pair
(``tui/wire.py``). Tests and tools use :func:`open_dashboard` on a bank of
their own, in one process, and drive the app with ``App.run_test()`` in a
thread of its own.
"""

from __future__ import annotations

import asyncio
import functools
import os
import re
import select
import signal
import socket
import subprocess
import sys
import tempfile
import termios
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import IO, Any
from urllib.parse import parse_qs, unquote, urlsplit

import trio

from apps.banking import database
from apps.banking.app import Bank

from .app import DashboardApp
from .bridge import Bridge, run_on_new_loop
from .bus_side import open_feeds
from .screen_side import Link, lower_priority, run_screen, wait_until_ready
from .state import DashboardState
from .wire import BusProcessEnded, Open, frame


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


@asynccontextmanager
async def open_dashboard(bank: Bank, *, database: str = "") -> AsyncIterator[DashboardApp]:
    """Feed a new dashboard from ``bank`` for the duration of the block; yield the app, not yet running.

    The dashboard in this process (for tests and tools; ``banking dashboard``
    runs its screen in a process of its own, see :func:`run_dashboard`). Run
    the app in the block on a loop of its own in another thread
    (:func:`tui.bridge.run_app_in_thread`, with ``app.run_test()`` in
    tests); it reaches this Trio run through ``app.bridge``. Leaving the
    block stops the feeds, the simulator and any rebuild (see
    :func:`open_feeds`): the app must have ended first.
    """
    async with open_feeds(bank, database=database) as (state, controller):
        yield DashboardApp(state, controller, Bridge(trio.lowlevel.current_trio_token()))


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


BUS_CLOSE_TIMEOUT = 15.0
"""Seconds the screen waits, after the person quits, for the bus process to close the bus and exit."""

ERRORS_SHOWN = 8000
"""Bytes of what the bus process wrote on stderr that are shown once the screen is gone, at most (the last)."""


def run_dashboard(dsn: str | None = None, *, metrics_port: int | None = None) -> None:
    """Open the bank on ``dsn`` and run the dashboard until the person quits.

    ``dsn`` None means ``EVENTBUS_DSN``, then ``DATABASE_URL``, else the
    bank's own database on the embedded server. On a database that other
    processes write (attach mode) their events show live, and their read
    models are read as they lead them.

    Two processes: this one keeps the terminal and runs the screen (Textual,
    at a lower priority, ``tui/screen_side.py``); a child runs the bus, the
    bank, the feeds and the simulator (``tui/bus_side.py``, serving the
    Prometheus metrics on ``metrics_port`` if given), so a frame of the
    screen never holds up an append. Blocks this (the main) thread, which the
    app needs, until the person quits (``q``, Ctrl-C, SIGTERM, SIGHUP, the
    terminal gone), then waits for the bus process to close the bus
    (``BUS_CLOSE_TIMEOUT`` at most, then it is killed). If the bus process
    ends first (killed, say), the screen closes at once and this raises.

    Raises:
        StoreUnavailable: the database could not be reached at open.
        BusProcessEnded: the bus process ended before the person quit.
        KeyboardInterrupt: Ctrl-C while the bank opened (the bus process stops too).
    """
    print("Opening the bank…", file=sys.stderr, flush=True)
    named = database.named_dsn(dsn)
    database.check_dsn(named)  # a malformed connection string is refused before it is described
    where = describe_database(named)
    with tempfile.TemporaryFile() as errors:
        link = _run_split(dsn, where, metrics_port, errors)
    if link.ended is not None:
        raise BusProcessEnded(link.ended)


def _run_split(dsn: str | None, where: str, metrics_port: int | None, errors: IO[bytes]) -> Link:
    """Start the bus process, run the screen until it ends, wait for the bus process; return the link."""
    ours, theirs = socket.socketpair()
    terminal = sys.__stdout__ is not None and sys.__stdout__.isatty()
    try:
        bus = subprocess.Popen(
            [sys.executable, "-m", "tui.bus_side", str(theirs.fileno())],
            pass_fds=(theirs.fileno(),),
            stdin=subprocess.DEVNULL,
            stdout=None if terminal else subprocess.DEVNULL,  # the terminal, to put it back if the screen dies
            stderr=errors,
            # A process group of its own: the terminal's signals (Ctrl-C, a
            # hang-up) go to its foreground group, the screen's, which handles
            # them. The same session as the screen: Linux's scheduler shares
            # the processor between sessions first (autogroups), and nice
            # counts only inside one, so only there do the screen's frames
            # yield to the bus (SCREEN_NICE).
            process_group=0,
        )
    finally:
        theirs.close()
    try:
        ours.sendall(frame(Open(dsn, where, metrics_port, _terminal_state())))
        ready, pending, frames = wait_until_ready(ours)
        lower_priority()
        link = Link(ours, DashboardState(database=where), pending, frames)
        run_on_new_loop(functools.partial(run_screen, link, run_until_quit, ready.dsn))
    finally:
        ours.close()
        ended = _wait_for(bus)
        _show(errors)
    how = f" ({ended})" if bus.returncode != 0 else ""
    if link.ended is not None:
        link.ended = f"{link.ended}{how}; the dashboard closed"
    elif bus.returncode != 0:
        link.ended = f"the bus process did not close cleanly{how}"
    return link


def _terminal_state() -> Any:
    stdin = sys.__stdin__
    try:
        return termios.tcgetattr(stdin.fileno()) if stdin is not None and stdin.isatty() else None
    except (OSError, termios.error, ValueError):
        return None


def _wait_for(bus: subprocess.Popen[bytes]) -> str:
    """Wait for the bus process to end (killing it after ``BUS_CLOSE_TIMEOUT``); say how it ended."""
    try:
        bus.wait(BUS_CLOSE_TIMEOUT)
    except subprocess.TimeoutExpired:
        bus.kill()
        bus.wait()
        return f"it did not close within {BUS_CLOSE_TIMEOUT:g} s and was killed"
    except KeyboardInterrupt:  # a second Ctrl-C while it closes: do not leave it behind
        bus.kill()
        bus.wait()
        raise
    code = bus.returncode
    if code < 0:
        return f"killed by {signal.Signals(-code).name}"
    return f"exit status {code}"


def _show(errors: IO[bytes]) -> None:
    """Copy the end of what the bus process wrote on stderr to ours (the terminal is ours again)."""
    size = errors.seek(0, os.SEEK_END)
    if not size:
        return
    errors.seek(max(0, size - ERRORS_SHOWN))
    sys.stderr.write(errors.read().decode(errors="replace"))
    sys.stderr.flush()
