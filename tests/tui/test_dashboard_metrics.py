"""``banking dashboard --metrics-port N``: the dashboard in a terminal (tmux),
its Prometheus endpoint read over HTTP."""

from __future__ import annotations

import shlex
import subprocess
import sys

import psutil
import pytest

from ..helpers import ROOT
from ..integration.banking.test_operations import free_port, samples, scrape
from .test_tmux import START_TIMEOUT, TMUX, Terminal

pytestmark = pytest.mark.skipif(TMUX is None, reason="tmux is not installed")


async def test_the_dashboard_serves_appends_and_projection_lag_while_it_runs(dsn: str) -> None:
    port = free_port()
    terminal = Terminal(f"eventbus-metrics-{psutil.Process().pid}")
    dashboard = [sys.executable, "-m", "tui", "dashboard", "--metrics-port", str(port), "--dsn", dsn]
    command = f"cd {shlex.quote(str(ROOT))} && exec {shlex.join(dashboard)}"
    terminal.tmux("new-session", "-d", "-s", "main", "-x", "120", "-y", "40", command)
    try:
        await terminal.wait_for("projections 2 live", timeout=START_TIMEOUT)
        terminal.tmux("send-keys", "-t", "main", "o")
        await terminal.wait_for("Open an account")
        terminal.tmux("send-keys", "-t", "main", "-l", "Ada Lovelace")
        terminal.tmux("send-keys", "-t", "main", "Enter")
        await terminal.wait_for("Ada Lovelace · checking · EUR · open")
        text = await scrape(port)
    finally:
        subprocess.run([*terminal.base, "kill-server"], capture_output=True, check=False)
    assert samples(text, "eventbus_appends_total") == {'outcome="ok"': 1.0}
    lags = samples(text, "eventbus_projection_lag")
    assert set(lags) == {'projection="accounts"', 'projection="analytics"'}
