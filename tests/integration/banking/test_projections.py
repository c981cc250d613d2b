"""The read models against PostgreSQL: the ``accounts`` table and the monthly
analytics each equal a fold of the events, through catch-up in big batches,
live updates in small ones, and a rebuild."""

from __future__ import annotations

from collections.abc import AsyncIterator
from decimal import Decimal

import pytest
import trio

from apps.banking.app import Bank, open_bank
from apps.banking.domain import AccountStatus, Currency, InvalidCommand
from apps.banking.features.analytics.core import fold_figures
from apps.banking.features.analytics.types import MonthlyFigures
from apps.banking.features.list_accounts import shell as accounts
from apps.banking.features.list_accounts.types import CurrencyTotal
from eventbus import EventRecord, create_filter

from .workload import expected_rows


async def history(bank: Bank) -> list[EventRecord]:
    return (await bank.bus.store.query(create_filter([]))).events


async def some_business(bank: Bank, customers: int) -> list[str]:
    """Openings in three currencies, deposits, withdrawals, transfers and closings."""
    ids = []
    for number in range(customers):
        currency = ("EUR", "USD", "GBP")[number % 3]
        receipt = await bank.open_account(
            owner=f"Customer {number}",
            account_type=("checking", "savings")[number % 2],
            currency=currency,
            initial_deposit=f"{100 + number}.25" if number % 4 else None,
        )
        ids.append(receipt.account_id)
    for number, account in enumerate(ids):
        await bank.deposit(account, f"{number + 1}.10")
        if number >= 3:
            await bank.transfer(account, ids[number - 3], "1.05")
        await bank.withdraw(account, "0.05")
    for account in ids[-3:]:
        balance = (await bank.get_account(account)).balance
        if balance:
            await bank.withdraw(account, balance)
        await bank.close_account(account)
    return ids


async def assert_read_models_equal_a_fold(bank: Bank) -> None:
    assert await bank.wait_until_current("accounts")
    assert await bank.wait_until_current("analytics")
    records = await history(bank)
    assert {row.account_id: row for row in await bank.list_accounts()} == expected_rows(records)
    assert await bank.analytics() == fold_figures(records)


@pytest.fixture
async def bank(dsn: str) -> AsyncIterator[Bank]:
    async with open_bank(dsn) as bank:
        yield bank


async def test_read_models_follow_live_business_as_a_fold_of_the_events(bank: Bank) -> None:
    await some_business(bank, 12)
    await assert_read_models_equal_a_fold(bank)


async def test_read_models_catch_up_on_a_long_history_in_big_batches(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        await some_business(bank, 60)
    async with open_bank(dsn) as bank:
        await assert_read_models_equal_a_fold(bank)
        assert len(await bank.list_accounts()) == 60


async def test_the_monthly_figures_count_and_sum_each_kind_per_currency(bank: Bank) -> None:
    a = (await bank.open_account(owner="A", account_type="checking", currency="EUR", initial_deposit="10")).account_id
    b = (await bank.open_account(owner="B", account_type="savings", currency="EUR")).account_id
    await bank.open_account(owner="C", account_type="savings", currency="USD", initial_deposit="7.50")
    await bank.transfer(a, b, "2.50")
    await bank.withdraw(b, "1.25")
    await bank.deposit(b, "0.75")
    [eur, usd] = await bank.analytics()
    month = eur.month
    assert month.day == 1
    assert eur == MonthlyFigures(
        month,
        Currency.EUR,
        accounts_opened=2,
        deposits=2,
        deposited=Decimal("10.75"),
        withdrawals=1,
        withdrawn=Decimal("1.25"),
        transfers=1,
        transferred=Decimal("2.50"),
    )
    assert usd == MonthlyFigures(month, Currency.USD, accounts_opened=1, deposits=1, deposited=Decimal("7.50"))


async def test_the_accounts_queries_filter_find_and_total(bank: Bank) -> None:
    ids = await some_business(bank, 9)
    await bank.wait_until_current("accounts")
    open_rows = await bank.list_accounts(status=AccountStatus.OPEN)
    closed_rows = await bank.list_accounts(status=AccountStatus.CLOSED)
    assert [row.account_id for row in open_rows] == ids[:6]
    assert [row.account_id for row in closed_rows] == ids[6:]
    assert [row.account_id for row in await bank.list_accounts(limit=2, offset=1)] == ids[1:3]
    assert [row.account_id for row in await bank.latest_accounts(4)] == ids[-4:]
    assert await bank.latest_accounts(100) == await bank.list_accounts()
    found = await accounts.get(bank.bus, ids[0])
    assert found is not None and found.balance == (await bank.get_account(ids[0])).balance
    assert await accounts.get(bank.bus, "never-opened") is None
    totals = await bank.totals()
    views = [await bank.get_account(account) for account in ids]
    assert totals == [
        CurrencyTotal(
            currency=currency,
            accounts=sum(1 for v in views if v.currency is currency),
            open_accounts=sum(1 for v in views if v.currency is currency and v.status is AccountStatus.OPEN),
            balance=sum((v.balance for v in views if v.currency is currency), Decimal("0.00")),
        )
        for currency in sorted({v.currency for v in views})
    ]


async def test_a_rebuild_reports_progress_and_swaps_in_an_equal_read_model(bank: Bank) -> None:
    await some_business(bank, 15)
    await bank.wait_until_current("accounts")
    before = await bank.list_accounts()
    head = await bank.bus.store.head()
    for name in ("accounts", "analytics"):
        progress: list[tuple[int, int]] = []
        await bank.rebuild(name, lambda done, total, seen=progress: seen.append((done, total)))
        assert progress[-1] == (head, head)
        assert all(done <= total for done, total in progress)
    assert await bank.list_accounts() == before
    await assert_read_models_equal_a_fold(bank)


async def test_a_rebuild_of_an_unknown_read_model_is_refused(bank: Bank) -> None:
    with pytest.raises(InvalidCommand, match="no read model 'balances'"):
        await bank.rebuild("balances")


async def test_commands_run_during_a_rebuild_reach_the_new_read_model(bank: Bank) -> None:
    ids = await some_business(bank, 6)
    await bank.wait_until_current("accounts")
    async with trio.open_nursery() as nursery:
        nursery.start_soon(bank.rebuild, "accounts")
        for number in range(20):
            await bank.deposit(ids[number % 3], "1.00")
            # The old read model serves reads throughout.
            assert len(await bank.list_accounts(wait=False)) == 6
    await assert_read_models_equal_a_fold(bank)


async def test_many_tasks_reading_a_read_model_not_yet_started_start_it_once(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        await bank.open_account(owner="Ada", account_type="checking", currency="EUR")
        results: list[int] = []

        async def read() -> None:
            results.append(len(await bank.list_accounts()))

        async with trio.open_nursery() as nursery:
            for _ in range(8):
                nursery.start_soon(read)
            nursery.start_soon(bank.analytics)
            nursery.start_soon(bank.totals)
        started = sorted(bank.projection_status())

    assert results == [1] * 8
    assert started == ["accounts", "analytics"]


async def test_something_that_is_not_a_command_is_refused_as_invalid(bank: Bank) -> None:
    with pytest.raises(InvalidCommand, match="is not a command of the bank"):
        await bank.execute("deposit 5")  # type: ignore[arg-type]
