"""The short chaos run (``just chaos``) finds no violation.

Three simulator processes run the bank for 40 s on an embedded server of the
run's own while, at the moments seed 2024 fixes, simulators are killed with
SIGKILL and started again, the server crashes and restarts, its postmaster
is killed with SIGKILL and it is started again, the bus's connections are
terminated, the handler of a projection hangs in the process that leads
it, a process that holds partitions of a partitioned projection is killed
with SIGKILL and started again, and the hot standby a reader reads through
crashes and restarts. The last 10 s are quiet, so no fault can race the
stop or the checks. About a minute.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from ..helpers import ROOT

pytestmark = [pytest.mark.slow, pytest.mark.chaos]

SEED = 2024
TIMEOUT = 240  # seconds; the run takes about 50


def count(name: str, output: str) -> int:
    found = re.search(rf"^  {re.escape(name)}\s+([\d ]+?)(?:\s{{2,}}|$)", output, re.MULTILINE)
    assert found, f"no {name!r} in the summary"
    return int(found.group(1).replace(" ", ""))


def test_the_short_chaos_run_survives_kills_crashes_terminated_connections_and_hangs_without_a_violation(
    tmp_path: Path,
) -> None:
    env = {name: value for name, value in os.environ.items() if name not in ("EVENTBUS_DSN", "DATABASE_URL")}
    result = subprocess.run(
        [sys.executable, "-m", "chaos", "--seed", str(SEED), "--workdir", str(tmp_path / "run")],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        check=False,
    )
    output = result.stdout
    assert result.returncode == 0, output[-6000:] + result.stderr[-3000:]
    assert "RESULT: no violation" in output
    assert count("process kills (SIGKILL, then started again)", output) >= 1
    assert count("server restarts (immediate mode: a crash)", output) >= 1
    assert count("connection terminations (pg_terminate_backend)", output) >= 1
    assert count("postmasters killed (SIGKILL, then started)", output) >= 1
    assert count("handler hangs (the leading projector)", output) >= 1
    assert count("projectors holding partitions killed (SIGKILL)", output) >= 1
    assert re.search(r"^the partitioned ledger applied every event once.*\bok\b", output, re.MULTILINE)
    assert count("hot standby restarts (immediate mode)", output) >= 1
    assert re.search(r"^reads with min_position include it .*\bok\b", output, re.MULTILINE)
    assert count("total", output) > 300  # acknowledged commands: the run did real work, also on a loaded machine
    assert f"just chaos --seed {SEED}" in output
