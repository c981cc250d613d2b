"""Close an account: the command, the event it produces, the state it decides on."""

from __future__ import annotations

import uuid

import attrs

from apps.banking.domain import BANK_ACCOUNT_CLOSED, AccountState, parse_account_id
from eventbus.values import Event


@attrs.frozen(kw_only=True)
class CloseAccount:
    """Close an account; only an open account with a zero balance closes.

    Raises (when made):
        InvalidAccountId.
    """

    command_id: uuid.UUID = attrs.field(validator=attrs.validators.instance_of(uuid.UUID))
    account_id: str = attrs.field(converter=parse_account_id)


@attrs.frozen
class CloseAccountState:
    """The account, and whether this command's event is stored already.

    Attributes:
        own_event_id: the id of the command's event.
        already_stored: the command is a retry of one that took effect.
    """

    account: AccountState
    own_event_id: uuid.UUID
    already_stored: bool = False


def bank_account_closed(*, event_id: uuid.UUID, account_id: str) -> Event:
    """A ``BankAccountClosed`` event.

    Payload: ``{"accountId"}``.
    """
    return Event(BANK_ACCOUNT_CLOSED, {"accountId": account_id}, event_id=event_id)
