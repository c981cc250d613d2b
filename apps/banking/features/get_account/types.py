"""Read one account: the view and its history entries."""

from __future__ import annotations

import enum
import uuid
from datetime import datetime
from decimal import Decimal

import attrs

from apps.banking.domain import AccountStatus, AccountType, Currency


class EntryKind(enum.StrEnum):
    """What an entry of an account's history records."""

    OPENED = "opened"
    DEPOSIT = "deposit"
    WITHDRAWAL = "withdrawal"
    TRANSFER_IN = "transfer_in"
    TRANSFER_OUT = "transfer_out"
    CLOSED = "closed"


DEBITS = frozenset({EntryKind.WITHDRAWAL, EntryKind.TRANSFER_OUT})
"""The kinds of entry that take money out."""


@attrs.frozen
class HistoryEntry:
    """One event of the account, as its owner sees it.

    Attributes:
        amount: the money moved, positive; zero for opening and closing.
        balance: the balance after this entry.
        counterparty: the other account of a transfer, else None.
    """

    sequence_number: int
    event_id: uuid.UUID
    occurred_at: datetime
    kind: EntryKind
    amount: Decimal
    balance: Decimal
    counterparty: str | None = None

    @property
    def change(self) -> Decimal:
        """The entry's effect on the balance: negative for money out."""
        return -self.amount if self.kind in DEBITS else self.amount


@attrs.frozen
class AccountView:
    """An account as its events tell it.

    Attributes:
        updated_at: when the last event of the account committed.
        closed_at: when it was closed, or None.
        last_sequence_number: the position of the account's last event.
        history: every entry, oldest first.
    """

    account_id: str
    owner: str
    account_type: AccountType
    currency: Currency
    status: AccountStatus
    balance: Decimal
    opened_at: datetime
    updated_at: datetime
    closed_at: datetime | None
    last_sequence_number: int
    history: tuple[HistoryEntry, ...]
