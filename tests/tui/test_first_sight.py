"""The dashboard as a newcomer first meets it: small terminals, what shows at the
start, steady figures, rebuilds that end cleanly, screenshots, dead letters."""

from __future__ import annotations

import os
import re
from pathlib import Path

import attrs
import pytest
from textual.pilot import Pilot

from apps.banking.app import Bank
from apps.banking.features.list_accounts.shell import PROJECTION as ACCOUNTS
from eventbus import Event, EventRecord, RestartPolicy, Transaction
from tui.accounts import AccountsTable
from tui.app import DashboardApp
from tui.log import EventLog
from tui.state import RateWindow
from tui.widgets import KeyBar

from .driver import call_trio, drive, region_text, screen_text, type_text, until, until_state


async def _some_accounts(bank: Bank) -> None:
    for owner, currency in (("Ada Lovelace", "EUR"), ("小林 花子", "GBP"), ("Grace Hopper", "USD")):
        await bank.open_account(owner=owner, account_type="checking", currency=currency, initial_deposit="1234.56")


def _lines(app: DashboardApp) -> list[str]:
    return screen_text(app).splitlines()


async def test_at_80_by_24_every_panel_is_there_with_the_columns_that_matter(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: len(state.accounts) == 3 and state.account is not None
                    and state.stream is not None)  # fmt: skip
        await app.wait_for_redraw()
        lines = _lines(app)
        assert len(lines) == 24 and all(len(line) <= 80 for line in lines)
        text = "\n".join(lines)
        assert "db test" in lines[0]  # the database, on the top line
        header = next(line for line in lines if "account" in line and "balance" in line)
        assert re.search(r"account +balance +cur +status +owner", header)
        assert re.search(r"1,234\.56 +EUR +open +Ada Lovelace", text)
        assert re.search(r"1,234\.56 +GBP +open +小林 花子", text)
        assert re.search(r"acc-[0-9a-f]{16} .*· open · 1,234\.56 [A-Z]{3} · 2 entries", text)  # the account, a line
        assert re.search(r"pos +time +type +payload", text)  # the log
        for summary in ("throughput ", "projections accounts live", "subscriptions "):
            assert any(line.strip().startswith(summary) for line in lines), summary
        keys = lines[-1]
        for key in ("o Open", "d Deposit", "w Withdraw", "t Transfer", "s Simulate", "r Rebuild", "p ", "/", "q Quit"):
            assert key in keys, key

    await drive(dsn, script, before=_some_accounts, size=(80, 24))


async def test_at_120_by_40_no_header_or_help_is_cut(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: len(state.accounts) == 3 and state.stream is not None)
        await app.wait_for_redraw()
        text = screen_text(app)
        assert re.search(r"name +state +lag +buffer +delivered", text)
        assert re.search(r"name +state +checkpoint +lag +dead", text)
        assert "o Open d Deposit w Withdraw t Transfer s Simulate r Rebuild p Pause / Filter q Quit" in text
        await pilot.press("s")
        await pilot.pause()
        help = region_text(app, app.screen.query_one(".help"))
        assert help == "Deposits, withdrawals (some refused), transfers, new and closed accounts; s stops it."
        await pilot.press("escape", "r")
        await pilot.pause()
        help = region_text(app, app.screen.query_one(".help"))
        assert help == "A fresh copy is built from the events; the old one serves until it is ready."

    await drive(dsn, script, before=_some_accounts, size=(120, 40))


async def test_at_120_by_40_large_balances_in_the_history_are_shown_whole(dsn: str) -> None:
    async def rich(bank: Bank) -> None:
        first = await bank.open_account(owner="Grace Hopper", account_type="checking", currency="EUR",
                                        initial_deposit="5000000.00", account_id="grace")  # fmt: skip
        await bank.open_account(owner="Ada", account_type="checking", currency="EUR", account_id="ada-with-a-long-id")
        await bank.transfer(first.account_id, "ada-with-a-long-id", "10000.00")

    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: state.account is not None and len(state.account.view.history) == 3)
        history = app.query_one("#history-table")
        for _ in range(5):  # (what changes with every event is redrawn at most once a second)
            await app.wait_for_redraw()
        text = region_text(app, history)
        # Each figure whole, or cut with an ellipsis: never a wrong number (it read 4,990,0 and 5,000,0).
        assert "4,990,000.00" in text and "5,000,000.00" in text, text
        assert "balance" in text, text

    await drive(dsn, script, before=rich, size=(120, 40))


