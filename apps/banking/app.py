"""The bank as one object: what the CLI, the dashboard and the simulator use.

``Bank(bus)`` wraps an open bus: its write methods build a command (which
validates the input before anything is read), run the command's slice shell
and return a :class:`Receipt`; its read methods use the events
(:meth:`Bank.get_account`) or the read models (:meth:`Bank.list_accounts`,
:meth:`Bank.analytics`). ``open_bank()`` opens a bus and starts the bank's
projections for the duration of a block.

Every method may be called from many tasks at once.
"""

from __future__ import annotations

import functools
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable
from contextlib import asynccontextmanager
from decimal import Decimal
from typing import Any, Final, TypeAlias, TypeVar

import attrs
import trio

from eventbus import Bus, DatabaseError, EventRecord, Projection, ProjectionError, ProjectionStatus, open_bus

from .database import bank_database
from .dead_letters import DEFAULT_LIMIT, DeadLetters, read_dead_letters
from .domain import AccountStatus, AccountType, BankingError, Currency, InvalidCommand
from .features.analytics import shell as analytics_shell
from .features.analytics.types import MonthlyFigures
from .features.close_account.shell import close_account
from .features.close_account.types import CloseAccount
from .features.deposit.shell import deposit
from .features.deposit.types import Deposit
from .features.get_account.shell import get_account
from .features.get_account.types import AccountView
from .features.list_accounts import shell as accounts_shell
from .features.list_accounts.types import AccountRow, CurrencyTotal
from .features.open_account.shell import open_account
from .features.open_account.types import OpenAccount
from .features.transfer.shell import transfer
from .features.transfer.types import Transfer
from .features.withdraw.shell import withdraw
from .features.withdraw.types import Withdraw

Command: TypeAlias = OpenAccount | Deposit | Withdraw | Transfer | CloseAccount
"""Every command the bank takes."""

_Row = TypeVar("_Row")

_UNDEFINED_TABLE: Final = "42P01"

Amount: TypeAlias = str | Decimal | int
"""An amount as callers give it: ``"100.00"``, ``Decimal("100.00")`` or whole units."""

Progress: TypeAlias = Callable[[int, int], object]
"""``progress(done, total)``, in positions, during a rebuild."""

PROJECTIONS: Final[dict[str, Projection]] = {
    accounts_shell.NAME: accounts_shell.PROJECTION,
    analytics_shell.NAME: analytics_shell.PROJECTION,
}
"""The bank's read models by name: ``accounts`` and ``analytics``."""

CATCH_UP_TIMEOUT: Final = 10.0
"""Seconds a read waits at most for its read model to reflect earlier writes."""

KINDS: Final[dict[type, str]] = {
    OpenAccount: "open",
    Deposit: "deposit",
    Withdraw: "withdraw",
    Transfer: "transfer",
    CloseAccount: "close",
}
"""A short name for each kind of command."""


def account_ids_of(command: Command) -> tuple[str, ...]:
    """The accounts a command is about: the source first for a transfer."""
    if isinstance(command, Transfer):
        return (command.from_account_id, command.to_account_id)
    return (command.account_id,)


@attrs.frozen
class Receipt:
    """A command that took effect, and the records of its events.

    Attributes:
        command: the command as it ran.
        records: its stored events, in order (the already stored ones when
            the same command had taken effect before).
    """

    command: Command
    records: tuple[EventRecord, ...]

    @property
    def kind(self) -> str:
        """``open``, ``deposit``, ``withdraw``, ``transfer`` or ``close``."""
        return KINDS[type(self.command)]

    @property
    def account_id(self) -> str:
        """The command's account (the source of a transfer)."""
        return account_ids_of(self.command)[0]

    @property
    def event_ids(self) -> tuple[uuid.UUID, ...]:
        """The ids of the stored events."""
        return tuple(record.event_id for record in self.records)

    @property
    def position(self) -> int:
        """The position of the command's last event."""
        return self.records[-1].sequence_number


