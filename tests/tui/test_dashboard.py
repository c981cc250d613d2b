"""The dashboard, driven with key presses against a real bank and bus."""

from __future__ import annotations

import functools
import sys
import textwrap
from collections.abc import Sequence
from typing import cast

import trio
from textual.pilot import Pilot
from textual.widgets import Button

from apps.banking.app import Bank, Command
from apps.banking.features.list_accounts.types import AccountRow
from eventbus import (
    Event,
    EventRecord,
    Projection,
    RestartPolicy,
    StoreUnavailable,
    Transaction,
    testing,
)
from tui.accounts import AccountDetail, AccountsTable
from tui.app import DashboardApp
from tui.bridge import Bridge
from tui.control import Controller, Done
from tui.forms import DepositForm, Form, OpenAccountForm, RebuildForm, WithdrawForm
from tui.log import EventLog
from tui.table import LineTable
from tui.widgets import HealthBar, Line

from ..helpers import ROOT
from .driver import call_trio, drive, type_text, until, until_shown, until_state


def _owners(rows: Sequence[AccountRow]) -> list[str]:
    return [row.owner for row in rows]


async def test_opening_an_account_through_the_form_puts_it_in_the_table(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await pilot.press("o")
        assert isinstance(app.screen, OpenAccountForm)
        await type_text(pilot, "Ada Lovelace")
        await pilot.press("enter")
        await until(app, lambda state: "Ada Lovelace" in _owners(state.accounts))
        assert not isinstance(app.screen, Form)
        assert app.query_one(AccountsTable).owners == ["Ada Lovelace"]

    await drive(dsn, script)


async def _open_with(bank: Bank, amount: str) -> str:
    receipt = await bank.open_account(owner="Grace Hopper", account_type="checking", currency="EUR",
                                      initial_deposit=amount)  # fmt: skip
    return receipt.account_id


async def test_a_deposit_updates_the_balance(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: state.account is not None)  # the first row is selected
        account_id = app.state.selected
        assert account_id is not None
        assert app.query_one(AccountsTable).balance_of(account_id) == "100.00"
        await pilot.press("d")
        await type_text(pilot, "25.50")
        await pilot.press("enter")
        await until(app, lambda state: state.account is not None and str(state.account.view.balance) == "125.50")
        await until(app, lambda state: str(state.accounts[0].balance) == "125.50")
        assert app.query_one(AccountsTable).balance_of(account_id) == "125.50"
        assert "balance 125.50 EUR · 3 entries" in app.query_one(AccountDetail).lines

    await drive(dsn, script, before=lambda bank: _open_with(bank, "100.00"))


async def test_ok_again_after_a_lost_acknowledgement_deposits_once(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: state.account is not None)
        account_id = app.state.selected
        store = app.controller.bank.bus.store
        head = await call_trio(store.head)
        execute = app.controller.execute
        commands: list[Command] = []

        async def acknowledgement_lost_once(command: Command) -> Done:
            commands.append(command)
            done = await execute(command)  # it commits...
            if len(commands) == 1:  # ...and the first time, the answer never comes
                raise StoreUnavailable("the connection was lost", outcome_known=False)
            return done

        app.controller.execute = acknowledgement_lost_once  # type: ignore[method-assign]
        await pilot.press("d")
        await type_text(pilot, "25.50")
        await pilot.press("enter")
        form = app.screen
        assert isinstance(form, DepositForm)
        assert "OK tries again" in form.error
        await pilot.press("enter")
        await until(app, lambda state: state.account is not None and str(state.account.view.balance) == "125.50")
        assert not isinstance(app.screen, Form)
        assert [c.command_id for c in commands] == [commands[0].command_id] * 2
        assert await call_trio(store.head) == head + 1
        view = await call_trio(app.controller.bank.get_account, account_id)
        assert str(view.balance) == "125.50"

    await drive(dsn, script, before=lambda bank: _open_with(bank, "100.00"))


def test_a_form_makes_a_new_command_id_only_when_its_values_change() -> None:
    form = Form(cast(Controller, None), cast(Bridge, None), ())
    first = form.command_id({"account": "acc-1", "amount": "5"})
    assert form.command_id({"account": "acc-1", "amount": "5"}) == first
    second = form.command_id({"account": "acc-1", "amount": "6"})
    assert second != first
    assert form.command_id({"account": "acc-1", "amount": "5"}) not in (first, second)


async def test_an_overdraft_shows_the_refusal_and_changes_nothing(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: state.account is not None)
        head = await call_trio(app.controller.bank.bus.store.head)
        await pilot.press("w")
        await type_text(pilot, "50.00")
        await pilot.press("enter")
        form = app.screen
        assert isinstance(form, WithdrawForm)
        assert form.error.startswith("Refused: ")
        assert "Nothing was changed" in form.error
        assert await call_trio(app.controller.bank.bus.store.head) == head
        view = await call_trio(app.controller.bank.get_account, app.state.selected)
        assert str(view.balance) == "10.00"
        await pilot.press("escape")
        assert not isinstance(app.screen, Form)

    await drive(dsn, script, before=lambda bank: _open_with(bank, "10.00"))


async def test_a_bad_amount_is_flagged_as_it_is_typed_and_nothing_is_sent(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: state.account is not None)
        head = await call_trio(app.controller.bank.bus.store.head)
        await pilot.press("d")
        await type_text(pilot, "12.345")
        form = app.screen
        assert isinstance(form, Form)
        assert "at most two decimal places" in str(form.query_one("#error-amount").render())
        await pilot.press("enter")
        assert app.screen is form
        assert await call_trio(app.controller.bank.bus.store.head) == head

    await drive(dsn, script, before=lambda bank: _open_with(bank, "10.00"))


async def _boom(tx: Transaction, record: EventRecord) -> None:
    raise RuntimeError("the ledger is on fire")


async def _start_broken(bank: Bank) -> None:
    broken = Projection(
        name="broken", handlers={"BankAccountOpened": _boom}, restart=RestartPolicy(max_restarts=1, initial=0.01)
    )
    await bank.bus.projections.start(broken)
    await _open_with(bank, "1.00")


async def test_a_projection_whose_handler_fails_shows_as_failed_with_its_error(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: "broken" in state.projections and state.projections["broken"].state == "failed")
        table = app.query_one("#projections-table", LineTable)
        row = table.row("broken")
        assert row[:2] == ["broken", "failed"]
        errors = app.query_one("#projection-errors", Line).text
        assert "broken:" in errors
        assert "the ledger is on fire" in errors
        health = app.query_one(HealthBar)
        assert health.healthy is False
        assert "projections FAILED: broken" in health.text
        # the bank's own read models go on
        assert {name: table.row(name)[1] for name in ("accounts", "analytics")} == {
            "accounts": "live",
            "analytics": "live",
        }

    await drive(dsn, script, before=_start_broken)


APPENDER = textwrap.dedent(
    """
    import sys, trio
    from eventbus import Event, open_event_store

    async def main(dsn):
        async with open_event_store(dsn) as store:
            await store.append([Event("ParcelShipped", {"parcel": "p-42"}), Event("ParcelShipped", {"parcel": "p-43"})])

    trio.run(main, sys.argv[1])
    """
)


async def test_events_written_by_another_process_appear(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        run = functools.partial(trio.run_process, [sys.executable, "-c", APPENDER, dsn], cwd=ROOT)
        done = await call_trio(run)
        assert done.returncode == 0
        await until(app, lambda state: sum(r.event_type == "ParcelShipped" for r in state.events) == 2)
        await until_shown(app, lambda: any(row[2] == "ParcelShipped" for row in app.query_one(EventLog).rows))
        rows = app.query_one(EventLog).rows
        assert [(row[2], row[3]) for row in rows] == [
            ("ParcelShipped", "parcel=p-43"),
            ("ParcelShipped", "parcel=p-42"),
        ]

    await drive(dsn, script)


async def test_the_log_filters_by_type_and_by_account(dsn: str) -> None:
    async def open_two(bank: Bank) -> None:
        first = await _open_with(bank, "5.00")
        await bank.deposit(first, "1.00")
        await bank.open_account(owner="Alan", account_type="savings", currency="GBP", account_id="alan-1")

    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await call_trio(app.controller.bank.deposit, "alan-1", "2.00")
        await until(app, lambda state: state.events_seen == 5)  # the four stored before, and this one
        await pilot.press("slash")
        await type_text(pilot, "deposit")
        await app.wait_for_redraw()
        deposits = [row[3] for row in app.query_one(EventLog).rows]
        assert deposits[0] == "2.00 GBP alan-1"
        assert [deposit.split()[:2] for deposit in deposits[1:]] == [["1.00", "EUR"], ["5.00", "EUR"]]
        await pilot.press("tab")
        await type_text(pilot, "nobody")
        await app.wait_for_redraw()
        assert app.query_one(EventLog).rows == []

    await drive(dsn, script, before=open_two)


async def test_the_simulator_starts_and_stops_from_the_dashboard(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await pilot.press("s")
        await pilot.press("enter")  # the defaults
        await until(app, lambda state: state.simulation.running and state.events_seen >= 50)
        assert "simulating 200/s" in app.query_one(HealthBar).text
        await pilot.press("s")
        await until(app, lambda state: not state.simulation.running)
        assert "commands in" in app.state.simulation.summary
        assert "simulator off" in app.query_one(HealthBar).text
        assert len(app.query_one(AccountsTable).owners) >= 20

    await drive(dsn, script)


DEPOSITS = 5000
"""Deposits behind the account whose read model is rebuilt."""


async def _account_with_many_deposits(bank: Bank) -> None:
    account = await _open_with(bank, "1.00")
    deposit = {"accountId": account, "amount": "1.00", "currency": "EUR"}
    for _ in range(DEPOSITS // 1000):
        await bank.bus.store.append([Event("MoneyDeposited", deposit) for _ in range(1000)])


async def test_a_rebuild_shows_progress_while_the_old_read_model_stays_on_screen(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: bool(state.accounts) and str(state.accounts[0].balance) == "5001.00")
        table = app.query_one("#accounts-table", LineTable)
        # A reader of the live model holds the swap back until the screen has been looked at.
        holder = await call_trio(testing.connect, dsn)
        await call_trio(holder.run_script, "BEGIN; LOCK TABLE projection_accounts.accounts IN ACCESS SHARE MODE")
        await pilot.press("r")
        assert isinstance(app.screen, RebuildForm)
        app.screen.query_one("#submit", Button).press()  # accounts, the first choice; returns at once
        await until_state(app, lambda state: "accounts" in state.rebuilds)
        shown: set[tuple[str, ...]] = set()
        passes = bars = 0
        while "accounts" in app.state.rebuilds:
            app.redraw()  # at once: the rebuild has only just started
            shown.add(tuple(table.column(1)))
            # The row that holds the bar is in the screen as soon as the redraw
            # mounts it (the bar inside it follows when the row is composed).
            bars += len(app.query(".rebuild"))
            await app.wait_for_redraw()
            passes += 1
            if passes == 3:
                await call_trio(holder.close)  # the swap may go on
        await call_trio(holder.close)
        assert passes >= 3
        assert shown == {("5,001.00",)}
        assert bars >= 1
        await until(app, lambda state: not state.rebuilds)
        await pilot.pause()  # the bar's row is removed after the redraw that asks for it
        assert not app.query("#rebuild-accounts")
        assert [n.message for n in app._notifications][-1].startswith("Rebuilt accounts in ")
        assert table.column(1) == ["5,001.00"]

    await drive(dsn, script, before=_account_with_many_deposits)
