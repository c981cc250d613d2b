"""What a chaos run prints at the end: the counts and the table of checks."""

from __future__ import annotations

import collections
from collections.abc import Sequence

import attrs

from apps.banking.simulate import KINDS, Outcomes

from ._checks import Check
from ._config import ChaosConfig
from ._processes import Incarnation


def _n(count: int) -> str:
    return f"{count:,}".replace(",", " ")


@attrs.frozen
class FaultCounts:
    """The faults that struck."""

    kills: int = 0
    projector_kills: int = 0
    hangs: int = 0
    postmaster_kills: int = 0
    first_starts: int = 0
    restarts: int = 0
    terminations: int = 0
    terminated: int = 0
    standby_restarts: int = 0


@attrs.frozen
class Figures:
    """Everything a run counts, for the summary."""

    config: ChaosConfig
    faults: FaultCounts
    incarnations: tuple[Incarnation, ...]
    events: int
    head: int
    elapsed: float

    @property
    def acknowledged(self) -> collections.Counter[str]:
        """Acknowledged commands by kind, from every run's journal (killed runs' too)."""
        kinds: collections.Counter[str] = collections.Counter()
        for incarnation in self.incarnations:
            kinds.update(str(line["kind"]) for line in incarnation.journal_lines())
        return kinds

    @property
    def journaled_events(self) -> int:
        """Events of acknowledged commands."""
        return sum(len(line["event_ids"]) for i in self.incarnations for line in i.journal_lines())

    @property
    def reported(self) -> list[Incarnation]:
        """The runs that stopped and reported."""
        return [incarnation for incarnation in self.incarnations if incarnation.report is not None]

    def outcomes(self) -> dict[str, Outcomes]:
        """Refused and failed commands by kind, summed over the reports."""
        total = {kind: Outcomes() for kind in KINDS}
        for incarnation in self.reported:
            assert incarnation.report is not None
            for kind, outcomes in incarnation.report.kinds.items():
                mine = total.setdefault(kind, Outcomes())
                mine.refused += outcomes.refused
                mine.failed += outcomes.failed
        return total

    def errors(self) -> tuple[collections.Counter[str], collections.Counter[str]]:
        """Refusals and failures by the error's name, summed over the reports."""
        refusals: collections.Counter[str] = collections.Counter()
        failures: collections.Counter[str] = collections.Counter()
        for incarnation in self.reported:
            assert incarnation.report is not None
            refusals.update(incarnation.report.refusals)
            failures.update(incarnation.report.failures)
        return refusals, failures


def _counts(counter: collections.Counter[str]) -> str:
    return ", ".join(f"{name} {_n(count)}" for name, count in counter.most_common()) or "none"


def format_summary(figures: Figures, checks: Sequence[Check]) -> str:
    """The summary table a run ends with."""
    config, faults = figures.config, figures.faults
    first_starts = config.first_start_faults
    acknowledged = figures.acknowledged
    outcomes = figures.outcomes()
    refusals, failures = figures.errors()
    runs = collections.Counter(incarnation.outcome for incarnation in figures.incarnations)
    unacknowledged = figures.events - figures.journaled_events
    lines = [
        "",
        "=" * 78,
        f"Chaos run, seed {config.seed}: {config.load_seconds:.0f} s of load in {config.processes} simulator "
        f"processes at {config.rate:g} commands/s each ({figures.elapsed:.0f} s in all)",
        "=" * 78,
        "",
        "Faults",
        f"  {'process kills (SIGKILL, then started again)':<46}{_n(faults.kills):>10}",
        f"  {'projectors holding partitions killed (SIGKILL)':<46}{_n(faults.projector_kills):>10}",
        f"  {'server restarts (immediate mode: a crash)':<46}{_n(faults.restarts):>10}",
        f"  {'connection terminations (pg_terminate_backend)':<46}{_n(faults.terminations):>10}"
        f"   ({_n(faults.terminated)} connections ended)",
        f"  {'postmasters killed (SIGKILL, then started)':<46}{_n(faults.postmaster_kills):>10}",
        f"  {'handler hangs (the leading projector)':<46}{_n(faults.hangs):>10}",
        *([f"  {'first starts killed during initdb':<46}{_n(faults.first_starts):>10}"] if first_starts else []),
        f"  {'hot standby restarts (immediate mode)':<46}{_n(faults.standby_restarts):>10}",
        "",
        f"Commands   {'acknowledged':>14}{'refused':>10}{'failed':>10}",
    ]
    total = Outcomes()
    for kind in KINDS:
        mine = outcomes.get(kind, Outcomes())
        total.acknowledged += acknowledged[kind]
        total.refused += mine.refused
        total.failed += mine.failed
        lines.append(f"  {kind:<9}{_n(acknowledged[kind]):>14}{_n(mine.refused):>10}{_n(mine.failed):>10}")
    lines += [
        f"  {'total':<9}{_n(total.acknowledged):>14}{_n(total.refused):>10}{_n(total.failed):>10}",
        "  acknowledged: every run's journal; refused and failed: the reports of the "
        f"{len(figures.reported)} runs that stopped and reported (simulator 0 runs throughout; "
        "a killed run reports nothing)",
        f"  refused: {_counts(refusals)}",
        f"  failed: {_counts(failures)}",
        "",
        f"Simulator runs: {_n(len(figures.incarnations))} ("
        + ", ".join(f"{outcome} {_n(count)}" for outcome, count in sorted(runs.items()))
        + ")",
        f"Store: {_n(figures.events)} events, head at {_n(figures.head)} "
        f"({_n(figures.head - figures.events)} positions left unused by appends that did not commit); "
        f"{_n(max(0, unacknowledged))} events stored without an acknowledgment (commands under way when "
        "their process was killed or their connection lost)",
        "",
    ]
    width = max(len(check.name) for check in checks) + 2
    lines.append(f"{'Check':<{width}}{'result':<14}detail")
    for check in checks:
        result = "ok" if check.ok else f"FAILED {check.count}"
        lines.append(f"{check.name:<{width}}{result:<14}{check.detail}")
        lines += [f"    - {problem}" for problem in check.problems]
        if check.count > len(check.problems):
            lines.append(f"    - ... and {_n(check.count - len(check.problems))} more")
    violations = sum(check.count for check in checks)
    lines.append("")
    lines.append("RESULT: no violation" if not violations else f"RESULT: {_n(violations)} violations")
    return "\n".join(lines)
