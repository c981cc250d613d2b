"""Open an account: the command, the events it produces, the state it decides on."""

from __future__ import annotations

import unicodedata
import uuid
from decimal import Decimal
from typing import Final

import attrs

from apps.banking.domain import (
    BANK_ACCOUNT_OPENED,
    AccountType,
    Currency,
    InvalidOwner,
    parse_account_id,
    parse_account_type,
    parse_currency,
    parse_optional_amount,
)
from eventbus.values import Event

MAX_OWNER_LENGTH: Final = 100


def parse_owner(value: object) -> str:
    """An owner's name: trimmed, inner runs of whitespace made one space.

    Raises:
        InvalidOwner: not text, empty, longer than ``MAX_OWNER_LENGTH`` or
            holding control characters (bidirectional controls among them),
            or nothing visible (only zero-width or combining characters).
    """
    if not isinstance(value, str):
        raise InvalidOwner(f"an owner's name must be text, not a {type(value).__name__}")
    name = " ".join(value.split())
    if not name:
        raise InvalidOwner("an owner's name is required")
    if len(name) > MAX_OWNER_LENGTH:
        raise InvalidOwner(f"an owner's name has at most {MAX_OWNER_LENGTH} characters, not {len(name)}")
    if any(unicodedata.category(char) in ("Cc", "Cs") or char in BIDI_CONTROLS for char in name):
        raise InvalidOwner("an owner's name must not hold control characters")
    if not any(unicodedata.category(char)[0] in _VISIBLE for char in name):
        raise InvalidOwner("an owner's name must show something: a letter, a digit or a sign")
    return name


_VISIBLE: Final = "LNPS"
"""The first letters of Unicode's categories of characters that show by
themselves (letters, numbers, punctuation, symbols): a name of nothing but
marks and format characters (zero-width spaces) reads as no name at all."""


BIDI_CONTROLS: Final = frozenset("\u061c\u200e\u200f\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")
"""Marks that reorder the text around them, so that a name shows as another
(other format characters, such as the zero-width non-joiner of Persian
names, are letters' business and stay)."""


def account_id_for(command_id: uuid.UUID) -> str:
    """The id of the account an :class:`OpenAccount` command opens, unless it
    names one: derived from the command's id, so a retry opens the same account."""
    return "acc-" + uuid.uuid5(command_id, "account").hex[:16]


@attrs.frozen(kw_only=True)
class OpenAccount:
    """Open an account, with an optional first deposit.

    Raises (when made):
        InvalidAccountId, InvalidOwner, UnsupportedAccountType,
        UnsupportedCurrency, InvalidAmount: a field is not acceptable.
    """

    command_id: uuid.UUID = attrs.field(validator=attrs.validators.instance_of(uuid.UUID))
    account_id: str = attrs.field(
        default=attrs.Factory(lambda self: account_id_for(self.command_id), takes_self=True),
        converter=parse_account_id,
    )
    owner: str = attrs.field(converter=parse_owner)
    account_type: AccountType = attrs.field(converter=parse_account_type)
    currency: Currency = attrs.field(converter=parse_currency)
    initial_deposit: Decimal | None = attrs.field(default=None, converter=parse_optional_amount)


@attrs.frozen
class OpenAccountState:
    """Whether the account id is taken, and whether by this very command.

    Attributes:
        own_event_id: the id of the command's first event.
        exists: an account with this id was opened.
        already_stored: this command's events are stored (it is a retry).
    """

    account_id: str
    own_event_id: uuid.UUID
    exists: bool = False
    already_stored: bool = False


def bank_account_opened(
    *, event_id: uuid.UUID, account_id: str, owner: str, account_type: AccountType, currency: Currency
) -> Event:
    """A ``BankAccountOpened`` event.

    Payload: ``{"accountId", "owner", "accountType": "checking"|"savings",
    "currency": "EUR"|"USD"|"GBP"}``.
    """
    payload = {"accountId": account_id, "owner": owner, "accountType": account_type.value, "currency": currency.value}
    return Event(BANK_ACCOUNT_OPENED, payload, event_id=event_id)
