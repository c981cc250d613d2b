"""Laws that hold for any history: money is never created, lost or
overdrawn, whatever runs, alone or concurrently."""

from __future__ import annotations

import contextlib
import functools
from collections import defaultdict
from decimal import Decimal

from hypothesis import given, settings
from hypothesis import strategies as st

from apps.banking.domain import (
    AccountAlreadyExists,
    AccountClosed,
    AccountNotEmpty,
    AccountState,
    AccountStatus,
    BankingError,
    CommandRefused,
    Currency,
    CurrencyMismatch,
    InsufficientFunds,
    UnknownAccount,
    account_filter,
    evolve_account,
)
from apps.banking.features.deposit.types import Deposit
from apps.banking.features.open_account.types import OpenAccount
from apps.banking.features.transfer.types import Transfer
from apps.banking.features.withdraw.types import Withdraw
from eventbus import EventRecord

from .ledger import Command, Ledger, close, core_of, decide_on, deposit, open_, transfer, withdraw

ACCOUNTS = "ABCD"

amounts = st.integers(min_value=1, max_value=20_000).map(lambda cents: f"{cents // 100}.{cents % 100:02d}")
accounts = st.sampled_from(ACCOUNTS)


@st.composite
def commands(draw: st.DrawFn) -> Command:
    """Any command on the accounts A to D, often refused."""
    kind = draw(st.sampled_from(["open", "deposit", "withdraw", "withdraw", "transfer", "transfer", "close"]))
    account = draw(accounts)
    if kind == "open":
        currency = draw(st.sampled_from(["EUR", "EUR", "USD"]))
        return open_(account, draw(st.none() | amounts), currency=currency)
    if kind == "deposit":
        return deposit(account, draw(amounts))
    if kind == "withdraw":
        return withdraw(account, draw(amounts))
    if kind == "transfer":
        target = draw(st.sampled_from([other for other in ACCOUNTS if other != account]))
        return transfer(account, target, draw(amounts))
    return close(account)


def audit(records: list[EventRecord]) -> dict[str, Decimal]:
    """Check the rules on the raw events, independently of the code under
    test, and return each account's balance."""
    currency: dict[str, str] = {}
    balance: dict[str, Decimal] = defaultdict(Decimal)
    closed: set[str] = set()
    moved_in = moved_out = Decimal(0)
    for record in records:
        payload = record.payload
        kind = record.event_type
        if kind == "BankAccountOpened":
            assert payload["accountId"] not in currency, "opened twice"
            currency[payload["accountId"]] = payload["currency"]
            continue
        if kind == "BankAccountClosed":
            assert balance[payload["accountId"]] == 0, "closed with money in it"
            closed.add(payload["accountId"])
            continue
        amount = Decimal(payload["amount"])
        assert amount > 0 and amount == amount.quantize(Decimal("0.01"))
        if kind == "MoneyTransferred":
            source, target = payload["fromAccountId"], payload["toAccountId"]
        elif kind == "MoneyDeposited":
            source, target = None, payload["accountId"]
            moved_in += amount
        else:
            source, target = payload["accountId"], None
            moved_out += amount
        for account in (source, target):
            if account is not None:
                assert account in currency, "money of an account never opened"
                assert account not in closed, "money of a closed account"
                assert currency[account] == payload["currency"], "money in another currency"
        if source is not None:
            balance[source] -= amount
            assert balance[source] >= 0, "overdrawn"
        if target is not None:
            balance[target] += amount
    assert sum(balance.values()) == moved_in - moved_out, "money created or lost"
    return dict(balance)


def check(ledger: Ledger) -> None:
    """The audit's balances are what get_account and the write side's fold say."""
    balances = audit(ledger.records)
    for account in ACCOUNTS:
        folded = functools.reduce(evolve_account, ledger.records, AccountState(account))
        if folded.status is None:
            continue
        view = ledger.view(account)
        assert view.balance == folded.balance == balances.get(account, 0)
        assert view.status is folded.status
        assert (folded.status is AccountStatus.CLOSED) == (view.closed_at is not None)


