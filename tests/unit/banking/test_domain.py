"""The bank's vocabulary: amounts, currencies, account types, names and ids."""

from __future__ import annotations

import uuid
from decimal import Decimal

import pytest

from apps.banking.domain import (
    MAX_AMOUNT,
    AccountType,
    BankingError,
    Currency,
    InvalidAccountId,
    InvalidAmount,
    InvalidOwner,
    UnsupportedAccountType,
    UnsupportedCurrency,
    event_id,
    format_amount,
    parse_account_id,
    parse_account_type,
    parse_amount,
    parse_currency,
)
from apps.banking.features.open_account.types import MAX_OWNER_LENGTH, OpenAccount, account_id_for, parse_owner


@pytest.mark.parametrize(
    ("given", "amount"),
    [
        pytest.param("100.00", "100.00", id="text with two places is taken as it is"),
        pytest.param("25.5", "25.50", id="text with one place gets a second"),
        pytest.param("7", "7.00", id="whole units in text get two places"),
        pytest.param("  12.34 ", "12.34", id="surrounding spaces are ignored"),
        pytest.param("0.01", "0.01", id="one cent is the least amount"),
        pytest.param("007.10", "7.10", id="leading zeros are harmless"),
        pytest.param("1000000000.00", "1000000000.00", id="the maximum is allowed"),
        pytest.param(Decimal("3.1"), "3.10", id="a Decimal is quantized to two places"),
        pytest.param(Decimal("1.230"), "1.23", id="a Decimal with trailing zeros is a whole number of cents"),
        pytest.param(Decimal("1E+3"), "1000.00", id="a Decimal in exponent form is its value"),
        pytest.param(5, "5.00", id="an int counts whole units"),
    ],
)
def test_amounts_that_are_accepted(given: object, amount: str) -> None:
    parsed = parse_amount(given)
    assert parsed == Decimal(amount)
    assert parsed.as_tuple().exponent == -2
    assert format_amount(parsed) == amount


@pytest.mark.parametrize(
    ("given", "message"),
    [
        pytest.param("abc", "'abc' is not an amount: write it like 100.00 or 25.5", id="letters are not an amount"),
        pytest.param("", "'' is not an amount: write it like 100.00 or 25.5", id="empty text is not an amount"),
        pytest.param("-5", "an amount must be positive, not '-5'", id="a negative amount is refused"),
        pytest.param("0", "an amount must be positive, not '0'", id="zero is refused"),
        pytest.param("0.00", "an amount must be positive, not '0.00'", id="zero with places is refused"),
        pytest.param("-0", "an amount must be positive, not '-0'", id="negative zero is refused"),
        pytest.param("1e3", "'1e3' is not an amount: write it like 100.00 or 25.5", id="exponents are refused"),
        pytest.param("1,000", "'1,000' is not an amount: write it like 100.00 or 25.5", id="separators are refused"),
        pytest.param("+5", "'+5' is not an amount: write it like 100.00 or 25.5", id="a plus sign is refused"),
        pytest.param(".5", "'.5' is not an amount: write it like 100.00 or 25.5", id="a bare fraction is refused"),
        pytest.param("5.", "'5.' is not an amount: write it like 100.00 or 25.5", id="a trailing point is refused"),
        pytest.param("NaN", "'NaN' is not an amount: write it like 100.00 or 25.5", id="NaN as text is refused"),
        pytest.param(
            "Infinity", "'Infinity' is not an amount: write it like 100.00 or 25.5", id="infinity as text is refused"
        ),
        pytest.param("١٢", "'١٢' is not an amount: write it like 100.00 or 25.5", id="only ASCII digits count"),
        pytest.param("1.234", "an amount has at most two decimal places, not '1.234'", id="three places are refused"),
        pytest.param("1.000", "an amount has at most two decimal places, not '1.000'", id="three places even if 0"),
        pytest.param(
            "1000000000.01", "an amount must be at most 1000000000.00, not 1000000000.01", id="over the maximum"
        ),
        pytest.param(Decimal("NaN"), "an amount must be a finite number, not NaN", id="a NaN Decimal is refused"),
        pytest.param(Decimal("sNaN"), "an amount must be a finite number, not sNaN", id="a signalling NaN is refused"),
        pytest.param(
            Decimal("Infinity"), "an amount must be a finite number, not Infinity", id="an infinite Decimal is refused"
        ),
        pytest.param(
            Decimal("0.001"), "an amount has at most two decimal places, not 0.001", id="a fraction of a cent"
        ),
        pytest.param(Decimal("-1.00"), "an amount must be positive, not -1.00", id="a negative Decimal is refused"),
        pytest.param(
            Decimal("1E+100000"), "an amount must be at most 1000000000.00, not 1E+100000", id="a huge Decimal"
        ),
        pytest.param(
            0.1, "an amount must be text or a Decimal, not the float 0.1: floats cannot hold cents", id="floats"
        ),
        pytest.param(True, "an amount must be text or a Decimal, not True", id="a bool is not an amount"),
        pytest.param(None, "an amount must be text or a Decimal, not None", id="None is not an amount"),
    ],
)
def test_amounts_that_are_refused(given: object, message: str) -> None:
    with pytest.raises(InvalidAmount) as caught:
        parse_amount(given)
    assert str(caught.value) == message


