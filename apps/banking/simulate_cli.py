"""``banking simulate``: run the simulator here and in more OS processes, and report.

With ``--processes N`` this process runs the workload and starts N-1 more
processes running ``banking simulate`` with the same options on the same
database (each its own share of the accounts, all trading with each other's).
They share the journal. Each prints its report as JSON; this process prints
its own, theirs, and the sum.

While it runs, a progress bar on standard error (rich's, on a terminal; a
line every ``PROGRESS_EVERY`` seconds elsewhere; none with ``--json``) shows
the seconds gone and the commands answered; the report goes to standard output.

SIGINT or SIGTERM ends the issuing early (and is passed on to the other
processes); the commands under way finish and the report is printed.
"""

from __future__ import annotations

import argparse
import json
import signal
import subprocess
import sys
from collections.abc import Sequence
from typing import TextIO

import trio
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from .app import open_bank
from .domain import BankingError
from .journal import Journal
from .simulate import SimulationConfig, SimulationReport, simulate

CHILD_OUTPUT_LIMIT = 1 << 20
"""Bytes of a child process's output kept, at most."""

PROGRESS_EVERY = 5.0
"""Seconds between progress lines when standard error is not a terminal."""

PROGRESS_REFRESH = 0.25
"""Seconds between redraws of the progress bar on a terminal."""


def child_arguments(args: argparse.Namespace, index: int) -> list[str]:
    """The command line of extra process ``index`` (1-based)."""
    argv = [
        sys.executable,
        "-m",
        "apps.banking",
        "simulate",
        "--accounts",
        str(args.accounts),
        "--rate",
        repr(args.rate),
        "--duration",
        repr(args.duration),
        "--processes",
        "1",
        "--json",
    ]
    if args.seed is not None:
        argv += ["--seed", str(args.seed + index)]
    if args.journal:
        argv += ["--journal", args.journal]
    for account_id in args.use:
        argv += ["--use", account_id]
    if args.dsn:
        argv += ["--dsn", args.dsn]
    return argv


async def _read_all(stream: trio.abc.ReceiveStream | None) -> bytes:
    data = b""
    if stream is None:
        return data
    while chunk := await stream.receive_some():
        data = (data + chunk)[-CHILD_OUTPUT_LIMIT:]
    return data


class _Child:
    """One extra simulator process, its output and its report."""

    def __init__(self, argv: Sequence[str]) -> None:
        self.argv = list(argv)
        self.process: trio.Process | None = None
        self.report: SimulationReport | None = None
        self.error: str | None = None

    async def run(self) -> None:
        process = await trio.lowlevel.open_process(self.argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        self.process = process
        try:
            async with trio.open_nursery() as nursery:
                out: list[bytes] = []
                err: list[bytes] = []
                nursery.start_soon(_collect, process.stdout, out)
                nursery.start_soon(_collect, process.stderr, err)
                status = await process.wait()
        finally:
            with trio.CancelScope(shield=True):
                if process.returncode is None:
                    process.kill()
                    await process.wait()
        lines = b"".join(out).decode(errors="replace").strip().splitlines()
        if status == 0 and lines:
            self.report = SimulationReport.from_json(json.loads(lines[-1]))
        else:
            messages = b"".join(err).decode(errors="replace").strip().splitlines()
            self.error = f"process {process.pid} ended with status {status}: " + (messages[-1] if messages else "")

    def signal(self, signum: int) -> None:
        if self.process is not None and self.process.returncode is None:
            self.process.send_signal(signum)


async def _collect(stream: trio.abc.ReceiveStream | None, into: list[bytes]) -> None:
    into.append(await _read_all(stream))


async def run_simulation(args: argparse.Namespace) -> None:
    """Run ``banking simulate`` as parsed, print the report(s).

    Raises:
        StoreUnavailable: the database could not be reached at the start.
        SimulationFailed: another process ended in error (after the report).
    """
    config = SimulationConfig(
        accounts=args.accounts, rate=args.rate, duration=args.duration, seed=args.seed, use=args.use
    )
    journal = Journal(args.journal) if args.journal else None
    children = [_Child(child_arguments(args, index)) for index in range(1, args.processes)]
    stop = trio.Event()
    report = SimulationReport()
    try:
        async with open_bank(args.dsn) as bank, trio.open_nursery() as nursery:
            nursery.start_soon(_stop_on_signal, stop, children)
            if not args.json:
                nursery.start_soon(show_progress, report, config, sys.stderr)
            async with trio.open_nursery() as work:
                for child in children:
                    work.start_soon(child.run)
                await simulate(bank, config, journal=journal, stop=stop, report=report)
            nursery.cancel_scope.cancel()
    finally:
        if journal is not None:
            journal.close()
    _print(args, report, children)


async def show_progress(report: SimulationReport, config: SimulationConfig, err: TextIO) -> None:
    """Show how far the simulation is on ``err`` until cancelled: rich's
    progress bar on a terminal (cleared at the end), else a line every
    ``PROGRESS_EVERY`` seconds. Never blocks on anything but ``err``."""
    started = trio.current_time()

    def line() -> str:
        elapsed = trio.current_time() - started
        total = report.total
        return (f"simulating: {elapsed:.0f} s of {config.duration:g} s, {total.total:,} commands answered "
                f"({total.refused:,} refused, {total.failed:,} failed)")  # fmt: skip

    if not err.isatty():
        while True:
            await trio.sleep(PROGRESS_EVERY)
            print(line(), file=err, flush=True)
    console = Console(file=err)
    columns = (TextColumn("[bold]simulating"), BarColumn(), TimeElapsedColumn(), TextColumn("{task.fields[counts]}"))
    with Progress(*columns, console=console, transient=True, auto_refresh=False) as progress:
        task = progress.add_task("simulate", total=config.duration, counts="")
        while True:
            total = report.total
            counts = f"{total.total:,} commands, {total.refused:,} refused, {total.failed:,} failed"
            elapsed = trio.current_time() - started
            progress.update(task, completed=min(elapsed, config.duration), counts=counts)
            progress.refresh()
            await trio.sleep(PROGRESS_REFRESH)


async def _stop_on_signal(stop: trio.Event, children: list[_Child]) -> None:
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async for signum in signals:
            stop.set()
            for child in children:
                child.signal(signum)


class SimulationFailed(BankingError):
    """One of the simulator processes ended in error."""


def _print(args: argparse.Namespace, report: SimulationReport, children: list[_Child]) -> None:
    if args.json:
        print(json.dumps(report.to_json()), flush=True)
        return
    if not children:
        print(report.format())
        return
    total = SimulationReport.from_json(report.to_json())
    print(f"This process:\n{report.format()}\n")
    for child in children:
        if child.report is not None and child.process is not None:
            print(f"Process {child.process.pid}:\n{child.report.format()}\n")
            total.merge(child.report)
    print(f"All processes:\n{total.format()}")
    errors = [child.error for child in children if child.error]
    if errors:
        raise SimulationFailed("; ".join(error for error in errors if error))
