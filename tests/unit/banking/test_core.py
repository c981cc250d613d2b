"""Every rule of the write slices, as tables: given these commands ran, this
command produces these events, or is refused with this error."""

from __future__ import annotations

import json
from typing import Any

import pytest

from apps.banking.domain import (
    BANK_ACCOUNT_CLOSED,
    BANK_ACCOUNT_OPENED,
    MONEY_DEPOSITED,
    MONEY_TRANSFERRED,
    MONEY_WITHDRAWN,
    AccountAlreadyExists,
    AccountClosed,
    AccountNotEmpty,
    BankingError,
    CommandRefused,
    CurrencyMismatch,
    InsufficientFunds,
    InvalidAccountId,
    InvalidAmount,
    InvalidCommand,
    InvalidOwner,
    SameAccount,
    UnknownAccount,
    UnsupportedAccountType,
    UnsupportedCurrency,
    event_id,
)
from apps.banking.features.open_account.types import OpenAccount

from .ledger import Command, Ledger, close, decide_on, deposit, new_id, open_, transfer, withdraw


def opened(account_id: str, currency: str = "EUR") -> tuple[str, dict[str, Any]]:
    return BANK_ACCOUNT_OPENED, {
        "accountId": account_id,
        "owner": "Ada",
        "accountType": "checking",
        "currency": currency,
    }


def deposited(account_id: str, amount: str, currency: str = "EUR") -> tuple[str, dict[str, Any]]:
    return MONEY_DEPOSITED, {"accountId": account_id, "amount": amount, "currency": currency}


def withdrawn(account_id: str, amount: str, currency: str = "EUR") -> tuple[str, dict[str, Any]]:
    return MONEY_WITHDRAWN, {"accountId": account_id, "amount": amount, "currency": currency}


def transferred(source: str, target: str, amount: str, currency: str = "EUR") -> tuple[str, dict[str, Any]]:
    return MONEY_TRANSFERRED, {"fromAccountId": source, "toAccountId": target, "amount": amount, "currency": currency}


def closed(account_id: str) -> tuple[str, dict[str, Any]]:
    return BANK_ACCOUNT_CLOSED, {"accountId": account_id}


ACCEPTED = [
    pytest.param([], open_("A"), [opened("A")], id="open: an account without a first deposit"),
    pytest.param(
        [], open_("A", "100"), [opened("A"), deposited("A", "100.00")], id="open: a first deposit follows the opening"
    ),
    pytest.param([], open_("U", currency="usd"), [opened("U", "USD")], id="open: in any supported currency"),
    pytest.param([open_("B")], open_("A"), [opened("A")], id="open: other accounts do not matter"),
    pytest.param([open_("A")], deposit("A", "50"), [deposited("A", "50.00")], id="deposit: into an open account"),
    pytest.param(
        [open_("A")], deposit("A", "0.01", "EUR"), [deposited("A", "0.01")], id="deposit: naming the right currency"
    ),
    pytest.param(
        [open_("U", currency="USD")],
        deposit("U", "5"),
        [deposited("U", "5.00", "USD")],
        id="deposit: in the account's currency",
    ),
    pytest.param(
        [open_("A", "100")], withdraw("A", "40"), [withdrawn("A", "40.00")], id="withdraw: part of the balance"
    ),
    pytest.param(
        [open_("A", "100")], withdraw("A", "100.00"), [withdrawn("A", "100.00")], id="withdraw: the whole balance"
    ),
    pytest.param(
        [open_("A", "10"), deposit("A", "0.01")],
        withdraw("A", "10.01"),
        [withdrawn("A", "10.01")],
        id="withdraw: deposits add to the balance",
    ),
    pytest.param(
        [open_("A"), open_("B", "30"), transfer("B", "A", "30")],
        withdraw("A", "30"),
        [withdrawn("A", "30.00")],
        id="withdraw: money that came in by transfer",
    ),
    pytest.param(
        [open_("A", "100"), open_("B")],
        transfer("A", "B", "25.5"),
        [transferred("A", "B", "25.50")],
        id="transfer: between two open accounts of one currency",
    ),
    pytest.param(
        [open_("A", "100"), open_("B")],
        transfer("A", "B", "100", "EUR"),
        [transferred("A", "B", "100.00")],
        id="transfer: the whole balance, naming the currency",
    ),
    pytest.param(
        [open_("A"), open_("B", "9"), transfer("B", "A", "9")],
        transfer("A", "B", "9"),
        [transferred("A", "B", "9.00")],
        id="transfer: money that came in by transfer goes back out",
    ),
    pytest.param([open_("A")], close("A"), [closed("A")], id="close: an account that never held money"),
    pytest.param(
        [open_("A", "5"), withdraw("A", "5")], close("A"), [closed("A")], id="close: after all money was withdrawn"
    ),
    pytest.param(
        [open_("A", "5"), open_("B"), transfer("A", "B", "5")],
        close("A"),
        [closed("A")],
        id="close: after all money was transferred out",
    ),
]


