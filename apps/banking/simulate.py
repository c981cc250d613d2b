"""The load simulator: a realistic mixed workload on the bank, and what came of it.

:func:`simulate` opens some accounts, then issues commands at a steady rate
for a while: deposits, withdrawals (some larger than the balance, so refused
for overdraft), transfers (a few across currencies, so refused), new accounts
and now and then an account emptied and closed. It works only on accounts a
simulator opened (their ids start with ``sim-``) and on those it is told to
use (``SimulationConfig.use``), never on any other: accounts people opened by
hand are safe from it. It learns the accounts that other simulators open
through a subscription, so several simulators on one database trade with each
other's accounts.

Each acknowledged command is written to the journal (see :class:`Journal`)
the moment it is acknowledged, so that a checker can later verify that every
acknowledged command's events are stored, even when the process was killed.
"""

from __future__ import annotations

import collections
import itertools
import random
import uuid
from collections.abc import Iterable
from decimal import Decimal
from typing import Any, Final

import attrs
import trio

from eventbus import EventBusError, create_filter

from .app import KINDS as COMMAND_KINDS
from .app import Bank, Command, Receipt
from .domain import (
    BANK_ACCOUNT_CLOSED,
    BANK_ACCOUNT_OPENED,
    CENT,
    ZERO,
    BankingError,
    CommandRefused,
    Currency,
    parse_account_id,
    payload_currency,
    payload_text,
)
from .features.close_account.types import CloseAccount
from .features.deposit.types import Deposit
from .features.open_account.types import OpenAccount
from .features.transfer.types import Transfer
from .features.withdraw.types import Withdraw
from .journal import Journal

MAX_RATE: Final = 100_000.0
"""The most commands per second the simulator may be asked for (far beyond
what one process achieves: a higher figure is a typing slip)."""

ACCOUNT_PREFIX: Final = "sim-"
"""How the ids of the accounts a simulator opens start: the mark of the
accounts it may work on (with those it is told to use)."""

MAX_IN_FLIGHT: Final = 256
"""Commands under way at once, at most; beyond it the rate drops."""

KINDS: Final = tuple(COMMAND_KINDS.values())
"""The kinds of command, as the report and the journal name them."""

MIX: Final = {"deposit": 33, "withdraw": 27, "transfer": 33, "open": 5, "close": 2}
"""Relative weights of each kind in the mixed phase."""

CURRENCIES: Final = {Currency.EUR: 60, Currency.USD: 25, Currency.GBP: 15}
"""Relative weights of the currencies of new accounts."""

CROSS_CURRENCY: Final = 0.03
"""Share of transfers tried between currencies (refused, as they must be)."""

OWNERS: Final = ("Ada", "Alan", "Grace", "Edsger", "Barbara", "Donald", "Margaret", "Ken", "Frances", "John")


@attrs.define
class Outcomes:
    """How the commands of one kind ended."""

    acknowledged: int = 0
    refused: int = 0
    failed: int = 0

    @property
    def total(self) -> int:
        """Every command of the kind."""
        return self.acknowledged + self.refused + self.failed


