"""Close an account: the pure decision.

The boundary is every event of the account, since closing depends on a zero
balance: a deposit or incoming transfer stored after the read makes the append
fail, so no money is ever left in a closed account.
"""

from __future__ import annotations

from apps.banking.domain import (
    ZERO,
    AccountNotEmpty,
    AccountState,
    EventLike,
    account_filter,
    event_id,
    evolve_account,
    require_open,
    show_money,
)
from eventbus.values import Event, EventFilter

from .types import CloseAccount, CloseAccountState, bank_account_closed


def boundary(command: CloseAccount) -> EventFilter:
    """Every event of the account: opened, deposits, withdrawals, transfers
    out and in, closed."""
    return account_filter([command.account_id])


def initial_state(command: CloseAccount) -> CloseAccountState:
    """The state before any event: no such account."""
    return CloseAccountState(account=AccountState(command.account_id), own_event_id=event_id(command.command_id, 0))


def evolve(state: CloseAccountState, event: EventLike) -> CloseAccountState:
    """The state after ``event``.

    Raises:
        MalformedEvent: an event of a bank type without its payload fields.
    """
    return CloseAccountState(
        account=evolve_account(state.account, event),
        own_event_id=state.own_event_id,
        already_stored=state.already_stored or event.event_id == state.own_event_id,
    )


def decide(state: CloseAccountState, command: CloseAccount) -> list[Event]:
    """One ``BankAccountClosed``.

    A retry of a command whose event is stored gets the same event again (so
    appending it returns the stored record) instead of ``AccountClosed``.

    Raises:
        UnknownAccount, AccountClosed: there is no open account to close.
        AccountNotEmpty: the balance is not zero.
    """
    account = state.account
    if not state.already_stored:
        currency = require_open(account)
        if account.balance != ZERO:
            raise AccountNotEmpty(
                f"account {account.account_id} holds {show_money(account.balance, currency)}: "
                "withdraw or transfer it before closing"
            )
    return [bank_account_closed(event_id=event_id(command.command_id, 0), account_id=command.account_id)]
