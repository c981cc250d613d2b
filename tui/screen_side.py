"""The dashboard's screen process: Textual and the terminal, showing a copy of the bus process's state.

The app is the one tests drive in a single process (``tui/app.py``); here
its state is kept current from two sides: :class:`Link` from the bus
process's :class:`~tui.wire.Update`\\ s (the bus's figures, what the
controller does), and :class:`Reader`, on a Trio run in a thread, from the
database (the event log, the accounts, the selected account). Its controller
is a :class:`RemoteController`, whose methods run the bus process's
controller over the socket. The process
lowers its own priority (``SCREEN_NICE``): the bus and the database win the
processor when both want it.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import socket
import sys
import threading
from collections.abc import Awaitable, Callable, Iterable
from typing import Any, TypeVar

import trio

from apps.banking.app import Command, open_bank
from eventbus import EventBusError, open_loop

from .app import DashboardApp
from .bridge import new_loop
from .control import Done
from .feed import (
    ACCOUNTS_INTERVAL,
    RETRY_DELAY,
    Refresher,
    accounts_checkpoint,
    feed_accounts,
    feed_event_log,
    supervised,
)
from .state import DashboardState
from .wire import (
    SCREEN_NICE,
    BusProcessEnded,
    Call,
    Closing,
    Failed,
    Frames,
    Quit,
    Ready,
    Reply,
    Update,
    apply,
    frame,
)

T = TypeVar("T")

RECEIVE_SIZE = 65536

READER_CLOSE_TIMEOUT = 3.0
"""Seconds the screen waits, when closing, for its own reads to end."""


class Link:
    """The screen's end of the socket, on the app's asyncio loop.

    Applies each :class:`~tui.wire.Update` to ``state`` as it comes, answers
    :meth:`call` with the bus process's replies, and calls ``on_end()`` once
    the bus process's end closes (``ended`` then says why).

    Args:
        sock: the connected socket; the link owns it from now on.
        state: the copy of the bus process's state that the app shows.
        pending: messages already read from it (after :class:`~tui.wire.Ready`).
        frames: the parser that read them (it may hold part of the next).
    """

    def __init__(self, sock: socket.socket, state: DashboardState, pending: Iterable[object] = (),
                 frames: Frames | None = None) -> None:  # fmt: skip
        sock.setblocking(False)
        self._sock = sock
        self.state = state
        self._frames = frames or Frames()
        self._replies: dict[int, asyncio.Future[Any]] = {}
        self._numbers = 0
        self._lock = asyncio.Lock()
        self.ended: str | None = None
        """Why the bus process's end closed, once it has: None while it runs."""
        self.on_end: Callable[[], None] = lambda: None
        self.updates = 0
        """Updates applied so far."""
        self._updated = asyncio.Event()
        for message in pending:
            self._take(message)

    async def run(self) -> None:
        """Read and apply what the bus process sends until its end closes, then call ``on_end()``.

        Blocks until then; cancelling it stops the reading (the socket stays open).
        """
        loop = asyncio.get_running_loop()
        try:
            while self.ended is None:
                try:
                    data = await loop.sock_recv(self._sock, RECEIVE_SIZE)
                except ConnectionResetError:  # it ended with something of ours unread
                    data, reason = b"", "the bus process ended"
                except OSError as exc:
                    data, reason = b"", f"the connection to the bus process broke ({exc.strerror or exc})"
                else:
                    reason = "the bus process ended"
                if not data:
                    self._end(reason)
                    break
                try:
                    for message in self._frames.feed(data):
                        self._take(message)
                except Exception as exc:  # a corrupt stream (or a bug): the screen cannot go on
                    self._end(f"the bus process's messages could not be read ({exc!r})")
        finally:
            if self.ended is not None:
                self.on_end()

    def _take(self, message: object) -> None:
        if isinstance(message, Update):
            apply(self.state, message)
            self.updates += 1
            self._updated.set()
            self._updated = asyncio.Event()
        elif isinstance(message, Reply):
            future = self._replies.pop(message.number, None)
            if future is not None and not future.done():
                if message.error is not None:
                    future.set_exception(message.error)
                else:
                    future.set_result(message.result)
        elif isinstance(message, Closing):
            self._end(message.reason)
        elif isinstance(message, Failed):
            self._end(f"the bus process failed: {message.error}")
        elif not isinstance(message, Ready):
            self._end(f"the bus process sent what the screen does not know: {type(message).__name__}")

    def _end(self, reason: str) -> None:
        if self.ended is None:
            self.ended = reason
        for future in self._replies.values():
            if not future.done():
                future.set_exception(BusProcessEnded(self.ended))
        self._replies.clear()

    async def call(self, method: str, *args: Any) -> Any:
        """Run the bus process's ``controller.method(*args)``; return its result or raise its error.

        Blocks the calling task until the reply, never the loop. Cancelling
        the caller does not cancel the call, which runs to its end in the bus process.

        Raises:
            BusProcessEnded: the bus process ended before it answered.
        """
        if self.ended is not None:
            raise BusProcessEnded(self.ended)
        self._numbers += 1
        number = self._numbers
        future: asyncio.Future[Any] = asyncio.get_running_loop().create_future()
        self._replies[number] = future
        await self.send(Call(number, method, args))
        return await future

    async def send(self, message: object) -> None:
        """Send ``message`` to the bus process; blocks while its socket's buffer is full."""
        data = frame(message)
        async with self._lock:
            try:
                await asyncio.get_running_loop().sock_sendall(self._sock, data)
            except OSError as exc:
                self._end(f"the connection to the bus process broke ({exc.strerror or exc})")
                raise BusProcessEnded(self.ended or "") from None

    async def wait_for_update(self) -> None:
        """Block until the next update is applied (for tests)."""
        await self._updated.wait()

    def close(self) -> None:
        """Close the socket: the bus process sees its end close."""
        self._sock.close()


