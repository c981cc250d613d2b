"""The bank keeps its data apart: its own database on the embedded server, events
that are not its own set aside, and ``banking reset`` to start afresh.

The embedded-server tests point ``EVENTBUS_DATA_DIR`` at a server of the test's
own and name no database, as a newcomer's first run does.
"""

from __future__ import annotations

import os
import re
import sys
from pathlib import Path

import attrs
import trio

from apps.banking.app import open_bank
from eventbus import Event, open_event_store, testing
from eventbus.testing import EmbeddedServer

from ...helpers import ROOT, database_dsn

CLI_TIMEOUT = 90


@attrs.frozen
class Run:
    status: int
    out: str
    err: str


def _environment(data_dir: Path | None) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL", "EVENTBUS_DATA_DIR")}
    if data_dir is not None:
        env["EVENTBUS_DATA_DIR"] = str(data_dir)
    return env


async def python(data_dir: Path, *args: str, stdin: str = "") -> Run:
    """``python ARGS`` with no database named: the embedded server of ``data_dir``."""
    with trio.fail_after(CLI_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, *args],
            cwd=ROOT,
            env=_environment(data_dir),
            stdin=stdin.encode(),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


async def banking(data_dir: Path, *args: str, stdin: str = "") -> Run:
    return await python(data_dir, "-m", "apps.banking", *args, stdin=stdin)


def readme_example() -> str:
    """The embedding example of the README, as it stands there."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## Embedding it") :]
    match = re.search(r"```python\n(.*?)```", section, re.DOTALL)
    assert match is not None
    return match.group(1)


async def test_the_readmes_embedding_example_leaves_the_bank_as_it_was(embedded_server: EmbeddedServer) -> None:
    where = embedded_server.data_dir
    opened = await banking(where, "open", "--owner", "Ada", "--currency", "EUR", "--initial", "10", "--id", "ada")
    assert opened.status == 0, opened.err
    example = await python(where, "-c", readme_example())
    assert example.status == 0, example.err
    assert "'accountId': 'a1'" in example.out
    listing = await banking(where, "list")
    assert (listing.status, listing.err) == (0, "")
    assert [line.split()[:5] for line in listing.out.splitlines()[2:3]] == [["ada", "Ada", "checking", "EUR", "10.00"]]
    rebuilt = await banking(where, "rebuild")
    assert rebuilt.status == 0, rebuilt.err
    analytics = await banking(where, "analytics")
    assert [line.split()[1:5] for line in analytics.out.splitlines()[2:]] == [["EUR", "1", "1", "10.00"]]


async def test_reset_asks_first_refuses_while_the_bank_is_in_use_and_then_starts_afresh(
    embedded_server: EmbeddedServer,
) -> None:
    where = embedded_server.data_dir
    assert (await banking(where, "open", "--owner", "Ada", "--currency", "EUR", "--id", "ada")).status == 0

    declined = await banking(where, "reset", stdin="no\n")
    assert declined.status == 1
    assert declined.err.startswith(f"This deletes every account and event of the bank: banking (embedded, {where}).\n")
    assert declined.err.endswith("Type yes to go on: error: not confirmed; nothing was deleted\n")
    assert "ada" in (await banking(where, "list")).out

    async with testing.open_loop():
        embedded_server.start()  # the last command let go of it
        user = await testing.connect(database_dsn(embedded_server.dsn(), "banking"))
        try:
            busy = await banking(where, "reset", "--yes")
        finally:
            await user.close()
    assert busy.status == 1
    assert busy.err == (
        "error: 1 other session uses the bank's database (a dashboard, a simulator, a menu?): "
        "close them, then reset again; nothing was deleted\n"
    )

    done = await banking(where, "reset", stdin="yes\n")
    assert done.status == 0, done.err
    assert done.out == f"The bank starts afresh: its database 'banking' in {where} is gone (made again on next use).\n"
    assert (await banking(where, "list")) == Run(0, "No accounts yet.\n", "")


async def test_reset_leaves_a_database_named_by_a_connection_string_alone(dsn: str) -> None:
    with trio.fail_after(CLI_TIMEOUT):
        result = await trio.run_process(
            [sys.executable, "-m", "apps.banking", "--dsn", dsn, "reset", "--yes"],
            cwd=ROOT,
            env=_environment(None),
            capture_stdout=True,
            capture_stderr=True,
            check=False,
        )
    assert result.returncode == 1
    assert b"the database of --dsn, EVENTBUS_DSN or DATABASE_URL is yours" in result.stderr


FOREIGN = [
    Event("MoneyDeposited", {"accountId": "a1", "amount": "10.00"}),  # the README's: an account the bank never opened
    Event("MoneyDeposited", {"accountId": "ada", "amount": "ten", "currency": "EUR"}),
    Event("BankAccountOpened", {"accountId": "ada", "owner": "Eve", "accountType": "checking", "currency": "EUR"}),
    Event("MoneyWithdrawn", {"account": "ada"}),
]


async def test_events_that_are_not_the_banks_are_set_aside_with_the_reason_and_the_bank_goes_on(dsn: str) -> None:
    async with open_bank(dsn, projections=False) as bank:
        await bank.open_account(owner="Ada", account_type="checking", currency="EUR", account_id="ada")
    async with open_event_store(dsn) as store:
        foreign = [(await store.append([event]))[0] for event in FOREIGN]
    async with open_bank(dsn, projections=False) as bank:
        await bank.deposit("ada", "5.00")
    env = {**_environment(None), "EVENTBUS_DSN": dsn}

    async def run(*args: str) -> Run:
        with trio.fail_after(CLI_TIMEOUT):
            result = await trio.run_process([sys.executable, "-m", "apps.banking", *args], cwd=ROOT, env=env,
                                            capture_stdout=True, capture_stderr=True, check=False)  # fmt: skip
        return Run(result.returncode, result.stdout.decode(), result.stderr.decode())

    listing = await run("list")
    assert listing.status == 0, listing.err
    assert [line.split()[:5] for line in listing.out.splitlines()[2:3]] == [["ada", "Ada", "checking", "EUR", "5.00"]]
    assert listing.err == (
        "note: 4 events not written by the bank were set aside, the latest at position 5 (MoneyWithdrawn); "
        "the dashboard lists them\n"
    )
    assert (await run("rebuild")).status == 0
    async with open_bank(dsn) as bank:
        assert [row.balance for row in await bank.list_accounts()] == [5]
        dead = await bank.dead_letters()
    reasons = {(letter.projection, letter.sequence_number): letter.error for letter in dead.latest}
    assert dead.count == 4
    assert sorted(reasons) == [("accounts", 2), ("accounts", 3), ("accounts", 4), ("accounts", 5),
                               ("analytics", 2), ("analytics", 3), ("analytics", 5)]  # fmt: skip
    assert reasons[("accounts", 2)].endswith(
        f"raised MalformedEvent: MoneyDeposited event {foreign[0].event_id} at position 2 is about account 'a1', "
        "which was never opened: not an event the bank wrote"
    )
    assert "'ten' as 'amount', not an amount like '100.00'" in reasons[("accounts", 3)]
    assert "is about account" not in reasons[("accounts", 4)] and "which was open already" in reasons[("accounts", 4)]
    assert "has no text 'accountId' in its payload" in reasons[("accounts", 5)]
    assert "has no text 'currency'" in reasons[("analytics", 2)]
