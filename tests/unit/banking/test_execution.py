"""The shared shell loop, on an in-memory log: load, fold, decide, append on
what was read; decide again when the boundary changed; give up, having written
nothing, after a bounded number of attempts."""

from __future__ import annotations

from collections.abc import Sequence
from decimal import Decimal

import pytest
import trio
import trio.testing

from apps.banking.domain import Contention, InsufficientFunds
from apps.banking.execution import BACKOFF_INITIAL, BACKOFF_MAX, MAX_ATTEMPTS, backoff, execute
from apps.banking.features.deposit import shell as deposit_shell
from apps.banking.features.transfer import shell as transfer_shell
from apps.banking.features.withdraw import shell as withdraw_shell
from eventbus import ConcurrencyError, Event, EventFilter, EventRecord, QueryResult

from .ledger import Ledger, decide_on, deposit, open_, transfer, withdraw


class MemoryLog:
    """A ledger behind the store's interface; ``meddle`` runs before each append."""

    def __init__(self, ledger: Ledger, meddle: Sequence[Event] = (), times: int = 0) -> None:
        self.ledger = ledger
        self.meddle = list(meddle)
        self.times = times
        self.queries = 0
        self.appends = 0

    async def query(self, query: EventFilter) -> QueryResult:
        self.queries += 1
        await trio.lowlevel.checkpoint()
        return QueryResult(query.select(self.ledger.records))

    async def append(
        self, events: Sequence[Event], filter: EventFilter | None = None, expected: int | None = None
    ) -> list[EventRecord]:
        self.appends += 1
        await trio.lowlevel.checkpoint()
        if self.appends <= self.times:
            self.ledger.append(self.meddle)
        if filter is not None and any(
            filter.matches(r) and r.sequence_number > (expected or 0) for r in self.ledger.records
        ):
            raise ConcurrencyError("changed", expected_max_sequence_number=expected or 0)
        return self.ledger.append(list(events))


def _withdrawal_events(amount: str) -> list[Event]:
    ledger = Ledger.of([open_("A", "1000")])
    return decide_on(ledger.records, withdraw("A", amount))


async def test_a_command_on_a_quiet_log_is_one_query_and_one_append() -> None:
    log = MemoryLog(Ledger.of([open_("A", "100")]))
    records = await execute(log, withdraw_shell.DECIDER, withdraw("A", "40"))
    assert [r.payload["amount"] for r in records] == ["40.00"]
    assert (log.queries, log.appends) == (1, 1)


async def test_a_change_in_the_boundary_makes_it_decide_again_on_the_new_state() -> None:
    log = MemoryLog(Ledger.of([open_("A", "100")]), meddle=_withdrawal_events("30"), times=1)
    records = await execute(log, withdraw_shell.DECIDER, withdraw("A", "60"))
    assert records[0].payload["amount"] == "60.00"
    assert (log.queries, log.appends) == (2, 2)
    assert log.ledger.view("A").balance == Decimal("10.00")


async def test_the_new_decision_may_refuse_and_then_nothing_is_written() -> None:
    log = MemoryLog(Ledger.of([open_("A", "100")]), meddle=_withdrawal_events("50"), times=1)
    with pytest.raises(InsufficientFunds):
        await execute(log, withdraw_shell.DECIDER, withdraw("A", "60"))
    assert log.ledger.view("A").balance == Decimal("50.00")


async def test_it_gives_up_with_contention_after_its_attempts_having_written_nothing() -> None:
    ledger = Ledger.of([open_("A", "1000")])
    log = MemoryLog(ledger, meddle=[], times=0)
    command = withdraw("A", "1")
    calls = 0

    async def always_conflict(
        events: Sequence[Event], filter: EventFilter | None = None, expected: int | None = None
    ) -> list[EventRecord]:
        nonlocal calls
        calls += 1
        raise ConcurrencyError("changed", expected_max_sequence_number=expected or 0)

    log.append = always_conflict  # type: ignore[method-assign]
    with pytest.raises(Contention, match=f"{MAX_ATTEMPTS} attempts; nothing was written"):
        await execute(log, withdraw_shell.DECIDER, command)
    assert calls == MAX_ATTEMPTS
    assert len(ledger.records) == 2


async def test_a_deposit_ignores_money_moving_meanwhile() -> None:
    log = MemoryLog(Ledger.of([open_("A", "100")]), meddle=_withdrawal_events("50"), times=1)
    await execute(log, deposit_shell.DECIDER, deposit("A", "5"))
    assert (log.queries, log.appends) == (1, 1)


async def test_a_transfer_sees_a_change_to_either_account() -> None:
    ledger = Ledger.of([open_("A", "100"), open_("B")])
    into_b = decide_on(ledger.records, deposit("B", "1"))
    log = MemoryLog(ledger, meddle=into_b, times=1)
    await execute(log, transfer_shell.DECIDER, transfer("A", "B", "10"))
    assert (log.queries, log.appends) == (2, 2)
    assert log.ledger.view("B").balance == Decimal("11.00")


@pytest.mark.parametrize("attempt", range(1, 15))
def test_the_backoff_is_jittered_below_a_doubling_bound(attempt: int) -> None:
    bound = min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (attempt - 1))
    waits = [backoff(attempt) for _ in range(200)]
    assert all(0 <= wait <= bound for wait in waits)
    assert len(set(waits)) > 100


async def test_the_waits_between_attempts_are_short(autojump_clock: trio.testing.MockClock) -> None:
    ledger = Ledger.of([open_("A", "1000")])
    log = MemoryLog(ledger)

    async def always_conflict(
        events: Sequence[Event], filter: EventFilter | None = None, expected: int | None = None
    ) -> list[EventRecord]:
        raise ConcurrencyError("changed", expected_max_sequence_number=expected or 0)

    log.append = always_conflict  # type: ignore[method-assign]
    started = trio.current_time()
    with pytest.raises(Contention):
        await execute(log, withdraw_shell.DECIDER, withdraw("A", "1"))
    total_bound = sum(min(BACKOFF_MAX, BACKOFF_INITIAL * 2 ** (n - 1)) for n in range(1, MAX_ATTEMPTS))
    assert trio.current_time() - started <= total_bound
