"""Output for people: tables (rich on a terminal, plain text elsewhere), an
account's history, receipts and a progress bar. Nothing here reads or writes
the bank."""

from __future__ import annotations

import time
from collections.abc import Iterable, Sequence
from datetime import UTC, datetime
from decimal import Decimal
from typing import Final, TextIO

import attrs
from rich import box
from rich.cells import cell_len
from rich.console import Console, JustifyMethod
from rich.table import Table as RichTable
from rich.text import Text

from .app import Receipt
from .domain import Currency, show_money
from .features.analytics.types import MonthlyFigures
from .features.get_account.types import AccountView, EntryKind
from .features.list_accounts.types import AccountRow, CurrencyTotal
from .features.transfer.types import Transfer

BAR_WIDTH: Final = 30
"""Characters in a progress bar."""

REDRAW_INTERVAL: Final = 0.1
"""Seconds between redraws of a progress bar on a terminal."""

_ENTRY_NAMES: Final = {
    EntryKind.OPENED: "opened",
    EntryKind.DEPOSIT: "deposit",
    EntryKind.WITHDRAWAL: "withdrawal",
    EntryKind.TRANSFER_IN: "transfer in",
    EntryKind.TRANSFER_OUT: "transfer out",
    EntryKind.CLOSED: "closed",
}


def when(moment: datetime) -> str:
    """A moment as ``2025-01-31 14:05:09`` (UTC)."""
    return moment.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")


def _strings(cells: Iterable[object]) -> tuple[str, ...]:
    return tuple(str(cell) for cell in cells)


def _cells(rows: Iterable[Iterable[object]]) -> tuple[tuple[str, ...], ...]:
    return tuple(_strings(row) for row in rows)


def _order(indexes: Iterable[int]) -> tuple[int, ...]:
    return tuple(indexes)


def _indexes(indexes: Iterable[int]) -> frozenset[int]:
    return frozenset(indexes)


@attrs.frozen
class Table:
    """Rows under headers: plain aligned text off a terminal (:meth:`plain`), a
    rich table on one (:meth:`rich`). Widths count terminal cells, so a name in
    wide characters (CJK, emoji) keeps the columns aligned.

    Attributes:
        right: the indexes of the right-aligned columns.
        wrap: the column that may wrap on a narrow terminal (the others stay
            on one line and are cut short if they must).
        optional: the columns left out, in this order, while the table is
            wider than the terminal: the ones that matter least first, so that
            those that matter are not cut short. A caption names them.
    """

    headers: tuple[str, ...] = attrs.field(converter=_strings)
    rows: tuple[tuple[str, ...], ...] = attrs.field(converter=_cells)
    right: frozenset[int] = attrs.field(default=frozenset(), converter=_indexes)
    wrap: int | None = None
    optional: tuple[int, ...] = attrs.field(default=(), converter=_order)

    def plain(self) -> str:
        """The table as aligned lines, two spaces between columns."""
        widths = [max([cell_len(h)] + [cell_len(row[i]) for row in self.rows]) for i, h in enumerate(self.headers)]

        def line(row: Sequence[str]) -> str:
            parts = [
                _pad(cell, width, right=i in self.right)
                for i, (cell, width) in enumerate(zip(row, widths, strict=True))
            ]
            return "  ".join(parts).rstrip()

        return "\n".join([line(self.headers), line(["-" * w for w in widths]), *(line(row) for row in self.rows)])

    def rich(self, width: int | None = None) -> RichTable:
        """The table for a terminal ``width`` cells wide (None: as wide as it needs)."""
        shown = self._columns(width)
        left_out = [self.headers[i] for i in range(len(self.headers)) if i not in shown]
        caption = f"({', '.join(left_out)} left out: the terminal is too narrow)" if left_out else None
        grid = RichTable(box=box.SIMPLE_HEAD, show_edge=False, pad_edge=False, caption=caption)
        for index in shown:
            justify: JustifyMethod = "right" if index in self.right else "left"
            grid.add_column(self.headers[index], justify=justify, no_wrap=index != self.wrap)
        for row in self.rows:
            grid.add_row(*(Text(row[i]) for i in shown))  # text, never markup
        return grid

    def _columns(self, width: int | None) -> list[int]:
        """The columns to show in ``width`` cells: all, less the optional ones
        that must go so that the others fit uncut."""
        widths = [max([cell_len(h)] + [cell_len(row[i]) for row in self.rows]) for i, h in enumerate(self.headers)]
        shown = list(range(len(self.headers)))
        for index in self.optional:
            if width is None or sum(widths[i] for i in shown) + _GAP * (len(shown) - 1) <= width:
                break
            shown.remove(index)
        return shown

    def __str__(self) -> str:
        return self.plain()


_GAP: Final = 2
"""Cells between two columns of a rich table (its padding)."""


def _pad(cell: str, width: int, *, right: bool) -> str:
    fill = " " * (width - cell_len(cell))
    return fill + cell if right else cell + fill


def table(headers: Sequence[str], rows: Sequence[Sequence[object]], *, right: Sequence[int] = ()) -> str:
    """Rows under headers in aligned columns; the columns in ``right`` are right-aligned."""
    return Table(headers, rows, right).plain()


def write(out: TextIO, *parts: Table | str) -> None:
    """Print ``parts`` on ``out``: tables drawn by rich on a terminal, as plain text elsewhere."""
    terminal = out.isatty()
    console = Console(file=out, highlight=False, soft_wrap=True) if terminal else None
    for part in parts:
        if console is None:
            print(part, file=out)
        elif isinstance(part, Table):
            console.print(part.rich(console.width))
        else:
            console.print(Text(part))


