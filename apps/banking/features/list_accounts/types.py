"""List accounts: a row of the ``accounts`` read model, and a batch's changes to it."""

from __future__ import annotations

from datetime import datetime
from decimal import Decimal

import attrs

from apps.banking.domain import ZERO, AccountStatus, AccountType, Currency


@attrs.frozen
class AccountRow:
    """One account as the ``accounts`` table holds it.

    Attributes:
        opened_at: when the opening committed.
        updated_at: when the account's last event committed.
    """

    account_id: str
    owner: str
    account_type: AccountType
    currency: Currency
    balance: Decimal
    opened_at: datetime
    updated_at: datetime
    status: AccountStatus


@attrs.frozen
class Opening:
    """What an opening says about an account."""

    owner: str
    account_type: AccountType
    currency: Currency
    opened_at: datetime


@attrs.define
class AccountChange:
    """What a batch of events does to one account.

    Attributes:
        opening: set when the batch opens the account.
        delta: the net change to the balance.
        updated_at: when the account's last event in the batch committed.
        closed: the batch closes the account.
    """

    account_id: str
    updated_at: datetime
    opening: Opening | None = None
    delta: Decimal = ZERO
    closed: bool = False


@attrs.frozen
class CurrencyTotal:
    """All accounts of one currency: how many, how many open, what they hold."""

    currency: Currency
    accounts: int
    open_accounts: int
    balance: Decimal
