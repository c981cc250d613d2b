"""The dashboard's two threads: Textual on an asyncio loop of its own, the bus on Trio.

Textual draws a frame by rendering every widget under the changed part of
the screen, in Python: 10 to 40 ms on two cores. On the bus's own thread
(where trio-asyncio used to run it) every frame held up every append under
way for that long: at 1,000 appends/s the appends' p99 grew by hundreds of
milliseconds. In a thread of its own, a frame lets the bus's thread take the
interpreter's lock within ``SWITCH_INTERVAL``.

* :class:`Bridge` takes the app's calls to the Trio side (``await
  bridge.call(controller.execute, command)``), from the app's loop.
* :func:`run_app_in_thread`, from Trio, runs an app's coroutine
  (``app.run_test()`` in tests, a headless screenshot) on a fresh asyncio loop
  in a worker thread.
* :func:`run_in_main_thread` runs the app in the main thread, as a terminal
  needs (Textual handles the terminal's signals there), while Trio runs the
  bus in a worker thread.

The Trio side writes :class:`~tui.state.DashboardState` and the app reads it;
the state's docstring says what makes that safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import sys
import threading
from collections.abc import Awaitable, Callable, Coroutine
from contextlib import AbstractAsyncContextManager
from typing import Any, Final, Generic, TypeVar

import trio

T = TypeVar("T")

SWITCH_INTERVAL: Final = 0.0005
"""Seconds a thread keeps the interpreter's lock while another waits for it
(Python's default: 0.005): how long a frame of the dashboard can hold up the bus."""


class Bridge:
    """Calls from the app's asyncio loop to the Trio run that feeds it.

    Args:
        token: the Trio run's token (``trio.lowlevel.current_trio_token()``).
    """

    def __init__(self, token: trio.lowlevel.TrioToken) -> None:
        self._token = token

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` in Trio and return its result (or raise its error).

        Blocks the calling task, never the app's loop: a worker thread of the
        loop waits for Trio. Cancelling the caller does not cancel ``fn``,
        which runs to its end in Trio.

        Raises:
            trio.RunFinishedError: the Trio run is over (the dashboard is closing).
        """
        loop = asyncio.get_running_loop()
        call = functools.partial(trio.from_thread.run, fn, *args, trio_token=self._token)
        result: T = await loop.run_in_executor(None, call)
        return result


def _new_loop() -> asyncio.AbstractEventLoop:
    # A plain asyncio loop: the policy that trio-asyncio installs is for the Trio thread's loops.
    return asyncio.SelectorEventLoop()


def _close(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def _run_on_new_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    loop = _new_loop()
    try:
        return loop.run_until_complete(main())
    finally:
        _close(loop)


async def run_app_in_thread(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """From Trio: run ``await main()`` on a fresh asyncio loop in a worker thread; return its result.

    Blocks until ``main`` returns; cancelling waits for it all the same (the
    app must end on its own, ``app.exit()``, for the call to return).
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    return await trio.to_thread.run_sync(_run_on_new_loop, main)


class _Handoff(Generic[T]):
    """What the two threads of :func:`run_in_main_thread` tell each other."""

    def __init__(self) -> None:
        self.opened = threading.Event()  # the Trio side opened its block, or failed to
        self.value: list[T] = []
        self.error: BaseException | None = None
        self.token: trio.lowlevel.TrioToken | None = None
        self.scope: trio.CancelScope | None = None
        self.release = threading.Event()  # the app is done: leave the block
        self.app_loop: asyncio.AbstractEventLoop | None = None
        self.stop_app: Callable[[], None] | None = None

    def leave(self) -> None:
        """From the main thread: let the Trio side leave its block, or stop opening it."""
        self.release.set()
        if self.token is not None and self.scope is not None:
            with contextlib.suppress(trio.RunFinishedError):  # it ended on its own meanwhile
                trio.from_thread.run_sync(self.scope.cancel, trio_token=self.token)


async def _trio_side(serve: Callable[[], AbstractAsyncContextManager[T]], handoff: _Handoff[T]) -> None:
    handoff.token = trio.lowlevel.current_trio_token()
    try:
        with trio.CancelScope() as handoff.scope:
            if handoff.release.is_set():
                return
            async with serve() as value:
                handoff.value.append(value)
                handoff.opened.set()
                await trio.sleep_forever()  # until the main thread cancels the scope
    except BaseException as exc:
        handoff.error = exc
    finally:
        handoff.opened.set()
        loop, stop = handoff.app_loop, handoff.stop_app
        if loop is not None and stop is not None and not handoff.release.is_set():
            loop.call_soon_threadsafe(stop)  # the bus is gone: so is the app


def run_in_main_thread(
    serve: Callable[[], AbstractAsyncContextManager[T]],
    app_main: Callable[[T], Coroutine[Any, Any, None]],
    stop: Callable[[T], None],
) -> None:
    """Open ``serve()`` in Trio in a worker thread, then run ``await
    app_main(value)`` in this (the main) thread on a fresh asyncio loop.

    Returns once ``app_main`` has returned and the Trio side has left its
    block. If the Trio side fails while the app runs, ``stop(value)`` is
    called on the app's loop (it must make ``app_main`` return). An error of
    the Trio side is raised here (an error while opening means ``app_main``
    never ran); a ``KeyboardInterrupt`` while opening stops the opening.
    """
    sys.setswitchinterval(SWITCH_INTERVAL)
    handoff: _Handoff[T] = _Handoff()
    thread = threading.Thread(target=trio.run, args=(_trio_side, serve, handoff), name="the bus", daemon=True)
    thread.start()
    try:
        handoff.opened.wait()
        if handoff.value:
            value = handoff.value[0]
            loop = _new_loop()
            handoff.stop_app = functools.partial(stop, value)
            handoff.app_loop = loop
            try:
                loop.run_until_complete(app_main(value))
            finally:
                handoff.app_loop = None
                _close(loop)
    finally:
        handoff.leave()
        thread.join()
    if handoff.error is not None:
        raise handoff.error
