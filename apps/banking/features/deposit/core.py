"""Deposit: the pure decision.

A deposit depends only on whether the account is open and on its currency,
never on its balance, so its boundary is the account's opening and closing:
deposits do not conflict with each other or with withdrawals. A close decided
meanwhile makes the append fail (the close is in this boundary), and a
deposit stored meanwhile makes a close fail (deposits are in its boundary).

A retried deposit produces the same event, with the same id, so the store
keeps it once. (Were the account closed between the first try and the retry,
the retry is refused with ``AccountClosed`` although the first try counted.)
"""

from __future__ import annotations

import attrs

from apps.banking.domain import (
    BANK_ACCOUNT_CLOSED,
    BANK_ACCOUNT_OPENED,
    AccountStatus,
    EventLike,
    event_id,
    payload_currency,
    payload_text,
    require_currency,
    require_open,
)
from eventbus.values import Event, EventFilter, create_filter

from .types import Deposit, DepositState, money_deposited


def boundary(command: Deposit) -> EventFilter:
    """The opening and the closing of the command's account."""
    return create_filter([BANK_ACCOUNT_OPENED, BANK_ACCOUNT_CLOSED], [{"accountId": command.account_id}])


def initial_state(command: Deposit) -> DepositState:
    """The state before any event: no such account."""
    return DepositState(account_id=command.account_id)


def evolve(state: DepositState, event: EventLike) -> DepositState:
    """The state after ``event``; other events change nothing.

    Raises:
        MalformedEvent: an opening or closing without its payload fields.
    """
    if event.event_type not in (BANK_ACCOUNT_OPENED, BANK_ACCOUNT_CLOSED):
        return state
    if payload_text(event, "accountId") != state.account_id:
        return state
    if event.event_type == BANK_ACCOUNT_OPENED:
        return attrs.evolve(state, status=AccountStatus.OPEN, currency=payload_currency(event))
    return attrs.evolve(state, status=AccountStatus.CLOSED)


def decide(state: DepositState, command: Deposit) -> list[Event]:
    """One ``MoneyDeposited``.

    Raises:
        UnknownAccount, AccountClosed: the account does not take money.
        CurrencyMismatch: the command names another currency.
    """
    currency = require_open(state)
    require_currency(command.currency, state)
    return [
        money_deposited(
            event_id=event_id(command.command_id, 0),
            account_id=command.account_id,
            amount=command.amount,
            currency=currency,
        )
    ]
