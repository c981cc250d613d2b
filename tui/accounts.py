"""The dashboard's bank widgets: the accounts table and the selected account.

Both read :class:`DashboardState` (kept by ``feed_accounts``) on the app's
timer. Moving the cursor in the accounts table posts
:class:`AccountsTable.Selected`; the app then asks the Trio side for that
account's balance and history.
"""

from __future__ import annotations

from collections.abc import Hashable, Sequence
from typing import Any

from rich.text import Text
from textual import on
from textual.app import ComposeResult
from textual.coordinate import Coordinate
from textual.message import Message
from textual.widgets import DataTable

from apps.banking.display import when
from apps.banking.domain import AccountStatus
from apps.banking.features.get_account.types import DEBITS, EntryKind, HistoryEntry
from apps.banking.features.list_accounts.types import AccountRow

from .feed import ACCOUNTS_SHOWN
from .widgets import Line, LivePanel, sync_rows


def _money(amount: Any) -> Text:
    return Text(f"{amount:,.2f}", justify="right")


def account_cells(row: AccountRow) -> tuple[Any, ...]:
    """The cells of an account's row in the table."""
    status = Text(row.status.value, "dim" if row.status is AccountStatus.CLOSED else "green")
    return (row.account_id, row.owner[:20], row.currency.value, _money(row.balance), status)


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
    AccountsTable DataTable { height: 1fr; }
    """

    class Selected(Message):
        """The cursor moved to an account."""

        def __init__(self, account_id: str) -> None:
            super().__init__()
            self.account_id = account_id

    def __init__(self, state: Any, **kwargs: Any) -> None:
        super().__init__(state, "Accounts", **kwargs)
        self._shown = -1
        self._rows: dict[Hashable, tuple[Any, ...]] = {}

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        table: DataTable[Any] = DataTable(id="accounts-table", cursor_type="row", zebra_stripes=True)
        table.add_column("account", key="account")
        table.add_column("owner", key="owner")
        table.add_column("cur", key="currency")
        table.add_column("balance", key="balance")
        table.add_column("status", key="status")
        yield table

    def redraw(self) -> None:
        """Show the accounts, if the read model was read again."""
        state = self.state
        if state.accounts_version == self._shown:
            return
        self._shown = state.accounts_version
        table = self.query_one("#accounts-table", DataTable)
        rows: dict[Hashable, Sequence[Any]] = {row.account_id: account_cells(row) for row in state.accounts}
        sync_rows(table, rows, self._rows)
        selected = state.selected
        if selected is not None and selected in rows:
            index = table.get_row_index(selected)
            if table.cursor_row != index:
                table.move_cursor(row=index, scroll=False)
        elif selected is None and rows:
            # Nothing selected yet: the row under the cursor. (A selection not in
            # the table yet, an account just opened, is kept until it shows.)
            row = min(max(table.cursor_row, 0), table.row_count - 1)
            key = table.coordinate_to_cell_key(Coordinate(row, 0)).row_key.value
            if key is not None:
                self.post_message(self.Selected(key))
        count = sum(total.accounts for total in state.totals)
        held = "  ".join(f"{total.currency} {total.balance:,.2f}" for total in state.totals)
        more = f" (latest {ACCOUNTS_SHOWN:,} shown)" if count > len(rows) else ""
        subtitle = f"{count:,} account{'' if count == 1 else 's'}{more}  {held}"
        if state.accounts_error:
            subtitle = f"cannot read the accounts: {state.accounts_error[:80]}"
        self.caption(subtitle=subtitle)

    @on(DataTable.RowHighlighted, "#accounts-table")
    def _highlighted(self, event: DataTable.RowHighlighted) -> None:
        event.stop()
        if event.row_key.value is not None:
            self.post_message(self.Selected(event.row_key.value))

    @property
    def owners(self) -> list[str]:
        """The owners shown, top to bottom (for tests)."""
        table = self.query_one("#accounts-table", DataTable)
        return [str(table.get_row_at(index)[1]) for index in range(table.row_count)]

    def balance_of(self, account_id: str) -> str:
        """The balance shown for an account (for tests)."""
        return str(self.query_one("#accounts-table", DataTable).get_cell(account_id, "balance"))


class AccountDetail(LivePanel):
    """The selected account: owner, status, balance, and its history, newest first."""

    DEFAULT_CSS = """
    AccountDetail { height: 1fr; }
    AccountDetail #account-summary { height: auto; margin: 0 1; }
    AccountDetail DataTable { height: 1fr; }
    """

    def __init__(self, state: Any, **kwargs: Any) -> None:
        super().__init__(state, "Account", **kwargs)
        self._shown = -1

    def compose(self) -> ComposeResult:
        """The panel's widgets."""
        yield Line("Select an account in the table.", id="account-summary")
        table: DataTable[Any] = DataTable(id="history-table", cursor_type="row", zebra_stripes=True)
        table.add_columns("entry", "amount", "balance")
        yield table

    def redraw(self) -> None:
        """Show the selected account, if it was read again."""
        state = self.state
        if state.account_version == self._shown:
            return
        self._shown = state.account_version
        trail = state.account
        summary = self.query_one("#account-summary", Line)
        table = self.query_one("#history-table", DataTable)
        table.clear()
        if trail is None:
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
        for entry in reversed(view.history):
            sign = "-" if entry.kind in DEBITS else "+"
            amount = f"{sign}{entry.amount:,.2f}" if entry.amount else ""
            table.add_row(describe_entry(entry), Text(amount, justify="right"), _money(entry.balance))

    @property
    def summary(self) -> str:
        """The lines above the history, as shown (for tests)."""
        return self.query_one("#account-summary", Line).text
