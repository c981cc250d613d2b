"""The environment these tests run in, as the README's set-up made it, seen from outside the checkout."""

from __future__ import annotations

import importlib.metadata
import os
import sys
from pathlib import Path

import pytest
import trio

USER_PROGRAM = """
import trio
from eventbus import Event, create_filter, open_bus


async def main() -> None:
    async with open_bus() as bus:
        records = await bus.store.append([Event("Happened", {"n": 1})])
        position: int = records[0].sequence_number
        found = await bus.store.query(create_filter(["Happened"]))
        print(position, found.max_sequence_number)


trio.run(main)
"""

MISTAKEN_PROGRAM = """
from eventbus import EventRecord


def position(record: EventRecord) -> str:
    return record.sequence_number
"""


def outside_environment() -> dict[str, str]:
    """This process's environment without paths that would lead a program to the checkout."""
    return {name: value for name, value in os.environ.items() if name not in ("PYTHONPATH", "MYPYPATH")}


@pytest.mark.slow
async def test_mypy_strict_reads_eventbus_types_in_a_program_outside_the_checkout(tmp_path: Path) -> None:
    (tmp_path / "program.py").write_text(USER_PROGRAM)
    (tmp_path / "mistaken.py").write_text(MISTAKEN_PROGRAM)
    result = await trio.run_process(
        [sys.executable, "-m", "mypy", "--strict", "--cache-dir", str(tmp_path / "cache"), "program.py", "mistaken.py"],
        cwd=tmp_path,
        env=outside_environment(),
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    # The one error is the program's own: eventbus was found, and its types were read.
    assert result.stdout.decode().splitlines() == [
        'mistaken.py:6: error: Incompatible return value type (got "int", expected "str")  [return-value]',
        "Found 1 error in 1 file (checked 2 source files)",
    ]


async def test_the_banking_command_comes_from_the_example_and_runs_outside_the_checkout(tmp_path: Path) -> None:
    [entry] = importlib.metadata.entry_points(group="console_scripts", name="banking")
    assert entry.value == "tui.cli:main"
    assert entry.dist is not None
    assert entry.dist.name == "eventbus-banking"
    command = Path(sys.executable).with_name("banking")
    result = await trio.run_process(
        [str(command), "--help"], cwd=tmp_path, env=outside_environment(), capture_stdout=True
    )
    assert result.stdout.decode().startswith("usage: banking ")