def accounts_table(rows: Sequence[AccountRow]) -> Table | str:
    """The accounts as a table, or a line saying there are none."""
    if not rows:
        return "No accounts yet."
    return Table(
        ["Account", "Owner", "Type", "Currency", "Balance", "Status", "Opened", "Last change"],
        [
            [
                row.account_id,
                row.owner,
                row.account_type,
                row.currency,
                f"{row.balance:,.2f}",
                row.status,
                when(row.opened_at),
                when(row.updated_at),
            ]
            for row in rows
        ],
        {4},
        wrap=1,
        optional=(7, 6, 2),
    )


def totals_lines(totals: Sequence[CurrencyTotal]) -> str:
    """One line per currency: how many accounts and what they hold."""
    return "\n".join(
        f"{total.currency}: {_plural(total.accounts, 'account')} ({total.open_accounts} open) holding "
        f"{total.balance:,.2f} {total.currency}"
        for total in totals
    )


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


def account_details(view: AccountView) -> tuple[str, Table]:
    """An account's particulars and balance, and its history."""
    header = [
        f"Account  {view.account_id}",
        f"Owner    {view.owner}",
        f"Type     {view.account_type}, {view.currency}, {view.status}",
        f"Opened   {when(view.opened_at)} UTC"
        + (f", closed {when(view.closed_at)} UTC" if view.closed_at is not None else ""),
        f"Balance  {show_money(view.balance, view.currency)}",
    ]
    history = Table(
        ["#", "When (UTC)", "What", "Amount", "Balance", "Other account"],
        [
            [
                entry.sequence_number,
                when(entry.occurred_at),
                _ENTRY_NAMES[entry.kind],
                f"{entry.change:+,.2f}" if entry.amount else "",
                f"{entry.balance:,.2f}",
                entry.counterparty or "",
            ]
            for entry in view.history
        ],
        {0, 3, 4},
        optional=(1,),
    )
    return "\n".join(header), history


def analytics_table(figures: Sequence[MonthlyFigures]) -> Table | str:
    """Each month's figures per currency, or a line saying there are none."""
    if not figures:
        return "No activity yet."
    return Table(
        [
            "Month",
            "Currency",
            "Opened",
            "Deposits",
            "Deposited",
            "Withdrawals",
            "Withdrawn",
            "Transfers",
            "Transferred",
        ],
        [
            [
                f.month.strftime("%Y-%m"),
                f.currency,
                f.accounts_opened,
                f.deposits,
                f"{f.deposited:,.2f}",
                f.withdrawals,
                f"{f.withdrawn:,.2f}",
                f.transfers,
                f"{f.transferred:,.2f}",
            ]
            for f in figures
        ],
        {2, 3, 4, 5, 6, 7, 8},
    )


def balance_after(receipt: Receipt, view: AccountView) -> Decimal:
    """The balance of ``view``'s account right after the receipt's last event of it."""
    ids = set(receipt.event_ids)
    entries = [entry for entry in view.history if entry.event_id in ids]
    return entries[-1].balance if entries else view.balance


def describe(receipt: Receipt, view: AccountView) -> str:
    """One line saying what a command did; ``view`` is its account (the source of a transfer)."""
    command = receipt.command
    currency: Currency = view.currency
    balance = show_money(balance_after(receipt, view), currency)
    match receipt.kind:
        case "open":
            return (
                f"Opened account {view.account_id} for {view.owner} ({view.account_type}, {currency}); "
                f"balance {balance}."
            )
        case "deposit":
            return f"Deposited {_amount(receipt, currency)} into {view.account_id}; balance {balance}."
        case "withdraw":
            return f"Withdrew {_amount(receipt, currency)} from {view.account_id}; balance {balance}."
        case "transfer":
            assert isinstance(command, Transfer)
            return (
                f"Transferred {_amount(receipt, currency)} from {command.from_account_id} to "
                f"{command.to_account_id}; {command.from_account_id} now holds {balance}."
            )
        case _:
            return f"Closed account {view.account_id}."


PAST: Final = {"open": "Opened", "deposit": "Deposited", "withdraw": "Withdrew", "transfer": "Transferred",
               "close": "Closed"}  # fmt: skip


def describe_unread(receipt: Receipt) -> str:
    """One line saying a command took effect, for when its account could not be read after."""
    return (
        f"{PAST[receipt.kind]}: done, stored at position {receipt.position} (the balance could not be read just now)."
    )


def _amount(receipt: Receipt, currency: Currency) -> str:
    amount = getattr(receipt.command, "amount", None)
    return show_money(amount, currency) if isinstance(amount, Decimal) else ""


class ProgressBar:
    """A progress bar on a stream: redrawn in place on a terminal (at most
    every ``REDRAW_INTERVAL``), else drawn once, when done."""

    def __init__(self, out: TextIO, label: str) -> None:
        self._out = out
        self._label = label
        self._tty = out.isatty()
        self._drawn = 0.0
        self._last: tuple[int, int] = (0, 0)

    def update(self, done: int, total: int) -> None:
        """Show ``done`` of ``total``; never blocks on anything but the stream."""
        self._last = (done, total)
        now = time.monotonic()
        if self._tty and now - self._drawn >= REDRAW_INTERVAL:
            self._drawn = now
            self._out.write("\r" + self.render(done, total))
            self._out.flush()

    def finish(self) -> None:
        """Draw the final state and end the line."""
        done, total = self._last
        total = max(total, done)
        self._out.write(("\r" if self._tty else "") + self.render(total, total) + "\n")
        self._out.flush()

    def render(self, done: int, total: int) -> str:
        """The bar's text for ``done`` of ``total``."""
        fraction = 1.0 if total <= 0 else min(1.0, done / total)
        filled = round(fraction * BAR_WIDTH)
        return f"{self._label} [{'#' * filled}{'.' * (BAR_WIDTH - filled)}] {fraction:4.0%} {done}/{total}"
