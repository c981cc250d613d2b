"""The chaos checks find each kind of violation, and pass a clean history.

A check that cannot fail proves nothing: each test here breaks one guarantee
in a small history and asserts the exact problem the check reports.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path
from typing import Any

import attrs

from apps.banking.domain import AccountType, Currency
from apps.banking.features.analytics.core import fold_figures
from apps.banking.features.close_account.types import bank_account_closed
from apps.banking.features.deposit.types import money_deposited
from apps.banking.features.list_accounts.core import fold_accounts
from apps.banking.features.list_accounts.types import CurrencyTotal
from apps.banking.features.open_account.types import bank_account_opened
from apps.banking.features.transfer.types import money_transferred
from apps.banking.features.withdraw.types import money_withdrawn
from chaos import _checks
from chaos._processes import Incarnation, Outcome
from chaos._projector import PARTITIONS, PartsRow, Seen, account_key
from chaos._schedule import DECK, FIRST_START_DECK, FIRST_START_SIGNALS, OWN_SERVER, FaultKind, make_schedule
from eventbus import Event, EventRecord
from eventbus.testing import partition_of

EUR, USD = Currency.EUR, Currency.USD
T0 = datetime(2025, 3, 1, tzinfo=UTC)


_ids: Iterator[uuid.UUID] = (uuid.UUID(int=n) for n in itertools.count(1))


def opened(account: str, currency: Currency = EUR) -> Event:
    return bank_account_opened(
        event_id=next(_ids), account_id=account, owner="Ada", account_type=AccountType.CHECKING, currency=currency
    )


def deposited(account: str, amount: str, currency: Currency = EUR) -> Event:
    return money_deposited(event_id=next(_ids), account_id=account, amount=Decimal(amount), currency=currency)


def withdrawn(account: str, amount: str, currency: Currency = EUR) -> Event:
    return money_withdrawn(event_id=next(_ids), account_id=account, amount=Decimal(amount), currency=currency)


def transferred(source: str, target: str, amount: str, currency: Currency = EUR) -> Event:
    return money_transferred(
        event_id=next(_ids), from_account_id=source, to_account_id=target, amount=Decimal(amount), currency=currency
    )


def closed(account: str) -> Event:
    return bank_account_closed(event_id=next(_ids), account_id=account)


def stored(*events: Event, first: int = 1) -> list[EventRecord]:
    """The events as the store would hold them, from position ``first`` on."""
    return [
        EventRecord(first + n, e.event_id or uuid.uuid4(), e.event_type, e.payload, {}, T0 + timedelta(seconds=n))
        for n, e in enumerate(events)
    ]


def clean_history() -> list[EventRecord]:
    return stored(
        opened("a"),
        deposited("a", "100.00"),
        opened("b"),
        transferred("a", "b", "60.00"),
        withdrawn("b", "60.00"),
        closed("b"),
        opened("c", USD),
        deposited("c", "5.00", USD),
    )


def journal_line(records: list[EventRecord], kind: str = "deposit") -> dict[str, Any]:
    return {
        "kind": kind,
        "command_id": str(uuid.uuid4()),
        "accounts": ["a"],
        "amount": None,
        "event_ids": [str(r.event_id) for r in records],
        "positions": [r.sequence_number for r in records],
        "pid": 1,
    }


def seen(records: list[EventRecord]) -> dict[str, Any]:
    return {
        "positions": [r.sequence_number for r in records],
        "ids": [str(r.event_id) for r in records],
        "disorder": [],
        "errors": 0,
    }


# ------------------------------------------------------------------ the schedule


def test_the_same_seed_strikes_the_same_faults_at_the_same_moments() -> None:
    one = make_schedule(7, start=2, end=300, mean_interval=3, slots=3, server_restarts=True)
    assert one == make_schedule(7, start=2, end=300, mean_interval=3, slots=3, server_restarts=True)
    assert one != make_schedule(8, start=2, end=300, mean_interval=3, slots=3, server_restarts=True)


def test_faults_fall_in_the_window_in_order_and_every_kind_comes_up_in_the_first_deck() -> None:
    faults = make_schedule(1, start=2, end=40, mean_interval=3, slots=2, server_restarts=True, standby=True)
    moments = [fault.at for fault in faults]
    assert moments == sorted(moments)
    assert all(2 < at <= 40 for at in moments)
    assert all(later - earlier >= 1.5 - 0.1 for earlier, later in itertools.pairwise([2.0, *moments]))
    assert {fault.kind for fault in faults[: len(DECK) + 1]} == set(FaultKind) - set(FIRST_START_DECK)
    assert {fault.slot for fault in faults if fault.kind is FaultKind.KILL} == {1}  # simulator 0 reports the whole run


def test_first_starts_are_killed_only_when_asked_for_with_each_signal() -> None:
    asked = make_schedule(1, start=2, end=600, mean_interval=3, slots=2, server_restarts=False, first_starts=True)
    plain = make_schedule(1, start=2, end=600, mean_interval=3, slots=2, server_restarts=True)
    assert {fault.kind for fault in asked[: len(DECK)]} == set(FaultKind) - OWN_SERVER - {FaultKind.STANDBY}
    assert {fault.signal for fault in asked if fault.kind is FaultKind.FIRST_START} == set(FIRST_START_SIGNALS)
    assert FaultKind.FIRST_START not in {fault.kind for fault in plain}


def test_a_server_that_is_not_ours_is_never_restarted() -> None:
    faults = make_schedule(1, start=2, end=600, mean_interval=3, slots=2, server_restarts=False)
    assert faults
    assert not OWN_SERVER & {fault.kind for fault in faults}
    assert FaultKind.STANDBY not in {fault.kind for fault in faults}  # nor a standby it has none of


# ------------------------------------------------------------------ the store


def test_a_clean_history_passes_every_store_and_rule_check() -> None:
    records = clean_history()
    rules, states = _checks.rules_held(records)
    totals = [CurrencyTotal(EUR, 2, 1, Decimal("40.00")), CurrencyTotal(USD, 1, 1, Decimal("5.00"))]
    checks = [
        _checks.acknowledged_are_stored([journal_line(records[1:2])], records),
        _checks.ids_are_unique(records),
        _checks.positions_increase(records),
        _checks.no_gap_filled_later(seen(records[:5]), records),
        _checks.subscription_saw_everything_once(seen(records), records),
        rules,
        _checks.money_adds_up(records, states, totals),
        _checks.accounts_model_matches(list(fold_accounts(records).values()), records),
        _checks.analytics_model_matches(fold_figures(records), records),
        _checks.checkpoints_at_head({"accounts": 8, "analytics": 8}, 8, {}),
    ]
    assert [(check.name, check.problems) for check in checks if not check.ok] == []
    assert states["a"].balance == Decimal("40.00")


def test_an_acknowledged_event_that_is_missing_or_elsewhere_is_a_violation() -> None:
    records = clean_history()
    missing = journal_line(stored(deposited("a", "1.00"), first=99))
    moved = journal_line(records[1:2]) | {"positions": [7]}
    check = _checks.acknowledged_are_stored([missing, moved], records)
    assert check.count == 2
    assert f"event {missing['event_ids'][0]} is not stored" in check.problems[0]
    assert f"event {records[1].event_id} is at 2, acknowledged at 7" in check.problems[1]


def test_an_event_id_stored_twice_is_a_violation() -> None:
    records = clean_history()
    twice = [*records, attrs.evolve(records[1], sequence_number=9)]
    check = _checks.ids_are_unique(twice)
    assert check.problems == (f"event {records[1].event_id} is stored 2 times",)


def test_a_gap_filled_after_the_reader_passed_it_is_a_violation() -> None:
    records = clean_history()
    saw = seen([records[0], records[1], records[3]])  # position 3 committed later
    check = _checks.no_gap_filled_later(saw, records)
    assert check.problems == ("position 3 was committed after the reader had passed it: a gap filled later",)


def test_a_read_with_min_position_that_missed_it_is_a_violation() -> None:
    replicas = [{"reads": 40, "fallbacks": 2}]
    clean = {"at_position": {"reads": 42, "misses": [], "errors": 0}, "replicas": replicas}
    assert _checks.min_position_reads_included(clean).ok
    missed = {"at_position": {"reads": 42, "misses": ["a read with min_position=7 returned []"], "errors": 0},
              "replicas": replicas}  # fmt: skip
    check = _checks.min_position_reads_included(missed)
    assert (check.count, check.problems) == (1, ("a read with min_position=7 returned []",))
    assert "the standby served 40 reads in all and handed 2 to the primary" in check.detail


def test_a_reader_that_saw_another_event_at_a_position_is_a_violation() -> None:
    records = clean_history()
    saw = seen(records[:2])
    saw["ids"][1] = str(uuid.UUID(int=999))
    check = _checks.no_gap_filled_later(saw, records)
    assert check.problems == (
        f"the reader saw event {uuid.UUID(int=999)} at position 2; the store holds {records[1].event_id}",
    )


def test_a_subscription_that_skips_or_repeats_an_event_is_a_violation() -> None:
    records = clean_history()
    skipped = _checks.subscription_saw_everything_once(seen(records[:2] + records[3:]), records)
    assert skipped.problems == (
        f"delivery 2 was event {records[3].event_id} at 4; the store holds {records[2].event_id} at 3",
        "the subscription delivered 7 events; the store holds 8",
    )
    repeated = seen(records)
    repeated["disorder"] = ["position 2 came after position 2"]
    assert _checks.subscription_saw_everything_once(repeated, records).count == 1


# ------------------------------------------------------------------ the bank's rules


def test_a_balance_below_zero_at_any_position_is_a_violation_even_if_it_recovers() -> None:
    records = stored(opened("a"), deposited("a", "10.00"), withdrawn("a", "10.01"), deposited("a", "5.00"))
    check, states = _checks.rules_held(records)
    assert check.problems == ("account a is at -0.01 after position 3",)
    assert states["a"].balance == Decimal("4.99")


def test_money_on_a_closed_or_unopened_account_a_second_opening_and_a_close_with_money_are_violations() -> None:
    records = stored(
        opened("a"),
        deposited("a", "1.00"),
        closed("a"),
        deposited("a", "2.00"),
        deposited("nobody", "3.00"),
        opened("a"),
        opened("b", USD),
        transferred("b", "c", "0.00", USD),
    )
    check, _ = _checks.rules_held(records)
    assert check.problems == (
        "BankAccountClosed at position 3 closes account a holding 1.00",
        "MoneyDeposited at position 4 touches account a after it was closed",
        "MoneyDeposited at position 5 touches account nobody before it was opened",
        "BankAccountOpened at position 6 opens account a again",
        "MoneyTransferred at position 8 touches account c before it was opened",
    )


def test_money_in_another_currency_than_the_accounts_is_a_violation() -> None:
    records = stored(opened("a"), opened("b", USD), deposited("a", "9.00", USD), transferred("a", "b", "1.00"))
    check, _ = _checks.rules_held(records)
    assert check.problems == (
        "MoneyDeposited at position 3 moves USD on account a, which holds EUR",
        "MoneyTransferred at position 4 moves EUR on account b, which holds USD",
    )


def test_a_read_model_total_that_differs_from_deposits_minus_withdrawals_is_a_violation() -> None:
    records = clean_history()
    _, states = _checks.rules_held(records)
    totals = [CurrencyTotal(EUR, 2, 1, Decimal("40.01")), CurrencyTotal(USD, 1, 1, Decimal("5.00"))]
    check = _checks.money_adds_up(records, states, totals)
    assert check.problems == (
        "EUR: deposits minus withdrawals 40.00; the accounts hold 40.00 (replay), 40.01 (read model)",
    )


# ------------------------------------------------------------------ read models and checkpoints


def test_a_read_model_row_that_differs_from_the_replay_is_reported_field_by_field() -> None:
    records = clean_history()
    rows = fold_accounts(records)
    rows["a"] = attrs.evolve(rows["a"], balance=Decimal("100.00"))
    del rows["c"]
    check = _checks.accounts_model_matches(list(rows.values()), records)
    assert check.problems == ("account a: balance 100.00 (replay 40.00)", "account c is missing from the read model")


def test_analytics_counted_twice_is_reported_field_by_field() -> None:
    records = clean_history()
    figures = fold_figures(records + records[1:2])
    check = _checks.analytics_model_matches(figures, records)
    assert check.problems == ("2025-03 EUR: deposits 2 (replay 1), deposited 200.00 (replay 100.00)",)


def test_a_checkpoint_behind_the_head_or_a_projection_that_did_not_catch_up_is_a_violation() -> None:
    check = _checks.checkpoints_at_head({"accounts": 8, "analytics": 5}, 8, {"analytics": "failed: boom"})
    assert check.problems == (
        "projection analytics did not catch up: failed: boom",
        "projection analytics has its checkpoint at 5; the head is at 8",
    )


def test_a_ledger_that_applied_an_event_twice_missed_one_or_trails_the_head_is_a_violation() -> None:
    records = clean_history()
    rows = [(r.sequence_number, str(r.event_id)) for r in records]
    assert _checks.ledger_applied_once(rows, 8, records, 8).ok
    broken = [rows[0], rows[0], *rows[2:], (9, str(uuid.UUID(int=0)))]
    broken[3] = (broken[3][0], "other")
    check = _checks.ledger_applied_once(broken, 7, records, 8)
    assert check.problems == (
        "the ledger applied position 1 2 times",
        "the ledger never applied position 2",
        f"the ledger holds event other at position 4; the store holds {records[3].event_id}",
        "the ledger applied position 9, which the store does not hold",
        "the ledger's checkpoint is at 7; the head is at 8",
    )


def test_a_batch_past_its_deadline_a_failure_that_kept_the_lead_or_a_silent_projector_is_a_violation() -> None:
    fine = Seen(0, hangs=3, longest_batch=1.6, deadline_failures=3, failed=1, done=True)
    assert _checks.hangs_cut_off([(0, fine, None), (1, Seen(1, done=True), None)], deadline=1.5, slack=3.0).ok
    interrupted = Seen(0, hangs=1, longest_batch=1.3, hangs_interrupted=1, done=True)  # its connection ended first
    assert _checks.hangs_cut_off([(0, interrupted, None)], deadline=1.5, slack=3.0).ok
    long = Seen(0, hangs=2, longest_batch=9.0, deadline_failures=0, failed=1, failed_holding_lead=1, done=True)
    check = _checks.hangs_cut_off(
        [(0, long, None), (1, Seen(1), "projector 1 ended with status 1"), (2, None, None)], deadline=1.5, slack=3.0
    )
    assert check.problems == (
        "projector 0 ran a batch for 9.0 s (deadline 1.5 s)",
        "projector 0's handler hung 2 times and no deadline failure was seen",
        "projector 0's projection failed 1 times keeping the lead",
        "projector 1 ended with status 1",
        "projector 1 did not report to the end",
        "projector 2 did not report to the end",
    )


# ------------------------------------------------------------------ processes and secrets


def incarnation(tmp_path: Path, number: int, lines: int, outcome: Outcome, status: int | None) -> Incarnation:
    stem = tmp_path / f"run-{number}"
    journal = stem.with_suffix(".journal.jsonl")
    journal.write_text("".join(json.dumps(journal_line([])) + "\n" for _ in range(lines)))
    stem.with_suffix(".err.log").write_text("Traceback ...\nRuntimeError: boom\n")
    return Incarnation(
        slot=0,
        number=number,
        seed=1,
        journal=journal,
        stdout=stem.with_suffix(".out.log"),
        stderr=stem.with_suffix(".err.log"),
        outcome=outcome,
        status=status,
    )


def test_a_simulator_that_crashed_or_hung_is_a_violation_and_a_killed_one_is_not(tmp_path: Path) -> None:
    runs = [
        incarnation(tmp_path, 0, 3, Outcome.KILLED, -9),
        incarnation(tmp_path, 1, 0, Outcome.UNAVAILABLE, 3),
        incarnation(tmp_path, 2, 5, Outcome.CRASHED, 1),
        incarnation(tmp_path, 3, 5, Outcome.HUNG, -9),
    ]
    check = _checks.simulators_behaved(runs)
    assert check.problems == (
        "simulator 0 run 2 ended on its own (status 1): RuntimeError: boom",
        "simulator 0 run 3 did not stop in time (status -9): RuntimeError: boom",
    )


def test_a_report_that_counts_more_acknowledged_commands_than_its_journal_holds_is_a_violation(
    tmp_path: Path,
) -> None:
    from apps.banking.simulate import Outcomes, SimulationReport

    run = incarnation(tmp_path, 0, 2, Outcome.STOPPED, 0)
    run.report = SimulationReport(kinds={"deposit": Outcomes(acknowledged=3)})
    check = _checks.reports_match_journals([run])
    assert check.problems == ("simulator 0 run 0 reports 3 acknowledged commands and journaled 2",)


def test_the_password_in_any_log_plain_or_url_quoted_is_a_violation(tmp_path: Path) -> None:
    secret = "s3cr3t/pa ss"
    (tmp_path / "clean.log").write_text("postgresql://postgres:***@/chaos")
    (tmp_path / "plain.log").write_text(f"cannot connect: password {secret}")
    (tmp_path / "quoted.log").write_text("postgresql://postgres:s3cr3t%2Fpa%20ss@/chaos")
    check = _checks.secret_never_shown(sorted(tmp_path.glob("*.log")), secret)
    assert check.problems == ("plain.log shows the database password", "quoted.log shows the database password")


def parts_rows(records: list[EventRecord]) -> list[PartsRow]:
    """The partitioned ledger of a clean run: partition 0's lease moved from process a to b at position 5."""
    return [
        PartsRow(r.sequence_number, str(r.event_id), partition_of(account_key(r), PARTITIONS),
                 "a" if r.sequence_number < 5 else "b", 1 if r.sequence_number < 5 else 2)
        for r in records
    ]  # fmt: skip


