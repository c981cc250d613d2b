"""A command retried after it took effect (say, its reply was lost) takes
effect once: its events have ids derived from the command's, the decision
gives the same events again, and the store keeps them once."""

from __future__ import annotations

import pytest

from apps.banking.domain import AccountClosed
from apps.banking.features.withdraw import core as withdraw_core

from .ledger import Command, Ledger, close, decide_on, deposit, open_, transfer, withdraw

RETRIED = [
    pytest.param([], open_("A", "10"), [], id="an opening with a first deposit, though the id is now taken"),
    pytest.param([open_("A")], deposit("A", "5"), [], id="a deposit"),
    pytest.param([open_("A", "10")], withdraw("A", "10"), [], id="a withdrawal of the whole balance"),
    pytest.param(
        [open_("A", "10")], withdraw("A", "10"), [deposit("A", "3")], id="a withdrawal, with a deposit in between"
    ),
    pytest.param([open_("A", "10"), open_("B")], transfer("A", "B", "10"), [], id="a transfer of the whole balance"),
    pytest.param(
        [open_("A", "10"), open_("B")],
        transfer("A", "B", "10"),
        [withdraw("B", "10"), close("B")],
        id="a transfer, though the destination closed since",
    ),
    pytest.param([open_("A")], close("A"), [], id="a close, though the account is now closed"),
    pytest.param(
        [open_("A", "1")], withdraw("A", "1"), [close("A")], id="a withdrawal, though the account closed since"
    ),
]


@pytest.mark.parametrize(("given", "command", "between"), RETRIED)
def test_a_retried_command_returns_the_stored_records_and_stores_nothing(
    given: list[Command], command: Command, between: list[Command]
) -> None:
    ledger = Ledger.of(given)
    first = ledger.execute(command)
    for other in between:
        ledger.execute(other)
    before = list(ledger.records)
    assert ledger.execute(command) == first
    assert ledger.records == before


def test_a_retried_withdrawal_is_not_judged_again_on_the_balance_it_lowered() -> None:
    ledger = Ledger.of([open_("A", "10")])
    command = withdraw("A", "10")
    first = ledger.execute(command)
    state = withdraw_core.initial_state(command)
    for record in ledger.records:
        state = withdraw_core.evolve(state, record)
    assert state.already_stored
    assert state.account.balance == 0
    assert withdraw_core.decide(state, command) == decide_on(ledger.records[: first[0].sequence_number - 1], command)


def test_a_deposit_retried_after_its_account_closed_is_refused_though_it_counted() -> None:
    # A deposit does not load the account's money events (so deposits never
    # conflict with each other), hence it cannot recognise its own event.
    ledger = Ledger.of([open_("A")])
    command = deposit("A", "5")
    ledger.execute(command)
    ledger.execute(withdraw("A", "5"))
    ledger.execute(close("A"))
    with pytest.raises(AccountClosed):
        ledger.execute(command)
    assert [record.event_type for record in ledger.records].count("MoneyDeposited") == 1
