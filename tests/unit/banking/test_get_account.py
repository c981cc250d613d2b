"""get_account: an account's balance, status and history, folded from its events."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from apps.banking.domain import AccountStatus, AccountType, Currency, MalformedEvent, UnknownAccount
from apps.banking.features.get_account.core import view_account
from apps.banking.features.get_account.types import EntryKind
from eventbus import EventRecord

from .ledger import EPOCH, Ledger, close, deposit, open_, transfer, withdraw


def test_a_view_shows_owner_type_currency_balance_and_every_entry() -> None:
    ledger = Ledger.of(
        [
            open_("A", "100", owner="  Ada   Lovelace "),
            open_("B", "50"),
            deposit("A", "20.5"),
            withdraw("A", "0.5"),
            transfer("A", "B", "30"),
            transfer("B", "A", "10"),
            withdraw("B", "1"),
        ]
    )
    view = ledger.view("A")
    assert (view.account_id, view.owner, view.account_type, view.currency) == (
        "A",
        "Ada Lovelace",
        AccountType.CHECKING,
        Currency.EUR,
    )
    assert view.status is AccountStatus.OPEN
    assert view.balance == Decimal("100.00")
    assert [(e.kind, e.amount, e.change, e.balance, e.counterparty) for e in view.history] == [
        (EntryKind.OPENED, Decimal("0.00"), Decimal("0.00"), Decimal("0.00"), None),
        (EntryKind.DEPOSIT, Decimal("100.00"), Decimal("100.00"), Decimal("100.00"), None),
        (EntryKind.DEPOSIT, Decimal("20.50"), Decimal("20.50"), Decimal("120.50"), None),
        (EntryKind.WITHDRAWAL, Decimal("0.50"), Decimal("-0.50"), Decimal("120.00"), None),
        (EntryKind.TRANSFER_OUT, Decimal("30.00"), Decimal("-30.00"), Decimal("90.00"), "B"),
        (EntryKind.TRANSFER_IN, Decimal("10.00"), Decimal("10.00"), Decimal("100.00"), "B"),
    ]
    assert [e.sequence_number for e in view.history] == [1, 2, 5, 6, 7, 8]
    assert view.opened_at == ledger.records[0].occurred_at
    assert view.updated_at == ledger.records[7].occurred_at
    assert view.last_sequence_number == 8
    assert view.closed_at is None


def test_a_closed_account_shows_when_it_closed() -> None:
    ledger = Ledger.of([open_("A", "5", currency="GBP"), withdraw("A", "5"), close("A")])
    view = ledger.view("A")
    assert view.status is AccountStatus.CLOSED
    assert view.currency is Currency.GBP
    assert view.balance == Decimal("0.00")
    assert view.closed_at == view.updated_at == ledger.records[-1].occurred_at
    assert view.history[-1].kind is EntryKind.CLOSED


def test_records_of_other_accounts_are_skipped() -> None:
    ledger = Ledger.of([open_("B", "9"), open_("A"), deposit("B", "1")])
    view = view_account("A", ledger.records)
    assert [e.kind for e in view.history] == [EntryKind.OPENED]
    assert view.balance == Decimal("0.00")


def test_an_account_never_opened_is_unknown() -> None:
    with pytest.raises(UnknownAccount, match=r"^there is no account Z$"):
        view_account("Z", Ledger.of([open_("A")]).records)


def record(position: int, event_type: str, payload: dict[str, object]) -> EventRecord:
    return EventRecord(position, uuid.UUID(int=position), event_type, payload, {}, EPOCH)


OPENED = record(1, "BankAccountOpened", {"accountId": "A", "owner": "Ada", "accountType": "savings", "currency": "EUR"})


@pytest.mark.parametrize(
    "records",
    [
        pytest.param([OPENED, record(2, "MoneyDeposited", {"accountId": "A", "amount": 5})], id="a number as amount"),
        pytest.param(
            [OPENED, record(2, "MoneyDeposited", {"accountId": "A", "amount": "5"})], id="an amount, no cents"
        ),
        pytest.param([OPENED, record(2, "MoneyDeposited", {"accountId": "A"})], id="a deposit without an amount"),
        pytest.param([OPENED, record(2, "MoneyTransferred", {"toAccountId": "A", "amount": "1.00"})], id="no source"),
        pytest.param([record(1, "MoneyDeposited", {"accountId": "A", "amount": "1.00"})], id="money before opening"),
        pytest.param(
            [record(1, "BankAccountOpened", {"accountId": "A", "owner": "Ada", "accountType": "x", "currency": "EUR"})],
            id="an opening of an unknown type",
        ),
        pytest.param(
            [
                record(
                    1, "BankAccountOpened", {"accountId": "A", "owner": "A", "accountType": "savings", "currency": "$"}
                )
            ],
            id="an opening in an unknown currency",
        ),
    ],
)
def test_malformed_records_are_reported_not_guessed_at(records: list[EventRecord]) -> None:
    with pytest.raises(MalformedEvent):
        view_account("A", records)
