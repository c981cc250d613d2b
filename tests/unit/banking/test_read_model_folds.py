"""The read models' pure folds: the ``accounts`` rows and the monthly figures
equal what the events say, however the events are cut into batches."""

from __future__ import annotations

import contextlib
import uuid
from datetime import UTC, date, datetime, timedelta, timezone
from decimal import Decimal

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from apps.banking.domain import AccountStatus, BankingError, Currency, MalformedEvent
from apps.banking.features.analytics.core import contribution, fold_figures, month_of
from apps.banking.features.analytics.types import MonthlyFigures
from apps.banking.features.list_accounts.core import apply_changes, fold_accounts, summarize
from apps.banking.features.list_accounts.types import AccountRow
from eventbus import EventRecord

from .ledger import EPOCH, Ledger, close, deposit, open_, transfer, withdraw
from .test_properties import commands


def rows_from_views(ledger: Ledger) -> dict[str, AccountRow]:
    """Each opened account's row, as get_account's fold (independent code) tells it."""
    rows = {}
    for record in ledger.records:
        if record.event_type == "BankAccountOpened":
            view = ledger.view(record.payload["accountId"])
            rows[view.account_id] = AccountRow(
                view.account_id,
                view.owner,
                view.account_type,
                view.currency,
                view.balance,
                view.opened_at,
                view.updated_at,
                view.status,
            )
    return rows


def run(history: list) -> Ledger:  # type: ignore[type-arg]
    ledger = Ledger()
    for command in history:
        with contextlib.suppress(BankingError):
            ledger.execute(command)
    return ledger


@settings(max_examples=200, deadline=None)
@given(st.lists(commands(), max_size=40), st.lists(st.integers(min_value=1, max_value=8), max_size=10))
def test_the_accounts_rows_equal_get_accounts_fold_in_any_batches(history: list, cuts: list[int]) -> None:  # type: ignore[type-arg]
    ledger = run(history)
    records = ledger.records
    rows: dict[str, AccountRow] = {}
    start = 0
    for size in [*cuts, len(records)]:
        batch = records[start : start + size]
        rows = apply_changes(rows, summarize(batch).values())
        start += size
    assert rows == fold_accounts(records) == rows_from_views(ledger)


def test_one_batch_may_open_fund_move_and_close_an_account() -> None:
    ledger = Ledger.of([open_("A", "10"), open_("B"), transfer("A", "B", "4"), withdraw("B", "4"), close("B")])
    changes = summarize(ledger.records)
    assert list(changes) == ["A", "B"]
    assert (changes["A"].delta, changes["A"].closed) == (Decimal("6.00"), False)
    assert (changes["B"].delta, changes["B"].closed) == (Decimal("0.00"), True)
    rows = fold_accounts(ledger.records)
    assert rows["B"].status is AccountStatus.CLOSED
    assert rows["A"].updated_at == ledger.records[3].occurred_at  # the transfer
    assert rows["B"].updated_at == ledger.records[-1].occurred_at


def test_events_of_an_account_never_opened_are_malformed() -> None:
    ledger = Ledger.of([open_("A", "10")])
    stray = EventRecord(
        9, uuid.uuid4(), "MoneyDeposited", {"accountId": "Z", "amount": "1.00", "currency": "EUR"}, {}, EPOCH
    )
    with pytest.raises(MalformedEvent, match="never opened"):
        fold_accounts([*ledger.records, stray])


def test_an_opening_after_events_of_its_account_in_one_batch_is_malformed() -> None:
    ledger = Ledger.of([open_("A", "10")])
    opening, first_deposit = ledger.records
    with pytest.raises(MalformedEvent, match="after events of it"):
        summarize([first_deposit, opening])


@pytest.mark.parametrize(
    ("moment", "month"),
    [
        (datetime(2025, 3, 31, 23, 59, tzinfo=UTC), date(2025, 3, 1)),
        (datetime(2025, 4, 1, 0, 30, tzinfo=timezone(timedelta(hours=2))), date(2025, 3, 1)),
        (datetime(2024, 12, 31, 22, 0, tzinfo=timezone(timedelta(hours=-3))), date(2025, 1, 1)),
    ],
)
def test_a_month_is_the_utc_calendar_month(moment: datetime, month: date) -> None:
    assert month_of(moment) == month


def test_each_kind_counts_in_its_own_column_and_closings_not_at_all() -> None:
    ledger = Ledger.of(
        [
            open_("A", "10"),
            open_("B", currency="EUR"),
            transfer("A", "B", "2.5"),
            withdraw("B", "2.5"),
            close("B"),
            deposit("A", "1"),
        ]
    )
    month = month_of(EPOCH)
    parts = [contribution(record) for record in ledger.records]
    assert parts[5] is None  # the closing
    assert fold_figures(ledger.records) == [
        MonthlyFigures(
            month,
            Currency.EUR,
            accounts_opened=2,
            deposits=2,
            deposited=Decimal("11.00"),
            withdrawals=1,
            withdrawn=Decimal("2.50"),
            transfers=1,
            transferred=Decimal("2.50"),
        )
    ]


@settings(max_examples=100, deadline=None)
@given(st.lists(commands(), max_size=40))
def test_the_monthly_figures_sum_the_events_per_currency(history: list) -> None:  # type: ignore[type-arg]
    records = run(history).records
    figures = fold_figures(records)
    for currency in Currency:
        mine = [f for f in figures if f.currency is currency]
        events = [r for r in records if r.payload.get("currency") == currency.value]
        amounts = [Decimal(r.payload["amount"]) for r in events if "amount" in r.payload]
        assert sum(f.accounts_opened for f in mine) == sum(r.event_type == "BankAccountOpened" for r in events)
        assert sum((f.deposited + f.withdrawn + f.transferred for f in mine), Decimal(0)) == sum(amounts, Decimal(0))
    assert figures == sorted(figures, key=lambda f: (f.month, f.currency.value))
