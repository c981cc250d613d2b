"""The write slices' shells and get_account against PostgreSQL: load, decide,
append on what was read, and decide again when the accounts changed meanwhile."""

from __future__ import annotations

import uuid
from collections.abc import AsyncIterator, Sequence
from decimal import Decimal

import pytest
import trio

from apps.banking.domain import (
    AccountAlreadyExists,
    AccountClosed,
    AccountNotEmpty,
    BankingError,
    Contention,
    Currency,
    CurrencyMismatch,
    InsufficientFunds,
    InvalidAccountId,
    UnknownAccount,
)
from apps.banking.execution import execute
from apps.banking.features.close_account.shell import close_account
from apps.banking.features.close_account.types import CloseAccount
from apps.banking.features.deposit.shell import deposit
from apps.banking.features.deposit.types import Deposit
from apps.banking.features.get_account.shell import get_account
from apps.banking.features.get_account.types import EntryKind
from apps.banking.features.open_account.shell import open_account
from apps.banking.features.open_account.types import OpenAccount
from apps.banking.features.transfer.shell import transfer
from apps.banking.features.transfer.types import Transfer
from apps.banking.features.withdraw import shell as withdraw_shell
from apps.banking.features.withdraw.shell import withdraw
from apps.banking.features.withdraw.types import Withdraw, money_withdrawn
from eventbus import Event, EventFilter, EventRecord, EventStore, QueryResult, create_filter, open_event_store

ALL = create_filter([])


@pytest.fixture
async def store(dsn: str) -> AsyncIterator[EventStore]:
    async with open_event_store(dsn) as store:
        yield store


def opening(account_id: str, initial: str | None = None, currency: str = "EUR") -> OpenAccount:
    return OpenAccount(
        command_id=uuid.uuid4(),
        account_id=account_id,
        owner="Ada",
        account_type="checking",
        currency=currency,
        initial_deposit=initial,
    )


def withdrawal(account_id: str, amount: str) -> Withdraw:
    return Withdraw(command_id=uuid.uuid4(), account_id=account_id, amount=amount)


def moving(source: str, target: str, amount: str) -> Transfer:
    return Transfer(command_id=uuid.uuid4(), from_account_id=source, to_account_id=target, amount=amount)


async def everything(store: EventStore) -> list[EventRecord]:
    return (await store.query(ALL)).events


async def test_an_opening_with_a_first_deposit_is_read_back_as_balance_and_history(store: EventStore) -> None:
    records = await open_account(store, opening("A", "100.00"))
    await deposit(store, Deposit(command_id=uuid.uuid4(), account_id="A", amount="20"))
    await withdraw(store, withdrawal("A", "30.50"))
    view = await get_account(store, " A ")
    assert [record.event_type for record in records] == ["BankAccountOpened", "MoneyDeposited"]
    assert view.balance == Decimal("89.50")
    assert [(entry.kind, entry.balance) for entry in view.history] == [
        (EntryKind.OPENED, Decimal("0.00")),
        (EntryKind.DEPOSIT, Decimal("100.00")),
        (EntryKind.DEPOSIT, Decimal("120.00")),
        (EntryKind.WITHDRAWAL, Decimal("89.50")),
    ]
    assert view.opened_at == records[0].occurred_at


async def test_get_account_refuses_unknown_and_malformed_ids(store: EventStore) -> None:
    with pytest.raises(UnknownAccount):
        await get_account(store, "nobody")
    with pytest.raises(InvalidAccountId):
        await get_account(store, "no body")


REFUSED = [
    pytest.param(opening("A"), AccountAlreadyExists, id="opening a taken id"),
    pytest.param(Deposit(command_id=uuid.uuid4(), account_id="X", amount="1"), UnknownAccount, id="deposit, unknown"),
    pytest.param(
        Deposit(command_id=uuid.uuid4(), account_id="A", amount="1", currency="USD"),
        CurrencyMismatch,
        id="deposit, wrong currency",
    ),
    pytest.param(Deposit(command_id=uuid.uuid4(), account_id="C", amount="1"), AccountClosed, id="deposit, closed"),
    pytest.param(withdrawal("A", "100.01"), InsufficientFunds, id="withdrawal, overdraft"),
    pytest.param(moving("A", "B", "100.01"), InsufficientFunds, id="transfer, overdraft"),
    pytest.param(moving("A", "G", "1"), CurrencyMismatch, id="transfer, other currency"),
    pytest.param(moving("A", "C", "1"), AccountClosed, id="transfer, to a closed account"),
    pytest.param(moving("X", "A", "1"), UnknownAccount, id="transfer, from an unknown account"),
    pytest.param(CloseAccount(command_id=uuid.uuid4(), account_id="A"), AccountNotEmpty, id="close, not empty"),
    pytest.param(CloseAccount(command_id=uuid.uuid4(), account_id="C"), AccountClosed, id="close, closed"),
]


