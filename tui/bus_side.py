"""The dashboard's bus process: the bank, its bus, the feeds and the controller, serving a screen over a socket.

``banking dashboard`` (:func:`tui.run.run_dashboard`) keeps the terminal and
Textual in the person's process and starts this one beside it (``python -m
tui.bus_side FD``), so that a frame of the screen, 10 to 40 ms of Python,
never holds the bus's interpreter. The two speak :mod:`tui.wire` over a
socket pair: the screen sends :class:`~tui.wire.Open` (where the bank is)
and calls; this process sends :class:`~tui.wire.Update`\\ s of the bus's
figures and of what the controller does, at most ``1 / SEND_INTERVAL`` a
second, and the calls' replies. The event log and the accounts it neither
keeps nor sends: the screen's process reads them from the database itself,
so that at 1,000 appends a second the dashboard costs this process next to
nothing (``python -m bench dashboard`` measures what it adds to the appends).

A slow screen never slows the bus: one task sends the updates, and what
changes while it waits is coalesced into the next one (each field is
replaced whole). When the screen's
end closes (it quit, or was killed) the bus closes and the process exits;
if it was killed, the terminal's settings are put back first.
"""

from __future__ import annotations

import functools
import logging
import os
import pickle
import signal
import socket
import sys
import termios
from collections.abc import AsyncIterator, Awaitable, Callable
from contextlib import asynccontextmanager
from typing import Any

import attrs
import trio

from apps.banking import operations
from apps.banking.app import Bank, open_bank
from eventbus import EventBusError, open_loop

from .control import Controller
from .feed import Refresher, feed_accounts, feed_dead_letters, feed_events, feed_figures, supervised
from .state import DashboardState
from .wire import SEND_INTERVAL, Call, Closing, Failed, Frames, Open, Publisher, Quit, Ready, Reply, frame, portable

CLOSE_TIMEOUT = 3.0
"""Seconds the dashboard waits, when closing, for the simulator's commands and
the read of the accounts under way."""

RECEIVE_SIZE = 65536
"""Bytes read from the socket at a time, at most."""

CALLS = frozenset({"execute", "select", "start_simulation", "stop_simulation", "resume", "rebuild"})
"""The controller's methods the screen may call."""

STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP, signal.SIGINT)
"""Signals that close the bus process as the screen's quitting does."""


@asynccontextmanager
async def open_feeds(
    bank: Bank, *, database: str = "", reads: bool = True
) -> AsyncIterator[tuple[DashboardState, Controller]]:
    """Keep a new :class:`DashboardState` current from ``bank`` for the duration
    of the block; yield it and the :class:`Controller` that acts on the bank.

    With ``reads``, the event log (subscribed before the block starts, so
    every event stored from then on shows) and the accounts too; without,
    only the bus's figures, the dead letters and what the controller does
    (the screen's own process reads the rest, see ``tui/screen_side.py``).
    Leaving the block lets the simulator's commands and the read under way
    end (at most ``CLOSE_TIMEOUT`` seconds, shielded), then stops the feeds,
    the simulator and any rebuild.
    """
    state = DashboardState(database=database)
    refresher = Refresher()
    async with trio.open_nursery() as nursery:
        nursery.start_soon(supervised, state, "throughput figures", feed_figures, bank, state)
        nursery.start_soon(supervised, state, "dead letters feed", feed_dead_letters, bank, state)
        if reads:
            await nursery.start(feed_events, bank.bus, state)
            nursery.start_soon(supervised, state, "accounts feed", feed_accounts, bank, state, refresher)
        else:
            refresher.stopped.set()  # no feed of the accounts here to wait for
        controller = Controller(bank, state, nursery, refresher)
        try:
            yield state, controller
        finally:
            # Let the work under way end rather than cut it off halfway (see
            # feed_accounts); then cancel whatever is left.
            refresher.close()
            with trio.move_on_after(CLOSE_TIMEOUT, shield=True):
                await controller.aclose()
                await refresher.stopped.wait()
            nursery.cancel_scope.cancel()


