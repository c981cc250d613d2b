"""The bank's shared vocabulary: event types, money, currencies, errors, and
how one account's state follows from its events.

Money is ``decimal.Decimal`` with exactly two places, never a float. In event
payloads amounts are strings (``"100.00"``), so no JSON number, let alone a
float, ever holds money. Payloads hold no times either: the store records when
an event committed, and a retried command must produce identical events.

Nothing here does I/O.
"""

from __future__ import annotations

import enum
import re
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Final, Protocol, TypeAlias

import attrs

from eventbus.values import Event, EventFilter, EventRecord, create_filter

# --- Event types -------------------------------------------------------------

BANK_ACCOUNT_OPENED: Final = "BankAccountOpened"
MONEY_DEPOSITED: Final = "MoneyDeposited"
MONEY_WITHDRAWN: Final = "MoneyWithdrawn"
MONEY_TRANSFERRED: Final = "MoneyTransferred"
BANK_ACCOUNT_CLOSED: Final = "BankAccountClosed"

ACCOUNT_EVENT_TYPES: Final = (
    BANK_ACCOUNT_OPENED,
    MONEY_DEPOSITED,
    MONEY_WITHDRAWN,
    MONEY_TRANSFERRED,
    BANK_ACCOUNT_CLOSED,
)
"""Every event type the bank writes; each one changes some account."""

EventLike: TypeAlias = Event | EventRecord
"""What a fold accepts: a decided event or a stored record."""


# --- Errors ------------------------------------------------------------------


class BankingError(Exception):
    """The root of every error the bank raises on purpose. Messages are one
    line, written for the person who gave the command."""


class InvalidCommand(BankingError, ValueError):
    """A command that is wrong whatever the accounts hold; raised when the
    command is made, before anything is read."""


class InvalidAmount(InvalidCommand):
    """Not a positive amount with at most two decimal places."""


class InvalidOwner(InvalidCommand):
    """An owner's name that is empty, too long or holds control characters."""


class InvalidAccountId(InvalidCommand):
    """Text that cannot be an account id."""


class UnsupportedCurrency(InvalidCommand):
    """A currency the bank does not keep."""


class UnsupportedAccountType(InvalidCommand):
    """An account type other than checking or savings."""


class SameAccount(InvalidCommand):
    """A transfer from an account to itself."""


class CommandRefused(BankingError):
    """A well-formed command that the bank's rules refuse, given what the
    accounts hold now. Nothing is written."""


class UnknownAccount(CommandRefused):
    """No account was ever opened with this id."""


class AccountAlreadyExists(CommandRefused):
    """An account with this id is open already (or was, and is closed)."""


class AccountClosed(CommandRefused):
    """The account is closed: it takes no deposits, withdrawals or transfers."""


class InsufficientFunds(CommandRefused):
    """The account holds less than the command takes out: no overdraft."""


class CurrencyMismatch(CommandRefused):
    """The accounts, or the account and the command, differ in currency."""


class AccountNotEmpty(CommandRefused):
    """Only an account with a zero balance can be closed."""


class Contention(BankingError):
    """The accounts changed between every read and its append, a bounded
    number of times in a row. Nothing was written; trying again later is safe."""


class MalformedEvent(BankingError):
    """A stored event without the shape the bank writes: a bug or foreign
    data, never the fault of the command being decided."""


def _show(value: object) -> str:
    """A value for a one-line message: its repr, cut short."""
    text = repr(value)
    return text if len(text) <= 40 else text[:37] + "..."


# --- Currencies, account types, status ---------------------------------------


class Currency(enum.StrEnum):
    """The currencies the bank keeps; each has cents (two decimal places)."""

    EUR = "EUR"
    USD = "USD"
    GBP = "GBP"


class AccountType(enum.StrEnum):
    """The kinds of account; the rules are the same for both."""

    CHECKING = "checking"
    SAVINGS = "savings"


class AccountStatus(enum.StrEnum):
    """Whether an opened account still takes money."""

    OPEN = "open"
    CLOSED = "closed"


def parse_currency(value: object) -> Currency:
    """A supported currency from its code, in any case (``"eur"`` is EUR).

    Raises:
        UnsupportedCurrency: anything else.
    """
    if isinstance(value, Currency):
        return value
    if isinstance(value, str) and value.strip().upper() in Currency.__members__:
        return Currency[value.strip().upper()]
    raise UnsupportedCurrency(f"unsupported currency {_show(value)}: use one of {', '.join(Currency)}")


def parse_optional_currency(value: object) -> Currency | None:
    """None, or a currency as :func:`parse_currency` reads it."""
    return None if value is None else parse_currency(value)


def parse_account_type(value: object) -> AccountType:
    """``checking`` or ``savings``, in any case.

    Raises:
        UnsupportedAccountType: anything else.
    """
    if isinstance(value, AccountType):
        return value
    if isinstance(value, str) and value.strip().upper() in AccountType.__members__:
        return AccountType[value.strip().upper()]
    raise UnsupportedAccountType(f"unsupported account type {_show(value)}: use one of {', '.join(AccountType)}")


