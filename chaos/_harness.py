"""The chaos run: load, faults at seeded moments, then the checks.

1. A database of the run's own (see ``_database``) and a reader process that
   watches the store throughout (see ``_reader``).
2. ``processes`` simulators run ``banking simulate`` against it, each with
   its journal; a slot starts its simulator again whenever it ends.
3. Faults strike at the moments of the seeded schedule (see ``_schedule``):
   a simulator is killed with SIGKILL, the server crashes and restarts, the
   bus's connections are terminated, the handler of the ledger projection
   hangs in the projector process that leads it (see ``_projector``), a
   projector that holds partitions of ``chaos_parts`` is killed with SIGKILL
   and started again, the
   server's postmaster is killed with SIGKILL and started again, the hot
   standby the reader reads through (on a server of the run's own) crashes
   and restarts; with
   ``--first-start-faults`` first starts aside are killed during initdb
   (see ``_first_start``). The last stretch of the load is quiet.
4. The simulators are asked to stop (SIGTERM), finish what is under way and
   report; the reader and the projectors are asked to stop and report what
   they saw.
5. A bus of the harness's own brings the projections to the head, and the
   checks (see ``_checks``) compare journals, store, reader and read models.

Every wait is bounded; every process stops by itself even without the harness.
"""

from __future__ import annotations

import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Final, TextIO

import attrs
import trio

from eventbus import StoreUnavailable, open_event_store

from . import _checks
from ._checks import Check
from ._config import ChaosConfig
from ._database import ChaosDatabase, open_chaos_database
from ._first_start import first_start_killed
from ._inspect import StoreState, inspect
from ._processes import LIFETIME_MARGIN, ReaderProcess, ReaderResult, SimulatorSlot
from ._projector import (
    HANG_DEADLINE,
    HANG_SECONDS,
    PROJECTORS,
    SLACK,
    PartsRow,
    ProjectorProcess,
    hang_path,
    read_ledger,
    read_parts,
)
from ._report import FaultCounts, Figures, format_summary
from ._schedule import CONNECTION_GROUPS, Fault, FaultKind, make_schedule

LOG_NAME: Final = "chaos.log"
"""The run's own output, kept in its folder (and searched for the password too)."""


@attrs.frozen
class ChaosResult:
    """The outcome of a run.

    Attributes:
        checks: every check, in the order printed.
        figures: the counts.
        folder: the run's folder (removed unless kept).
        kept: whether the folder (and any database on a given server) was kept.
    """

    checks: tuple[Check, ...]
    figures: Figures
    folder: Path
    kept: bool

    @property
    def violations(self) -> int:
        """Violations found by all checks together."""
        return sum(check.count for check in self.checks)


class _Log:
    """Prints a line with the run's clock, and keeps a copy in the run's folder."""

    def __init__(self, path: Path, out: TextIO) -> None:
        self._path = path
        self._out = out
        self._begin: float | None = None

    def start_clock(self) -> None:
        self._begin = trio.current_time()

    def elapsed(self) -> float:
        return 0.0 if self._begin is None else trio.current_time() - self._begin

    def __call__(self, text: str, *, stamp: bool = True) -> None:
        if stamp and self._begin is not None:
            text = f"[{self.elapsed():7.1f} s] {text}"
        print(text, file=self._out, flush=True)
        with self._path.open("a") as handle:
            handle.write(text + "\n")