class Model:
    """The rules, as plainly as they can be said: which refusal a command
    earns, and what it does to the balances if none."""

    def __init__(self) -> None:
        self.currency: dict[str, Currency] = {}
        self.balance: dict[str, Decimal] = {}
        self.closed: set[str] = set()

    def _usable(self, account: str) -> type[CommandRefused] | None:
        if account not in self.currency:
            return UnknownAccount
        return AccountClosed if account in self.closed else None

    def refusal(self, command: Command) -> type[CommandRefused] | None:
        """The error the bank must raise, or None if it must accept."""
        if isinstance(command, OpenAccount):
            return AccountAlreadyExists if command.account_id in self.currency else None
        if isinstance(command, Deposit):
            return self._usable(command.account_id)
        if isinstance(command, Withdraw):
            error = self._usable(command.account_id)
            return error or (InsufficientFunds if command.amount > self.balance[command.account_id] else None)
        if isinstance(command, Transfer):
            source, target = command.from_account_id, command.to_account_id
            error = self._usable(source) or self._usable(target)
            if error or self.currency[source] != self.currency[target]:
                return error or CurrencyMismatch
            return InsufficientFunds if command.amount > self.balance[source] else None
        error = self._usable(command.account_id)
        return error or (AccountNotEmpty if self.balance[command.account_id] else None)

    def apply(self, command: Command) -> None:
        """Do what an accepted command does."""
        if isinstance(command, OpenAccount):
            self.currency[command.account_id] = command.currency
            self.balance[command.account_id] = command.initial_deposit or Decimal(0)
        elif isinstance(command, Deposit):
            self.balance[command.account_id] += command.amount
        elif isinstance(command, Withdraw):
            self.balance[command.account_id] -= command.amount
        elif isinstance(command, Transfer):
            self.balance[command.from_account_id] -= command.amount
            self.balance[command.to_account_id] += command.amount
        else:
            self.closed.add(command.account_id)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(commands(), st.booleans()), max_size=40))
def test_commands_one_after_another_do_what_the_rules_say(history: list[tuple[Command, bool]]) -> None:
    ledger, model = Ledger(), Model()
    for command, retried in history:
        before = list(ledger.records)
        expected = model.refusal(command)
        try:
            stored = ledger.execute(command)
        except CommandRefused as error:
            assert type(error) is expected
            assert ledger.records == before
        else:
            assert expected is None
            model.apply(command)
            if retried:
                after = list(ledger.records)
                assert ledger.execute(command) == stored
                assert ledger.records == after
        for account, balance in model.balance.items():
            assert ledger.view(account).balance == balance >= 0
    check(ledger)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.tuples(commands(), commands()), max_size=25))
def test_commands_decided_concurrently_keep_every_rule(pairs: list[tuple[Command, Command]]) -> None:
    """Both commands of a pair decide on the same read. The first is stored;
    the second only if no event stored since matches its boundary (the
    store's condition), else it runs again on a fresh read, as the shell does."""
    ledger = Ledger()
    for first, second in pairs:
        read = list(ledger.records)
        decisions = []
        for command in (first, second):
            with contextlib.suppress(CommandRefused):
                decisions.append((command, decide_on(read, command)))
        for command, events in decisions:
            boundary = core_of(command).boundary(command)
            if any(boundary.matches(record) for record in ledger.records[len(read) :]):
                with contextlib.suppress(BankingError):
                    ledger.execute(command)
            else:
                ledger.append(events)
        check(ledger)


@settings(max_examples=200, deadline=None)
@given(st.lists(commands(), max_size=30), commands())
def test_a_decision_on_its_boundary_is_the_decision_on_everything(history: list[Command], command: Command) -> None:
    ledger = Ledger()
    for earlier in history:
        with contextlib.suppress(CommandRefused):
            ledger.execute(earlier)
    boundary = core_of(command).boundary(command)

    def outcome(records: list[EventRecord]) -> object:
        core = core_of(command)
        state = functools.reduce(core.evolve, records, core.initial_state(command))
        try:
            return core.decide(state, command)
        except CommandRefused as error:
            return type(error), str(error)

    assert outcome(boundary.select(ledger.records)) == outcome(ledger.records)
    assert account_filter(ACCOUNTS).select(ledger.records) == ledger.records
