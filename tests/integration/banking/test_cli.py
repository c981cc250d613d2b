"""The ``banking`` command driven as a person would: ``python -m apps.banking``
in a subprocess, with arguments or with answers piped to its menu."""

from __future__ import annotations

import os
import re
import sys
from decimal import Decimal

import attrs
import pytest
import trio
from rich.cells import cell_len

import eventbus
from apps.banking.app import Bank, open_bank
from eventbus import EventRecord, create_filter

from ...helpers import ROOT

CLI_TIMEOUT = 60


@attrs.frozen
class Run:
    status: int
    out: str
    err: str


async def banking(dsn: str, *args: str, stdin: str = "") -> Run:
    """Run ``python -m apps.banking --dsn DSN ARGS...``."""
    env = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")}
    with trio.fail_after(CLI_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "apps.banking", "--dsn", dsn, *args],
            cwd=ROOT,
            env=env,
            stdin=stdin.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


async def everything(bank: Bank) -> list[EventRecord]:
    return (await bank.bus.store.query(create_filter([]))).events


async def test_every_write_action_says_in_one_line_what_it_did(dsn: str) -> None:
    opened = await banking(
        dsn, "open", "--owner", "Ada Lovelace", "--currency", "eur", "--initial", "100", "--id", "ada"
    )
    assert opened == Run(0, "Opened account ada for Ada Lovelace (checking, EUR); balance 100.00 EUR.\n", "")
    bob = await banking(dsn, "open", "--owner", "Bob", "--type", "savings", "--currency", "EUR")
    assert bob.status == 0
    match = re.fullmatch(r"Opened account (acc-[0-9a-f]{16}) for Bob \(savings, EUR\); balance 0\.00 EUR\.\n", bob.out)
    assert match is not None
    bob_id = match.group(1)
    assert await banking(dsn, "deposit", "ada", "20.5") == Run(
        0, "Deposited 20.50 EUR into ada; balance 120.50 EUR.\n", ""
    )
    assert await banking(dsn, "withdraw", "ada", "0.50", "--currency", "EUR") == Run(
        0, "Withdrew 0.50 EUR from ada; balance 120.00 EUR.\n", ""
    )
    assert await banking(dsn, "transfer", "ada", bob_id, "25.50") == Run(
        0, f"Transferred 25.50 EUR from ada to {bob_id}; ada now holds 94.50 EUR.\n", ""
    )
    assert (await banking(dsn, "withdraw", bob_id, "25.50")).status == 0
    # --dsn also after the subcommand
    result = await trio.run_process(
        [sys.executable, "-m", "apps.banking", "close", bob_id, "--dsn", dsn], cwd=ROOT, capture_stdout=True
    )
    assert result.stdout.decode() == f"Closed account {bob_id}.\n"
    async with open_bank(dsn, projections=False) as bank:
        assert (await bank.get_account("ada")).balance == Decimal("94.50")
        assert (await bank.get_account(bob_id)).status == "closed"