@attrs.define
class _Faults:
    """Strikes the schedule's faults and counts them."""

    database: ChaosDatabase
    slots: Sequence[SimulatorSlot]
    projectors: Sequence[ProjectorProcess]
    folder: Path
    log: _Log
    kills: int = 0
    projector_kills: int = 0
    hangs: int = 0
    first_starts: int = 0
    problems: list[str] = attrs.Factory(list)
    first_start_problems: list[str] = attrs.Factory(list)

    async def strike(self, schedule: Sequence[Fault], begin: float, last: float) -> None:
        async with trio.open_nursery() as aside:  # hangs and first starts end on their own
            for fault in schedule:
                await trio.sleep_until(begin + fault.at)
                if trio.current_time() > begin + last:
                    self.log(f"{fault.describe()}: skipped, the fault window is over")
                    continue
                await self._one(fault, aside)

    async def _first_start(self, fault: Fault) -> None:
        assert fault.signal is not None
        self.first_starts += 1
        happened, problems = await first_start_killed(self.folder, self.first_starts, fault.signal)
        self.first_start_problems += problems
        self.log(f"{fault.describe()}: {happened}")

    async def _hang(self, nursery: trio.Nursery) -> str:
        """Make the leading projector's handler hang for ``HANG_SECONDS``; who it is."""
        leaders = [p.index for p in self.projectors if (seen := p.seen()) is not None and seen.leader]
        index = leaders[0] if leaders else 0
        hang_file = hang_path(self.folder, index)
        hang_file.touch()
        self.hangs += 1

        async def lift() -> None:
            with trio.CancelScope(shield=True):
                await trio.sleep(HANG_SECONDS)
            hang_file.unlink(missing_ok=True)

        nursery.start_soon(lift)
        return f"projector {index}" + ("" if leaders else " (none led at that moment)")

    async def _kill_projector(self) -> str:
        """SIGKILL a projector that holds partitions (one whose handler does not
        hang, if any; of those, the one killed least often) and start it again;
        what happened."""
        holding = [(seen.partitions, not hang_path(self.folder, p.index).exists(), p)
                   for p in self.projectors if (seen := p.seen()) is not None and seen.partitions]  # fmt: skip
        if not holding:
            return "no projector held a partition at that moment, nothing killed"
        held, _, victim = max(holding, key=lambda item: (item[1], -item[2].kills, item[0]))
        pid = await victim.kill_and_start()
        if pid is None:
            return f"projector {victim.index} was not running"
        self.projector_kills += 1
        if victim.problem is not None:
            self.problems.append(victim.problem)
        return f"SIGKILL to projector {victim.index} (pid {pid}, holding {held} partitions); started again"

    async def _one(self, fault: Fault, nursery: trio.Nursery) -> None:
        match fault.kind:
            case FaultKind.KILL:
                assert fault.slot is not None
                victim = self.slots[fault.slot].kill()
                if victim is None:
                    self.log(f"{fault.describe()}: it is between runs, nothing to kill")
                    return
                self.kills += 1
                pid = victim.process.pid if victim.process is not None else "?"
                self.log(f"{fault.describe()}: SIGKILL to {victim.name} (pid {pid})")
            case FaultKind.RESTART:
                try:
                    took = await self.database.restart_server()
                except StoreUnavailable as exc:
                    self.problems.append(f"the server did not come back after a restart: {exc}")
                    self.log(f"{fault.describe()}: the server did not come back")
                    return
                self.log(f"{fault.describe()}: accepting connections again after {took:.1f} s")
            case FaultKind.TERMINATE:
                assert fault.group is not None
                try:
                    ended = await self.database.terminate(CONNECTION_GROUPS[fault.group])
                except StoreUnavailable as exc:
                    self.problems.append(f"could not reach the server to terminate connections: {exc}")
                    return
                self.log(f"{fault.describe()}: {ended} connections ended")
            case FaultKind.KILL_PROJECTOR:
                self.log(f"{fault.describe()}: {await self._kill_projector()}")
            case FaultKind.HANG:
                who = await self._hang(nursery)
                self.log(f"{fault.describe()}: {who}, for {HANG_SECONDS:.0f} s (its deadline: {HANG_DEADLINE:g} s)")
            case FaultKind.POSTMASTER:
                try:
                    took = await self.database.kill_postmaster()
                except StoreUnavailable as exc:
                    self.problems.append(f"the server did not come back after its postmaster was killed: {exc}")
                    self.log(f"{fault.describe()}: the server did not come back")
                    return
                self.log(f"{fault.describe()}: accepting connections again after {took:.1f} s")
            case FaultKind.FIRST_START:
                nursery.start_soon(self._first_start, fault)
            case FaultKind.STANDBY:
                try:
                    took = await self.database.restart_standby()
                except StoreUnavailable as exc:
                    self.problems.append(f"the standby did not come back after a restart: {exc}")
                    self.log(f"{fault.describe()}: the standby did not come back")
                    return
                self.log(f"{fault.describe()}: accepting connections again after {took:.1f} s")