class Inbox:
    """The messages that come in on ``stream``, one at a time.

    :meth:`receive` is safe to cancel: nothing read is lost.
    """

    def __init__(self, stream: trio.abc.ReceiveStream) -> None:
        self._stream = stream
        self._frames = Frames()
        self._pending: list[object] = []

    async def receive(self) -> object | None:
        """Block until the next message; None once the other end closed (or broke)."""
        while not self._pending:
            try:
                data = await self._stream.receive_some(RECEIVE_SIZE)
            except trio.BrokenResourceError:
                return None
            if not data:
                return None
            self._pending.extend(self._frames.feed(data))
        return self._pending.pop(0)


class Outbox:
    """Frames out on ``stream``, one sender at a time; once the other end is gone, sends are dropped."""

    def __init__(self, stream: trio.abc.SendStream) -> None:
        self._stream = stream
        self._lock = trio.Lock()
        self.broken = False

    async def send(self, message: object) -> None:
        """Send ``message``; blocks while the socket's buffer is full (the screen is slow).

        Cancelling it may leave half a frame on the socket: cancel only to end the connection.
        """
        data = frame(message)
        async with self._lock:
            if self.broken:
                return
            try:
                await self._stream.send_all(data)
            except (trio.BrokenResourceError, trio.ClosedResourceError):
                self.broken = True


async def _publish(publisher: Publisher, outbox: Outbox) -> None:
    while not outbox.broken:
        update = await publisher.update()
        if update is not None:
            await outbox.send(update)  # meanwhile what changes waits in the state, coalesced
        await trio.sleep(SEND_INTERVAL)


def _method(controller: Controller, name: str) -> Callable[..., Awaitable[object]]:
    if name not in CALLS:
        raise ValueError(f"the dashboard has no command {name!r}")
    method: Callable[..., Awaitable[object]] = getattr(controller, name)
    return method


async def _answer(controller: Controller, call: Call, outbox: Outbox) -> None:
    try:
        reply = Reply(call.number, await _method(controller, call.method)(*call.args))
    except Exception as exc:  # the screen shows it, as it did when it called in its own process
        reply = Reply(call.number, error=portable(exc))
    try:
        await outbox.send(reply)
    except (pickle.PicklingError, TypeError, AttributeError) as exc:  # a result that cannot cross
        await outbox.send(Reply(call.number, error=EventBusError(f"the answer to {call.method} cannot be sent: {exc}")))


async def serve_screen(
    bank: Bank,
    inbox: Inbox,
    outbox: Outbox,
    *,
    database: str,
    on_lost: Callable[[], None] = lambda: None,
    task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED,
) -> bool:
    """Feed the screen at the other end of the socket from ``bank``, and run its
    calls, until it quits or its end closes; return whether it quit.

    Blocks until then; ``task_status.started()`` once the screen says it
    shows (its :class:`~tui.wire.Ready`); calls ``on_lost()`` at once if the
    end closes without a :class:`~tui.wire.Quit`. The feeds, the simulator
    and the rebuilds stop before it returns (see :func:`open_feeds`).
    Cancelling it stops them the same way.
    """
    async with open_feeds(bank, database=database, reads=False) as (state, controller), trio.open_nursery() as nursery:
        nursery.start_soon(_publish, Publisher(state), outbox)
        shown = False
        try:
            while True:
                message = await inbox.receive()
                if message is None:
                    on_lost()
                    return False
                if isinstance(message, Quit):
                    return True
                if isinstance(message, Call):
                    nursery.start_soon(_answer, controller, message, outbox)
                elif isinstance(message, Ready) and not shown:
                    shown = True
                    task_status.started()
        finally:
            nursery.cancel_scope.cancel()


# ---------------------------------------------------------------- the process


RESET_TERMINAL = (
    "\x1b[?1000l\x1b[?1002l\x1b[?1003l\x1b[?1006l\x1b[?1015l\x1b[?2004l\x1b[?1004l\x1b[<u\x1b[?1049l\x1b[?25h"
)
"""What puts a terminal back from Textual's modes: mouse, bracketed paste,
focus and key reports off, the main screen back, the cursor shown."""


