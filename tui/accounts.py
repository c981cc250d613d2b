"""The dashboard's bank widgets: the accounts table and the selected account.

Both read :class:`DashboardState` (kept by ``feed_accounts``) on the app's
timer. Moving the cursor in the accounts table posts
:class:`AccountsTable.Selected`; the app then asks the Trio side for that
account's balance and history.
"""

from __future__ import annotations

from collections.abc import Hashable
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.message import Message

from apps.banking.display import when
from apps.banking.domain import AccountStatus
from apps.banking.features.get_account.types import DEBITS, EntryKind, HistoryEntry
from apps.banking.features.list_accounts.types import AccountRow

from .feed import ACCOUNTS_SHOWN
from .table import Cell, Column, LineTable, cell
from .widgets import Line, LivePanel

OWNER_WIDTH = 20
"""Cells of an owner's name the table shows, at most (a name in wide characters takes two a character)."""

ACCOUNT_COLUMNS = (
    Column("account", max_width=24),
    Column("balance", right=True, max_width=20),
    Column("cur"),
    Column("status"),
    Column("owner", max_width=OWNER_WIDTH),
)
"""The accounts table's columns, those that matter first: a narrow screen cuts the last."""


def account_cells(row: AccountRow) -> tuple[Cell, ...]:
    """The cells of an account's row in the table."""
    status = cell(row.status.value, "dim" if row.status is AccountStatus.CLOSED else "green")
    return (cell(row.account_id), cell(f"{row.balance:,.2f}"), cell(row.currency.value), status, cell(row.owner))


COUNTERPARTY = 16
"""Characters of the other account's id a transfer shows in the history."""


def describe_entry(entry: HistoryEntry) -> str:
    """What an entry of the history did: ``deposit``, or ``→ acc-…`` for a transfer out."""
    other = entry.counterparty or "?"
    other = other if len(other) <= COUNTERPARTY else other[:COUNTERPARTY] + "…"
    if entry.kind is EntryKind.TRANSFER_OUT:
        return f"→ {other}"
    if entry.kind is EntryKind.TRANSFER_IN:
        return f"← {other}"
    return entry.kind.value


class AccountsTable(LivePanel):
    """The accounts from the ``accounts`` read model (the latest opened), updating live."""

    DEFAULT_CSS = """
    AccountsTable { height: 1fr; }
    """

    class Selected(Message):
        """The cursor moved to an account."""

        def __init__(self, account_id: str) -> None:
            super().__init__()
            self.account_id = account_id

    def __init__(self, state: Any, **kwargs: Any) -> None:
        super().__init__(state, "Accounts", **kwargs)
        self._shown = -1
        self._caption_stale = False

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        yield LineTable(ACCOUNT_COLUMNS, cursor=True, id="accounts-table")

    def redraw(self) -> None:
        """Show the accounts, if the read model was read again."""
        state = self.state
        if self._caption_stale:
            self._caption_stale = not self._caption()
        if state.accounts_version == self._shown:
            return
        self._shown = state.accounts_version
        self._caption_stale = not self._caption()
        table = self.query_one("#accounts-table", LineTable)
        rows: dict[Hashable, tuple[Cell, ...]] = {row.account_id: account_cells(row) for row in state.accounts}
        table.show(rows)
        selected = state.selected
        if selected is not None and selected in rows:
            table.move_cursor_to(selected)
        elif selected is None and rows and table.cursor_key is not None:
            # Nothing selected yet: the row under the cursor. (A selection not in
            # the table yet, an account just opened, is kept until it shows.)
            self.post_message(self.Selected(str(table.cursor_key)))

    def _caption(self) -> bool:
        """Show the count and the totals under the table; False if it is not due yet."""
        state = self.state
        count = sum(total.accounts for total in state.totals)
        held = "  ".join(f"{total.currency} {total.balance:,.2f}" for total in state.totals)
        more = f" (latest {ACCOUNTS_SHOWN:,} shown)" if count > len(state.accounts) else ""
        subtitle = f"{count:,} account{'' if count == 1 else 's'}{more}  {held}"
        if state.accounts_starting:
            subtitle = "starting: the accounts read model is being made"
        elif state.accounts_error:
            subtitle = f"cannot read the accounts: {state.accounts_error[:80]}"
        elif self.border_subtitle and not self.due():
            return False  # the totals move with every event: at most once a BUSY_INTERVAL
        self.caption(subtitle=subtitle)
        return True

    @on(LineTable.Highlighted, "#accounts-table")
    def _highlighted(self, event: LineTable.Highlighted) -> None:
        event.stop()
        if event.key is not None:
            self.post_message(self.Selected(str(event.key)))

    @property
    def owners(self) -> list[str]:
        """The owners shown, top to bottom (for tests)."""
        return self.query_one("#accounts-table", LineTable).column(4)

    def balance_of(self, account_id: str) -> str:
        """The balance shown for an account (for tests)."""
        return self.query_one("#accounts-table", LineTable).row(account_id)[1]


