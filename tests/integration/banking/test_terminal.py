"""``banking`` at a terminal (a pseudo-terminal): line editing, Ctrl-C, rich
tables and progress, with piped output kept plain."""

from __future__ import annotations

import os
import re

from apps.banking.app import open_bank

from .terminal import Terminal, run_in_terminal


def _env(dsn: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")}
    env["EVENTBUS_DSN"] = dsn
    return env


async def test_the_menu_leaves_on_ctrl_c_with_one_line_and_130(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        await bank.open_account(owner="Ada", account_type="checking", currency="EUR", account_id="ada")

    async def script(terminal: Terminal) -> None:
        at = await terminal.wait_for("Choose: ")
        terminal.type("6\r")  # balance
        at = await terminal.wait_for("Account: ", start=at)
        terminal.type("ada\r")
        at = await terminal.wait_for(r"Balance  0\.00 EUR[\s\S]*Choose: ", start=at)
        terminal.type("6\r")
        at = await terminal.wait_for("Account: ", start=at)
        terminal.type("\x03")

    status, terminal = await run_in_terminal([], script, env=_env(dsn))
    assert status == 130
    tail = terminal.screen[terminal.screen.rindex("Account: ") :]
    assert tail.replace("\r", "").strip().splitlines()[-1] == "interrupted"
    assert "error" not in tail and "Traceback" not in terminal.screen


async def test_list_draws_a_rich_table_on_a_terminal_aligned_with_wide_characters(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        for owner, account_id in (("小林 花子", "hanako"), ("Ada", "ada")):
            await bank.open_account(owner=owner, account_type="checking", currency="EUR", account_id=account_id)

    async def script(terminal: Terminal) -> None:
        await terminal.wait_for(r"EUR: 2 accounts")

    status, terminal = await run_in_terminal(["list"], script, env=_env(dsn), size=(140, 20))
    assert status == 0
    plain = re.sub(r"\x1b\[[0-9;]*m", "", terminal.screen).replace("\r", "")
    rows = [line for line in plain.splitlines() if line.startswith(("hanako", "ada "))]
    assert len(rows) == 2
    # The currency column starts at the same cell in both rows (CJK characters are two cells wide).
    columns = [_cells(row[: row.index("EUR")]) for row in rows]
    assert columns[0] == columns[1]
    assert "─" in plain  # rich's rule under the headers, not plain text's dashes


async def test_list_at_80_columns_leaves_out_the_times_and_cuts_no_balance_or_id(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        receipt = await bank.open_account(
            owner="Grace Brewster Murray Hopper", account_type="savings", currency="USD", initial_deposit="1234567.89"
        )
    account_id = receipt.account_id

    async def script(terminal: Terminal) -> None:
        await terminal.wait_for(r"USD: 1 account")

    status, terminal = await run_in_terminal(["list"], script, env=_env(dsn), size=(80, 24))
    assert status == 0
    plain = re.sub(r"\x1b\[[0-9;]*m", "", terminal.screen).replace("\r", "")
    (row,) = [line for line in plain.splitlines() if line.startswith(account_id)]
    assert re.search(r"USD +1,234,567\.89 +open", row), row
    assert "…" not in row
    assert "(Type, Opened, Last change left out: the terminal is too narrow)" in " ".join(plain.split())
    assert re.search(r"\d{4}-\d\d-\d\d", plain) is None and "Opened " not in plain


def _cells(text: str) -> int:
    return sum(2 if "\u4e00" <= char <= "\u9fff" else 1 for char in text)


async def test_simulate_shows_progress_on_the_terminal_and_its_report_on_piped_output(dsn: str) -> None:
    async def script(terminal: Terminal) -> None:
        await terminal.wait_for("simulating")

    argv = ["simulate", "--accounts", "3", "--rate", "50", "--duration", "1.5", "--seed", "7"]
    status, terminal = await run_in_terminal(argv, script, env=_env(dsn), pipe_stdout=True)
    assert status == 0
    assert re.search(r"simulating.*\d+ commands, \d+ refused, \d+ failed", terminal.screen)
    assert terminal.stdout.startswith("Simulated ")
    assert "simulating" not in terminal.stdout and "\x1b" not in terminal.stdout
