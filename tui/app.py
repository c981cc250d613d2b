"""The dashboard: a Textual app over a running bank and bus.

The app never awaits the bus on its own loop: it reads :class:`DashboardState`
on one timer (``REFRESH``), which Trio tasks keep current, and it hands what
the person asks for to the :class:`Controller` through ``eventbus.call_trio``.
Run it with :func:`tui.run.run_dashboard`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import signal
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any, ClassVar

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.screen import Screen
from textual.widgets import DataTable, Footer

from eventbus import call_trio

from .accounts import AccountDetail, AccountsTable
from .control import Controller
from .forms import DepositForm, Form, OpenAccountForm, RebuildForm, SimulatorForm, TransferForm, WithdrawForm
from .state import DashboardState
from .widgets import EventLog, Figures, HealthBar, LivePanel, ProjectionsTable, SubscriptionsTable

REFRESH = 0.25
"""Seconds between redraws: a burst of any size costs at most one redraw per tick."""


def _run_deferred(loop: asyncio.AbstractEventLoop, handler: Callable[[int, Any], Any], signum: int, _: Any) -> None:
    with contextlib.suppress(RuntimeError):  # the loop is closed: the app is gone
        loop.call_soon_threadsafe(handler, signum, None)


def _defer_terminal_signals(app: App[Any]) -> None:
    """Run Textual's SIGTSTP and SIGCONT handlers on the asyncio loop, not where the signal lands.

    Under trio-asyncio a Python signal handler runs in Trio's context, where
    Textual's (which ask for the running asyncio loop) raise and end the whole
    program without closing anything; a SIGCONT arrives, for one, when the
    terminal closes under ``just``. Call from the app's loop.
    """
    if app.is_headless:
        return
    loop = asyncio.get_running_loop()
    for signum in (signal.SIGTSTP, signal.SIGCONT):
        handler = signal.getsignal(signum)
        if callable(handler):
            signal.signal(signum, functools.partial(_run_deferred, loop, handler))


class DashboardApp(App[None]):
    """The bank and its bus, live: accounts, events, figures, projections; forms to act.

    Args:
        state: what the Trio tasks keep current.
        controller: runs what the person asks for on the Trio side.
    """

    CSS_PATH = Path(__file__).with_name("dashboard.tcss")
    TITLE = "eventbus · bank"

    BINDINGS: ClassVar[list[BindingType]] = [
        Binding("o", "open_account", "Open"),
        Binding("d", "deposit", "Deposit"),
        Binding("w", "withdraw", "Withdraw"),
        Binding("t", "transfer", "Transfer"),
        Binding("s", "simulator", "Simulator"),
        Binding("r", "rebuild", "Rebuild"),
        Binding("p", "pause_log", "Pause log"),
        Binding("slash", "filter", "Filter"),
        Binding("a", "focus_accounts", "Accounts", show=False),
        Binding("escape", "focus_accounts", "Back to the accounts", show=False),
        Binding("q", "quit", "Quit"),
    ]

    def __init__(self, state: DashboardState, controller: Controller) -> None:
        super().__init__()
        self.state = state
        self.controller = controller
        self.sub_title = state.database
        self._redrawn: asyncio.Event = asyncio.Event()

    def compose(self) -> ComposeResult:
        """The layout: health, accounts and account, log and figures, footer."""
        yield HealthBar(self.state, id="health")
        with Horizontal(id="top"):
            yield AccountsTable(self.state, id="accounts")
            yield AccountDetail(self.state, id="account")
        with Horizontal(id="bottom"):
            yield EventLog(self.state, id="log")
            with Vertical(id="side"):
                yield Figures(self.state, id="figures")
                yield ProjectionsTable(self.state, id="projections")
                yield SubscriptionsTable(self.state, id="subscriptions")
        yield Footer()

    def on_mount(self) -> None:
        """Start the redraw timer and focus the accounts."""
        _defer_terminal_signals(self)
        self.redraw()
        self.set_interval(REFRESH, self.redraw)
        self.query_one("#accounts-table", DataTable).focus()

    # ------------------------------------------------------------ redraws

    def redraw(self) -> None:
        """Show the state: each panel whose part of it changed, and the notices waiting."""
        state = self.state
        while state.notices:
            notice = state.notices.popleft()
            self.notify(
                notice.text, severity=notice.severity, timeout=8 if notice.severity == "error" else 5, markup=False
            )
        if not self.screen_stack:
            return  # the app is closing and its screens are gone
        try:
            health = self.main.query_one(HealthBar)
        except NoMatches:
            return  # the app is closing and its widgets are gone
        health.redraw()
        for panel in self.main.query(LivePanel):
            panel.redraw()
        self._redrawn.set()
        self._redrawn = asyncio.Event()

    async def wait_for_redraw(self) -> None:
        """Block until the next redraw has run (for tests)."""
        await self._redrawn.wait()

    # ------------------------------------------------------------ selection

    @on(AccountsTable.Selected)
    async def _selected(self, message: AccountsTable.Selected) -> None:
        await call_trio(self.controller.select, message.account_id)

    # ------------------------------------------------------------ actions

    def _form(self, form: Form) -> None:
        def done(message: str | None) -> None:
            if message:
                self.notify(message, markup=False)

        self.push_screen(form, done)

    def action_open_account(self) -> None:
        """Open an account (a form)."""
        self._form(OpenAccountForm(self.controller))

    def action_deposit(self) -> None:
        """Deposit into the selected account (a form)."""
        self._form(DepositForm(self.controller, self.state.selected or ""))

    def action_withdraw(self) -> None:
        """Withdraw from the selected account (a form)."""
        self._form(WithdrawForm(self.controller, self.state.selected or ""))

    def action_transfer(self) -> None:
        """Transfer from the selected account (a form)."""
        self._form(TransferForm(self.controller, self.state.selected or ""))

    async def action_simulator(self) -> None:
        """Start the load simulator (a form), or stop it when it runs."""
        if self.controller.simulating:
            await call_trio(self.controller.stop_simulation)
            self.notify("Stopping the simulator: it answers the commands under way first.")
        else:
            self._form(SimulatorForm(self.controller))

    def action_rebuild(self) -> None:
        """Rebuild a read model (a form to choose which)."""
        self._form(RebuildForm(self.controller))

    def action_pause_log(self) -> None:
        """Freeze the event log, or let it run again."""
        self.main.query_one(EventLog).toggle_pause()

    def action_filter(self) -> None:
        """Move to the event log's type filter."""
        self.main.query_one("#log-type").focus()

    def action_focus_accounts(self) -> None:
        """Move to the accounts table."""
        self.main.query_one("#accounts-table").focus()

    @property
    def main(self) -> Screen[object]:
        """The dashboard's own screen, under any form or palette."""
        return self.screen_stack[0]

    def get_system_commands(self, screen: Screen[object]) -> Iterable[SystemCommand]:
        """The command palette: the dashboard's actions, then Textual's own."""
        yield SystemCommand("Open account", "Open an account (o)", self.action_open_account)
        yield SystemCommand("Deposit", "Deposit into the selected account (d)", self.action_deposit)
        yield SystemCommand("Withdraw", "Withdraw from the selected account (w)", self.action_withdraw)
        yield SystemCommand("Transfer", "Transfer from the selected account (t)", self.action_transfer)
        if self.controller.simulating:
            yield SystemCommand("Stop simulator", "Stop the load simulator (s)", self.action_simulator)
        else:
            yield SystemCommand("Start simulator", "Start the load simulator (s)", self.action_simulator)
        yield SystemCommand("Rebuild read model", "Rebuild accounts or analytics from the events (r)",
                            self.action_rebuild)  # fmt: skip
        yield SystemCommand("Pause log", "Freeze or resume the event log (p)", self.action_pause_log)
        yield SystemCommand("Filter events", "Filter the event log by type or account (/)", self.action_filter)
        yield from super().get_system_commands(screen)
