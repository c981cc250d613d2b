"""Analytics: one month's figures in one currency."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import attrs

from apps.banking.domain import ZERO, Currency


@attrs.frozen
class MonthlyFigures:
    """What happened in one calendar month (UTC) in one currency.

    Attributes:
        month: the first day of the month.
        accounts_opened: accounts opened.
        deposits, deposited: deposits (initial ones included) and their sum.
        withdrawals, withdrawn: withdrawals and their sum.
        transfers, transferred: transfers and their sum.
    """

    month: date
    currency: Currency
    accounts_opened: int = 0
    deposits: int = 0
    deposited: Decimal = ZERO
    withdrawals: int = 0
    withdrawn: Decimal = ZERO
    transfers: int = 0
    transferred: Decimal = ZERO

    def __add__(self, other: MonthlyFigures) -> MonthlyFigures:
        """The sum of two figures of the same month and currency."""
        if (self.month, self.currency) != (other.month, other.currency):
            return NotImplemented
        return MonthlyFigures(
            month=self.month,
            currency=self.currency,
            accounts_opened=self.accounts_opened + other.accounts_opened,
            deposits=self.deposits + other.deposits,
            deposited=self.deposited + other.deposited,
            withdrawals=self.withdrawals + other.withdrawals,
            withdrawn=self.withdrawn + other.withdrawn,
            transfers=self.transfers + other.transfers,
            transferred=self.transferred + other.transferred,
        )
