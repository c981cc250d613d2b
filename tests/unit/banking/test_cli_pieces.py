"""The CLI's pieces that need no database: parsing, checking input before any
I/O, the tables, the progress bar, the simulator's report and its journal."""

from __future__ import annotations

import io
import json
import uuid
from datetime import UTC, date, datetime
from decimal import Decimal
from pathlib import Path

import pytest

from apps.banking.actions import run_command
from apps.banking.app import Bank, Command, Receipt
from apps.banking.cli import UsageError, build_parser, main, make_command
from apps.banking.display import ProgressBar, analytics_table, table
from apps.banking.domain import Currency, InvalidAmount, InvalidCommand, SameAccount, UnsupportedCurrency
from apps.banking.features.analytics.types import MonthlyFigures
from apps.banking.features.deposit.types import Deposit
from apps.banking.features.get_account.types import AccountView
from apps.banking.features.open_account.types import OpenAccount
from apps.banking.features.transfer.types import Transfer
from apps.banking.journal import Journal, unstored
from apps.banking.simulate import Outcomes, SimulationReport
from eventbus import EventRecord, StoreUnavailable


def parse(*argv: str) -> object:
    return make_command(build_parser().parse_args(argv))


def test_each_write_subcommand_makes_its_command() -> None:
    opening = parse("open", "--owner", " Ada  Lovelace ", "--currency", "gbp", "--type", "SAVINGS", "--initial", "5")
    assert isinstance(opening, OpenAccount)
    assert (opening.owner, opening.currency, opening.account_type, opening.initial_deposit) == (
        "Ada Lovelace",
        Currency.GBP,
        "savings",
        Decimal("5.00"),
    )
    moving = parse("transfer", "a", "b", "25.5", "--currency", "EUR")
    assert isinstance(moving, Transfer) and moving.amount == Decimal("25.50") and moving.currency is Currency.EUR
    assert isinstance(parse("deposit", "a", "1"), Deposit)
    assert parse("list") is None


@pytest.mark.parametrize(
    ("argv", "error"),
    [
        (["deposit", "a", "abc"], InvalidAmount),
        (["withdraw", "a", "-5"], InvalidAmount),
        (["deposit", "a", "1e3"], InvalidAmount),
        (["deposit", "a", "NaN"], InvalidAmount),
        (["open", "--owner", "X", "--currency", "JPY"], UnsupportedCurrency),
        (["transfer", "a", "a", "1"], SameAccount),
        (["close", "a b"], InvalidCommand),
    ],
)
def test_bad_input_is_refused_before_any_io(argv: list[str], error: type[Exception]) -> None:
    with pytest.raises(error):
        parse(*argv)


@pytest.mark.parametrize(
    "argv",
    [
        ["deposit", "a"],
        ["lend"],
        ["rebuild", "x"],
        ["simulate", "--rate", "-1"],
        ["simulate", "--processes", "0"],
        ["list", "--limit", "many"],
    ],
)
def test_bad_usage_is_one_line(argv: list[str]) -> None:
    with pytest.raises(UsageError) as caught:
        build_parser().parse_args(argv)
    assert "\n" not in str(caught.value) and "--help" in str(caught.value)


def test_main_prints_one_line_and_returns_the_status(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["deposit", "acc", "12.345"]) == 1
    assert main(["frobnicate"]) == 2
    err = capsys.readouterr().err.splitlines()
    assert err[0] == "error: an amount has at most two decimal places, not '12.345'"
    assert err[1].startswith("error: argument ACTION: invalid choice: 'frobnicate'")
    assert len(err) == 2


def test_a_table_aligns_its_columns() -> None:
    assert table(["a", "amount"], [["xyz", "1.00"], ["b", "100.00"]], right=(1,)).splitlines() == [
        "a    amount",
        "---  ------",
        "xyz    1.00",
        "b    100.00",
    ]


def test_the_analytics_table_shows_months_and_sums() -> None:
    figures = [
        MonthlyFigures(date(2025, 2, 1), Currency.USD, accounts_opened=1, deposits=2, deposited=Decimal("1234.5"))
    ]
    assert str(analytics_table(figures)).splitlines()[2].split() == [
        "2025-02",
        "USD",
        "1",
        "2",
        "1,234.50",
        "0",
        "0.00",
        "0",
        "0.00",
    ]
    assert analytics_table([]) == "No activity yet."


