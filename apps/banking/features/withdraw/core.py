"""Withdraw: the pure decision.

The boundary is every event that changes the account's balance or status,
transfers in both directions included: any of them stored after the read
makes the append fail, so two withdrawals (or a withdrawal and an outgoing
transfer) decided on the same balance cannot both succeed and overdraw it.
"""

from __future__ import annotations

from apps.banking.domain import (
    AccountState,
    EventLike,
    account_filter,
    event_id,
    evolve_account,
    opened_currency,
    require_currency,
    require_funds,
    require_open,
)
from eventbus.values import Event, EventFilter

from .types import Withdraw, WithdrawState, money_withdrawn


def boundary(command: Withdraw) -> EventFilter:
    """Every event of the account: opened, deposits, withdrawals, transfers
    out and in, closed."""
    return account_filter([command.account_id])


def initial_state(command: Withdraw) -> WithdrawState:
    """The state before any event: no such account."""
    return WithdrawState(account=AccountState(command.account_id), own_event_id=event_id(command.command_id, 0))


def evolve(state: WithdrawState, event: EventLike) -> WithdrawState:
    """The state after ``event``.

    Raises:
        MalformedEvent: an event of a bank type without its payload fields.
    """
    return WithdrawState(
        account=evolve_account(state.account, event),
        own_event_id=state.own_event_id,
        already_stored=state.already_stored or event.event_id == state.own_event_id,
    )


def decide(state: WithdrawState, command: Withdraw) -> list[Event]:
    """One ``MoneyWithdrawn``.

    A retry of a command whose event is stored gets the same event again (so
    appending it returns the stored record) instead of being judged anew on
    the balance it already lowered.

    Raises:
        UnknownAccount, AccountClosed: the account does not give money.
        CurrencyMismatch: the command names another currency.
        InsufficientFunds: the balance is less than the amount.
    """
    account = state.account
    if state.already_stored:
        currency = opened_currency(account)
    else:
        currency = require_open(account)
        require_currency(command.currency, account)
        require_funds(account, command.amount, "withdraw")
    return [
        money_withdrawn(
            event_id=event_id(command.command_id, 0),
            account_id=command.account_id,
            amount=command.amount,
            currency=currency,
        )
    ]
