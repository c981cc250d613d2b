"""The dashboard: a Textual app over a running bank and bus.

The app runs on an asyncio loop of its own. It reads :class:`DashboardState`
on one timer (``REFRESH``) and hands what the person asks for to its
controller through its ``bridge``. For a person (:func:`tui.run.run_dashboard`)
it runs in a process of its own: the state is a copy the bus process keeps
current over a socket, the controller a :class:`~tui.screen_side.RemoteController`
(``tui/screen_side.py``). In tests it runs in a thread beside the bus: Trio
tasks write the state, the :class:`~tui.control.Controller` is reached
through a :class:`~tui.bridge.Bridge`.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Iterable
from pathlib import Path
from typing import ClassVar

from textual import on
from textual.app import App, ComposeResult, SystemCommand
from textual.binding import Binding, BindingType
from textual.containers import Horizontal, Vertical
from textual.css.query import NoMatches
from textual.driver import Driver
from textual.screen import Screen

from .accounts import AccountDetail, AccountsTable
from .bridge import Caller
from .control import Actions
from .forms import DepositForm, Form, OpenAccountForm, RebuildForm, SimulatorForm, TransferForm, WithdrawForm
from .keys import KEYS
from .log import EventLog
from .state import DashboardState
from .table import LineTable
from .widgets import Figures, HealthBar, KeyBar, LivePanel, ProjectionsTable, SubscriptionsTable
from .wire import BusProcessEnded

REFRESH = 0.5
"""Seconds between redraws: a burst of any size costs at most one redraw per tick."""

WIDE = 110
"""Columns from which the panels stand side by side (below: stacked, the side panels a line each)."""

TALL = 32
"""Rows from which the side panels show in full (below: a line each)."""


class DashboardApp(App[None]):
    """The bank and its bus, live: accounts, events, figures, projections; forms to act.

    Args:
        state: what the Trio tasks keep current.
        controller: runs what the person asks for on the Trio side.
    """

    CSS_PATH = Path(__file__).with_name("dashboard.tcss")
    TITLE = "eventbus · bank"

    BINDINGS: ClassVar[list[BindingType]] = [Binding(key.key, key.action, key.label, show=key.footer) for key in KEYS]

    def get_driver_class(self) -> type[Driver]:
        """On a POSIX terminal, :class:`tui.terminal.DashboardDriver` (it
        survives the terminal's going); else Textual's choice."""
        chosen = super().get_driver_class()
        if chosen.__name__ != "LinuxDriver":  # Windows, or a driver named in TEXTUAL_DRIVER
            return chosen
        from .terminal import DashboardDriver

        return DashboardDriver

    HORIZONTAL_BREAKPOINTS = [(0, "-narrow"), (WIDE, "-wide")]  # noqa: RUF012 - Textual's own declaration
    """Below ``WIDE`` columns the panels stack and the side panels and the
    selected account collapse to a line each (see ``dashboard.tcss``)."""

    VERTICAL_BREAKPOINTS = [(0, "-short"), (TALL, "-tall")]  # noqa: RUF012 - Textual's own declaration
    """Below ``TALL`` rows the side panels collapse to a line each."""

    def __init__(self, state: DashboardState, controller: Actions, bridge: Caller) -> None:
        super().__init__()
        self.state = state
        self.controller = controller
        self.bridge = bridge
        self.sub_title = state.database
        self._redrawn: asyncio.Event = asyncio.Event()
        self._failed: frozenset[str] = frozenset()

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
        yield KeyBar(id="keys")

    def on_mount(self) -> None:
        """Start the redraw timer and focus the accounts."""
        self.redraw()
        self.set_interval(REFRESH, self.redraw)
        self.query_one("#accounts-table", LineTable).focus()

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
        # The key bar offers x (resume) only while a read model has failed.
        self._failed = frozenset(name for name, status in state.projections.items() if status.state == "failed")
        offered = [key for key in KEYS if key.footer and (key.action != "resume" or self._failed)]
        self.main.query_one(KeyBar).redraw(offered)
        self._redrawn.set()
        self._redrawn = asyncio.Event()

    async def wait_for_redraw(self) -> None:
        """Block until the next redraw has run (for tests)."""
        await self._redrawn.wait()

    # ------------------------------------------------------------ selection

    @on(AccountsTable.Selected)
    async def _selected(self, message: AccountsTable.Selected) -> None:
        with contextlib.suppress(BusProcessEnded):  # the app is exiting: nothing to select
            await self.bridge.call(self.controller.select, message.account_id)

    # ------------------------------------------------------------ actions

    def _form(self, form: Form) -> None:
        def done(message: str | None) -> None:
            if message:
                self.notify(message, markup=False)

        self.push_screen(form, done)

    def action_open_account(self) -> None:
        """Open an account (a form)."""
        self._form(OpenAccountForm(self.controller, self.bridge))

    def action_deposit(self) -> None:
        """Deposit into the selected account (a form)."""
        self._form(DepositForm(self.controller, self.bridge, self.state.selected or ""))

    def action_withdraw(self) -> None:
        """Withdraw from the selected account (a form)."""
        self._form(WithdrawForm(self.controller, self.bridge, self.state.selected or ""))

    def action_transfer(self) -> None:
        """Transfer from the selected account (a form)."""
        self._form(TransferForm(self.controller, self.bridge, self.state.selected or ""))

    async def action_simulator(self) -> None:
        """Start the load simulator (a form), or stop it when it runs."""
        if self.controller.simulating:
            try:
                await self.bridge.call(self.controller.stop_simulation)
            except BusProcessEnded:
                return  # the app is exiting
            self.notify("Stopping the simulator: it answers the commands under way first.")
        else:
            self._form(SimulatorForm(self.controller, self.bridge))

    def action_rebuild(self) -> None:
        """Rebuild a read model (a form to choose which)."""
        self._form(RebuildForm(self.controller, self.bridge))

    async def action_resume(self) -> None:
        """Let the read models that failed try again."""
        try:
            names = await self.bridge.call(self.controller.resume)
        except BusProcessEnded:
            return  # the app is exiting
        if names:
            self.notify(f"Resuming {', '.join(names)}: it starts again from its checkpoint.", markup=False)

    def check_action(self, action: str, parameters: tuple[object, ...]) -> bool | None:
        """Offer ``resume`` only while a read model has failed."""
        if action == "resume":
            return bool(self._failed)
        return True

    def deliver_screenshot(
        self, filename: str | None = None, path: str | None = None, time_format: str | None = None
    ) -> str | None:
        """Save a screenshot (an SVG file) in ``path``, by default the working
        directory, and say where; or say why it could not be saved."""
        try:
            folder = Path(path) if path else Path.cwd()
            saved = Path(self.save_screenshot(filename, str(folder), time_format))
        except OSError as exc:
            where = path or "the working directory"
            self.notify(f"Could not save the screenshot in {where}: {exc.strerror or exc}", title="Screenshot",
                        severity="error", timeout=10, markup=False)  # fmt: skip
            return None
        self.notify(f"Saved the screenshot to {saved}", title="Screenshot", timeout=10, markup=False)
        return None

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
        if self._failed:
            yield SystemCommand("Resume read models", "Let the read models that failed try again (x)",
                                self.action_resume)  # fmt: skip
        yield SystemCommand("Pause log", "Freeze or resume the event log (p)", self.action_pause_log)
        yield SystemCommand("Filter events", "Filter the event log by type or account (/)", self.action_filter)
        yield from super().get_system_commands(screen)