async def test_list_balance_and_analytics_show_what_the_events_say(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        await bank.open_account(
            owner="Ada", account_type="checking", currency="EUR", initial_deposit="100", account_id="ada"
        )
        await bank.open_account(owner="Grace", account_type="savings", currency="GBP", account_id="grace")
        await bank.open_account(owner="Bob", account_type="savings", currency="EUR", account_id="bob")
        await bank.transfer("ada", "bob", "12.34")
    listing = await banking(dsn, "list")
    assert listing.status == 0 and listing.err == ""
    lines = listing.out.splitlines()
    assert lines[0].split() == ["Account", "Owner", "Type", "Currency", "Balance", "Status", "Opened", "Last", "change"]
    assert [line.split()[:6] for line in lines[2:5]] == [
        ["ada", "Ada", "checking", "EUR", "87.66", "open"],
        ["grace", "Grace", "savings", "GBP", "0.00", "open"],
        ["bob", "Bob", "savings", "EUR", "12.34", "open"],
    ]
    assert lines[-2:] == ["EUR: 2 accounts (2 open) holding 100.00 EUR", "GBP: 1 account (1 open) holding 0.00 GBP"]
    assert (await banking(dsn, "list", "--limit", "1")).out.splitlines()[3] == (
        "... showing the first 1; use --limit to see more"
    )

    balance = await banking(dsn, "balance", "ada")
    assert balance.status == 0
    lines = balance.out.splitlines()
    assert lines[:3] == ["Account  ada", "Owner    Ada", "Type     checking, EUR, open"]
    assert "Balance  87.66 EUR" in lines
    history = [line.split() for line in lines[lines.index("Balance  87.66 EUR") + 3 :]]
    assert [entry[3:] for entry in history] == [
        ["opened", "0.00"],
        ["deposit", "+100.00", "100.00"],
        ["transfer", "out", "-12.34", "87.66", "bob"],
    ]

    analytics = await banking(dsn, "analytics")
    assert analytics.status == 0
    rows = [line.split() for line in analytics.out.splitlines()[2:]]
    assert [row[1:] for row in rows] == [
        ["EUR", "2", "1", "100.00", "0", "0.00", "1", "12.34"],
        ["GBP", "1", "0", "0.00", "0", "0.00", "0", "0.00"],
    ]


async def test_rebuild_draws_a_progress_bar_on_stderr_and_says_it_is_done_on_stdout(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        await bank.open_account(owner="Ada", account_type="checking", currency="EUR", initial_deposit="1")
    result = await banking(dsn, "rebuild", "accounts")
    assert result.status == 0, result.err
    assert result.err == f"Rebuilding accounts  [{'#' * 30}] 100% 2/2\n"  # off a terminal: drawn once, when done
    assert re.fullmatch(r"Rebuilt accounts in \d+\.\d s\.\n", result.out)
    both = await banking(dsn, "rebuild")
    assert [line.split("[")[0].strip() for line in both.err.splitlines()] == [
        "Rebuilding accounts",
        "Rebuilding analytics",
    ]
    assert [line.split(" in ")[0] for line in both.out.splitlines()] == ["Rebuilt accounts", "Rebuilt analytics"]


BAD = [
    # (name, arguments, status, the message's start)
    ("an unknown account", ["deposit", "nobody", "5"], 1, "error: there is no account nobody"),
    ("a word as an amount", ["deposit", "ada", "abc"], 1, "error: 'abc' is not an amount"),
    ("a negative amount", ["withdraw", "ada", "-5"], 1, "error: an amount must be positive"),
    ("a zero amount", ["transfer", "ada", "bob", "0"], 1, "error: an amount must be positive"),
    ("fractions of a cent", ["deposit", "ada", "1.234"], 1, "error: an amount has at most two decimal places"),
    ("an unsupported currency", ["open", "--owner", "X", "--currency", "JPY"], 1, "error: unsupported currency"),
    (
        "an unknown account type",
        ["open", "--owner", "X", "--currency", "EUR", "--type", "gold"],
        1,
        "error: unsupported account type",
    ),
    ("a blank owner", ["open", "--owner", "  ", "--currency", "EUR"], 1, "error: an owner's name is required"),
    ("a taken id", ["open", "--owner", "X", "--currency", "EUR", "--id", "ada"], 1, "error: account ada exists"),
    ("the wrong currency", ["deposit", "ada", "5", "--currency", "usd"], 1, "error: account ada holds EUR, not USD"),
    ("an overdraft", ["withdraw", "ada", "100.01"], 1, "error: account ada holds 100.00 EUR: cannot withdraw"),
    ("an overdraft by transfer", ["transfer", "ada", "bob", "500"], 1, "error: account ada holds 100.00 EUR"),
    ("a transfer to itself", ["transfer", "ada", "ada", "1"], 1, "error: a transfer needs two different accounts"),
    ("a transfer across currencies", ["transfer", "ada", "grace", "1"], 1, "error: account ada holds EUR and"),
    ("a closed account", ["deposit", "gone", "1"], 1, "error: account gone is closed"),
    ("closing a funded account", ["close", "ada"], 1, "error: account ada holds 100.00 EUR"),
    ("a malformed id", ["balance", "a d a"], 1, "error: 'a d a' is not an account id"),
    ("a missing amount", ["deposit", "ada"], 2, "error: the following arguments are required: amount"),
    ("an unknown action", ["lend", "ada"], 2, "error: argument ACTION: invalid choice: 'lend'"),
    ("an unknown read model", ["rebuild", "ledger"], 2, "error: argument name: invalid choice: 'ledger'"),
    ("a zero rate", ["simulate", "--rate", "0"], 2, "error: argument --rate: '0' must be a positive number"),
]


async def test_bad_input_gives_one_line_and_a_nonzero_status_and_writes_nothing(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        await bank.open_account(
            owner="Ada", account_type="checking", currency="EUR", initial_deposit="100", account_id="ada"
        )
        await bank.open_account(owner="Bob", account_type="checking", currency="EUR", account_id="bob")
        await bank.open_account(owner="Grace", account_type="checking", currency="GBP", account_id="grace")
        await bank.open_account(owner="Gone", account_type="checking", currency="EUR", account_id="gone")
        await bank.close_account("gone")
        before = await everything(bank)
        runs: dict[str, Run] = {}

        async def run(name: str, args: list[str]) -> None:
            runs[name] = await banking(dsn, *args)

        async with trio.open_nursery() as nursery:
            for name, args, _, _ in BAD:
                nursery.start_soon(run, name, args)
        problems = []
        for name, _, status, message in BAD:
            got = runs[name]
            if not (
                got.status == status and got.out == "" and got.err.startswith(message) and got.err.count("\n") == 1
            ):
                problems.append(f"{name}: {got}")
        assert problems == []
        assert await everything(bank) == before


async def test_an_unreachable_database_gives_one_line_and_status_3(tmp_path: object) -> None:
    result = await banking("postgresql://nobody@/eventbus?host=/nonexistent/socket/dir", "balance", "ada")
    assert result.status == 3
    assert result.out == ""
    assert result.err.startswith("error: the database is unavailable:") and result.err.count("\n") == 1


MENU_SCRIPT = "\n".join(
    [
        "2", "Ada", "", "", "100",      # open: owner, type (default checking), currency (default EUR), initial
        "2", "Bob", "savings", "EUR", "",
        "1",                            # list
        "3", "{ada}", "50",             # deposit
        "4", "{ada}", "abc", "",        # withdraw a word: asked again; blank: back to the menu
        "4", "{ada}", "500",            # overdraft: refused by the bank
        "5", "{ada}", "{bob}", "30",    # transfer
        "6", "{bob}",                   # balance
        "7",                            # analytics
        "8",                            # rebuild
        "42",                           # no such choice
        "0",
    ]
)  # fmt: skip


async def test_the_menu_runs_every_action_from_scripted_input(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        ada = (
            await bank.open_account(owner="Ada", account_type="checking", currency="EUR", initial_deposit="100")
        ).account_id
        bob = (await bank.open_account(owner="Bob", account_type="savings", currency="EUR")).account_id
    script = MENU_SCRIPT.replace("{ada}", ada).replace("{bob}", bob) + "\n"
    # The script's own two openings come first; the ids used are those opened above.
    result = await banking(dsn, stdin=script)
    assert result.status == 0, result.err
    out = result.out
    assert out.count("Bank menu") == 12
    assert re.search(r"Opened account acc-[0-9a-f]{16} for Ada \(checking, EUR\); balance 100\.00 EUR\.", out)
    assert re.search(r"Opened account acc-[0-9a-f]{16} for Bob \(savings, EUR\); balance 0\.00 EUR\.", out)
    assert f"Deposited 50.00 EUR into {ada}; balance 150.00 EUR." in out
    assert "(back to the menu)" in out
    assert f"Transferred 30.00 EUR from {ada} to {bob}; {ada} now holds 120.00 EUR." in out
    assert f"Account  {bob}" in out and "Balance  30.00 EUR" in out
    assert "Rebuilt analytics in " in out and "Month    Currency" in out
    assert out.rstrip().endswith("Goodbye.")
    errors = [line for line in result.err.splitlines() if not line.startswith("Rebuilding ")]
    assert errors == [
        "error: 'abc' is not an amount: write it like 100.00 or 25.5",
        f"error: account {ada} holds 150.00 EUR: cannot withdraw 500.00 EUR",
        "error: choose one of 1, 2, 3, 4, 5, 6, 7, 8, 9, 0",
    ]
    async with open_bank(dsn, projections=False) as bank:
        assert (await bank.get_account(ada)).balance == Decimal("120.00")
        assert len(await bank.list_accounts()) == 4


async def test_each_menu_answer_is_checked_before_the_next_question(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        ada = (await bank.open_account(owner="Ada", account_type="checking", currency="EUR")).account_id
        gone = (await bank.open_account(owner="Gone", account_type="checking", currency="EUR")).account_id
        await bank.close_account(gone)
    script = "\n".join(
        [
            "2", "Grace", "gold", "savings", "JPY", "gbp", "12.345", "none",  # open, each answer checked
            "3", "nobody", gone, "a d a", ada, "-5", "7",                           # deposit: the account first
            "5", ada, ada, "",                                                       # a transfer to itself: no
            "0",
        ]
    )  # fmt: skip
    result = await banking(dsn, stdin=script + "\n")
    assert result.status == 0, result.err
    assert result.err.splitlines() == [
        "error: unsupported account type 'gold': use one of checking, savings",
        "error: unsupported currency 'JPY': use one of EUR, USD, GBP",
        "error: an amount has at most two decimal places, not '12.345'",
        "error: there is no account nobody",
        f"error: account {gone} is closed",
        "error: 'a d a' is not an account id",
        "error: an amount must be positive, not '-5'",
        f"error: a transfer needs two different accounts, not {ada} twice",
    ]
    assert re.search(r"Opened account acc-[0-9a-f]{16} for Grace \(savings, GBP\); balance 0\.00 GBP\.", result.out)
    assert f"Deposited 7.00 EUR into {ada}; balance 7.00 EUR." in result.out
    assert result.out.count("(back to the menu)") == 1


@pytest.mark.parametrize("ending", ["", "0\n"], ids=["end of input", "exit"])
async def test_the_menu_leaves_cleanly(dsn: str, ending: str) -> None:
    result = await banking(dsn, stdin=ending)
    assert (result.status, result.err) == (0, "")
    assert result.out.rstrip().endswith("Goodbye.")


async def test_a_write_run_again_with_its_command_id_takes_effect_once(dsn: str) -> None:
    command_id = "9b2f9c4e-5d43-4a8e-9d55-2c1e0f6f7a10"
    opened = await banking(
        dsn, "open", "--owner", "Ada", "--currency", "EUR", "--id", "ada", "--command-id", command_id
    )
    again = await banking(dsn, "open", "--owner", "Ada", "--currency", "EUR", "--id", "ada", "--command-id", command_id)
    assert opened == again == Run(0, "Opened account ada for Ada (checking, EUR); balance 0.00 EUR.\n", "")
    deposit_id = "0f3c2b1a-9e8d-4c7b-a6f5-e4d3c2b1a098"
    first = await banking(dsn, "deposit", "ada", "10", "--command-id", deposit_id)
    second = await banking(dsn, "deposit", "ada", "10", "--command-id", deposit_id)
    assert first == second == Run(0, "Deposited 10.00 EUR into ada; balance 10.00 EUR.\n", "")
    async with open_bank(dsn, projections=False) as bank:
        assert (await bank.get_account("ada")).balance == Decimal("10.00")
    bad = await banking(dsn, "deposit", "ada", "10", "--command-id", "not-a-uuid")
    assert (bad.status, bad.err) == (
        2,
        "error: argument --command-id: 'not-a-uuid' is not a UUID (see banking deposit --help)\n",
    )


async def test_version_and_help_say_what_a_newcomer_needs(dsn: str) -> None:
    version = await banking(dsn, "--version")
    assert version == Run(0, f"banking {eventbus.__version__}\n", "")
    help = await banking(dsn, "--help")
    assert help.status == 0
    assert help.out.startswith("usage: banking [-h] [--version] [--dsn DSN] [ACTION] ...\n")
    examples = help.out[help.out.index("examples:") :].splitlines()[1:3]
    assert [line.split()[:2] for line in examples] == [["banking", "open"], ["banking", "transfer"]]
    codes = help.out[help.out.index("exit status:") :].splitlines()[1:7]
    assert [line.split()[0] for line in codes] == ["0", "1", "2", "3", "74", "130"]
    assert "EVENTBUS_DATA_DIR" in help.out


async def test_a_simulator_rate_beyond_what_it_takes_is_refused_in_words(dsn: str) -> None:
    result = await banking(dsn, "simulate", "--rate", "1e9")
    assert result.status == 2 and result.out == ""
    assert result.err == (
        "error: argument --rate: '1e9' is more than the simulator takes: at most 100,000 commands per second"
        " (see banking simulate --help)\n"
    )


async def test_a_malformed_connection_string_is_called_malformed_and_its_password_never_shown() -> None:
    garbage = await banking("garbage", "list")
    assert (garbage.status, garbage.out) == (2, "")
    assert garbage.err == (
        "error: the connection string is malformed: it is not a postgresql:// URL;"
        " write it like postgresql://user:password@host:5432/database\n"
    )
    typo = await banking("postgresq://ada:s3cret@db.example/bank", "list")
    assert typo.status == 2 and "malformed" in typo.err and "s3cret" not in typo.err
    port = await banking("postgresql://ada:s3cret@db.example:port/bank", "analytics")
    assert port.status == 2 and "malformed" in port.err and "s3cret" not in port.err
    no_host = await banking("postgresql://ada:s3cret/bank", "list")  # the password reads as a port
    assert no_host.err == (
        "error: the connection string is malformed: its host or port cannot be read;"
        " write it like postgresql://user:password@host:5432/database\n"
    )


async def test_the_environments_malformed_connection_string_is_called_malformed_too() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")}
    with trio.fail_after(CLI_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "apps.banking", "list"],
            cwd=ROOT,
            env={**env, "EVENTBUS_DSN": "garbage"},
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 2
    assert result.stderr.decode().startswith("error: the connection string is malformed: it is not a postgresql:// URL")


async def test_piped_tables_align_wide_characters_in_plain_text(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        for owner, account_id in (("小林 花子", "hanako"), ("Ada", "ada"), ("🦊 Fox", "fox")):
            await bank.open_account(owner=owner, account_type="checking", currency="EUR", account_id=account_id)
    listing = await banking(dsn, "list")
    assert listing.status == 0
    lines = listing.out.splitlines()[:5]
    assert "\x1b" not in listing.out
    # Every line puts the type column at the same terminal cell.
    starts = {cell_len(line[: line.index("checking" if row else "Type")]) for row, line in enumerate(lines) if row != 1}
    assert len(starts) == 1