def test_a_progress_bar_off_a_terminal_draws_once_when_done() -> None:
    out = io.StringIO()
    bar = ProgressBar(out, "Rebuilding")
    for done in range(0, 1001, 100):
        bar.update(done, 1000)
    assert out.getvalue() == ""
    bar.finish()
    assert out.getvalue() == f"Rebuilding [{'#' * 30}] 100% 1000/1000\n"
    assert bar.render(250, 1000) == f"Rebuilding [{'#' * 8}{'.' * 22}]  25% 250/1000"


def test_a_report_survives_json_and_sums_across_processes() -> None:
    one = SimulationReport(elapsed=2.0)
    one.kinds["deposit"] = Outcomes(acknowledged=5, refused=0, failed=1)
    one.failures["StoreUnavailable"] = 1
    two = SimulationReport.from_json(json.loads(json.dumps(one.to_json())))
    assert two == one
    two.refusals["InsufficientFunds"] = 3
    two.kinds["withdraw"] = Outcomes(acknowledged=1, refused=3)
    one.merge(two)
    assert one.processes == 2
    assert one.total == Outcomes(acknowledged=11, refused=3, failed=2)
    text = one.format()
    assert "in 2 processes: 16 commands, 8/s" in text
    assert "refused: InsufficientFunds 3" in text and "failed: StoreUnavailable 2" in text


def test_the_journal_holds_one_line_per_acknowledged_command_and_its_check_finds_the_missing(tmp_path: Path) -> None:
    command = Transfer(command_id=uuid.uuid4(), from_account_id="a", to_account_id="b", amount="2")
    record = EventRecord(7, uuid.uuid4(), "MoneyTransferred", {}, {}, datetime(2025, 1, 1, tzinfo=UTC))
    path = tmp_path / "journal"
    journal = Journal(path)
    journal.record(Receipt(command, (record,)))
    journal.close()
    with path.open("a") as torn:
        torn.write('{"kind": "depo')
    [line] = list(Journal.read(path))
    assert line["kind"] == "transfer" and line["accounts"] == ["a", "b"] and line["amount"] == "2.00"
    assert line["event_ids"] == [str(record.event_id)] and line["positions"] == [7]
    assert unstored([line], [record]) == []
    moved = EventRecord(8, record.event_id, "MoneyTransferred", {}, {}, record.occurred_at)
    assert unstored([line], [moved]) == [
        f"transfer {command.command_id}: event {record.event_id} is at 8, acknowledged at 7"
    ]
    assert unstored([line], []) == [f"transfer {command.command_id}: event {record.event_id} is not stored"]


class LostAnswers(Bank):
    """A bank whose appends are in doubt, or whose reads fail after a write."""

    def __init__(self, receipt: Receipt | None) -> None:
        self.receipt = receipt

    async def execute(self, command: Command) -> Receipt:
        if self.receipt is None:
            raise StoreUnavailable("the connection was lost", outcome_known=False)
        return self.receipt

    async def get_account(self, account_id: str) -> AccountView:
        raise StoreUnavailable("the connection was lost")


async def test_a_command_in_doubt_names_the_command_id_that_settles_it() -> None:
    command = Deposit(command_id=uuid.uuid4(), account_id="acc-1", amount="5.00")
    out = io.StringIO()
    with pytest.raises(StoreUnavailable, match=f"--command-id {command.command_id}") as caught:
        await run_command(LostAnswers(None), command, out)
    assert caught.value.outcome_known is False
    assert out.getvalue() == ""


async def test_a_command_that_took_effect_is_reported_done_when_its_account_cannot_be_read() -> None:
    command = Deposit(command_id=uuid.uuid4(), account_id="acc-1", amount="5.00")
    record = EventRecord(7, uuid.uuid4(), "MoneyDeposited", {}, {}, datetime.now(UTC))
    out = io.StringIO()
    await run_command(LostAnswers(Receipt(command, (record,))), command, out)
    assert out.getvalue() == "Deposited: done, stored at position 7 (the balance could not be read just now).\n"
