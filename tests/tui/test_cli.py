"""``banking dashboard``: the dashboard adds its subcommand to the bank's command line."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib

import pytest

from eventbus import StoreUnavailable
from tui import run
from tui.cli import main

from ..helpers import ROOT

BANKS_SUBCOMMANDS = (
    "'menu', 'open', 'deposit', 'withdraw', 'transfer', 'close', 'list', 'balance', 'analytics', 'rebuild', 'simulate',"
    " 'reset'"
)


@pytest.fixture
def dashboard_runs(monkeypatch: pytest.MonkeyPatch) -> list[str | None]:
    """The DSNs the dashboard is run on, instead of running it."""
    runs: list[str | None] = []

    def run_dashboard(dsn: str | None = None, *, metrics_port: int | None = None) -> None:
        runs.append(dsn)

    monkeypatch.setattr(run, "run_dashboard", run_dashboard)
    return runs


def test_banking_offers_the_banks_subcommands_then_dashboard(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["frobnicate"]) == 2
    assert capsys.readouterr().err == (
        "error: argument ACTION: invalid choice: 'frobnicate'"
        f" (choose from {BANKS_SUBCOMMANDS}, 'dashboard') (see banking --help)\n"
    )


@pytest.mark.parametrize(
    ("argv", "dsn"),
    [
        (["dashboard"], None),
        (["dashboard", "--dsn", "postgresql://db/bank"], "postgresql://db/bank"),
        (["--dsn", "postgresql://db/bank", "dashboard"], "postgresql://db/bank"),
    ],
)
def test_banking_dashboard_runs_the_dashboard_on_the_dsn_given(
    argv: list[str], dsn: str | None, dashboard_runs: list[str | None]
) -> None:
    assert main(argv) == 0
    assert dashboard_runs == [dsn]


def test_banking_dashboard_says_in_one_line_when_the_database_is_unreachable(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    def run_dashboard(dsn: str | None = None, *, metrics_port: int | None = None) -> None:
        raise StoreUnavailable("no route to host")

    monkeypatch.setattr(run, "run_dashboard", run_dashboard)
    assert main(["dashboard"]) == 3
    assert capsys.readouterr().err == "error: the database is unavailable: no route to host\n"


def test_the_installed_banking_command_is_the_dashboards() -> None:
    with (ROOT / "examples" / "pyproject.toml").open("rb") as file:
        assert tomllib.load(file)["project"]["scripts"]["banking"] == "tui.cli:main"


@pytest.mark.parametrize(("module", "lists_dashboard"), [("tui", True), ("apps.banking", False)])
def test_help_lists_dashboard_only_with_the_dashboard(module: str, lists_dashboard: bool) -> None:
    done = subprocess.run(
        [sys.executable, "-m", module, "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    assert done.stdout.startswith("usage: banking [-h] [--version] [--dsn DSN] [ACTION] ...\n")
    assert (re.search(r"\n    dashboard\s", done.stdout) is not None) is lists_dashboard


def test_dashboard_help_lists_every_key_the_dashboard_binds() -> None:
    done = subprocess.run(
        [sys.executable, "-m", "tui", "dashboard", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=60,
        check=True,
    )  # fmt: skip
    keys = done.stdout[done.stdout.index("keys:\n") :].splitlines()[1:]
    shown = [line.split()[0] for line in keys if line.startswith("  ")]
    assert shown == ["↑", "o", "d", "w", "t", "s", "r", "x", "p", "/", "Esc", "q", "Ctrl-C", "Ctrl-P"]
    from tui.app import DashboardApp

    bound = {binding.key for binding in DashboardApp.BINDINGS if not isinstance(binding, tuple)}  # type: ignore[union-attr]
    assert bound == {"o", "d", "w", "t", "s", "r", "x", "p", "slash", "a", "escape", "q", "ctrl+c"}
    assert "saved in the working directory" in done.stdout


def test_a_malformed_connection_string_stops_the_dashboard_before_it_starts(
    dashboard_runs: list[str | None], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["dashboard", "--dsn", "garbage"]) == 2
    assert dashboard_runs == []
    assert capsys.readouterr().err.startswith("error: the connection string is malformed: it is not a postgresql://")
