"""What the CLI's subcommands and its menu do, on an open bank, printing for a person.

Commands are made from text first (:func:`make_open` and friends), which
validates everything that can be checked without reading: a bad amount, id,
currency or account type is refused before the database is touched. Each
takes an optional ``command_id``: the same id again takes effect once.
"""

from __future__ import annotations

import sys
import time
import uuid
from collections.abc import Sequence
from typing import TextIO

from eventbus import EventBusError, StoreUnavailable

from .app import PROJECTIONS, Bank, Command, Receipt
from .display import (
    ProgressBar,
    account_details,
    accounts_table,
    analytics_table,
    describe,
    describe_unread,
    totals_lines,
    write,
)
from .features.close_account.types import CloseAccount
from .features.deposit.types import Deposit
from .features.open_account.types import OpenAccount
from .features.transfer.types import Transfer
from .features.withdraw.types import Withdraw


def make_open(
    owner: str,
    account_type: str,
    currency: str,
    initial: str | None = None,
    account_id: str | None = None,
    command_id: uuid.UUID | None = None,
) -> OpenAccount:
    """An :class:`OpenAccount` from text; an empty ``initial`` means none.

    Raises:
        InvalidCommand: a field is not acceptable.
    """
    optional = {} if not account_id else {"account_id": account_id}
    return OpenAccount(
        command_id=command_id or uuid.uuid4(),
        owner=owner,
        account_type=account_type,
        currency=currency,
        initial_deposit=initial or None,
        **optional,
    )


def make_deposit(
    account_id: str, amount: str, currency: str | None = None, command_id: uuid.UUID | None = None
) -> Deposit:
    """A :class:`Deposit` from text (raises ``InvalidCommand``)."""
    return Deposit(
        command_id=command_id or uuid.uuid4(), account_id=account_id, amount=amount, currency=currency or None
    )


def make_withdraw(
    account_id: str, amount: str, currency: str | None = None, command_id: uuid.UUID | None = None
) -> Withdraw:
    """A :class:`Withdraw` from text (raises ``InvalidCommand``)."""
    return Withdraw(
        command_id=command_id or uuid.uuid4(), account_id=account_id, amount=amount, currency=currency or None
    )


def make_transfer(
    source: str, target: str, amount: str, currency: str | None = None, command_id: uuid.UUID | None = None
) -> Transfer:
    """A :class:`Transfer` from text (raises ``InvalidCommand``)."""
    return Transfer(
        command_id=command_id or uuid.uuid4(),
        from_account_id=source,
        to_account_id=target,
        amount=amount,
        currency=currency or None,
    )


def make_close(account_id: str, command_id: uuid.UUID | None = None) -> CloseAccount:
    """A :class:`CloseAccount` from text (raises ``InvalidCommand``)."""
    return CloseAccount(command_id=command_id or uuid.uuid4(), account_id=account_id)


async def execute(bank: Bank, command: Command) -> tuple[Receipt, str]:
    """Run a command; return its receipt and one line saying what it did.

    Blocks for the command, then for a read of its account for the balance.
    A command that took effect is reported as done even when that read fails.

    Raises:
        BankingError, EventBusError: as :meth:`Bank.execute`; nothing was written,
            or for ``StoreUnavailable``, see its ``outcome_known``.
    """
    receipt = await bank.execute(command)
    try:
        view = await bank.get_account(receipt.account_id)
    except EventBusError:
        return receipt, describe_unread(receipt)
    return receipt, describe(receipt, view)


async def run_command(bank: Bank, command: Command, out: TextIO) -> None:
    """Run a command and print one line saying what it did.

    Raises:
        BankingError, EventBusError: as :meth:`Bank.execute`; nothing is printed.
            A ``StoreUnavailable`` names the command id that settles it.
    """
    try:
        _, line = await execute(bank, command)
    except StoreUnavailable as exc:
        raise StoreUnavailable(
            f"{exc}; run the same command again with --command-id {command.command_id}: it takes effect once",
            outcome_known=exc.outcome_known,
        ) from exc
    print(line, file=out)


async def show_accounts(bank: Bank, out: TextIO, *, limit: int | None = None) -> None:
    """Print the accounts (the first ``limit``), then the totals per currency."""
    rows = await bank.list_accounts(limit=None if limit is None else limit + 1)
    write(out, accounts_table(rows[:limit]))
    if limit is not None and len(rows) > limit:
        print(f"... showing the first {limit}; use --limit to see more", file=out)
    totals = await bank.totals()  # as current as the list (it returns at once: the list waited)
    if totals:
        print(file=out)
        print(totals_lines(totals), file=out)
    await note_dead_letters(bank, out)


async def note_dead_letters(bank: Bank, out: TextIO) -> None:
    """Say on stderr, in a line, when the read models set events aside."""
    dead = await bank.dead_letters(limit=1)
    if dead.count:
        out.flush()
        latest = dead.latest[0]
        events = "event" if dead.count == 1 else "events"
        print(
            f"note: {dead.count:,} {events} not written by the bank were set aside, the latest at position "
            f"{latest.sequence_number} ({latest.event_type}); the dashboard lists them",
            file=sys.stderr,
        )


async def show_balance(bank: Bank, account_id: str, out: TextIO) -> None:
    """Print an account's particulars, balance and history, from its events."""
    write(out, *account_details(await bank.get_account(account_id)))


async def show_analytics(bank: Bank, out: TextIO) -> None:
    """Print the monthly figures per currency."""
    write(out, analytics_table(await bank.analytics()))


async def rebuild(bank: Bank, names: Sequence[str], out: TextIO, progress: TextIO | None = None) -> None:
    """Rebuild read models one after the other: a progress bar each on
    ``progress`` (standard error by default: never into piped output), then a
    line on ``out`` saying it is done."""
    for name in names or list(PROJECTIONS):
        bar = ProgressBar(sys.stderr if progress is None else progress, f"Rebuilding {name:<9}")
        started = time.monotonic()
        await bank.rebuild(name, bar.update)
        bar.finish()
        print(f"Rebuilt {name} in {time.monotonic() - started:.1f} s.", file=out)