async def test_the_accounts_say_starting_while_their_read_model_is_being_made(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        table = app.query_one(AccountsTable)
        await until(app, lambda state: state.accounts_starting)
        assert table.border_subtitle == "starting: the accounts read model is being made"
        assert "cannot read" not in screen_text(app)
        await call_trio(app.controller.bank.start_projections)
        await until(app, lambda state: len(state.accounts) == 3)
        assert str(table.border_subtitle).startswith("3 accounts")

    await drive(dsn, script, before=_some_accounts, projections=False)


async def test_the_log_shows_the_latest_stored_events_at_once(dsn: str) -> None:
    async def many(bank: Bank) -> None:
        await _some_accounts(bank)
        await bank.bus.store.append([Event("ParcelShipped", {"parcel": f"p-{n}"}) for n in range(3000)])

    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: len(state.events) == 2000)
        rows = app.query_one(EventLog).rows
        assert [row[0] for row in rows[:2]] == ["3006", "3005"]
        assert rows[0][3] == "parcel=p-2999"
        assert app.query_one(EventLog).border_subtitle == "3,006 events in the store"

    await drive(dsn, script, before=many)


def test_a_rate_is_the_mean_over_its_window_not_the_last_sample() -> None:
    window = RateWindow(5.0)
    assert window.add(0.0, 0) == 0.0
    count, rates = 0, []
    for step in range(1, 41):  # a steady 180/s that arrives in uneven batches: 59 then 121 per half second
        count += 59 if step % 2 else 121
        rates.append(window.add(step * 0.5, count))
    assert all(rate == pytest.approx(180.0, rel=0.07) for rate in rates[10:])  # each sample alone: 118 or 242
    assert window.add(20.5, count) == pytest.approx(180.0 * 4.5 / 5.0, rel=0.07)  # a quiet half second: ~162, not 0


