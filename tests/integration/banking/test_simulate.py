"""The load simulator: a mixed workload whose every acknowledged command is
journaled and stored, in one process or several, and which leaves a bank that
is still consistent."""

from __future__ import annotations

import collections
import re
import sys
from pathlib import Path

import trio

from apps.banking.app import Bank, open_bank
from apps.banking.domain import ZERO
from apps.banking.features.analytics.core import fold_figures
from apps.banking.journal import Journal, unstored
from apps.banking.simulate import SimulationConfig, simulate
from eventbus import EventRecord, create_filter

from ...helpers import ROOT
from .workload import expected_rows, lowest_balances

SIMULATE_TIMEOUT = 60


async def everything(bank: Bank) -> list[EventRecord]:
    return (await bank.bus.store.query(create_filter([]))).events


async def assert_consistent(bank: Bank, records: list[EventRecord]) -> None:
    """No negative balance at any position; read models equal a fold."""
    assert all(lowest >= ZERO for lowest in lowest_balances(records).values())
    assert await bank.wait_until_current("accounts")
    assert await bank.wait_until_current("analytics")
    assert {row.account_id: row for row in await bank.list_accounts()} == expected_rows(records)
    assert await bank.analytics() == fold_figures(records)


async def test_a_simulation_journals_every_acknowledged_command_and_keeps_the_bank_consistent(
    dsn: str, tmp_path: Path
) -> None:
    path = tmp_path / "journal.jsonl"
    journal = Journal(path)
    async with open_bank(dsn) as bank:
        with trio.fail_after(SIMULATE_TIMEOUT):
            report = await simulate(
                bank, SimulationConfig(accounts=8, rate=300, duration=1.5, seed=3, max_in_flight=32), journal=journal
            )
        journal.close()
        lines = list(Journal.read(path))
        records = await everything(bank)
        assert unstored(lines, records) == []
        by_kind = collections.Counter(line["kind"] for line in lines)
        assert {kind: outcome.acknowledged for kind, outcome in report.kinds.items() if outcome.acknowledged} == dict(
            by_kind
        )
        assert report.kinds["open"].acknowledged >= 8
        assert report.total.refused == sum(report.refusals.values()) > 0
        assert report.total.failed == sum(report.failures.values())
        assert set(report.refusals) <= {
            "InsufficientFunds",
            "CurrencyMismatch",
            "AccountClosed",
            "AccountNotEmpty",
        }
        # Every stored command came from the journal: nothing was stored unacknowledged.
        assert len(records) == sum(len(line["event_ids"]) for line in lines)
        await assert_consistent(bank, records)


async def test_setting_stop_ends_the_simulation_early(dsn: str) -> None:
    stop = trio.Event()

    async def stop_a_moment_in() -> None:
        await trio.sleep(0.5)
        stop.set()

    async with open_bank(dsn) as bank:
        with trio.fail_after(SIMULATE_TIMEOUT):
            async with trio.open_nursery() as nursery:
                nursery.start_soon(stop_a_moment_in)
                report = await simulate(bank, SimulationConfig(accounts=2, rate=50, duration=3600), stop=stop)
    assert report.elapsed < SIMULATE_TIMEOUT
    assert report.total.total > 2


async def test_simulate_in_two_processes_trades_between_them_and_reports_the_sum(dsn: str, tmp_path: Path) -> None:
    path = tmp_path / "journal.jsonl"
    argv = ["simulate", "--accounts", "5", "--rate", "100", "--duration", "1.5", "--processes", "2"]
    with trio.fail_after(SIMULATE_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "apps.banking", "--dsn", dsn, *argv, "--seed", "11", "--journal", str(path)],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    out = result.stdout.decode()
    assert "This process:" in out and "All processes:" in out
    assert re.search(r"Simulated \d+\.\d s in 2 processes: \d+ commands", out)
    total = out.split("All processes:")[1]
    acknowledged = int(re.search(r"^total\s+(\d+)", total, re.MULTILINE).group(1))  # type: ignore[union-attr]
    lines = list(Journal.read(path))
    assert len(lines) == acknowledged
    assert len({line["pid"] for line in lines}) == 2
    # The processes learned each other's accounts: some transfers cross between them.
    opened_by = {line["accounts"][0]: line["pid"] for line in lines if line["kind"] == "open"}
    transfers = [line for line in lines if line["kind"] == "transfer"]
    assert any(opened_by.get(line["accounts"][0]) != opened_by.get(line["accounts"][1]) for line in transfers)
    async with open_bank(dsn) as bank:
        records = await everything(bank)
        assert unstored(lines, records) == []
        await assert_consistent(bank, records)


async def _simulate(dsn: str, *extra: str) -> str:
    argv = ["simulate", "--accounts", "3", "--rate", "300", "--duration", "1.5", "--seed", "5", *extra]
    with trio.fail_after(SIMULATE_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "apps.banking", "--dsn", dsn, *argv],
            cwd=ROOT,
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_the_simulator_never_touches_an_account_a_person_opened(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        mine = (await bank.open_account(owner="Ada", account_type="checking", currency="EUR", initial_deposit="900"))
        before = (await bank.get_account(mine.account_id)).history
    await _simulate(dsn)
    async with open_bank(dsn, projections=False) as bank:
        assert (await bank.get_account(mine.account_id)).history == before
        opened = [r for r in await everything(bank) if r.event_type == "BankAccountOpened"]
        assert len(opened) >= 4
        assert all(r.payload["accountId"].startswith("sim-") for r in opened if r.sequence_number > mine.position)


async def test_the_simulator_works_on_an_account_it_is_told_to_use(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        await bank.open_account(owner="Ada", account_type="checking", currency="EUR", initial_deposit="900",
                                account_id="ada")  # fmt: skip
        await bank.open_account(owner="Bob", account_type="checking", currency="EUR", account_id="bob")
    await _simulate(dsn, "--use", "ada")
    async with open_bank(dsn, projections=False) as bank:
        assert len((await bank.get_account("ada")).history) > 2
        assert [entry.kind for entry in (await bank.get_account("bob")).history] == ["opened"]