@attrs.define
class SimulationReport:
    """What a simulation did.

    Attributes:
        kinds: outcomes per kind of command.
        refusals: refused commands by the error's name (``InsufficientFunds``...).
        failures: failed commands by the error's name (``StoreUnavailable``...).
        elapsed: seconds from the first command to the last answer.
        processes: how many processes' reports this one sums.
    """

    kinds: dict[str, Outcomes] = attrs.Factory(lambda: {kind: Outcomes() for kind in KINDS})
    refusals: collections.Counter[str] = attrs.Factory(collections.Counter)
    failures: collections.Counter[str] = attrs.Factory(collections.Counter)
    elapsed: float = 0.0
    processes: int = 1

    @property
    def total(self) -> Outcomes:
        """The outcomes of all kinds together."""
        return Outcomes(
            *(sum(getattr(o, f) for o in self.kinds.values()) for f in ("acknowledged", "refused", "failed"))
        )

    def merge(self, other: SimulationReport) -> None:
        """Add another process's report to this one (times: the longest)."""
        for kind, outcomes in other.kinds.items():
            mine = self.kinds.setdefault(kind, Outcomes())
            mine.acknowledged += outcomes.acknowledged
            mine.refused += outcomes.refused
            mine.failed += outcomes.failed
        self.refusals.update(other.refusals)
        self.failures.update(other.failures)
        self.elapsed = max(self.elapsed, other.elapsed)
        self.processes += other.processes

    def to_json(self) -> dict[str, Any]:
        """The report as plain JSON values."""
        return {
            "kinds": {kind: attrs.asdict(outcomes) for kind, outcomes in self.kinds.items()},
            "refusals": dict(self.refusals),
            "failures": dict(self.failures),
            "elapsed": self.elapsed,
            "processes": self.processes,
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> SimulationReport:
        """A report from :meth:`to_json`'s values."""
        return cls(
            kinds={kind: Outcomes(**outcomes) for kind, outcomes in data["kinds"].items()},
            refusals=collections.Counter(data["refusals"]),
            failures=collections.Counter(data["failures"]),
            elapsed=float(data["elapsed"]),
            processes=int(data["processes"]),
        )

    def format(self) -> str:
        """The report as a table for people."""
        total = self.total
        rate = total.total / self.elapsed if self.elapsed else 0.0
        noun = "process" if self.processes == 1 else "processes"
        lines = [
            f"Simulated {self.elapsed:.1f} s in {self.processes} {noun}: {total.total} commands, {rate:.0f}/s",
            "",
            f"{'kind':<10}{'acknowledged':>14}{'refused':>10}{'failed':>9}",
        ]
        for kind, o in [*self.kinds.items(), ("total", total)]:
            lines.append(f"{kind:<10}{o.acknowledged:>14}{o.refused:>10}{o.failed:>9}")
        lines.append("")
        lines.append("refused: " + _counts(self.refusals))
        lines.append("failed: " + _counts(self.failures))
        return "\n".join(lines)


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{name} {count}" for name, count in counter.most_common()) or "none"


def _account_ids(ids: Iterable[str]) -> frozenset[str]:
    return frozenset(parse_account_id(account_id) for account_id in ids)


def simulator_account_id(command_id: uuid.UUID) -> str:
    """The id of the account a simulator's opening command opens: marked with
    ``ACCOUNT_PREFIX`` and derived from the command's id, so a retry opens
    the same account."""
    return ACCOUNT_PREFIX + uuid.uuid5(command_id, "account").hex[:16]


@attrs.frozen
class SimulationConfig:
    """What to simulate.

    Attributes:
        accounts: accounts to open first.
        rate: commands per second to issue in the mixed phase.
        duration: seconds of the mixed phase.
        seed: for a repeatable sequence of choices; None for a random one.
        max_in_flight: commands under way at once, at most.
        use: ids of accounts not opened by a simulator that it may work on
            too (deposit, withdraw, transfer, empty and close).
    """

    accounts: int = attrs.field(default=100, validator=attrs.validators.ge(0))
    rate: float = attrs.field(default=500.0, validator=[attrs.validators.gt(0), attrs.validators.le(MAX_RATE)])
    duration: float = attrs.field(default=30.0, validator=attrs.validators.ge(0))
    seed: int | None = None
    max_in_flight: int = attrs.field(default=MAX_IN_FLIGHT, validator=attrs.validators.ge(1))
    use: frozenset[str] = attrs.field(default=frozenset(), converter=_account_ids)

    def may_use(self, account_id: str) -> bool:
        """Whether the simulator may work on an account: one a simulator
        opened, or one it was told to use."""
        return account_id.startswith(ACCOUNT_PREFIX) or account_id in self.use


class _Workload:
    """The simulator's state: what it knows of the accounts, and its dice."""

    def __init__(self, bank: Bank, config: SimulationConfig, journal: Journal | None, report: SimulationReport) -> None:
        self.bank = bank
        self.config = config
        self.rng = random.Random(config.seed)  # noqa: S311 - a workload, not secrecy
        self.journal = journal
        self.report = report
        self.accounts: dict[Currency, list[str]] = {currency: [] for currency in Currency}
        self.known: set[str] = set()
        self.closed: set[str] = set()
        self.limiter = trio.Semaphore(config.max_in_flight)

    # -------------------------------------------------------------- accounts

    def learn(self, account_id: str, currency: Currency) -> None:
        if account_id not in self.known:
            self.known.add(account_id)
            self.accounts[currency].append(account_id)

    def forget(self, account_id: str) -> None:
        self.closed.add(account_id)
        for ids in self.accounts.values():
            if account_id in ids:
                ids.remove(account_id)

    async def follow_accounts(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Learn every account it may use opened or closed, by this process or any other."""
        filter = create_filter([BANK_ACCOUNT_OPENED, BANK_ACCOUNT_CLOSED])
        async with self.bank.bus.subscribe(filter, after=0, name="simulator accounts") as subscription:
            task_status.started()
            async for batch in subscription:
                for record in batch:
                    account_id = payload_text(record, "accountId")
                    if not self.config.may_use(account_id):
                        continue  # a person's account: never touched
                    if record.event_type == BANK_ACCOUNT_OPENED:
                        if account_id not in self.closed:
                            self.learn(account_id, payload_currency(record))
                    else:
                        self.forget(account_id)

    def any_account(self) -> tuple[str, Currency] | None:
        choices = [currency for currency, ids in self.accounts.items() if ids]
        if not choices:
            return None
        currency = self.rng.choice(choices)
        return self.rng.choice(self.accounts[currency]), currency

    # -------------------------------------------------------------- commands

    def amount(self, low: int, high: int) -> Decimal:
        return (Decimal(self.rng.randint(low * 100, high * 100)) * CENT).quantize(CENT)

    def new_account(self) -> OpenAccount:
        currency = self.rng.choices(list(CURRENCIES), weights=list(CURRENCIES.values()))[0]
        initial = self.amount(10, 2000) if self.rng.random() < 0.7 else None
        command_id = uuid.uuid4()
        return OpenAccount(
            command_id=command_id,
            account_id=simulator_account_id(command_id),
            owner=self.rng.choice(OWNERS),
            account_type=self.rng.choice(("checking", "savings")),
            currency=currency,
            initial_deposit=initial,
        )

    def command(self, kind: str) -> Command | None:
        """A command of ``kind`` on known accounts; None if there are too few."""
        picked = self.any_account()
        if kind == "open" or picked is None:
            return self.new_account()
        account_id, currency = picked
        match kind:
            case "deposit":
                return Deposit(command_id=uuid.uuid4(), account_id=account_id, amount=self.amount(10, 500))
            case "withdraw":
                return Withdraw(command_id=uuid.uuid4(), account_id=account_id, amount=self.amount(5, 600))
            case "transfer":
                return self.transfer(account_id, currency)
        return None  # closes go through close_one

    def transfer(self, source: str, currency: Currency) -> Transfer | None:
        if self.rng.random() < CROSS_CURRENCY:
            others = [c for c, ids in self.accounts.items() if ids and c != currency]
        else:
            others = [currency] if len(self.accounts[currency]) > 1 else []
        if not others:
            return None
        pool = self.accounts[self.rng.choice(others)]
        target = self.rng.choice(pool)
        if target == source:
            return None
        return Transfer(
            command_id=uuid.uuid4(), from_account_id=source, to_account_id=target, amount=self.amount(5, 400)
        )

    async def run(self, kind: str, command: Command) -> Receipt | None:
        """Run one command and count how it ended; the receipt if acknowledged."""
        outcomes = self.report.kinds[kind]
        try:
            receipt = await self.bank.execute(command)
        except CommandRefused as exc:
            outcomes.refused += 1
            self.report.refusals[type(exc).__name__] += 1
            return None
        except (BankingError, EventBusError) as exc:
            outcomes.failed += 1
            self.report.failures[type(exc).__name__] += 1
            return None
        outcomes.acknowledged += 1
        if self.journal is not None:
            self.journal.record(receipt)
        if kind == "open":
            assert isinstance(command, OpenAccount)
            self.learn(command.account_id, command.currency)
        return receipt

    async def close_one(self) -> None:
        """Empty an account and close it, as a customer who leaves does."""
        picked = self.any_account()
        if picked is None:
            return
        account_id, _ = picked
        try:
            balance = (await self.bank.get_account(account_id)).balance
        except (BankingError, EventBusError):
            return
        if balance > ZERO:
            withdrawal = Withdraw(command_id=uuid.uuid4(), account_id=account_id, amount=balance)
            if await self.run("withdraw", withdrawal) is None:
                return
        if await self.run("close", CloseAccount(command_id=uuid.uuid4(), account_id=account_id)) is not None:
            self.forget(account_id)

    async def issue(self, kind: str) -> None:
        try:
            if kind == "close":
                await self.close_one()
                return
            # A transfer needs two accounts of one currency; without them, deposit.
            command = self.command(kind) or self.command("deposit")
            assert command is not None
            await self.run(COMMAND_KINDS[type(command)], command)
        finally:
            self.limiter.release()


async def simulate(
    bank: Bank,
    config: SimulationConfig,
    *,
    journal: Journal | None = None,
    stop: trio.Event | None = None,
    report: SimulationReport | None = None,
) -> SimulationReport:
    """Run the workload on ``bank`` and report what it did.

    Opens ``config.accounts`` accounts, then issues ``config.rate`` commands
    per second for ``config.duration`` seconds (fewer when
    ``config.max_in_flight`` commands are under way and the bank cannot keep
    up). Setting ``stop`` ends the issuing early. Blocks until every command
    issued has been answered. Cancellation abandons the commands under way
    (each may or may not take effect; the journal holds those acknowledged).

    Refusals (overdraft, closed accounts, currencies) and failures
    (``StoreUnavailable``, ``Contention``) are counted, never raised. Pass a
    ``report`` to watch the counts grow while it runs; it is the one returned.
    Only accounts that ``config.may_use`` are worked on.

    Raises:
        OSError: the journal could not be written (it names the file); the
            commands under way are abandoned, as on cancellation.
    """
    try:
        return await _simulate(bank, config, journal, stop, report)
    except* OSError as group:  # several commands may fail to write at once: one error, as the first said it
        raise _first(group) from None


def _first(group: BaseExceptionGroup[OSError]) -> OSError:
    inner: BaseException = group
    while isinstance(inner, BaseExceptionGroup):
        inner = inner.exceptions[0]
    assert isinstance(inner, OSError)
    return inner


async def _simulate(
    bank: Bank, config: SimulationConfig, journal: Journal | None, stop: trio.Event | None,
    report: SimulationReport | None,
) -> SimulationReport:  # fmt: skip
    stop = trio.Event() if stop is None else stop
    work = _Workload(bank, config, journal, SimulationReport() if report is None else report)
    started = trio.current_time()
    async with trio.open_nursery() as background:
        await background.start(work.follow_accounts)
        async with trio.open_nursery() as nursery:
            for _ in range(config.accounts):
                if stop.is_set():
                    break
                await work.limiter.acquire()
                nursery.start_soon(work.issue, "open")
        kinds, weights = list(MIX), list(MIX.values())
        async with trio.open_nursery() as nursery:
            begin = trio.current_time()
            deadline = begin + config.duration
            with trio.move_on_at(deadline) as scope:
                stop_watch = trio.CancelScope()

                async def watch_stop() -> None:
                    with stop_watch:
                        await stop.wait()
                        scope.cancel()

                nursery.start_soon(watch_stop)
                for number in itertools.count():
                    await trio.sleep_until(begin + number / config.rate)
                    await work.limiter.acquire()
                    nursery.start_soon(work.issue, work.rng.choices(kinds, weights)[0])
            stop_watch.cancel()
        work.report.elapsed = trio.current_time() - started
        background.cancel_scope.cancel()
    return work.report