class Bank:
    """The bank, on an open bus (see :func:`open_bank`).

    Write methods raise, with a one-line message for a person:
    ``InvalidCommand`` (and its subclasses) for input that is wrong whatever
    the accounts hold, before anything is read; ``CommandRefused`` (and its
    subclasses) when the rules refuse the command given the accounts now;
    ``Contention`` when the accounts kept changing under it. In all three
    cases nothing is written. ``StoreUnavailable`` means the database could
    not be reached; see its ``outcome_known``, and run the same command again
    (same ``command_id``) to settle it: it takes effect once.

    Cancellation: a write cancelled while its append is in flight may still
    take effect; running the same command again tells, and stores nothing twice.
    """

    def __init__(self, bus: Bus) -> None:
        self._bus = bus
        self._starting = trio.Lock()  # one task starts the read models at a time

    @property
    def bus(self) -> Bus:
        """The bus the bank runs on."""
        return self._bus

    async def start_projections(self) -> None:
        """Start the bank's read models on the bus, those not started yet.

        Returns at once; they catch up on their own (or stand by, when
        another process applies them).
        """
        await self._start(PROJECTIONS)

    async def _start(self, names: Iterable[str]) -> None:
        async with self._starting:
            started = self._bus.projections.status()
            for name in names:
                if name not in started:
                    await self._bus.projections.start(PROJECTIONS[name])

    def projection_status(self) -> dict[str, ProjectionStatus]:
        """The state of each of the bank's read models started here; never blocks.

        A read model whose rebuild has returned is never shown ``rebuilding``
        (eventbus's own status says so until its runner next wakes).
        """
        status = self._bus.projections.status()
        shown = {name: status[name] for name in PROJECTIONS if name in status}
        for name, one in shown.items():
            if one.state == "rebuilding" and not self._bus.projections.rebuilding(name):
                shown[name] = attrs.evolve(one, state="live" if one.lag == 0 else "catching_up")
        return shown

    def resume(self, name: str) -> None:
        """Let a ``failed`` read model try again (after what made it fail is fixed);
        does nothing to one that has not failed. Never blocks.

        Raises:
            InvalidCommand: ``name`` is not one of the bank's read models.
        """
        self._check_name(name)
        if name in self._bus.projections.status():
            self._bus.projections.restart(name)

    # ------------------------------------------------------------ writes

    async def execute(self, command: Command) -> Receipt:
        """Run any command (see the class docstring for what it raises).

        Blocks for a query and an append per attempt, a few attempts at most.
        """
        store = self._bus.store
        match command:
            case OpenAccount():
                records = await open_account(store, command)
            case Deposit():
                records = await deposit(store, command)
            case Withdraw():
                records = await withdraw(store, command)
            case Transfer():
                records = await transfer(store, command)
            case CloseAccount():
                records = await close_account(store, command)
            case _:
                raise InvalidCommand(f"{command!r} is not a command of the bank")
        return Receipt(command, tuple(records))

    async def open_account(
        self,
        *,
        owner: str,
        account_type: str | AccountType,
        currency: str | Currency,
        initial_deposit: Amount | None = None,
        account_id: str | None = None,
        command_id: uuid.UUID | None = None,
    ) -> Receipt:
        """Open an account; ``receipt.account_id`` is its id.

        Args:
            account_type: ``checking`` or ``savings``.
            currency: ``EUR``, ``USD`` or ``GBP``.
            initial_deposit: a first deposit, made in the same append.
            account_id: the id to open; by default one derived from the command id.
            command_id: the command's id; give the same one to retry safely.

        Raises:
            InvalidOwner, UnsupportedAccountType, UnsupportedCurrency,
            InvalidAmount, InvalidAccountId, AccountAlreadyExists.
        """
        command_id = command_id or uuid.uuid4()
        optional = {} if account_id is None else {"account_id": account_id}
        return await self.execute(
            OpenAccount(
                command_id=command_id,
                owner=owner,
                account_type=account_type,
                currency=currency,
                initial_deposit=initial_deposit,
                **optional,
            )
        )

    async def deposit(
        self,
        account_id: str,
        amount: Amount,
        *,
        currency: str | Currency | None = None,
        command_id: uuid.UUID | None = None,
    ) -> Receipt:
        """Deposit ``amount`` into an open account.

        ``currency``, if given, must be the account's.

        Raises:
            InvalidAccountId, InvalidAmount, UnsupportedCurrency,
            UnknownAccount, AccountClosed, CurrencyMismatch.
        """
        return await self.execute(
            Deposit(command_id=command_id or uuid.uuid4(), account_id=account_id, amount=amount, currency=currency)
        )

    async def withdraw(
        self,
        account_id: str,
        amount: Amount,
        *,
        currency: str | Currency | None = None,
        command_id: uuid.UUID | None = None,
    ) -> Receipt:
        """Withdraw ``amount`` from an open account, never below zero.

        Raises:
            InvalidAccountId, InvalidAmount, UnsupportedCurrency,
            UnknownAccount, AccountClosed, CurrencyMismatch, InsufficientFunds.
        """
        return await self.execute(
            Withdraw(command_id=command_id or uuid.uuid4(), account_id=account_id, amount=amount, currency=currency)
        )

    async def transfer(
        self,
        from_account_id: str,
        to_account_id: str,
        amount: Amount,
        *,
        currency: str | Currency | None = None,
        command_id: uuid.UUID | None = None,
    ) -> Receipt:
        """Move ``amount`` between two open accounts of the same currency.

        Raises:
            InvalidAccountId, InvalidAmount, UnsupportedCurrency, SameAccount,
            UnknownAccount, AccountClosed, CurrencyMismatch, InsufficientFunds.
        """
        return await self.execute(
            Transfer(
                command_id=command_id or uuid.uuid4(),
                from_account_id=from_account_id,
                to_account_id=to_account_id,
                amount=amount,
                currency=currency,
            )
        )

    async def close_account(self, account_id: str, *, command_id: uuid.UUID | None = None) -> Receipt:
        """Close an open account whose balance is zero.

        Raises:
            InvalidAccountId, UnknownAccount, AccountClosed, AccountNotEmpty.
        """
        return await self.execute(CloseAccount(command_id=command_id or uuid.uuid4(), account_id=account_id))

    # ------------------------------------------------------------ reads

    async def get_account(self, account_id: str) -> AccountView:
        """One account's balance, status and history, folded from its events.

        Always current. Blocks for one query.

        Raises:
            InvalidAccountId, UnknownAccount, StoreUnavailable.
        """
        return await get_account(self._bus.store, account_id)

    async def list_accounts(
        self,
        *,
        status: AccountStatus | None = None,
        limit: int | None = None,
        offset: int = 0,
        wait: bool = True,
    ) -> list[AccountRow]:
        """Accounts from the ``accounts`` read model, in the order they were opened.

        With ``wait``, first waits (up to ``CATCH_UP_TIMEOUT``) until the read
        model reflects every event committed before the call; see
        :meth:`wait_until_current`.

        Raises:
            ReadModelNotReady: without ``wait``, the read model is still being
                set up (it has no tables yet).
            ProjectionError: the read model failed (its handler keeps raising).
            StoreUnavailable: the database could not be reached.
        """
        return await self._read(
            accounts_shell.NAME,
            wait,
            functools.partial(accounts_shell.list_accounts, self._bus, status=status, limit=limit, offset=offset),
        )

    async def latest_accounts(self, count: int, *, wait: bool = True) -> list[AccountRow]:
        """The ``count`` accounts opened last, in the order they were opened
        (``wait`` and errors as for :meth:`list_accounts`); as cheap with a
        million accounts as with a thousand."""
        return await self._read(accounts_shell.NAME, wait, functools.partial(accounts_shell.latest_accounts,
                                                                             self._bus, count))  # fmt: skip

    async def totals(self, *, wait: bool = True) -> list[CurrencyTotal]:
        """Per currency: accounts, open accounts and money held, from the ``accounts`` read model
        (``wait`` and errors as for :meth:`list_accounts`)."""
        return await self._read(accounts_shell.NAME, wait, functools.partial(accounts_shell.totals, self._bus))

    async def analytics(self, *, wait: bool = True) -> list[MonthlyFigures]:
        """Openings, deposits, withdrawals and transfers per month and currency,
        from the ``analytics`` read model (``wait`` and errors as for :meth:`list_accounts`)."""
        return await self._read(analytics_shell.NAME, wait, functools.partial(analytics_shell.monthly_figures,
                                                                              self._bus))  # fmt: skip

    async def dead_letters(self, limit: int = DEFAULT_LIMIT) -> DeadLetters:
        """The events the bank's read models set aside, with why (not the
        bank's, or not as it writes them): how many, and the latest ``limit``.
        Blocks for one query."""
        return await read_dead_letters(self._bus, PROJECTIONS, limit)

    async def _read(self, name: str, wait: bool, query: Callable[[], Awaitable[list[_Row]]]) -> list[_Row]:
        current = await self.wait_until_current(name) if wait else False
        try:
            return await query()
        except DatabaseError as exc:
            if exc.sqlstate != _UNDEFINED_TABLE:
                raise
            if current:
                # Caught up, and still no tables: the read model is there to be made, for no events yet.
                return []
            raise ReadModelNotReady(f"the {name} read model is starting: its tables are not made yet") from None

    async def wait_until_current(self, name: str, *, timeout: float = CATCH_UP_TIMEOUT) -> bool:
        """Wait until read model ``name`` reflects every event committed before the call.

        Blocks until then, or ``timeout`` seconds; when another process
        applies the read model, until that process's checkpoint is there.
        Cancellation only ends the wait.

        Returns:
            True if it does; False after ``timeout`` (reads then show a state
            a moment older).

        Raises:
            InvalidCommand: ``name`` is not one of the bank's read models.
            ProjectionError: the read model failed.
        """
        self._check_name(name)
        await self._start([name])
        try:
            await self._bus.projections.wait_until_caught_up(name, timeout=timeout)
        except TimeoutError:
            return False
        return True

    async def rebuild(self, name: str, progress: Progress | None = None) -> None:
        """Rebuild read model ``name`` from the first event, without downtime.

        The old read model keeps serving reads until the new one has caught
        up; then they swap. ``progress(done, total)`` is called after each
        batch. Blocks until the swap; cancelling abandons the new copy.

        Raises:
            InvalidCommand: ``name`` is not one of the bank's read models.
            ProjectionError: the read model failed or restarts after an error
                here (the message says which error), another process applies
                it (rebuild it there), or a rebuild of it is under way.
        """
        self._check_name(name)
        self._check_rebuildable(name, troubled_only=True)  # before waiting 10 s for nothing
        await self.wait_until_current(name)
        self._check_rebuildable(name)
        await self._bus.projections.rebuild(name, progress)

    def _check_rebuildable(self, name: str, *, troubled_only: bool = False) -> None:
        status = self._bus.projections.status().get(name)
        if status is None or status.leader:
            return
        if troubled_only and status.state not in ("failed", "restarting"):
            return
        error = f" ({status.last_error})" if status.last_error else ""
        match status.state:
            case "failed":
                why = f"has failed here{error}: resume it once what made it fail is fixed, then rebuild"
            case "restarting":
                why = f"is restarting after an error{error}: rebuild it once it runs again"
            case "standby":
                why = "is applied by another process on this database (a dashboard, a simulator?): rebuild it there"
            case _:
                why = f"is {status.state.replace('_', ' ')} here, not applied yet: try again in a moment"
        raise ProjectionError(f"cannot rebuild the {name} read model: it {why}")

    @staticmethod
    def _check_name(name: str) -> None:
        if name not in PROJECTIONS:
            raise InvalidCommand(f"there is no read model {name!r}: use one of {', '.join(PROJECTIONS)}")


