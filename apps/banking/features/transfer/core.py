"""Transfer: the pure decision.

The boundary covers both accounts completely. For the source that means every
event that changes its balance: deposits, withdrawals, transfers in AND out.
Leaving its outgoing transfers out would let two transfers decided on the same
balance both succeed, and overdraw it. For the destination it means its
opening and closing (it must be open), and its money events, which do no harm.
"""

from __future__ import annotations

from apps.banking.domain import (
    AccountState,
    CurrencyMismatch,
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

from .types import Transfer, TransferState, money_transferred


def boundary(command: Transfer) -> EventFilter:
    """Every event of either account: opened, deposits, withdrawals,
    transfers out and in, closed."""
    return account_filter([command.from_account_id, command.to_account_id])


def initial_state(command: Transfer) -> TransferState:
    """The state before any event: no such accounts."""
    return TransferState(
        source=AccountState(command.from_account_id),
        destination=AccountState(command.to_account_id),
        own_event_id=event_id(command.command_id, 0),
    )


def evolve(state: TransferState, event: EventLike) -> TransferState:
    """The state after ``event``.

    Raises:
        MalformedEvent: an event of a bank type without its payload fields.
    """
    return TransferState(
        source=evolve_account(state.source, event),
        destination=evolve_account(state.destination, event),
        own_event_id=state.own_event_id,
        already_stored=state.already_stored or event.event_id == state.own_event_id,
    )


def decide(state: TransferState, command: Transfer) -> list[Event]:
    """One ``MoneyTransferred``.

    A retry of a command whose event is stored gets the same event again (so
    appending it returns the stored record).

    Raises:
        UnknownAccount, AccountClosed: either account does not take part.
        CurrencyMismatch: the accounts' currencies differ, or the command
            names another.
        InsufficientFunds: the source holds less than the amount.
    """
    source, destination = state.source, state.destination
    if state.already_stored:
        currency = opened_currency(source)
    else:
        currency = require_open(source)
        if require_open(destination) != currency:
            raise CurrencyMismatch(
                f"account {source.account_id} holds {currency} and account {destination.account_id} "
                f"holds {destination.currency}: a transfer needs one currency"
            )
        require_currency(command.currency, source)
        require_funds(source, command.amount, "transfer")
    return [
        money_transferred(
            event_id=event_id(command.command_id, 0),
            from_account_id=command.from_account_id,
            to_account_id=command.to_account_id,
            amount=command.amount,
            currency=currency,
        )
    ]