@pytest.mark.parametrize(("given", "command", "expected"), ACCEPTED)
def test_accepted(given: list[Command], command: Command, expected: list[tuple[str, dict[str, Any]]]) -> None:
    ledger = Ledger.of(given)
    records = ledger.execute(command)
    assert [(record.event_type, record.payload) for record in records] == expected
    assert [record.event_id for record in records] == [event_id(command.command_id, i) for i in range(len(expected))]


REFUSED = [
    pytest.param([open_("A")], open_("A"), AccountAlreadyExists, "account A exists already", id="open: an id in use"),
    pytest.param(
        [open_("A"), close("A")], open_("A"), AccountAlreadyExists, "account A exists already", id="open: a closed id"
    ),
    pytest.param([], deposit("Z", "1"), UnknownAccount, "there is no account Z", id="deposit: into an unknown account"),
    pytest.param(
        [open_("A"), close("A")],
        deposit("A", "1"),
        AccountClosed,
        "account A is closed",
        id="deposit: into a closed account",
    ),
    pytest.param(
        [open_("A")],
        deposit("A", "1", "USD"),
        CurrencyMismatch,
        "account A holds EUR, not USD",
        id="deposit: in another currency",
    ),
    pytest.param(
        [], withdraw("Z", "1"), UnknownAccount, "there is no account Z", id="withdraw: from an unknown account"
    ),
    pytest.param(
        [open_("A"), close("A")],
        withdraw("A", "1"),
        AccountClosed,
        "account A is closed",
        id="withdraw: from a closed account",
    ),
    pytest.param(
        [open_("A", "100")],
        withdraw("A", "100.01"),
        InsufficientFunds,
        "account A holds 100.00 EUR: cannot withdraw 100.01 EUR",
        id="withdraw: more than the balance",
    ),
    pytest.param(
        [open_("A")],
        withdraw("A", "0.01"),
        InsufficientFunds,
        "account A holds 0.00 EUR: cannot withdraw 0.01 EUR",
        id="withdraw: from an empty account",
    ),
    pytest.param(
        [open_("A", "100"), withdraw("A", "60")],
        withdraw("A", "60"),
        InsufficientFunds,
        "account A holds 40.00 EUR: cannot withdraw 60.00 EUR",
        id="withdraw: earlier withdrawals count",
    ),
    pytest.param(
        [open_("A", "100"), open_("B"), transfer("A", "B", "60")],
        withdraw("A", "60"),
        InsufficientFunds,
        "account A holds 40.00 EUR: cannot withdraw 60.00 EUR",
        id="withdraw: earlier outgoing transfers count",
    ),
    pytest.param(
        [open_("A", "1")],
        withdraw("A", "1", "GBP"),
        CurrencyMismatch,
        "account A holds EUR, not GBP",
        id="withdraw: in another currency",
    ),
    pytest.param(
        [open_("B")],
        transfer("Z", "B", "1"),
        UnknownAccount,
        "there is no account Z",
        id="transfer: from an unknown account",
    ),
    pytest.param(
        [open_("A", "5")],
        transfer("A", "Z", "1"),
        UnknownAccount,
        "there is no account Z",
        id="transfer: to an unknown account",
    ),
    pytest.param(
        [open_("A", "5"), open_("B"), withdraw("A", "5"), close("A")],
        transfer("A", "B", "1"),
        AccountClosed,
        "account A is closed",
        id="transfer: from a closed account",
    ),
    pytest.param(
        [open_("A", "5"), open_("B"), close("B")],
        transfer("A", "B", "1"),
        AccountClosed,
        "account B is closed",
        id="transfer: to a closed account",
    ),
    pytest.param(
        [open_("A", "5"), open_("U", currency="USD")],
        transfer("A", "U", "1"),
        CurrencyMismatch,
        "account A holds EUR and account U holds USD: a transfer needs one currency",
        id="transfer: between currencies",
    ),
    pytest.param(
        [open_("A", "5"), open_("B")],
        transfer("A", "B", "1", "USD"),
        CurrencyMismatch,
        "account A holds EUR, not USD",
        id="transfer: naming another currency",
    ),
    pytest.param(
        [open_("A", "5"), open_("B")],
        transfer("A", "B", "5.01"),
        InsufficientFunds,
        "account A holds 5.00 EUR: cannot transfer 5.01 EUR",
        id="transfer: more than the source holds",
    ),
    pytest.param(
        [open_("A", "100"), open_("B"), open_("C"), transfer("A", "C", "80")],
        transfer("A", "B", "80"),
        InsufficientFunds,
        "account A holds 20.00 EUR: cannot transfer 80.00 EUR",
        id="transfer: earlier outgoing transfers count",
    ),
    pytest.param(
        [open_("A", "100"), open_("B"), withdraw("A", "100")],
        transfer("A", "B", "1"),
        InsufficientFunds,
        "account A holds 0.00 EUR: cannot transfer 1.00 EUR",
        id="transfer: earlier withdrawals count",
    ),
    pytest.param(
        [open_("A"), open_("B", "50")],
        transfer("A", "B", "1"),
        InsufficientFunds,
        "account A holds 0.00 EUR: cannot transfer 1.00 EUR",
        id="transfer: the destination's money does not help",
    ),
    pytest.param([], close("Z"), UnknownAccount, "there is no account Z", id="close: an unknown account"),
    pytest.param(
        [open_("A"), close("A")], close("A"), AccountClosed, "account A is closed", id="close: a closed account"
    ),
    pytest.param(
        [open_("A", "0.01")],
        close("A"),
        AccountNotEmpty,
        "account A holds 0.01 EUR: withdraw or transfer it before closing",
        id="close: an account holding a cent",
    ),
    pytest.param(
        [open_("A"), open_("B", "3"), transfer("B", "A", "3")],
        close("A"),
        AccountNotEmpty,
        "account A holds 3.00 EUR: withdraw or transfer it before closing",
        id="close: an account holding money that came in by transfer",
    ),
]