def _counts(database: ChaosDatabase, faults: _Faults) -> FaultCounts:
    return FaultCounts(
        kills=faults.kills,
        projector_kills=faults.projector_kills,
        hangs=faults.hangs,
        postmaster_kills=database.postmaster_kills,
        first_starts=faults.first_starts,
        restarts=database.restarts,
        terminations=database.terminations,
        terminated=database.terminated,
        standby_restarts=database.standby_restarts,
    )


def _checks_of(
    slots: Sequence[SimulatorSlot],
    reader: ReaderResult,
    state: StoreState,
    database: ChaosDatabase,
    faults: _Faults,
    folder: Path,
    ledger: tuple[list[tuple[int, str]], int | None],
    parts: tuple[list[PartsRow], dict[int, int]],
) -> list[Check]:
    incarnations = [incarnation for slot in slots for incarnation in slot.incarnations]
    lines = [line for incarnation in incarnations for line in incarnation.journal_lines()]
    records = state.records
    rules, states = _checks.rules_held(records)
    checks = [
        _checks.acknowledged_are_stored(lines, records),
        _checks.ids_are_unique(records),
        _checks.positions_increase(records),
    ]
    if reader.seen is not None:
        polled, followed = reader.seen["polled"], reader.seen["followed"]
        assert isinstance(polled, dict) and isinstance(followed, dict)
        checks += [
            _checks.no_gap_filled_later(polled, records),
            _checks.subscription_saw_everything_once(followed, records),
        ]
        if database.standby is not None:
            checks.append(_checks.min_position_reads_included(reader.seen))
    else:
        checks.append(Check("the reader watched the whole run", "", (str(reader.problem),), 1))
    checks += [
        rules,
        _checks.money_adds_up(records, states, state.totals),
        _checks.accounts_model_matches(state.rows, records),
        _checks.analytics_model_matches(state.figures, records),
        _checks.checkpoints_at_head(state.checkpoints, state.head, state.not_caught_up),
        _checks.ledger_applied_once(ledger[0], ledger[1], records, state.head),
        _checks.partitions_applied_once(parts[0], parts[1], records, state.head),
        _checks.hangs_cut_off(
            [(p.index, p.seen(), p.problem) for p in faults.projectors], deadline=HANG_DEADLINE, slack=SLACK
        ),
        _checks.simulators_behaved(incarnations),
        _checks.reports_match_journals(incarnations),
        _checks.secret_never_shown(sorted(folder.rglob("*.log")), database.password),
    ]
    if faults.first_starts:
        problems = tuple(faults.first_start_problems)
        checks.append(Check("a first start killed during initdb leaves a safe server that starts",
                            f"{faults.first_starts} first starts killed", problems, len(problems)))  # fmt: skip
    if faults.problems:
        checks.append(Check("every fault struck as planned", "", tuple(faults.problems), len(faults.problems)))
    return checks