def test_a_partitioned_ledger_applied_twice_misrouted_or_committed_by_two_holders_is_a_violation() -> None:
    records = clean_history()
    rows = parts_rows(records)
    at_head = dict.fromkeys(range(PARTITIONS), 8)
    assert _checks.partitions_applied_once(rows, at_head, records, 8).ok
    k = rows[2].partition
    broken = [rows[0], rows[0], *rows[2:], PartsRow(9, str(uuid.UUID(int=0)), 0, "b", 2)]
    broken[2] = attrs.evolve(broken[2], partition=(k + 1) % PARTITIONS)  # position 3 elsewhere
    broken[3] = attrs.evolve(broken[3], event_id="other", owner="c")  # position 4: epoch 1 by a second owner
    broken[5] = attrs.evolve(broken[5], owner="a", epoch=1)  # position 6: back to epoch 1 after epoch 2
    assert _checks.partitions_applied_once(rows, {**at_head, 0: 6, 3: 0}, records, 8).ok  # each past its last
    check = _checks.partitions_applied_once(broken, {**at_head, 0: 5, 3: 9}, records, 8)
    assert check.problems == (
        "chaos_parts applied position 1 2 times",
        "chaos_parts never applied position 2",
        f"chaos_parts applied position 3 in partition {(k + 1) % PARTITIONS}; its key goes to {k}",
        f"chaos_parts holds event other at position 4; the store holds {records[3].event_id}",
        "chaos_parts applied position 9, which the store does not hold",
        "partition 0, epoch 1: committed by a and by c",
        "partition 0: position 6 committed under epoch 1, after epoch 2",
        "chaos_parts partition 0's checkpoint is at 5; its last event is at 6, the head at 8",
        "chaos_parts partition 3's checkpoint is at 9; its last event is at 0, the head at 8",
    )