@pytest.mark.parametrize(("command", "error"), REFUSED)
async def test_a_refused_command_writes_nothing(store: EventStore, command: object, error: type[Exception]) -> None:
    await open_account(store, opening("A", "100"))
    await open_account(store, opening("B"))
    await open_account(store, opening("G", "10", currency="GBP"))
    await open_account(store, opening("C"))
    await close_account(store, CloseAccount(command_id=uuid.uuid4(), account_id="C"))
    before = await everything(store)
    shells = {
        OpenAccount: open_account,
        Deposit: deposit,
        Withdraw: withdraw,
        Transfer: transfer,
        CloseAccount: close_account,
    }
    with pytest.raises(error):
        await shells[type(command)](store, command)  # type: ignore[operator]
    assert await everything(store) == before


async def test_every_write_slice_takes_a_retried_command_once(store: EventStore) -> None:
    await open_account(store, opening("B"))
    runs = [
        (open_account, opening("A", "50")),
        (deposit, Deposit(command_id=uuid.uuid4(), account_id="A", amount="10")),
        (withdraw, withdrawal("A", "20")),
        (transfer, moving("A", "B", "40")),
        (close_account, CloseAccount(command_id=uuid.uuid4(), account_id="A")),
    ]
    for shell, command in runs:
        first = await shell(store, command)  # type: ignore[operator]
        stored = await everything(store)
        assert await shell(store, command) == first  # type: ignore[operator]
        assert await everything(store) == stored


class Interfering:
    """A store that lets another writer append just before each of our appends."""

    def __init__(self, store: EventStore, times: int = 1) -> None:
        self.store = store
        self.times = times
        self.queries = 0
        self.appends = 0

    async def query(self, query: EventFilter) -> QueryResult:
        self.queries += 1
        return await self.store.query(query)

    async def append(
        self, events: Sequence[Event], filter: EventFilter | None = None, expected: int | None = None
    ) -> list[EventRecord]:
        self.appends += 1
        if self.appends <= self.times:
            other = money_withdrawn(
                event_id=uuid.uuid4(), account_id="A", amount=Decimal("50.00"), currency=Currency.EUR
            )
            await self.store.append([other])
        return await self.store.append(events, filter, expected)


async def test_a_change_between_read_and_append_makes_the_shell_decide_again(store: EventStore) -> None:
    await open_account(store, opening("A", "100"))
    log = Interfering(store)
    with pytest.raises(InsufficientFunds, match=r"holds 50\.00 EUR"):
        await withdraw(log, withdrawal("A", "80"))
    assert (log.queries, log.appends) == (2, 1)  # decided twice; the second time refused
    assert (await get_account(store, "A")).balance == Decimal("50.00")


async def test_a_command_that_always_finds_a_change_gives_up_with_contention(store: EventStore) -> None:
    await open_account(store, opening("A", "1000"))
    log = Interfering(store, times=3)
    command = withdrawal("A", "10")
    with pytest.raises(Contention, match="3 attempts"):
        await execute(log, withdraw_shell.DECIDER, command, attempts=3)
    view = await get_account(store, "A")
    assert view.balance == Decimal("850.00")  # the three others' withdrawals, not ours
    assert all(entry.amount == Decimal("50.00") for entry in view.history if entry.kind is EntryKind.WITHDRAWAL)


async def _race(store: EventStore, *commands: Withdraw | Transfer) -> list[str]:
    outcomes: list[str] = []

    async def run(command: Withdraw | Transfer) -> None:
        try:
            await (withdraw(store, command) if isinstance(command, Withdraw) else transfer(store, command))
        except BankingError as exc:
            outcomes.append(type(exc).__name__)
        else:
            outcomes.append("ok")

    async with trio.open_nursery() as nursery:
        for command in commands:
            nursery.start_soon(run, command)
    return sorted(outcomes)


@pytest.mark.parametrize(
    "commands",
    [
        pytest.param(lambda: [withdrawal("A", "100"), withdrawal("A", "100")], id="two withdrawals"),
        pytest.param(lambda: [moving("A", "B", "100"), moving("A", "B", "100")], id="two transfers out"),
        pytest.param(lambda: [moving("A", "B", "100"), withdrawal("A", "100")], id="a transfer out and a withdrawal"),
    ],
)
async def test_two_commands_taking_the_whole_balance_at_once_cannot_both_succeed(store: EventStore, commands) -> None:  # type: ignore[no-untyped-def]
    await open_account(store, opening("A", "100"))
    await open_account(store, opening("B"))
    assert await _race(store, *commands()) == ["InsufficientFunds", "ok"]
    assert (await get_account(store, "A")).balance == Decimal("0.00")


async def test_a_deposit_does_not_conflict_with_other_money_events(store: EventStore) -> None:
    await open_account(store, opening("A", "100"))
    log = Interfering(store)
    await deposit(log, Deposit(command_id=uuid.uuid4(), account_id="A", amount="5"))
    assert (log.queries, log.appends) == (1, 1)  # a withdrawal in between is outside a deposit's boundary
    assert (await get_account(store, "A")).balance == Decimal("55.00")