# --- Money -------------------------------------------------------------------

CENT: Final = Decimal("0.01")
ZERO: Final = Decimal("0.00")
MAX_AMOUNT: Final = Decimal("1000000000.00")
"""The most one command may move; balances may grow past it."""

_AMOUNT_TEXT = re.compile(r"(-?)([0-9]+)(?:\.([0-9]+))?")
_STORED_AMOUNT = re.compile(r"[0-9]+\.[0-9]{2}")


def parse_amount(value: object) -> Decimal:
    """A positive amount of money, quantized to exactly two places.

    Text is ASCII digits with an optional point and one or two decimals
    (``"100"``, ``"25.5"``, ``"100.00"``); surrounding spaces are ignored.
    Signs, exponents (``"1e3"``), separators (``"1,000"``), ``".5"`` and
    ``"5."`` are refused, so what a person types means one thing. A
    ``Decimal`` must be finite and a whole number of cents (``Decimal("1.230")``
    is 1.23). An ``int`` counts whole units. Floats are refused: most cents
    have no exact float.

    Raises:
        InvalidAmount: not positive, more than two places, over
            ``MAX_AMOUNT``, NaN, infinite, a float or not a number at all.
    """
    if isinstance(value, str):
        amount = _parse_text(value)
    elif isinstance(value, Decimal):
        if not value.is_finite():
            raise InvalidAmount(f"an amount must be a finite number, not {value}")
        amount = value
    elif isinstance(value, int) and not isinstance(value, bool):
        amount = Decimal(value)
    elif isinstance(value, float):
        raise InvalidAmount(f"an amount must be text or a Decimal, not the float {value!r}: floats cannot hold cents")
    else:
        raise InvalidAmount(f"an amount must be text or a Decimal, not {_show(value)}")
    if amount <= 0:
        raise InvalidAmount(f"an amount must be positive, not {_show(value) if isinstance(value, str) else amount}")
    if amount > MAX_AMOUNT:
        raise InvalidAmount(f"an amount must be at most {MAX_AMOUNT}, not {amount}")
    cents = amount.quantize(CENT)
    if cents != amount:
        raise InvalidAmount(f"an amount has at most two decimal places, not {amount}")
    return cents


def _parse_text(text: str) -> Decimal:
    match = _AMOUNT_TEXT.fullmatch(text.strip())
    if match is None:
        raise InvalidAmount(f"{_show(text)} is not an amount: write it like 100.00 or 25.5")
    sign, _, fraction = match.groups()
    if sign:
        raise InvalidAmount(f"an amount must be positive, not {_show(text)}")
    if fraction is not None and len(fraction) > 2:
        raise InvalidAmount(f"an amount has at most two decimal places, not {_show(text)}")
    return Decimal(text.strip())


def parse_optional_amount(value: object) -> Decimal | None:
    """None, or a positive amount as :func:`parse_amount` reads it."""
    return None if value is None else parse_amount(value)


def format_amount(amount: Decimal) -> str:
    """An amount as payloads and people see it: ``"100.00"``, never an exponent."""
    return f"{amount.quantize(CENT):f}"


def show_money(amount: Decimal, currency: Currency | None) -> str:
    """``"100.00 EUR"``, for messages."""
    return f"{format_amount(amount)} {currency}" if currency else format_amount(amount)


# --- Ids ---------------------------------------------------------------------

MAX_ACCOUNT_ID_LENGTH: Final = 64
_ACCOUNT_ID = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.:-]*")


def parse_account_id(value: object) -> str:
    """An account id: ASCII letters, digits and ``_ . : -``, starting with a
    letter or digit, at most ``MAX_ACCOUNT_ID_LENGTH`` long; surrounding
    spaces are ignored. Whether the account exists is for the decision.

    Raises:
        InvalidAccountId: anything else.
    """
    if isinstance(value, str):
        text = value.strip()
        if len(text) <= MAX_ACCOUNT_ID_LENGTH and _ACCOUNT_ID.fullmatch(text):
            return text
    raise InvalidAccountId(f"{_show(value)} is not an account id")


def event_id(command_id: uuid.UUID, index: int) -> uuid.UUID:
    """The id of the ``index``-th event a command produces.

    Derived from the command's id, so a retried command produces the very
    same events and the store keeps them once.
    """
    return uuid.uuid5(command_id, str(index))


# --- Reading payloads --------------------------------------------------------


def _describe(event: EventLike) -> str:
    where = f" at position {event.sequence_number}" if isinstance(event, EventRecord) else ""
    return f"{event.event_type} event {event.event_id}{where}"


def payload_text(event: EventLike, key: str) -> str:
    """The non-empty string under ``key`` in the event's payload.

    Raises:
        MalformedEvent: missing, empty or not a string.
    """
    value = event.payload.get(key)
    if not isinstance(value, str) or not value:
        raise MalformedEvent(f"{_describe(event)} has no text {key!r} in its payload")
    return value