def test_the_maximum_amount_has_two_places() -> None:
    assert format_amount(MAX_AMOUNT) == "1000000000.00"


def test_large_amounts_are_formatted_without_an_exponent() -> None:
    assert format_amount(Decimal("1E+12")) == "1000000000000.00"


@pytest.mark.parametrize(
    ("given", "currency"),
    [
        pytest.param("EUR", Currency.EUR, id="a code"),
        pytest.param("usd", Currency.USD, id="a code in lower case"),
        pytest.param(" GBP ", Currency.GBP, id="a code with spaces"),
        pytest.param(Currency.EUR, Currency.EUR, id="a Currency"),
    ],
)
def test_supported_currencies(given: object, currency: Currency) -> None:
    assert parse_currency(given) is currency


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("JPY", id="a currency the bank does not keep"),
        pytest.param("", id="empty text"),
        pytest.param("EURO", id="a name, not a code"),
        pytest.param(None, id="nothing"),
    ],
)
def test_unsupported_currencies(given: object) -> None:
    with pytest.raises(UnsupportedCurrency, match=r"^unsupported currency .*: use one of EUR, USD, GBP$"):
        parse_currency(given)


@pytest.mark.parametrize(
    ("given", "account_type"),
    [
        pytest.param("checking", AccountType.CHECKING, id="checking"),
        pytest.param("Savings", AccountType.SAVINGS, id="savings in any case"),
    ],
)
def test_account_types(given: str, account_type: AccountType) -> None:
    assert parse_account_type(given) is account_type


def test_other_account_types_are_refused() -> None:
    with pytest.raises(
        UnsupportedAccountType, match=r"^unsupported account type 'loan': use one of checking, savings$"
    ):
        parse_account_type("loan")


@pytest.mark.parametrize(
    ("given", "name"),
    [
        pytest.param("Ada Lovelace", "Ada Lovelace", id="a plain name"),
        pytest.param("  Ada  \t Lovelace \n", "Ada Lovelace", id="whitespace is trimmed and collapsed"),
        pytest.param("Zoë Ōtsuka", "Zoë Ōtsuka", id="letters of any script"),
        pytest.param("x" * MAX_OWNER_LENGTH, "x" * MAX_OWNER_LENGTH, id="the longest name"),
        pytest.param(
            "\u0645\u06cc\u200c\u062f\u0627\u0646",
            "\u0645\u06cc\u200c\u062f\u0627\u0646",
            id="a zero-width non-joiner in a Persian name",
        ),
    ],
)
def test_owner_names_that_are_accepted(given: str, name: str) -> None:
    assert parse_owner(given) == name


@pytest.mark.parametrize(
    ("given", "message"),
    [
        pytest.param("", "an owner's name is required", id="an empty name"),
        pytest.param("   ", "an owner's name is required", id="a name of spaces"),
        pytest.param("x" * 101, "an owner's name has at most 100 characters, not 101", id="a name too long"),
        pytest.param("Ada\x00", "an owner's name must not hold control characters", id="a NUL character"),
        pytest.param("Ada\x07", "an owner's name must not hold control characters", id="a bell character"),
        pytest.param("Ada \u202eecalevoL", "an owner's name must not hold control characters", id="an RTL override"),
        pytest.param("Ada\u2066 x", "an owner's name must not hold control characters", id="a bidi isolate"),
        pytest.param(42, "an owner's name must be text, not a int", id="not text"),
    ],
)
def test_owner_names_that_are_refused(given: object, message: str) -> None:
    with pytest.raises(InvalidOwner) as caught:
        parse_owner(given)
    assert str(caught.value) == message


@pytest.mark.parametrize(
    "given",
    [
        pytest.param("", id="empty"),
        pytest.param("a b", id="with a space inside"),
        pytest.param("-acc", id="starting with a dash"),
        pytest.param("x" * 65, id="longer than 64"),
        pytest.param("acc/1", id="with a slash"),
        pytest.param(7, id="not text"),
    ],
)
def test_account_ids_that_are_refused(given: object) -> None:
    with pytest.raises(InvalidAccountId, match=r"^.* is not an account id$"):
        parse_account_id(given)


def test_account_ids_are_trimmed() -> None:
    assert parse_account_id(" acc-1 ") == "acc-1"


def test_event_ids_derive_from_the_command_id_and_the_index() -> None:
    command_id = uuid.UUID("12345678-1234-5678-1234-567812345678")
    assert event_id(command_id, 0) == uuid.uuid5(command_id, "0")
    assert event_id(command_id, 0) != event_id(command_id, 1)


def test_an_opened_account_gets_an_id_from_its_command_unless_it_names_one() -> None:
    command_id = uuid.uuid4()
    derived = OpenAccount(command_id=command_id, owner="Ada", account_type="savings", currency="EUR")
    assert derived.account_id == account_id_for(command_id)
    assert parse_account_id(derived.account_id) == derived.account_id
    named = OpenAccount(command_id=command_id, account_id="mine", owner="Ada", account_type="savings", currency="EUR")
    assert named.account_id == "mine"


def test_every_error_is_a_banking_error() -> None:
    for error in (InvalidAmount, InvalidOwner, InvalidAccountId, UnsupportedCurrency, UnsupportedAccountType):
        assert issubclass(error, BankingError)
        assert issubclass(error, ValueError)
