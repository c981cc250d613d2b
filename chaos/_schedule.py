"""The faults of a run and when they strike: drawn from the seed alone.

The schedule depends on nothing but the seed and the run's shape (its length,
its number of simulators, whether the server may be restarted), so the same
command line strikes the same faults at the same moments: a run that found a
violation can be run again. Nothing here does I/O.
"""

from __future__ import annotations

import enum
import random
from typing import Final

import attrs

MAX_FAULTS: Final = 100_000
"""Faults in one schedule, at most (a bound, never reached in practice)."""

CONNECTION_GROUPS: Final = {
    "every bus connection": "eventbus%",
    "the store's write connections": "eventbus-store",
    "the read pools": "eventbus-read",
    "the listeners": "eventbus-listen",
    "the projections": "eventbus-projection %",
}
"""Which connections a termination ends: a description and its ``application_name`` pattern (LIKE)."""

GROUP_WEIGHTS: Final = {
    "every bus connection": 2,
    "the store's write connections": 2,
    "the read pools": 1,
    "the listeners": 1,
    "the projections": 3,
}
"""How often each group is chosen. The projections most: ending a leader's
connection between its read model's commit and its checkpoint is where
exactly-once breaks if it breaks."""


class FaultKind(enum.StrEnum):
    """What the harness does to the system."""

    KILL = "kill"
    """SIGKILL one simulator process, then start it again (never simulator 0, when there are others)."""
    RESTART = "restart"
    """Restart the PostgreSQL server in immediate mode: a crash, as PostgreSQL sees it."""
    TERMINATE = "terminate"
    """``pg_terminate_backend`` on the bus's connections of one group."""
    STANDBY = "standby"
    """Crash the hot standby (immediate mode) and start it again: its reads go to the primary meanwhile."""


DECK: Final = (FaultKind.KILL, FaultKind.KILL, FaultKind.TERMINATE, FaultKind.TERMINATE, FaultKind.RESTART)
"""Faults are dealt from shuffled decks of these: every kind comes up early, in fixed proportions."""


@attrs.frozen
class Fault:
    """One fault of the schedule.

    Attributes:
        at: seconds after the load began.
        kind: what to do.
        slot: the simulator to kill (``KILL`` only).
        group: the description of the connections to end (``TERMINATE`` only),
            a key of ``CONNECTION_GROUPS``.
    """

    at: float
    kind: FaultKind
    slot: int | None = None
    group: str | None = None

    def describe(self) -> str:
        """The fault in a few words, for the run's log."""
        match self.kind:
            case FaultKind.KILL:
                return f"kill simulator {self.slot}"
            case FaultKind.RESTART:
                return "restart the server (immediate mode)"
            case FaultKind.TERMINATE:
                return f"terminate {self.group}"
            case FaultKind.STANDBY:
                return "restart the hot standby (immediate mode)"


def make_schedule(
    seed: int,
    *,
    start: float,
    end: float,
    mean_interval: float,
    slots: int,
    server_restarts: bool,
    standby: bool = False,
) -> list[Fault]:
    """The faults of a run, in time order, between ``start`` and ``end`` seconds.

    Gaps between faults are uniform between half and one and a half
    ``mean_interval``. Without ``server_restarts`` (an external server) the
    deck holds no restart; with ``standby`` (the run has a hot standby) it
    holds one standby restart too.
    """
    if mean_interval <= 0 or slots < 1:
        raise ValueError("mean_interval must be positive and there must be a simulator to kill")
    rng = random.Random(seed)  # noqa: S311 - a schedule, not secrecy
    kinds = [kind for kind in DECK if server_restarts or kind is not FaultKind.RESTART]
    if standby:
        kinds.append(FaultKind.STANDBY)
    deck: list[FaultKind] = []
    faults: list[Fault] = []
    at = start
    for _ in range(MAX_FAULTS):
        at += rng.uniform(0.5, 1.5) * mean_interval
        if at > end:
            break
        if not deck:
            deck = list(kinds)
            rng.shuffle(deck)
        kind = deck.pop()
        moment = round(at, 1)
        if kind is FaultKind.KILL:
            # Simulator 0 is never killed (when there are others): its report
            # covers the whole run, every refusal and failure included.
            faults.append(Fault(moment, kind, slot=rng.randrange(1, slots) if slots > 1 else 0))
        elif kind is FaultKind.TERMINATE:
            group = rng.choices(list(GROUP_WEIGHTS), weights=list(GROUP_WEIGHTS.values()))[0]
            faults.append(Fault(moment, kind, group=group))
        else:
            faults.append(Fault(moment, kind))
    return faults