class Reader:
    """The screen's own reads of the bank: the event log, the accounts and
    the selected account's history, into ``state``.

    On a Trio run in a thread of this process, over a bus of its own that
    runs no read model and listens for no notification
    (``open_bank(projections=False, listen=False, write_connections=1)``) on ``dsn``, the
    bank's database as the bus's process opened it. So the bus's process
    spends nothing on them (it sends the figures and what the controller
    does), and what they cost here is at this process's lower priority: the
    log reads what was stored every ``LOG_INTERVAL`` seconds, the accounts
    when the bus's process reports that their read model moved, or when
    poked. A database that cannot be reached shows as an error on the table,
    and the reads start again ``RETRY_DELAY`` seconds later.

    :meth:`select`, :meth:`poke` and :meth:`stop` may be called from any
    thread; the first two hand their work to the Trio run and return at once.
    """

    def __init__(self, state: DashboardState, dsn: str | None) -> None:
        self.state = state
        self._dsn = dsn
        self._refresher = Refresher()
        self._token: trio.lowlevel.TrioToken | None = None
        self._stopping: trio.Event | None = None
        self._running = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        """Start the reads in a thread of their own; returns once they run."""
        self._thread = threading.Thread(target=trio.run, args=(self._run,), name="dashboard reads", daemon=True)
        self._thread.start()
        self._running.wait()

    def stop(self, timeout: float = READER_CLOSE_TIMEOUT) -> None:
        """Stop the reads (the one under way ends first) and wait for the
        thread, ``timeout`` seconds at most. Blocks the calling thread."""
        if self._thread is None:
            return
        self._soon(self._stop)
        self._thread.join(timeout)

    def select(self, account_id: str | None) -> None:
        """Show ``account_id``'s balance and history (None: no account); never blocks."""
        self._soon(self._select, account_id)

    def poke(self) -> None:
        """Read the accounts now (a command changed them); never blocks."""
        self._soon(self._refresher.poke)

    def _soon(self, fn: Callable[..., object], *args: Any) -> None:
        if self._token is not None:
            with contextlib.suppress(trio.RunFinishedError):
                self._token.run_sync_soon(fn, *args)

    def _stop(self) -> None:
        if self._stopping is not None:
            self._stopping.set()

    def _select(self, account_id: str | None) -> None:
        self.state.select(account_id)
        self._refresher.poke()

    async def _run(self) -> None:
        self._token = trio.lowlevel.current_trio_token()
        stopping = self._stopping = trio.Event()
        self._running.set()
        async with trio.open_nursery() as nursery:
            nursery.start_soon(self._read)
            await stopping.wait()
            # A read cut off halfway trips up the bus as it closes: let the one under way end.
            self._refresher.close()
            with trio.move_on_after(READER_CLOSE_TIMEOUT / 2):
                await self._refresher.stopped.wait()
            nursery.cancel_scope.cancel()

    async def _read(self) -> None:
        state = self.state
        while not self._refresher.closing:
            try:
                async with (
                    open_loop(),
                    open_bank(self._dsn, projections=False, listen=False, write_connections=1) as bank,
                    trio.open_nursery() as nursery,
                ):
                    nursery.start_soon(supervised, state, "event log", feed_event_log, bank.bus.store, state)
                    await supervised(state, "accounts feed", feed_accounts, bank, state, self._refresher,
                                     ACCOUNTS_INTERVAL, lambda: accounts_checkpoint(state.projections))  # fmt: skip
                    nursery.cancel_scope.cancel()
                return
            except Exception as exc:  # the database away (EventBusError), or a bug: shown, and tried again
                what = str(exc) if isinstance(exc, EventBusError) else f"{type(exc).__name__}: {exc}"
                state.accounts_error = f"cannot read the bank: {what}"
                state.accounts_version += 1
                state.touch()
                await trio.sleep(RETRY_DELAY)


