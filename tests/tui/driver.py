"""Drive the dashboard in tests: a real bank and bus in Trio, the app through ``run_test()``.

The app runs as it does for a person: on an asyncio loop in a thread of its
own (``tui/bridge.py``). A test writes its body as an asyncio coroutine
``script(app, pilot)``; Trio work inside it goes through :func:`call_trio`.
Waiting is on the state (woken by every change), then on the app's next
redraw: never a fixed sleep.
"""

from __future__ import annotations

import asyncio
import contextvars
import io
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

import trio
from rich.cells import cell_len
from rich.console import Console
from textual.pilot import Pilot
from textual.widget import Widget

from apps.banking.app import Bank, open_bank
from eventbus import open_loop
from tui.app import DashboardApp
from tui.bridge import run_app_in_thread
from tui.run import open_dashboard
from tui.state import DashboardState

T = TypeVar("T")

SIZE = (120, 40)
WAIT = 15.0
"""Seconds a test waits at most for the dashboard to show something."""

Script = Callable[[DashboardApp, Pilot[None]], Awaitable[None]]


async def drive(
    dsn: str,
    script: Script,
    *,
    before: Callable[[Bank], Awaitable[Any]] | None = None,
    size: tuple[int, int] = SIZE,
    projections: bool = True,
) -> None:
    """Open a bank on ``dsn`` (``before(bank)`` first, if given), run the
    dashboard (``size``: columns, rows) and ``script`` in it. Without
    ``projections`` the bank's read models are not started."""
    async with open_loop(), open_bank(dsn, projections=projections) as bank:
        if before is not None:
            await before(bank)
        async with open_dashboard(bank, database="test") as app:

            async def go() -> None:
                async with app.run_test(size=size) as pilot:
                    token = _app.set(app)
                    try:
                        await script(app, pilot)
                    finally:
                        _app.reset(token)

            await run_app_in_thread(go)


_app: contextvars.ContextVar[DashboardApp] = contextvars.ContextVar("app")


async def call_trio(fn: Callable[..., Awaitable[T]], *args: Any) -> T:
    """From a test's script: run ``await fn(*args)`` in the bus's Trio run, through the app's bridge."""
    return await _app.get().bridge.call(fn, *args)


def screen_text(app: DashboardApp) -> str:
    """What the screen shows now, as plain text, a line per row (forms and toasts included)."""
    width, height = app.size
    console = Console(width=width, height=height, file=io.StringIO(), force_terminal=True, color_system=None,
                      record=True, legacy_windows=False, safe_box=False)  # fmt: skip
    console.print(app.screen._compositor.render_update(full=True, screen_stack=app._background_screens))
    return console.export_text()


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


async def until_shown(app: DashboardApp, check: Callable[[], bool], timeout: float = WAIT) -> None:
    """From the app's side: wait, redraw after redraw, until ``check()`` holds on
    screen (what changes with every event is redrawn at most once a BUSY_INTERVAL,
    so the redraw that follows a change may not show it yet)."""
    async with asyncio.timeout(timeout):
        while not check():
            await app.wait_for_redraw()


async def type_text(pilot: Pilot[None], text: str) -> None:
    """Press the keys of ``text``, one by one."""
    await pilot.press(*("space" if char == " " else char for char in text))


def region_text(app: DashboardApp, widget: Widget) -> str:
    """The text a widget shows on screen, its lines joined by single spaces (wrapped text reads as one)."""
    region = widget.region
    lines = screen_text(app).splitlines()[region.y : region.bottom]
    return " ".join(" ".join(_cells(line, region.x, region.right).split()) for line in lines).strip()


def _cells(line: str, start: int, end: int) -> str:
    """The characters of ``line`` from terminal cell ``start`` to ``end`` (wide characters take two)."""
    out, cell = [], 0
    for char in line:
        width = cell_len(char)
        if start <= cell and cell + width <= end:
            out.append(char)
        cell += width
    return "".join(out)