class ReadModelNotReady(BankingError):
    """A read model is being set up: it has no tables to read yet. A normal
    state for a moment after the bank starts; try again shortly."""


def _sole_exception(error: BaseException) -> BaseException | None:
    """The one exception a nest of single-member exception groups holds, else None."""
    while isinstance(error, BaseExceptionGroup):
        if len(error.exceptions) != 1:
            return None
        error = error.exceptions[0]
    return error


@asynccontextmanager
async def open_bank(
    dsn: str | None = None, *, projections: bool = True, listen: bool = True, write_connections: int | None = None
) -> AsyncIterator[Bank]:
    """Open the bus and the bank for the duration of the block.

    ``dsn``: a PostgreSQL connection string; None means ``EVENTBUS_DSN``, then
    ``DATABASE_URL``, else the bank's own database on the embedded server
    (see :mod:`apps.banking.database`). With ``projections`` the
    bank's read models are started (they catch up in the background).
    ``listen=False`` opens the bus without its LISTEN connection (see
    :func:`eventbus.open_bus`): for a process that only acts and reads.
    ``write_connections`` is the bus's (None: its default); a process that
    seldom appends needs one.

    Exceptions leave the block as they were raised, not wrapped in the bus's
    exception groups. Leaving closes the bus, shielded and bounded, also on
    cancellation.

    Raises:
        StoreUnavailable: the database could not be reached at open.
    """
    try:
        options: dict[str, Any] = {} if write_connections is None else {"write_connections": write_connections}
        async with bank_database(dsn) as resolved, open_bus(resolved, listen=listen, **options) as bus:
            bank = Bank(bus)
            if projections:
                await bank.start_projections()
            yield bank
    except BaseExceptionGroup as group:
        sole = _sole_exception(group)
        if sole is None:
            raise
        raise sole from None
