"""Open an account: the pure decision.

The shell runs: ``boundary`` → query → fold with ``initial_state`` and
``evolve`` → ``decide`` → append with the same filter.
"""

from __future__ import annotations

import attrs

from apps.banking.domain import (
    BANK_ACCOUNT_OPENED,
    AccountAlreadyExists,
    EventLike,
    event_id,
    payload_text,
)
from apps.banking.features.deposit.types import money_deposited
from eventbus.values import Event, EventFilter, create_filter

from .types import OpenAccount, OpenAccountState, bank_account_opened


def boundary(command: OpenAccount) -> EventFilter:
    """The openings of the command's account id: the decision depends only
    on whether the id is taken."""
    return create_filter([BANK_ACCOUNT_OPENED], [{"accountId": command.account_id}])


def initial_state(command: OpenAccount) -> OpenAccountState:
    """The state before any event: the id is free."""
    return OpenAccountState(account_id=command.account_id, own_event_id=event_id(command.command_id, 0))


def evolve(state: OpenAccountState, event: EventLike) -> OpenAccountState:
    """The state after ``event``; events of other accounts change nothing.

    Raises:
        MalformedEvent: an opening without an account id.
    """
    if event.event_type != BANK_ACCOUNT_OPENED or payload_text(event, "accountId") != state.account_id:
        return state
    return attrs.evolve(state, exists=True, already_stored=state.already_stored or event.event_id == state.own_event_id)


def decide(state: OpenAccountState, command: OpenAccount) -> list[Event]:
    """``BankAccountOpened``, then ``MoneyDeposited`` if there is a first deposit.

    A retry of a command whose events are stored gets the same events again
    (so appending them returns the stored records).

    Raises:
        AccountAlreadyExists: another command opened this id.
    """
    if state.exists and not state.already_stored:
        raise AccountAlreadyExists(f"account {command.account_id} exists already")
    events = [
        bank_account_opened(
            event_id=event_id(command.command_id, 0),
            account_id=command.account_id,
            owner=command.owner,
            account_type=command.account_type,
            currency=command.currency,
        )
    ]
    if command.initial_deposit is not None:
        events.append(
            money_deposited(
                event_id=event_id(command.command_id, 1),
                account_id=command.account_id,
                amount=command.initial_deposit,
                currency=command.currency,
            )
        )
    return events
