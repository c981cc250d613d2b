"""Drive the dashboard in tests: a real bank and bus in Trio, the app through ``run_test()``.

A test writes its body as an asyncio coroutine ``script(app, pilot)``; Trio
work inside it goes through ``call_trio``. Waiting is on the state (woken by
every change), then on the app's next redraw: never a fixed sleep.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

import trio
from textual.pilot import Pilot

from apps.banking.app import Bank, open_bank
from eventbus import call_asyncio, call_trio, open_loop
from tui.app import DashboardApp
from tui.run import open_dashboard
from tui.state import DashboardState

SIZE = (120, 40)
WAIT = 15.0
"""Seconds a test waits at most for the dashboard to show something."""

Script = Callable[[DashboardApp, Pilot[None]], Awaitable[None]]


async def drive(dsn: str, script: Script, *, before: Callable[[Bank], Awaitable[Any]] | None = None) -> None:
    """Open a bank on ``dsn`` (``before(bank)`` first, if given), run the dashboard and ``script`` in it."""
    async with open_loop(), open_bank(dsn) as bank:
        if before is not None:
            await before(bank)
        async with open_dashboard(bank, database="test") as app:

            async def go() -> None:
                async with app.run_test(size=SIZE) as pilot:
                    await script(app, pilot)

            await call_asyncio(go)


async def _wait(state: DashboardState, predicate: Callable[[DashboardState], bool], timeout: float) -> None:
    with trio.fail_after(timeout):
        await state.wait_until(predicate)


async def until_state(app: DashboardApp, predicate: Callable[[DashboardState], bool], timeout: float = WAIT) -> None:
    """From the app's side: wait until ``predicate(state)`` holds (checked after every change)."""
    await call_trio(_wait, app.state, predicate, timeout)


async def until(app: DashboardApp, predicate: Callable[[DashboardState], bool], timeout: float = WAIT) -> None:
    """From the app's side: wait until ``predicate(state)`` holds, then for a redraw that shows it."""
    await until_state(app, predicate, timeout)
    await app.wait_for_redraw()


async def type_text(pilot: Pilot[None], text: str) -> None:
    """Press the keys of ``text``, one by one."""
    await pilot.press(*("space" if char == " " else char for char in text))
