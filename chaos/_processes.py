"""The processes of a chaos run: the simulators, each in a slot that starts it
again whenever it ends, and the reader.

Every simulator run (an *incarnation*) is ``python -m apps.banking simulate``
with a journal, a log of its standard output and one of its standard error,
all in the run's folder. The database comes through ``EVENTBUS_DSN``, never
on the command line, so that its password shows in no process listing.
"""

from __future__ import annotations

import enum
import json
import os
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any, Final

import attrs
import trio

from apps.banking.journal import Journal
from apps.banking.simulate import SimulationReport

from ._reader import FINISH_TIMEOUT

ROOT: Final = Path(__file__).resolve().parent.parent
"""The project's folder: the processes run from there."""

STOP_TIMEOUT: Final = 120.0
"""Seconds a simulator has, after SIGTERM, to finish its commands under way and report
(up to 256 of them, on a machine that may be saturated)."""

KILL_TIMEOUT: Final = 10.0
"""Seconds a process has to vanish after SIGKILL."""

RESTART_DELAY: Final = 1.0
"""Seconds before a simulator that ended on its own is started again."""

READY_TIMEOUT: Final = 60.0
"""Seconds the reader has to open its bus."""

LIFETIME_MARGIN: Final = 120.0
"""Seconds every process outlives the planned end of the run, at most: each
stops by itself even if the harness is gone."""

MAX_INCARNATIONS: Final = 10_000
"""Simulator runs per slot, at most."""

EXIT_UNAVAILABLE: Final = 3
"""``banking``'s exit status when the database could not be reached."""


class Outcome(enum.StrEnum):
    """How a simulator run ended."""

    RUNNING = "running"
    STOPPED = "stopped"
    """Asked to stop (or its time was up): it finished its commands and reported."""
    UNREPORTED = "stopped before it was under way"
    """Asked to stop before it caught signals: it ended without a report (and journaled nothing)."""
    KILLED = "killed"
    """Killed with SIGKILL by the harness."""
    UNAVAILABLE = "could not start"
    """Could not reach the database at start (exit status 3, nothing journaled)."""
    CRASHED = "ended on its own"
    """Anything else: a violation."""
    HUNG = "did not stop in time"
    """Ignored the stop signal for ``STOP_TIMEOUT`` seconds: a violation."""


@attrs.define
class Incarnation:
    """One run of a simulator process."""

    slot: int
    number: int
    seed: int
    journal: Path
    stdout: Path
    stderr: Path
    process: trio.Process | None = None
    outcome: Outcome = Outcome.RUNNING
    status: int | None = None
    report: SimulationReport | None = None
    killed: bool = False
    _lines: list[dict[str, Any]] | None = attrs.field(default=None, init=False, repr=False)

    @property
    def name(self) -> str:
        """``simulator 1 run 2``."""
        return f"simulator {self.slot} run {self.number}"

    def journal_lines(self) -> list[dict[str, Any]]:
        """The commands it journaled (none if it never opened its journal); read
        once after the run has ended."""
        if self._lines is not None:
            return self._lines
        lines = list(Journal.read(self.journal)) if self.journal.exists() else []
        if self.outcome is not Outcome.RUNNING:
            self._lines = lines
        return lines

    def last_error(self) -> str:
        """The last line it wrote to standard error, if any."""
        lines = [line for line in _tail(self.stderr).splitlines() if line.strip()]
        return lines[-1].strip() if lines else ""


def _tail(path: Path, size: int = 8192) -> str:
    try:
        with path.open("rb") as handle:
            handle.seek(max(0, path.stat().st_size - size))
            return handle.read().decode(errors="replace")
    except FileNotFoundError:
        return ""


REPLICA_VARIABLE: Final = "CHAOS_REPLICA_DSN"
"""Where the reader finds the standby's connection string (never on a command line)."""


def _environment(dsn: str, replica_dsn: str | None = None) -> dict[str, str]:
    drop = ("DATABASE_URL", "EVENTBUS_DSN", REPLICA_VARIABLE)
    env = {name: value for name, value in os.environ.items() if name not in drop}
    env["EVENTBUS_DSN"] = dsn
    if replica_dsn is not None:
        env[REPLICA_VARIABLE] = replica_dsn
    return env