async def test_the_append_rate_is_a_mean_over_a_stated_window(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until_state(app, lambda state: state.figures_version >= 1)
        await call_trio(app.controller.bank.bus.store.append, [Event("Tick", {"n": n}) for n in range(100)])
        await until_state(app, lambda state: state.appended_rate > 0)
        sample = app.state.figures_version
        await until(app, lambda state: state.figures_version >= sample + 2)  # a second later, nothing appended
        assert app.state.appends_per_s[-1] == 0  # the last sample alone says 0
        assert app.state.appended_rate > 0  # the mean over the window does not
        label = app.query_one("#appends-label").render()
        assert re.fullmatch(r"events appended/s +\d+ +mean of 5 s", str(label))

    await drive(dsn, script)


async def test_a_rebuild_ends_with_one_notification_and_no_rebuilding_state(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: len(state.accounts) == 3)
        await pilot.press("r")
        await pilot.press("enter")  # accounts
        await _notified(app, "Rebuilt accounts in ")
        await until(app, lambda state: state.projections["accounts"].state == "live")
        assert app.controller.bank.projection_status()["accounts"].state != "rebuilding"
        messages = [notification.message for notification in app._notifications]
        assert [m for m in messages if "ebuil" in m] == [m for m in messages if m.startswith("Rebuilt accounts in ")]
        assert len([m for m in messages if "ebuil" in m]) == 1

    await drive(dsn, script, before=_some_accounts)


async def test_rebuilding_right_after_it_returns_never_reads_rebuilding(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        bank = app.controller.bank
        for _ in range(3):
            await call_trio(bank.rebuild, "accounts")
            assert bank.projection_status()["accounts"].state in ("live", "catching_up")

    await drive(dsn, script, before=_some_accounts)


async def test_a_screenshot_is_saved_in_the_working_directory_and_says_where(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)

    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await pilot.press("ctrl+p")
        await type_text(pilot, "Screenshot")
        await pilot.press("enter")
        saved = await _notified(app, "Saved the screenshot to ")
        path = Path(saved.removeprefix("Saved the screenshot to "))
        assert path.parent == tmp_path and path.suffix == ".svg" and path.read_text().startswith("<svg")

    await drive(dsn, script)


async def test_a_screenshot_that_cannot_be_saved_says_why(
    dsn: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    gone = tmp_path / "gone"
    gone.mkdir()
    monkeypatch.chdir(gone)
    gone.rmdir()  # the working directory is no more

    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await pilot.press("ctrl+p")
        await type_text(pilot, "Screenshot")
        await pilot.press("enter")
        failed = await _notified(app, "Could not save the screenshot")
        assert failed == "Could not save the screenshot in the working directory: No such file or directory"

    try:
        await drive(dsn, script)
    finally:
        os.chdir(tmp_path)


async def _notified(app: DashboardApp, start: str, redraws: int = 40) -> str:
    """Wait, a redraw at a time (at most ``redraws``), for a notification that starts with ``start``; return it."""
    for _ in range(redraws):
        for notification in list(app._notifications):
            if notification.message.startswith(start):
                return notification.message
        await app.wait_for_redraw()
    raise AssertionError(f"no notification {start!r}: {[n.message for n in app._notifications]}")


async def _broken(tx: Transaction, records: list[EventRecord]) -> None:
    raise RuntimeError("the ledger is on fire")


async def _with_a_failed_accounts_model(bank: Bank) -> None:
    await _some_accounts(bank)
    failing = attrs.evolve(ACCOUNTS, batch_handler=_broken, on_error="retry",
                           restart=RestartPolicy(max_restarts=1, initial=0.01))  # fmt: skip
    await bank.bus.projections.start(failing)


async def test_rebuilding_a_read_model_that_failed_here_says_what_is_wrong_and_x_resumes_it(dsn: str) -> None:
    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: state.projections.get("accounts") is not None
                    and state.projections["accounts"].state == "failed")  # fmt: skip
        assert "x Resume" in app.query_one(KeyBar).text
        await pilot.press("r")
        await pilot.press("enter")  # accounts
        failed = await _notified(app, "Rebuild of accounts failed")
        assert failed == (
            "Rebuild of accounts failed: cannot rebuild the accounts read model: it has failed here (projection "
            "accounts: handler for BankAccountOpened at position 1 raised RuntimeError: the ledger is on fire): "
            "resume it once what made it fail is fixed, then rebuild"
        )
        assert "led by another process" not in failed
        restarts = app.state.projections["accounts"].restarts
        await pilot.press("x")
        await _notified(app, "Resuming accounts")
        await until(app, lambda state: state.projections["accounts"].restarts > restarts)

    await drive(dsn, script, before=_with_a_failed_accounts_model, projections=False)


async def test_events_not_the_banks_show_as_dead_letters_with_the_reason(dsn: str) -> None:
    async def foreign(bank: Bank) -> None:
        await _some_accounts(bank)
        await bank.bus.store.append([Event("MoneyDeposited", {"accountId": "a1", "amount": "10.00"})])

    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        await until(app, lambda state: state.dead_letters.count == 1 and len(state.dead_letters.latest) == 2)
        await pilot.pause()  # the lines laid out again
        text = region_text(app, app.query_one("#projection-errors"))
        assert text.startswith("1 event set aside (dead letters), the latest: "), text
        assert "accounts @7: MalformedEvent: MoneyDeposited event" in text
        assert "is about account 'a1', which was never opened: not an event the bank wrote" in text
        assert app.query_one("#projections-table").row("accounts")[4] == "1"  # type: ignore[attr-defined]
        assert app.state.projections["accounts"].state == "live"

    await drive(dsn, script, before=foreign)


async def test_the_simulator_started_from_the_dashboard_leaves_a_persons_account_alone(dsn: str) -> None:
    async def mine(bank: Bank) -> None:
        await bank.open_account(owner="Ada", account_type="checking", currency="EUR", initial_deposit="500",
                                account_id="ada")  # fmt: skip

    async def script(app: DashboardApp, pilot: Pilot[None]) -> None:
        bank = app.controller.bank
        before = (await call_trio(bank.get_account, "ada")).history
        await call_trio(app.controller.start_simulation, 400.0, 3)
        await until_state(app, lambda state: state.events_seen >= 400, timeout=30)
        await call_trio(app.controller.stop_simulation)
        await until_state(app, lambda state: not state.simulation.running)
        assert (await call_trio(bank.get_account, "ada")).history == before

    await drive(dsn, script, before=mine)