def payload_amount(event: EventLike, key: str = "amount") -> Decimal:
    """The amount under ``key``, written as the bank writes it (``"100.00"``).

    Raises:
        MalformedEvent: missing or in another form.
    """
    text = payload_text(event, key)
    if not _STORED_AMOUNT.fullmatch(text):
        raise MalformedEvent(f"{_describe(event)} has {text!r} as {key!r}, not an amount like '100.00'")
    return Decimal(text)


def payload_currency(event: EventLike, key: str = "currency") -> Currency:
    """The currency under ``key``.

    Raises:
        MalformedEvent: missing or not a supported currency.
    """
    text = payload_text(event, key)
    try:
        return parse_currency(text)
    except UnsupportedCurrency:
        raise MalformedEvent(f"{_describe(event)} has {text!r} as {key!r}, not a supported currency") from None


# --- Consistency boundaries --------------------------------------------------


def account_predicates(account_id: str) -> list[dict[str, str]]:
    """Payload predicates that together match every event of one account:
    its own (open, deposit, withdrawal, close) and transfers out and in."""
    return [{"accountId": account_id}, {"fromAccountId": account_id}, {"toAccountId": account_id}]


def account_filter(account_ids: Iterable[str]) -> EventFilter:
    """Every event that changes any of these accounts' status or balance."""
    predicates = [predicate for account_id in account_ids for predicate in account_predicates(account_id)]
    return create_filter(ACCOUNT_EVENT_TYPES, predicates)


# --- One account's state -----------------------------------------------------


class AccountLifecycle(Protocol):
    """What a decision needs to know that an account takes money."""

    @property
    def account_id(self) -> str: ...
    @property
    def status(self) -> AccountStatus | None: ...
    @property
    def currency(self) -> Currency | None: ...


@attrs.frozen
class AccountState:
    """One account as its events leave it: what every decision that depends
    on a balance decides on. ``status`` and ``currency`` are None until the
    account is opened."""

    account_id: str
    status: AccountStatus | None = None
    currency: Currency | None = None
    balance: Decimal = ZERO


def evolve_account(account: AccountState, event: EventLike) -> AccountState:
    """The account after ``event``.

    Every way money moves counts: deposits and incoming transfers add,
    withdrawals and outgoing transfers subtract. Events of other accounts and
    of other types leave the account as it is.

    Raises:
        MalformedEvent: an event of a bank type without its payload fields.
    """
    kind = event.event_type
    me = account.account_id
    if kind == MONEY_TRANSFERRED:
        outgoing = payload_text(event, "fromAccountId") == me
        incoming = payload_text(event, "toAccountId") == me
        if not (outgoing or incoming):
            return account
        amount = payload_amount(event)
        balance = account.balance - (amount if outgoing else ZERO) + (amount if incoming else ZERO)
        return attrs.evolve(account, balance=balance)
    if kind not in ACCOUNT_EVENT_TYPES or payload_text(event, "accountId") != me:
        return account
    if kind == BANK_ACCOUNT_OPENED:
        return attrs.evolve(account, status=AccountStatus.OPEN, currency=payload_currency(event))
    if kind == BANK_ACCOUNT_CLOSED:
        return attrs.evolve(account, status=AccountStatus.CLOSED)
    amount = payload_amount(event)
    return attrs.evolve(account, balance=account.balance + (amount if kind == MONEY_DEPOSITED else -amount))


def opened_currency(account: AccountLifecycle) -> Currency:
    """The currency of an account that was opened (and may be closed since).

    Raises:
        UnknownAccount: it was never opened.
    """
    if account.status is None or account.currency is None:
        raise UnknownAccount(f"there is no account {account.account_id}")
    return account.currency


def require_open(account: AccountLifecycle) -> Currency:
    """The currency of an account that is open now.

    Raises:
        UnknownAccount: it was never opened.
        AccountClosed: it is closed.
    """
    currency = opened_currency(account)
    if account.status is AccountStatus.CLOSED:
        raise AccountClosed(f"account {account.account_id} is closed")
    return currency


def require_funds(account: AccountState, amount: Decimal, verb: str) -> None:
    """Check that the account holds ``amount`` (no overdraft).

    Raises:
        InsufficientFunds: it holds less.
    """
    if amount > account.balance:
        currency = opened_currency(account)
        raise InsufficientFunds(
            f"account {account.account_id} holds {show_money(account.balance, currency)}: "
            f"cannot {verb} {show_money(amount, currency)}"
        )


def require_currency(wanted: Currency | None, account: AccountLifecycle) -> None:
    """Check that a command's currency, if it names one, is the account's.

    Raises:
        CurrencyMismatch: it names another.
    """
    if wanted is not None and wanted != account.currency:
        raise CurrencyMismatch(f"account {account.account_id} holds {account.currency}, not {wanted}")
