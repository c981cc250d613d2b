"""What ``banking`` does when it cannot say what it did: standard output
closed or full, a file it was told to write that cannot be made, and options
that would crowd the machine. Always one line on stderr, never a traceback."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from apps.banking.app import open_bank
from eventbus import create_filter

from ...helpers import ROOT
from .test_cli import CLI_TIMEOUT, Run, banking


async def banking_shell(dsn: str, redirect: str, *args: str) -> Run:
    """Run ``python -m apps.banking --dsn DSN ARGS... REDIRECT`` through ``sh``."""
    env = {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")}
    env["BANKING_DSN"] = dsn
    quoted = " ".join(f"'{arg}'" for arg in args)
    line = f'exec "{sys.executable}" -m apps.banking --dsn "$BANKING_DSN" {quoted} {redirect}'
    with trio.fail_after(CLI_TIMEOUT):
        result = await trio.run_process(
            ["sh", "-c", line], cwd=ROOT, env=env, capture_stdout=True, capture_stderr=True, check=False
        )
    return Run(result.returncode, result.stdout.decode(), result.stderr.decode())


async def event_count(dsn: str) -> int:
    async with open_bank(dsn, projections=False) as bank:
        return len((await bank.bus.store.query(create_filter([]))).events)


async def test_a_closed_standard_output_is_bad_usage_and_nothing_is_done(dsn: str) -> None:
    listed = await banking_shell(dsn, ">&-", "list")
    opened = await banking_shell(dsn, ">&-", "open", "--owner", "Ada", "--currency", "EUR", "--initial", "5")
    for run in (listed, opened):
        assert (run.status, run.out) == (2, "")
        assert run.err == "error: standard output is closed: the answer would be lost, so nothing was done\n"
    assert await event_count(dsn) == 0


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_a_full_standard_output_gives_one_line_and_status_74(dsn: str) -> None:
    opened = await banking_shell(dsn, ">/dev/full", "open", "--owner", "Ada", "--currency", "EUR")
    listed = await banking_shell(dsn, ">/dev/full", "list")
    for run in (opened, listed):
        assert run.status == 74
        assert run.err == "error: cannot write the answer to standard output: No space left on device\n"
    assert await event_count(dsn) == 1  # the account was opened; only its line was lost


async def test_a_journal_that_cannot_be_made_is_refused_in_one_line(dsn: str, tmp_path: Path) -> None:
    journal = tmp_path / "missing" / "journal.jsonl"
    run = await banking(dsn, "simulate", "--duration", "1", "--accounts", "2", "--journal", str(journal))
    assert (run.status, run.out) == (1, "")
    assert run.err == f"error: cannot write to {journal}: No such file or directory\n"
    assert await event_count(dsn) == 0


@pytest.mark.skipif(not Path("/dev/full").exists(), reason="needs /dev/full")
async def test_a_journal_that_cannot_be_written_is_named_not_standard_output(dsn: str) -> None:
    run = await banking_shell(dsn, ">/dev/null", "simulate", "--duration", "1", "--accounts", "3", "--rate", "50",
                              "--journal", "/dev/full")  # fmt: skip
    assert (run.status, run.err) == (1, "error: cannot write to /dev/full: No space left on device\n"), run


@pytest.mark.parametrize("limit", [str(2**63), str(2**63 - 1), "1000000001"])
async def test_a_limit_past_what_a_count_can_be_is_bad_usage_before_the_database(dsn: str, limit: str) -> None:
    run = await banking(dsn, "list", "--limit", limit)
    assert run == Run(2, "", f"error: argument --limit: '{limit}' must be at most 1,000,000,000 (see banking list"
                             " --help)\n")  # fmt: skip


async def test_the_menu_with_standard_input_closed_ends_as_at_the_end_of_input(dsn: str) -> None:
    run = await banking_shell(dsn, "<&-", "menu")
    assert run.status == 0 and run.err == "" and run.out.endswith("Goodbye.\n"), run


async def test_more_simulator_processes_than_it_starts_are_refused_in_words(dsn: str) -> None:
    run = await banking(dsn, "simulate", "--processes", "1000")
    assert (run.status, run.out) == (2, "")
    assert run.err == (
        "error: argument --processes: '1000' is more processes than the simulator starts: at most 32"
        " (see banking simulate --help)\n"
    )


@pytest.mark.parametrize("owner", ["\u200b", "\u200b\u200c", "\u0301\u0301"])
async def test_an_owner_name_that_shows_nothing_is_refused(dsn: str, owner: str) -> None:
    run = await banking(dsn, "open", "--owner", owner, "--currency", "EUR")
    assert (run.status, run.out) == (1, "")
    assert run.err == "error: an owner's name must show something: a letter, a digit or a sign\n"
    assert await event_count(dsn) == 0