class RemoteController:
    """The :class:`~tui.control.Controller`'s methods, run in the bus process
    through ``link``; but for :meth:`select`, which ``reader`` does here."""

    def __init__(self, link: Link, reader: Reader) -> None:
        self.link = link
        self.state = link.state
        self.reader = reader

    @property
    def simulating(self) -> bool:
        """Whether the simulator runs (or is finishing its last commands)."""
        return self.state.simulation.running

    async def execute(self, command: Command) -> Done:
        """Run a command on the bank (see :meth:`tui.control.Controller.execute`).

        Raises:
            BankingError, EventBusError: as the bus process's controller raised them.
            BusProcessEnded: the bus process ended before it answered.
        """
        done: Done = await self.link.call("execute", command)
        self.reader.poke()
        return done

    async def select(self, account_id: str | None) -> None:
        """Show ``account_id``'s balance and history (None: no account); never blocks."""
        self.reader.select(account_id)

    async def start_simulation(self, rate: float, accounts: int) -> None:
        """Start the load simulator at ``rate`` commands/s, opening ``accounts`` first."""
        await self.link.call("start_simulation", rate, accounts)

    async def stop_simulation(self) -> None:
        """Ask the simulator to stop."""
        await self.link.call("stop_simulation")

    async def resume(self) -> list[str]:
        """Let every read model that failed try again; return their names."""
        names: list[str] = await self.link.call("resume")
        return names

    async def rebuild(self, name: str) -> None:
        """Start rebuilding read model ``name``."""
        await self.link.call("rebuild", name)


class DirectCaller:
    """The app's ``bridge`` when its controller is remote: ``call(fn, *args)`` awaits ``fn(*args)`` on the loop."""

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """``await fn(*args)``."""
        return await fn(*args)


def lower_priority() -> None:
    """Lower this process's priority by ``SCREEN_NICE`` (where the system lets it)."""
    with contextlib.suppress(OSError, AttributeError):
        os.nice(SCREEN_NICE)


async def run_screen(link: Link, app_main: Callable[[DashboardApp], Awaitable[None]], dsn: str | None) -> None:
    """Run the dashboard's app over ``link`` with ``await app_main(app)``; tell the bus process to close after.

    The event log and the accounts are read here, from ``dsn`` (the bank's
    database, as the bus process's :class:`~tui.wire.Ready` gave it) by a
    :class:`Reader`. Sends :class:`~tui.wire.Ready` once the app shows. The
    app exits when the bus process's end closes. Blocks until the app has
    ended, the reads have stopped (``READER_CLOSE_TIMEOUT`` at most) and
    :class:`~tui.wire.Quit` is sent (if it still can be).
    """
    reader = Reader(link.state, dsn)
    reader.start()
    app = DashboardApp(link.state, RemoteController(link, reader), DirectCaller())
    link.on_end = app.exit

    async def announce() -> None:
        await app.wait_for_redraw()  # the first, as the app mounts
        with contextlib.suppress(BusProcessEnded):
            await link.send(Ready())

    loop = asyncio.get_running_loop()
    tasks = [loop.create_task(link.run()), loop.create_task(announce())]
    try:
        await app_main(app)
    finally:
        for task in tasks:
            task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await asyncio.gather(*tasks)
        await asyncio.to_thread(reader.stop)
        if link.ended is None:
            with contextlib.suppress(BusProcessEnded):
                await link.send(Quit())


def wait_until_ready(sock: socket.socket) -> tuple[Ready, list[object], Frames]:
    """Block until the bus process says the bank is open; return its
    :class:`~tui.wire.Ready`, what it sent after, and the parser.

    Raises:
        BusProcessEnded: the bus process ended first.
        Exception: the error with which opening the bank failed (``StoreUnavailable``...).
    """
    frames = Frames()
    while True:
        data = sock.recv(RECEIVE_SIZE)
        if not data:
            raise BusProcessEnded("the bus process ended before the bank was open")
        messages = list(frames.feed(data))
        for index, message in enumerate(messages):
            if isinstance(message, Failed):
                raise message.error
            if isinstance(message, Closing):
                raise BusProcessEnded(message.reason)
            if isinstance(message, Ready):
                return message, messages[index + 1 :], frames


def main(argv: list[str] | None = None) -> int:
    """``python -m tui.screen_side FD [--size 120x40]``: a headless screen for
    the bus process at the other end of socket ``FD`` (the benchmark's); runs until that end closes."""
    parser = argparse.ArgumentParser(prog="python -m tui.screen_side")
    parser.add_argument("fd", type=int)
    parser.add_argument("--size", default="120x40")
    args = parser.parse_args(argv)
    columns, _, rows = args.size.partition("x")
    lower_priority()
    sock = socket.socket(fileno=args.fd)
    ready, pending, frames = wait_until_ready(sock)
    link = Link(sock, DashboardState(), pending, frames)

    async def headless(app: DashboardApp) -> None:
        await app.run_async(headless=True, size=(int(columns), int(rows)))

    loop = new_loop()
    try:
        loop.run_until_complete(run_screen(link, headless, ready.dsn))
    finally:
        loop.close()
        link.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