async def _load(
    config: ChaosConfig, database: ChaosDatabase, folder: Path, log: _Log, projectors: Sequence[ProjectorProcess]
) -> tuple[list[SimulatorSlot], _Faults]:
    """Run the simulators under the faults; return once they have all stopped."""
    first, last = config.fault_window
    schedule = make_schedule(
        config.seed,
        start=first,
        end=last,
        mean_interval=config.mean_fault_interval,
        slots=config.processes,
        server_restarts=database.can_restart,
        first_starts=config.first_start_faults,
        standby=database.standby is not None,
    )
    log.start_clock()
    begin = trio.current_time()
    end = begin + config.load_seconds
    slots = [
        SimulatorSlot(
            index,
            dsn=database.dsn,
            folder=folder,
            seed=config.seed,
            accounts=config.accounts,
            rate=config.rate,
            end=end,
        )
        for index in range(config.processes)
    ]
    faults = _Faults(database, slots, projectors, folder, log)
    log(f"{len(schedule)} faults scheduled between {first:.0f} s and {last:.0f} s; quiet from then on")
    async with trio.open_nursery() as nursery:
        for slot in slots:
            await nursery.start(slot.supervise)
        log(f"{config.processes} simulators started")
        await faults.strike(schedule, begin, last)
        await trio.sleep_until(end)  # the quiet stretch: the system settles under load
        log("the load is over: asking the simulators to stop")
        async with trio.open_nursery() as stopping:
            for slot in slots:
                stopping.start_soon(slot.stop)
    return slots, faults


async def run_chaos(config: ChaosConfig, *, out: TextIO) -> ChaosResult:
    """Run the chaos of ``config``, print as it goes and the summary at the end.

    Blocks for the load, the stops (each bounded) and the checks. Cancellation
    kills every process it started and stops its server.

    Raises:
        StoreUnavailable: the database could not be set up.
        ReaderFailed: the reader process did not start.
    """
    folder = config.workdir or Path(tempfile.mkdtemp(prefix="chaos-"))
    folder.mkdir(parents=True, exist_ok=True)
    log = _Log(folder / LOG_NAME, out)
    log(f"chaos: seed {config.seed}, run folder {folder}")
    started = trio.current_time()
    async with open_chaos_database(folder, config.admin_dsn, keep=config.keep) as database:
        where = "an embedded server of its own" if database.server else f"database {database.name} on the given server"
        log(f"database: {where}{'' if database.can_restart else ' (the server is not ours: no restarts)'}")
        if database.standby is not None:
            log("a hot standby of the server: the reader reads through it")
        lifetime = config.load_seconds + 2 * LIFETIME_MARGIN
        reader = ReaderProcess(dsn=database.dsn, folder=folder, lifetime=lifetime, replica_dsn=database.standby_dsn)
        projectors = [ProjectorProcess(n, dsn=database.dsn, folder=folder, lifetime=lifetime)
                      for n in range(PROJECTORS)]  # fmt: skip
        try:
            await reader.start()
            for projector in projectors:
                await projector.start()
            log(f"reader watching the store; {PROJECTORS} projectors running the ledger and chaos_parts projections")
            slots, faults = await _load(config, database, folder, log, projectors)
            log("asking the reader and the projectors to stop")
            seen = await reader.finish()
            async with trio.open_nursery() as stopping:
                for projector in projectors:
                    stopping.start_soon(projector.finish)
        finally:
            reader.kill()  # only if the run ended early: they have stopped otherwise
            for projector in projectors:
                projector.kill()
        log("checking: the projections catch up in a bus of the harness's own")
        state = await inspect(database.dsn)
        async with open_event_store(database.dsn) as store:
            ledger = await read_ledger(store)
            parts = await read_parts(store)
        checks = _checks_of(slots, seen, state, database, faults, folder, ledger, parts)
        kept = config.keep or any(not check.ok for check in checks)
        database.keep = kept
        figures = Figures(
            config=config,
            faults=_counts(database, faults),
            incarnations=tuple(incarnation for slot in slots for incarnation in slot.incarnations),
            events=len(state.records),
            head=state.head,
            elapsed=trio.current_time() - started,
        )
    log(format_summary(figures, checks), stamp=False)
    if kept:
        log(f"the run's journals, logs and data are in {folder}", stamp=False)
    elif config.workdir is None:
        shutil.rmtree(folder, ignore_errors=True)
    return ChaosResult(tuple(checks), figures, folder, kept)