async def _spawn(
    argv: list[str], dsn: str, stdout: Path | int, stderr: Path, replica_dsn: str | None = None
) -> trio.Process:
    env = _environment(dsn, replica_dsn)
    with stderr.open("ab") as err:
        if isinstance(stdout, Path):
            with stdout.open("ab") as out:
                return await trio.lowlevel.open_process(argv, stdout=out, stderr=err, cwd=ROOT, env=env)
        return await trio.lowlevel.open_process(argv, stdout=stdout, stderr=err, cwd=ROOT, env=env)


class SimulatorSlot:
    """One simulator process, started again whenever it ends until the slot is stopped.

    Args:
        index: the slot's number (0-based).
        dsn: the database.
        folder: where journals and logs go.
        seed: the run's seed (each run's seed follows from it, the slot and the run's number).
        accounts, rate: as ``banking simulate`` takes them.
        end: when (Trio time) the load is to end; each run's ``--duration``
            reaches past it by ``LIFETIME_MARGIN``.
    """

    def __init__(
        self,
        index: int,
        *,
        dsn: str,
        folder: Path,
        seed: int,
        accounts: int,
        rate: float,
        end: float,
    ) -> None:
        self.index = index
        self._dsn = dsn
        self._folder = folder
        self._seed = seed
        self._accounts = accounts
        self._rate = rate
        self._end = end
        self.incarnations: list[Incarnation] = []
        self._stopping = False
        self._done = trio.Event()

    @property
    def current(self) -> Incarnation | None:
        """The run under way, if any."""
        last = self.incarnations[-1] if self.incarnations else None
        return last if last is not None and last.outcome is Outcome.RUNNING else None

    def _argv(self, incarnation: Incarnation) -> list[str]:
        duration = max(1.0, self._end - trio.current_time()) + LIFETIME_MARGIN
        return [
            sys.executable, "-m", "apps.banking", "simulate",
            "--accounts", str(self._accounts),
            "--rate", repr(self._rate),
            "--duration", f"{duration:.1f}",
            "--seed", str(incarnation.seed),
            "--journal", str(incarnation.journal),
            "--json",
        ]  # fmt: skip

    async def _start(self, number: int) -> Incarnation:
        stem = self._folder / f"simulator-{self.index}-run-{number}"
        incarnation = Incarnation(
            slot=self.index,
            number=number,
            seed=self._seed * 10_000 + self.index * 1_000 + number,
            journal=stem.with_suffix(".journal.jsonl"),
            stdout=stem.with_suffix(".out.log"),
            stderr=stem.with_suffix(".err.log"),
        )
        incarnation.process = await _spawn(self._argv(incarnation), self._dsn, incarnation.stdout, incarnation.stderr)
        self.incarnations.append(incarnation)
        return incarnation

    async def supervise(self, *, task_status: trio.TaskStatus[None] = trio.TASK_STATUS_IGNORED) -> None:
        """Run the slot: start a simulator, and again whenever one ends, until :meth:`stop`.

        ``task_status.started()`` once the first process is started.
        """
        try:
            for number in range(MAX_INCARNATIONS):
                if self._stopping:
                    break
                incarnation = await self._start(number)
                if number == 0:
                    task_status.started()
                assert incarnation.process is not None
                status = await incarnation.process.wait()
                self._finish(incarnation, status)
                if self._stopping:
                    break
                if incarnation.outcome is not Outcome.KILLED:
                    await trio.sleep(RESTART_DELAY)  # it may have met a server that is restarting
        finally:
            self._done.set()
            current = self.current
            if current is not None and current.process is not None and current.process.returncode is None:
                current.process.kill()  # cancelled: leave no process behind

    def _finish(self, incarnation: Incarnation, status: int) -> None:
        incarnation.status = status
        if incarnation.killed:
            incarnation.outcome = Outcome.KILLED
        elif status == 0:
            incarnation.report = _report(incarnation.stdout)
            incarnation.outcome = Outcome.STOPPED if incarnation.report is not None else Outcome.CRASHED
        elif self._stopping and status == -signal.SIGTERM and not incarnation.journal_lines():
            incarnation.outcome = Outcome.UNREPORTED
        elif status == EXIT_UNAVAILABLE and not incarnation.journal_lines():
            incarnation.outcome = Outcome.UNAVAILABLE
        elif incarnation.outcome is not Outcome.HUNG:
            incarnation.outcome = Outcome.CRASHED

    def kill(self) -> Incarnation | None:
        """SIGKILL the run under way (the slot starts another at once); None if there is none."""
        current = self.current
        if current is None or current.process is None or current.process.returncode is not None:
            return None
        current.killed = True
        current.process.kill()
        return current

    async def stop(self) -> None:
        """Ask the run under way to stop (SIGTERM) and start no other.

        Blocks until it has ended: at most ``STOP_TIMEOUT`` seconds, after
        which it is killed and marked ``HUNG``.
        """
        self._stopping = True
        current = self.current
        if current is not None and current.process is not None and current.process.returncode is None:
            current.process.send_signal(signal.SIGTERM)
        with trio.move_on_after(STOP_TIMEOUT):
            await self._done.wait()
            return
        current = self.current
        if current is not None and current.process is not None:
            current.outcome = Outcome.HUNG
            current.process.kill()
        with trio.move_on_after(KILL_TIMEOUT):
            await self._done.wait()


