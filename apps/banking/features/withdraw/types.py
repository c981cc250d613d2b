"""Withdraw: the command, the event it produces, the state it decides on."""

from __future__ import annotations

import uuid
from decimal import Decimal

import attrs

from apps.banking.domain import (
    MONEY_WITHDRAWN,
    AccountState,
    Currency,
    format_amount,
    parse_account_id,
    parse_amount,
    parse_optional_currency,
)
from eventbus.values import Event


@attrs.frozen(kw_only=True)
class Withdraw:
    """Take money out of an open account, never below zero.

    ``currency``, if given, must be the account's.

    Raises (when made):
        InvalidAccountId, InvalidAmount, UnsupportedCurrency.
    """

    command_id: uuid.UUID = attrs.field(validator=attrs.validators.instance_of(uuid.UUID))
    account_id: str = attrs.field(converter=parse_account_id)
    amount: Decimal = attrs.field(converter=parse_amount)
    currency: Currency | None = attrs.field(default=None, converter=parse_optional_currency)


@attrs.frozen
class WithdrawState:
    """The account, and whether this command's event is stored already.

    Attributes:
        own_event_id: the id of the command's event.
        already_stored: the command is a retry of one that took effect.
    """

    account: AccountState
    own_event_id: uuid.UUID
    already_stored: bool = False


def money_withdrawn(*, event_id: uuid.UUID, account_id: str, amount: Decimal, currency: Currency) -> Event:
    """A ``MoneyWithdrawn`` event.

    Payload: ``{"accountId", "amount": "100.00", "currency"}``.
    """
    payload = {"accountId": account_id, "amount": format_amount(amount), "currency": currency.value}
    return Event(MONEY_WITHDRAWN, payload, event_id=event_id)
