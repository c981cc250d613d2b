"""The dashboard in the bus's own process (tests, tools): Textual on an asyncio loop and a thread of its own.

Textual draws a frame by rendering every widget under the changed part of
the screen, in Python: 10 to 40 ms on two cores. On the bus's own thread
(where trio-asyncio used to run it) every frame held up every append under
way for that long: at 1,000 appends/s the appends' p99 grew by hundreds of
milliseconds. In a thread of its own, a frame lets the bus's thread take the
interpreter's lock within ``SWITCH_INTERVAL``, but still takes its time
(+7 ms at p99); ``banking dashboard`` therefore runs the screen in a process
of its own (``tui/run.py``), and this module serves tests and tools.

* :class:`Bridge` takes the app's calls to the Trio side (``await
  bridge.call(controller.execute, command)``), from the app's loop.
* :func:`run_app_in_thread`, from Trio, runs an app's coroutine
  (``app.run_test()`` in tests, a headless screenshot) on a fresh asyncio loop
  in a worker thread.

The Trio side writes :class:`~tui.state.DashboardState` and the app reads it;
the state's docstring says what makes that safe.
"""

from __future__ import annotations

import asyncio
import functools
import sys
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any, Final, Protocol, TypeVar

import trio

T = TypeVar("T")

SWITCH_INTERVAL: Final = 0.0005
"""Seconds a thread keeps the interpreter's lock while another waits for it
(Python's default: 0.005): how long a frame of the dashboard can hold up the bus."""


class Caller(Protocol):
    """How the app runs its controller's methods: ``await caller.call(controller.execute, command)``."""

    async def call(self, fn: Callable[..., Awaitable[T]], *args: Any) -> T:
        """Run ``await fn(*args)`` where the controller lives; return its result or raise its error."""
        ...


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


def new_loop() -> asyncio.AbstractEventLoop:
    """A fresh plain asyncio loop, for the app (not yet running, not set as the thread's)."""
    # A plain asyncio loop: the policy that trio-asyncio installs is for the Trio thread's loops.
    return asyncio.SelectorEventLoop()


def _close(loop: asyncio.AbstractEventLoop) -> None:
    try:
        loop.run_until_complete(loop.shutdown_default_executor())
    finally:
        loop.close()


def run_on_new_loop(main: Callable[[], Coroutine[Any, Any, T]]) -> T:
    """Run ``await main()`` on a fresh asyncio loop in this thread; close the loop after; return its result."""
    loop = new_loop()
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
    return await trio.to_thread.run_sync(run_on_new_loop, main)
