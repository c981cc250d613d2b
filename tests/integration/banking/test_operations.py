"""The ``banking`` command for operators: its logs on stderr and its
Prometheus endpoint, read over HTTP while it runs."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import urllib.request

import pytest
import trio

from ...helpers import ROOT, LineReader

START_TIMEOUT = 60


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def environment() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if k not in ("EVENTBUS_DSN", "DATABASE_URL")}


async def scrape(port: int) -> str:
    def get() -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=10) as response:
            assert response.headers["Content-Type"].startswith("text/plain")
            return str(response.read().decode())

    return await trio.to_thread.run_sync(get)


def samples(text: str, name: str) -> dict[str, float]:
    """The samples of metric ``name`` by their distinguishing label (not the exporter's own)."""
    found = {}
    for line in text.splitlines():
        if line.startswith(name + "{"):
            labels, _, value = line[len(name) + 1 :].rpartition("} ")
            mine = [label for label in labels.split(",") if not label.startswith("otel_scope_")]
            found[",".join(mine)] = float(value)
    return found


async def test_simulate_serves_prometheus_metrics_with_appends_and_projection_lag(dsn: str) -> None:
    port = free_port()
    command = [sys.executable, "-m", "apps.banking", "simulate", "--accounts", "5", "--rate", "200",
               "--duration", "30", "--metrics-port", str(port), "--dsn", dsn]  # fmt: skip
    process = await trio.lowlevel.open_process(
        command, cwd=ROOT, env=environment(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE
    )
    try:
        assert process.stderr is not None
        lines = LineReader(process.stderr)
        with trio.fail_after(START_TIMEOUT):
            line = await lines.receive_line()
            assert line == f"metrics at http://127.0.0.1:{port}/metrics"
            while True:  # until the simulator has appended and the read models run
                text = await scrape(port)
                appends = samples(text, "eventbus_appends_total")
                lags = samples(text, "eventbus_projection_lag")
                if appends.get('outcome="ok"', 0) > 10 and lags:
                    break
                await trio.sleep(0.2)  # the simulator's own pace
    finally:
        with trio.CancelScope(shield=True):
            process.kill()
            await process.wait()
    assert set(lags) >= {'projection="accounts"', 'projection="analytics"'}
    assert all(value >= 0 for value in lags.values())
    assert "# TYPE eventbus_appends_total counter" in text
    assert "# TYPE eventbus_append_duration_seconds histogram" in text


async def test_a_metrics_port_in_use_is_refused_in_one_line(dsn: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = await trio.run_process(
            [sys.executable, "-m", "apps.banking", "simulate", "--duration", "1", "--metrics-port", str(port),
             "--dsn", dsn],
            cwd=ROOT, env=environment(), capture_stdout=True, capture_stderr=True, check=False,
        )  # fmt: skip
    assert result.returncode == 1
    assert result.stderr.decode().startswith(f"error: --metrics-port {port}: ")
    assert result.stderr.decode().count("\n") == 1


@pytest.mark.parametrize("flag", [["-v"], ["--log-level", "info"]])
async def test_verbose_logs_eventbus_records_to_stderr_and_nothing_without_it(dsn: str, flag: list[str]) -> None:
    async def banking(*args: str) -> tuple[int, str]:
        with trio.fail_after(START_TIMEOUT):
            done = await trio.run_process(
                [sys.executable, "-m", "apps.banking", *args, "--dsn", dsn],
                cwd=ROOT, env=environment(), capture_stdout=True, capture_stderr=True, check=False,
            )  # fmt: skip
        return done.returncode, done.stderr.decode()

    simulate = ("simulate", "--accounts", "2", "--rate", "50", "--duration", "0.5")
    status, err = await banking(*flag, *simulate)
    assert status == 0, err
    assert "INFO eventbus.projections: projection accounts: this process leads it now" in err
    assert await banking(*simulate) == (0, "")
    assert await banking("--log-level", "loud", *simulate) == (
        1, "error: --log-level 'loud': use DEBUG, INFO, WARNING or ERROR\n",
    )  # fmt: skip
