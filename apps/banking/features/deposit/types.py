"""Deposit: the command, the event it produces, the state it decides on."""

from __future__ import annotations

import uuid
from decimal import Decimal

import attrs

from apps.banking.domain import (
    MONEY_DEPOSITED,
    AccountStatus,
    Currency,
    format_amount,
    parse_account_id,
    parse_amount,
    parse_optional_currency,
)
from eventbus.values import Event


@attrs.frozen(kw_only=True)
class Deposit:
    """Put money into an open account.

    ``currency``, if given, must be the account's: a guard against a caller
    who thinks in another currency.

    Raises (when made):
        InvalidAccountId, InvalidAmount, UnsupportedCurrency.
    """

    command_id: uuid.UUID = attrs.field(validator=attrs.validators.instance_of(uuid.UUID))
    account_id: str = attrs.field(converter=parse_account_id)
    amount: Decimal = attrs.field(converter=parse_amount)
    currency: Currency | None = attrs.field(default=None, converter=parse_optional_currency)


@attrs.frozen
class DepositState:
    """Whether the account takes money, and in which currency. A deposit
    never depends on the balance, so the balance is not loaded."""

    account_id: str
    status: AccountStatus | None = None
    currency: Currency | None = None


def money_deposited(*, event_id: uuid.UUID, account_id: str, amount: Decimal, currency: Currency) -> Event:
    """A ``MoneyDeposited`` event.

    Payload: ``{"accountId", "amount": "100.00", "currency"}``.
    """
    payload = {"accountId": account_id, "amount": format_amount(amount), "currency": currency.value}
    return Event(MONEY_DEPOSITED, payload, event_id=event_id)