HISTORY_COLUMNS = (Column("entry", max_width=20), Column("amount", right=True), Column("balance", right=True))


class AccountDetail(LivePanel):
    """The selected account: owner, status, balance, and its history, newest first."""

    DEFAULT_CSS = """
    AccountDetail { height: 1fr; }
    AccountDetail #account-summary { height: 2; margin: 0 1; }
    """

    def __init__(self, state: Any, **kwargs: Any) -> None:
        super().__init__(state, "Account", **kwargs)
        self._shown = -1
        self._account: str | None = None

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        yield Line("Select an account in the table.", id="account-summary", fixed=True)
        yield LineTable(HISTORY_COLUMNS, id="history-table")

    def redraw(self) -> None:
        """Show the selected account, if it was read again."""
        state = self.state
        if state.account_version == self._shown:
            return
        trail = state.account
        same = trail is not None and trail.view.account_id == self._account
        if same and not self.due():  # more entries of the same account: at most once a BUSY_INTERVAL
            return
        self._shown = state.account_version
        self._account = None if trail is None else trail.view.account_id
        summary = self.query_one("#account-summary", Line)
        table = self.query_one("#history-table", LineTable)
        self.show_summary()
        if trail is None:
            table.show({})
            self.caption(title="Account")
            summary.show("Select an account in the table." if state.selected is None else "Reading the account…")
            return
        view, entries = trail.view, trail.entries
        self.caption(title=f"Account {view.account_id}")
        summary.show(
            Text.assemble(
                (view.owner, "bold"),
                f" · {view.account_type} · {view.currency} · ",
                (view.status.value, "green" if view.status is AccountStatus.OPEN else "dim"),
                "\nbalance ",
                (f"{view.balance:,.2f} {view.currency}", "bold"),
                f" · {entries:,} {'entry' if entries == 1 else 'entries'} · {when(view.updated_at)[11:]}",
            )
        )
        rows: dict[Hashable, tuple[Cell, ...]] = {}
        for entry in reversed(view.history):
            sign = "-" if entry.kind in DEBITS else "+"
            amount = f"{sign}{entry.amount:,.2f}" if entry.amount else ""
            rows[entry.sequence_number] = (cell(describe_entry(entry)), cell(amount), cell(f"{entry.balance:,.2f}"))
        table.show(rows)

    def summary(self) -> Text:
        """The selected account in one line (for a small screen)."""
        trail = self.state.account
        if trail is None:
            return Text("Select an account in the table (↑ ↓)." if self.state.selected is None else "Reading…")
        view = trail.view
        return Text.assemble(
            (view.account_id, "bold"),
            f" {view.owner} · ",
            (view.status.value, "green" if view.status is AccountStatus.OPEN else "dim"),
            " · ",
            (f"{view.balance:,.2f} {view.currency}", "bold"),
            f" · {trail.entries:,} {'entry' if trail.entries == 1 else 'entries'}",
        )

    @property
    def lines(self) -> str:
        """The lines above the history, as shown (for tests)."""
        return self.query_one("#account-summary", Line).text
