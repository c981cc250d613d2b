"""Transfer: the command, the event it produces, the state it decides on."""

from __future__ import annotations

import uuid
from decimal import Decimal

import attrs

from apps.banking.domain import (
    MONEY_TRANSFERRED,
    AccountState,
    Currency,
    SameAccount,
    format_amount,
    parse_account_id,
    parse_amount,
    parse_optional_currency,
)
from eventbus.values import Event


def _different(instance: Transfer, attribute: attrs.Attribute[str], value: str) -> None:
    if value == instance.from_account_id:
        raise SameAccount(f"a transfer needs two different accounts, not {value} twice")


@attrs.frozen(kw_only=True)
class Transfer:
    """Move money from one open account to another of the same currency.

    ``currency``, if given, must be the accounts' currency.

    Raises (when made):
        InvalidAccountId, InvalidAmount, UnsupportedCurrency.
        SameAccount: both ids are the same.
    """

    command_id: uuid.UUID = attrs.field(validator=attrs.validators.instance_of(uuid.UUID))
    from_account_id: str = attrs.field(converter=parse_account_id)
    to_account_id: str = attrs.field(converter=parse_account_id, validator=_different)
    amount: Decimal = attrs.field(converter=parse_amount)
    currency: Currency | None = attrs.field(default=None, converter=parse_optional_currency)


@attrs.frozen
class TransferState:
    """Both accounts, and whether this command's event is stored already.

    Attributes:
        own_event_id: the id of the command's event.
        already_stored: the command is a retry of one that took effect.
    """

    source: AccountState
    destination: AccountState
    own_event_id: uuid.UUID
    already_stored: bool = False


def money_transferred(
    *, event_id: uuid.UUID, from_account_id: str, to_account_id: str, amount: Decimal, currency: Currency
) -> Event:
    """A ``MoneyTransferred`` event.

    Payload: ``{"fromAccountId", "toAccountId", "amount": "100.00", "currency"}``.
    """
    payload = {
        "fromAccountId": from_account_id,
        "toAccountId": to_account_id,
        "amount": format_amount(amount),
        "currency": currency.value,
    }
    return Event(MONEY_TRANSFERRED, payload, event_id=event_id)