def restore_terminal(saved: Any, line: str) -> None:
    """Put the terminal on standard output back as it was (``saved``, from
    ``termios.tcgetattr``) and write ``line`` on it; nothing if it is not a terminal or is gone."""
    try:
        if not os.isatty(1):
            return
        # Should this process share the terminal's session, outside its
        # foreground group, the kernel would stop it for changing the terminal.
        signal.signal(signal.SIGTTOU, signal.SIG_IGN)
        termios.tcsetattr(1, termios.TCSADRAIN, saved)
        os.write(1, (RESET_TERMINAL + line + "\r\n").encode())
    except (OSError, termios.error, TypeError, ValueError):
        return  # the terminal is gone too: nothing to put back


SCREEN_LOST = "error: the dashboard's screen ended unexpectedly; its bus is closing."
"""The line the bus process writes on the terminal when the screen process was killed."""


@attrs.define
class _Ending:
    quit: bool = False
    signal: str | None = None


async def _stop_on_signals(scope: trio.CancelScope, ending: _Ending, outbox: Outbox,
                           task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:  # fmt: skip
    with trio.open_signal_receiver(*STOP_SIGNALS) as signals:
        task_status.started()
        async for signum in signals:
            ending.signal = signal.Signals(signum).name
            await outbox.send(Closing(f"the bus process was stopped ({ending.signal})"))
            scope.cancel()
            return


async def _open_and_serve(stream: trio.SocketStream) -> int:
    inbox, outbox = Inbox(stream), Outbox(stream)
    opening = await inbox.receive()
    if not isinstance(opening, Open):
        return 1  # the screen went before it said where the bank is
    ending = _Ending()
    screen_gone = trio.Event()
    async with trio.open_nursery() as nursery:
        await nursery.start(_stop_on_signals, nursery.cancel_scope, ending, outbox)

        async def watch(task_status: trio.TaskStatus[trio.CancelScope] = trio.TASK_STATUS_IGNORED) -> None:
            # While the bank opens, nothing comes but the screen's going (Ctrl-C while it waits).
            with trio.CancelScope() as scope:
                task_status.started(scope)
                if await inbox.receive() is None:
                    screen_gone.set()
                nursery.cancel_scope.cancel()
            watched.set()

        watched = trio.Event()
        watching = await nursery.start(watch)
        try:
            if opening.metrics_port is not None:
                operations.serve_metrics(opening.metrics_port)
            async with open_loop(), open_bank(opening.dsn) as bank:
                watching.cancel()
                await watched.wait()
                await outbox.send(Ready(bank.bus.projections.dsn))
                lost = functools.partial(restore_terminal, opening.terminal_state, SCREEN_LOST)
                ending.quit = await serve_screen(bank, inbox, outbox, database=opening.database, on_lost=lost)
                if not ending.quit:
                    screen_gone.set()
        except Exception as exc:  # opening failed: the screen says why, in one line
            await outbox.send(Failed(portable(exc)))
            return 1
        nursery.cancel_scope.cancel()
    if screen_gone.is_set() and not ending.quit:
        return 1
    return 0


class OneLine(logging.Formatter):
    """A log record on one line, its exception as its type and message: what
    this process logs is shown on the terminal after the screen has gone
    (``tui/run.py``), where a driver's traceback of thirty lines for a
    connection it restored says less than its one line."""

    def formatException(self, ei: Any) -> str:
        return ""

    def format(self, record: logging.LogRecord) -> str:
        line = super().format(record)
        error = record.exc_info[1] if record.exc_info else None
        return line if error is None else f"{line} ({type(error).__name__}: {error})"


def log_on_one_line() -> None:
    """Send warnings and errors to stderr a line each, unless logging is set up already."""
    root = logging.getLogger()
    if root.handlers:
        return
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(OneLine("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root.addHandler(handler)
    root.setLevel(logging.WARNING)


def main(argv: list[str] | None = None) -> int:
    """``python -m tui.bus_side FD``: serve the screen at the other end of socket ``FD``; return the exit status."""
    args = sys.argv[1:] if argv is None else argv
    log_on_one_line()
    sock = socket.socket(fileno=int(args[0]))

    async def run() -> int:
        stream = trio.SocketStream(trio.socket.from_stdlib_socket(sock))
        async with stream:
            return await _open_and_serve(stream)

    return trio.run(run)


if __name__ == "__main__":
    sys.exit(main())
