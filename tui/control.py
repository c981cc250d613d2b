"""What the person does from the dashboard, on the Trio side.

The app's handlers call these methods through its ``Bridge``, from its own
thread; they run in the bus's Trio run. Long
work (the simulator, a rebuild) runs as a task in the dashboard's nursery and
reports through :class:`DashboardState`, so a handler returns at once and the
screen stays live.
"""

from __future__ import annotations

import math
import time
from typing import Protocol

import attrs
import trio

from apps.banking import actions
from apps.banking.app import Bank, Command, Receipt
from apps.banking.domain import BankingError
from apps.banking.simulate import SimulationConfig, SimulationReport, simulate
from eventbus import EventBusError

from .feed import Refresher
from .state import DashboardState, RebuildProgress, Simulation

DEFAULT_RATE = 200.0
"""Commands per second the simulator runs at unless told otherwise."""

DEFAULT_ACCOUNTS = 20
"""Accounts the simulator opens before its mixed load."""


class Actions(Protocol):
    """What the app asks of a controller: :class:`Controller` in the bus's own
    process, :class:`tui.screen_side.RemoteController` in the screen's."""

    state: DashboardState

    @property
    def simulating(self) -> bool:
        """Whether the simulator runs (or is finishing its last commands)."""
        ...

    async def execute(self, command: Command) -> Done:
        """Run a command on the bank."""
        ...

    async def select(self, account_id: str | None) -> None:
        """Show ``account_id``'s balance and history (None: no account)."""
        ...

    async def start_simulation(self, rate: float, accounts: int) -> None:
        """Start the load simulator."""
        ...

    async def stop_simulation(self) -> None:
        """Ask the simulator to stop."""
        ...

    async def resume(self) -> list[str]:
        """Let the read models that failed try again; return their names."""
        ...

    async def rebuild(self, name: str) -> None:
        """Start rebuilding read model ``name``."""
        ...


@attrs.frozen
class Done:
    """A command that took effect, and one line saying what it did."""

    receipt: Receipt
    message: str


class Controller:
    """The dashboard's actions on the bank, for a nursery that outlives them.

    Args:
        bank: the open bank.
        state: where results and progress go.
        nursery: runs the simulator and rebuilds; cancelling it stops them.
        refresher: poked after anything that changes the accounts.
    """

    def __init__(self, bank: Bank, state: DashboardState, nursery: trio.Nursery, refresher: Refresher) -> None:
        self.bank = bank
        self.state = state
        self._nursery = nursery
        self._refresher = refresher
        self._stop_simulation: trio.Event | None = None
        self._simulation_done = trio.Event()
        self._simulation_done.set()

    async def execute(self, command: Command) -> Done:
        """Run a command on the bank and refresh the accounts.

        Blocks for the command (a query and an append, a few at most) and a
        read of its account for the message.

        Raises:
            BankingError: refused or invalid; nothing was written.
            EventBusError: the database could not be reached (``StoreUnavailable``).
        """
        receipt, message = await actions.execute(self.bank, command)
        self._refresher.poke()
        return Done(receipt, message)

    async def select(self, account_id: str | None) -> None:
        """Show ``account_id``'s balance and history (None: no account); returns at once."""
        await trio.lowlevel.checkpoint()
        self.state.select(account_id)
        self._refresher.poke()

    # ------------------------------------------------------------ the simulator

    @property
    def simulating(self) -> bool:
        """Whether the simulator runs (or is finishing its last commands)."""
        return self._stop_simulation is not None

    async def start_simulation(self, rate: float = DEFAULT_RATE, accounts: int = DEFAULT_ACCOUNTS) -> None:
        """Start the load simulator at ``rate`` commands/s; returns at once.

        It runs until :meth:`stop_simulation` (or the dashboard closes).
        Does nothing if it runs already.

        Raises:
            ValueError: a rate that is not positive, or negative accounts.
        """
        await trio.lowlevel.checkpoint()
        if self._stop_simulation is not None:
            return
        config = SimulationConfig(accounts=accounts, rate=rate, duration=math.inf)
        stop = self._stop_simulation = trio.Event()
        self._simulation_done = trio.Event()
        self.state.simulation = Simulation(running=True, rate=rate)
        self.state.control_changed()
        self._nursery.start_soon(self._simulate, config, stop)

    async def stop_simulation(self) -> None:
        """Ask the simulator to stop; returns at once. It answers the commands
        under way, then its summary shows."""
        await trio.lowlevel.checkpoint()
        if self._stop_simulation is not None:
            self._stop_simulation.set()

    async def aclose(self) -> None:
        """Stop the simulator and wait until its commands under way are answered.

        For the dashboard's closing, before its tasks are cancelled: commands
        cut off halfway would leave the store's connections mid-statement as
        the bus closes. Bound it with a timeout of your own.
        """
        await self.stop_simulation()
        await self._simulation_done.wait()

    async def _simulate(self, config: SimulationConfig, stop: trio.Event) -> None:
        summary = "stopped"
        try:
            report = await simulate(self.bank, config, stop=stop)
            summary = _summarize(report)
            self.state.notice(f"Simulator: {summary}")
        except (BankingError, EventBusError) as exc:
            summary = f"failed: {exc}"
            self.state.notice(f"The simulator failed: {exc}", "error")
        finally:
            self._stop_simulation = None
            self._simulation_done.set()
            self.state.simulation = Simulation(running=False, rate=config.rate, summary=summary)
            self.state.control_changed()

    # ------------------------------------------------------------ failures

    async def resume(self) -> list[str]:
        """Let every read model that failed in this process try again; return their names.

        Never blocks: they start again from their checkpoints on their own.
        """
        await trio.lowlevel.checkpoint()
        projections = self.bank.bus.projections
        failed = sorted(name for name, status in projections.status().items() if status.state == "failed")
        for name in failed:
            projections.restart(name)
        return failed

    # ------------------------------------------------------------ rebuilds

    async def rebuild(self, name: str) -> None:
        """Start rebuilding read model ``name``; returns at once.

        The old read model keeps serving the screen until the new one is
        swapped in; progress shows in ``state.rebuilds``. Does nothing if a
        rebuild of it runs already.
        """
        await trio.lowlevel.checkpoint()
        if name in self.state.rebuilds:
            return
        self.state.rebuilds = {**self.state.rebuilds, name: RebuildProgress()}  # a new dict: the app reads it
        self.state.control_changed()
        self._nursery.start_soon(self._rebuild, name)

    async def _rebuild(self, name: str) -> None:
        state = self.state

        def progress(done: int, total: int) -> None:
            state.rebuilds = {**state.rebuilds, name: RebuildProgress(done, total)}
            state.control_changed()

        started = time.monotonic()
        try:
            await self.bank.rebuild(name, progress)
            state.notice(f"Rebuilt {name} in {time.monotonic() - started:.1f} s")
        except (BankingError, EventBusError) as exc:
            state.notice(f"Rebuild of {name} failed: {exc}", "error")
        finally:
            state.rebuilds = {other: progress for other, progress in state.rebuilds.items() if other != name}
            state.control_changed()
            self._refresher.poke()


def _summarize(report: SimulationReport) -> str:
    total = report.total
    rate = total.total / report.elapsed if report.elapsed else 0.0
    return (
        f"{total.total:,} commands in {report.elapsed:.0f} s ({rate:,.0f}/s): "
        f"{total.acknowledged:,} done, {total.refused:,} refused, {total.failed:,} failed"
    )
