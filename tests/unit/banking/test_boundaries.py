"""Consistency boundaries: each slice reads, and appends on condition of,
every event that could change its decision, and no more than it must.

The store refuses an append if an event matching its filter was stored
after the read. So a decision is safe against a concurrent one exactly when
the concurrent one's events match its boundary."""

from __future__ import annotations

from typing import Any

import pytest

from apps.banking.domain import account_filter
from eventbus import EventRecord

from .ledger import Command, Ledger, close, core_of, decide_on, deposit, open_, transfer, withdraw


def involves(record: EventRecord, account_ids: set[str]) -> bool:
    keys = ("accountId", "fromAccountId", "toAccountId")
    return any(record.payload.get(key) in account_ids for key in keys)


def busy_ledger() -> Ledger:
    """Accounts A, B, C with every kind of event, in and out of each."""
    return Ledger.of(
        [
            open_("A", "100"),
            open_("B", "100"),
            open_("C", "100"),
            open_("D"),
            deposit("A", "1"),
            deposit("B", "1"),
            withdraw("A", "2"),
            withdraw("C", "2"),
            transfer("A", "B", "3"),
            transfer("B", "A", "4"),
            transfer("A", "C", "5"),
            transfer("C", "A", "6"),
            transfer("B", "C", "7"),
            close("D"),
        ]
    )


@pytest.mark.parametrize(
    ("command", "covered"),
    [
        pytest.param(withdraw("A", "1"), {"A"}, id="withdraw: every event of the account, transfers both ways"),
        pytest.param(transfer("A", "B", "1"), {"A", "B"}, id="transfer: every event of both accounts"),
        pytest.param(close("A"), {"A"}, id="close: every event of the account"),
    ],
)
def test_balance_decisions_read_every_event_of_their_accounts(command: Command, covered: set[str]) -> None:
    records = busy_ledger().records
    selected = core_of(command).boundary(command).select(records)
    assert selected == [record for record in records if involves(record, covered)]


def test_a_transfer_reads_the_source_outgoing_transfers_to_third_accounts() -> None:
    records = busy_ledger().records
    outgoing = [r for r in records if r.event_type == "MoneyTransferred" and r.payload["fromAccountId"] == "A"]
    assert {r.payload["toAccountId"] for r in outgoing} == {"B", "C"}
    boundary = core_of(transfer("A", "D", "1")).boundary(transfer("A", "D", "1"))
    assert all(boundary.matches(record) for record in outgoing)


def test_a_deposit_reads_only_the_opening_and_closing_of_its_account() -> None:
    records = busy_ledger().records
    command = deposit("A", "1")
    selected = core_of(command).boundary(command).select(records)
    assert [(r.event_type, r.payload["accountId"]) for r in selected] == [("BankAccountOpened", "A")]


def test_an_opening_reads_only_the_openings_of_its_id() -> None:
    ledger = busy_ledger()
    command = open_("A")
    assert core_of(command).boundary(command).select(ledger.records) == ledger.records[:1]


def test_the_account_filter_matches_any_of_several_accounts() -> None:
    records = busy_ledger().records
    assert account_filter(["B", "D"]).select(records) == [r for r in records if involves(r, {"B", "D"})]


CONFLICTING = [
    pytest.param(
        [open_("A", "100")], withdraw("A", "60"), withdraw("A", "60"), id="two withdrawals that would overdraw"
    ),
    pytest.param(
        [open_("A", "100"), open_("B")],
        withdraw("A", "60"),
        transfer("A", "B", "60"),
        id="a withdrawal, then a transfer out that would overdraw",
    ),
    pytest.param(
        [open_("A", "100"), open_("B")],
        transfer("A", "B", "60"),
        withdraw("A", "60"),
        id="a transfer out, then a withdrawal that would overdraw",
    ),
    pytest.param(
        [open_("A", "100"), open_("B"), open_("C")],
        transfer("A", "C", "60"),
        transfer("A", "B", "60"),
        id="two transfers out to different accounts that would overdraw",
    ),
    pytest.param([open_("A")], deposit("A", "5"), close("A"), id="a deposit, then a close that would lose it"),
    pytest.param([open_("A")], close("A"), deposit("A", "5"), id="a close, then a deposit into the closed account"),
    pytest.param(
        [open_("A"), open_("B", "5")],
        transfer("B", "A", "5"),
        close("A"),
        id="a transfer in, then a close that would lose it",
    ),
    pytest.param(
        [open_("A"), open_("B", "5")],
        close("A"),
        transfer("B", "A", "5"),
        id="a close, then a transfer into the closed account",
    ),
    pytest.param([], open_("A"), open_("A"), id="two openings of one id"),
]


@pytest.mark.parametrize(("given", "first", "second"), CONFLICTING)
def test_decisions_on_one_read_that_could_break_a_rule_conflict(
    given: list[Command], first: Command, second: Command
) -> None:
    read = Ledger.of(given).records
    stored_first = decide_on(read, first)
    decide_on(read, second)  # each is fine alone, on what was read
    boundary = core_of(second).boundary(second)
    assert any(boundary.matches(event) for event in stored_first)


INDEPENDENT = [
    pytest.param([open_("A")], deposit("A", "5"), deposit("A", "5"), id="two deposits into one account"),
    pytest.param([open_("A", "9")], withdraw("A", "5"), deposit("A", "5"), id="a withdrawal, then a deposit"),
    pytest.param(
        [open_("A", "9"), open_("B", "9")], withdraw("A", "9"), withdraw("B", "9"), id="withdrawals from two accounts"
    ),
    pytest.param(
        [open_(name, "9") for name in "ABCD"],
        transfer("A", "B", "9"),
        transfer("C", "D", "9"),
        id="transfers between disjoint pairs",
    ),
    pytest.param([], open_("A"), open_("B"), id="openings of two ids"),
]


@pytest.mark.parametrize(("given", "first", "second"), INDEPENDENT)
def test_decisions_that_cannot_break_a_rule_together_do_not_conflict(
    given: list[Command], first: Command, second: Command
) -> None:
    read = Ledger.of(given).records
    stored_first: list[Any] = decide_on(read, first)
    boundary = core_of(second).boundary(second)
    assert not any(boundary.matches(event) for event in stored_first)