def _report(stdout: Path) -> SimulationReport | None:
    lines = [line for line in _tail(stdout, 1 << 16).splitlines() if line.strip()]
    if not lines:
        return None
    try:
        return SimulationReport.from_json(json.loads(lines[-1]))
    except (ValueError, KeyError, TypeError):
        return None


class ReaderFailed(Exception):
    """The reader process did not start."""


@attrs.frozen
class ReaderResult:
    """What the reader process saw, or why there is nothing."""

    seen: dict[str, object] | None
    problem: str | None


class ReaderProcess:
    """The reader (see ``chaos._reader``), started before the load and stopped after it."""

    def __init__(self, *, dsn: str, folder: Path, lifetime: float, replica_dsn: str | None = None) -> None:
        self._dsn = dsn
        self._replica_dsn = replica_dsn
        self.out = folder / "reader.json"
        self.stderr = folder / "reader.err.log"
        self._lifetime = lifetime
        self._process: trio.Process | None = None

    async def start(self) -> None:
        """Start the reader and wait (at most ``READY_TIMEOUT``) until its bus is open.

        Raises:
            ReaderFailed: it did not say it was ready.
        """
        argv = [sys.executable, "-m", "chaos._reader", "--out", str(self.out), "--lifetime", repr(self._lifetime)]
        process = await _spawn(argv, self._dsn, subprocess.PIPE, self.stderr, self._replica_dsn)
        self._process = process
        assert process.stdout is not None
        said = b""
        with trio.move_on_after(READY_TIMEOUT):
            while b"ready\n" not in said and len(said) < 4096:
                chunk = await process.stdout.receive_some(4096)
                if not chunk:
                    break
                said += chunk
        if b"ready\n" not in said:
            process.kill()
            raise ReaderFailed(f"the reader did not start: {_tail(self.stderr).strip()[-500:]}")

    def kill(self) -> None:
        """Kill the reader if it runs (the harness is ending early)."""
        if self._process is not None and self._process.returncode is None:
            self._process.kill()

    async def finish(self) -> ReaderResult:
        """Ask the reader to stop, wait until it has written what it saw, and read it.

        Blocks at most the reader's finishing time plus ``STOP_TIMEOUT``.
        """
        process = self._process
        assert process is not None
        process.send_signal(signal.SIGTERM)
        with trio.move_on_after(FINISH_TIMEOUT + STOP_TIMEOUT):
            await process.wait()
        if process.stdout is not None:
            await process.stdout.aclose()
        if process.returncode is None:
            process.kill()
            with trio.move_on_after(KILL_TIMEOUT):
                await process.wait()
            return ReaderResult(None, "the reader did not stop in time")
        if process.returncode != 0:
            last = _tail(self.stderr).strip().splitlines()
            return ReaderResult(None, f"the reader ended with status {process.returncode}: {last[-1] if last else ''}")
        return ReaderResult(json.loads(self.out.read_text()), None)