@pytest.mark.parametrize(("given", "command", "error", "message"), REFUSED)
def test_refused(given: list[Command], command: Command, error: type[CommandRefused], message: str) -> None:
    ledger = Ledger.of(given)
    before = list(ledger.records)
    with pytest.raises(error) as caught:
        ledger.execute(command)
    assert str(caught.value) == message
    assert ledger.records == before


MALFORMED = [
    pytest.param(lambda: deposit("A", "abc"), InvalidAmount, id="deposit: 'abc' is not an amount"),
    pytest.param(lambda: withdraw("A", "-5"), InvalidAmount, id="withdraw: a negative amount"),
    pytest.param(lambda: transfer("A", "B", "0"), InvalidAmount, id="transfer: a zero amount"),
    pytest.param(lambda: open_("A", "0"), InvalidAmount, id="open: a zero first deposit"),
    pytest.param(lambda: open_("A", "1.001"), InvalidAmount, id="open: a first deposit with three places"),
    pytest.param(lambda: open_("A", currency="JPY"), UnsupportedCurrency, id="open: an unsupported currency"),
    pytest.param(lambda: deposit("A", "1", "XXX"), UnsupportedCurrency, id="deposit: an unsupported currency"),
    pytest.param(lambda: open_("A", owner="  "), InvalidOwner, id="open: a blank owner"),
    pytest.param(
        lambda: OpenAccount(command_id=new_id(), account_id="A", owner="Ada", account_type="loan", currency="EUR"),
        UnsupportedAccountType,
        id="open: an unsupported account type",
    ),
    pytest.param(lambda: deposit("a b", "1"), InvalidAccountId, id="deposit: an id with a space"),
    pytest.param(lambda: close(""), InvalidAccountId, id="close: an empty id"),
    pytest.param(lambda: transfer("A", "A", "1"), SameAccount, id="transfer: from an account to itself"),
    pytest.param(lambda: transfer("A", " A ", "1"), SameAccount, id="transfer: to itself, with spaces"),
]


@pytest.mark.parametrize(("make", "error"), MALFORMED)
def test_malformed_commands_are_refused_when_made(make: Any, error: type[InvalidCommand]) -> None:
    with pytest.raises(error):
        make()


def test_the_same_account_message() -> None:
    with pytest.raises(SameAccount, match=r"^a transfer needs two different accounts, not A twice$"):
        transfer("A", "A", "1")


@pytest.mark.parametrize(
    "error", [pytest.param(case.values[2], id=case.id) for case in REFUSED] + [InvalidAmount, SameAccount]
)
def test_errors_belong_to_the_banking_tree(error: type[Exception]) -> None:
    assert issubclass(error, BankingError)


@pytest.mark.parametrize(("given", "command", "expected"), ACCEPTED)
def test_payloads_are_plain_json_with_amounts_as_text_and_no_times(
    given: list[Command], command: Command, expected: list[tuple[str, dict[str, Any]]]
) -> None:
    events = decide_on(Ledger.of(given).records, command)
    for event in events:
        text = json.dumps(event.payload)
        assert json.loads(text) == event.payload
        assert all(isinstance(value, str) for value in event.payload.values())
        assert not any("time" in key.lower() or key.lower().endswith("at") for key in event.payload)
        assert event.metadata is None


@pytest.mark.parametrize(("given", "command", "expected"), ACCEPTED)
def test_deciding_twice_on_the_same_events_gives_identical_events(
    given: list[Command], command: Command, expected: list[tuple[str, dict[str, Any]]]
) -> None:
    records = Ledger.of(given).records
    assert decide_on(records, command) == decide_on(records, command)
