"""What the benchmarks share: a server, databases, baselines in subprocesses, a report."""

from __future__ import annotations

import atexit
import json
import math
import os
import statistics
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from eventbus import testing
from eventbus.testing import EmbeddedServer, dsn_from_environment, install_schema

ROOT = Path(__file__).resolve().parent.parent
BENCH_DIR = Path(os.environ.get("EVENTBUS_BENCH_DIR") or Path(tempfile.gettempdir()) / f"eventbus-bench-{os.getuid()}")


def server() -> tuple[str, EmbeddedServer | None]:
    """The admin DSN: EVENTBUS_DSN's server if set, else an embedded one with default settings."""
    external = dsn_from_environment()
    if external:
        return external, None
    embedded = EmbeddedServer(BENCH_DIR / "server")
    embedded.start()
    atexit.register(embedded.stop)  # its data stays for the next run
    return embedded.dsn(), embedded


def database_dsn(admin: str, name: str) -> str:
    from urllib.parse import urlsplit, urlunsplit

    return urlunsplit(urlsplit(admin)._replace(path="/" + name))


async def fresh_database(admin: str, name: str, *, template: str | None = None) -> str:
    """Drop and create ``name`` (from ``template`` if given), with the eventbus schema."""
    async with testing.open_loop():
        conn = await testing.connect(admin)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()
        await testing.create_database(admin, name, template=template)
        dsn = database_dsn(admin, name)
        conn = await testing.connect(dsn)
        try:
            await install_schema(conn)
        finally:
            await conn.close()
    return dsn


async def settings_line(dsn: str) -> str:
    """The server settings that matter for the figures, on one line."""
    async with testing.open_loop():
        conn = await testing.connect(dsn)
        try:
            names = ["server_version", "fsync", "synchronous_commit", "wal_sync_method", "shared_buffers",
                     "max_wal_size", "wal_level"]  # fmt: skip
            values = [f"{name}={await conn.fetchval(f'SHOW {name}')}" for name in names]
        finally:
            await conn.close()
    return " ".join(values)


def run_baseline(script: str, spec: dict[str, Any]) -> dict[str, Any]:
    """Run ``bench/baselines/<script>.py`` in a plain-asyncio subprocess; return its JSON."""
    result = subprocess.run(
        [sys.executable, "-m", f"bench.baselines.{script}"],
        input=json.dumps(spec),
        capture_output=True,
        text=True,
        cwd=ROOT,
        check=False,
    )
    if result.returncode != 0:
        raise RuntimeError(f"baseline {script} failed:\n{result.stderr}")
    parsed: dict[str, Any] = json.loads(result.stdout.strip().splitlines()[-1])
    return parsed


def percentile(values: Sequence[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    return ordered[min(len(ordered) - 1, max(0, math.ceil(q * len(ordered)) - 1))]


def median(values: Sequence[float]) -> float:
    return statistics.median(values)


class Report:
    """Rows of (figure, ours, baseline, peer, ratio, target), printed as a table.

    ``peer`` is eventsourcing's PostgreSQL DCB recorder doing the same work on
    the same server in the same run (see bench/baselines/peer.py); the column
    is printed when some row has a peer figure.
    """

    def __init__(self, title: str) -> None:
        self.title = title
        self.rows: list[tuple[str, str, str, str, str, str]] = []
        self.notes: list[str] = []

    def row(self, figure: str, ours: str, baseline: str = "", ratio: str = "", target: str = "", *,
            peer: str = "") -> None:  # fmt: skip
        self.rows.append((figure, ours, baseline, peer, ratio, target))

    def note(self, text: str) -> None:
        self.notes.append(text)

    def print(self) -> None:
        header = ("figure", "eventbus", "baseline", "peer", "ratio", "target")
        columns = [i for i in range(6) if i != 3 or any(r[3] for r in self.rows)]
        widths = {i: max(len(r[i]) for r in [header, *self.rows]) for i in columns}
        print(f"\n== {self.title} ==")
        for note in self.notes:
            print(note)
        print("  ".join(header[i].ljust(widths[i]) for i in columns))
        print("  ".join("-" * widths[i] for i in columns))
        for row in self.rows:
            print("  ".join(row[i].ljust(widths[i]) for i in columns))
        sys.stdout.flush()


def verdict(ratio: float, target: float, *, higher_is_better: bool = True) -> str:
    ok = ratio >= target if higher_is_better else ratio <= target
    sign = ">=" if higher_is_better else "<="
    return f"{sign} {target:g} {'met' if ok else 'MISSED'}"
