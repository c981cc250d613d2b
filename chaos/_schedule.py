"""The faults of a run and when they strike: drawn from the seed alone.

The schedule depends on nothing but the seed and the run's shape (its length,
its number of simulators, whether the server may be restarted, whether first
starts are to be killed), so the same
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
    HANG = "hang"
    """The ledger projection's handler hangs in the projector that leads it, for a while."""
    POSTMASTER = "postmaster"
    """SIGKILL the server's postmaster (its backends are left behind), then start it again."""
    FIRST_START = "first_start"
    """Aside from the run's server: kill a first start in embedded mode while initdb
    runs (SIGKILL or SIGTERM), start again, and check the server it makes."""
    STANDBY = "standby"
    """Crash the hot standby (immediate mode) and start it again: its reads go to the primary meanwhile."""
    KILL_PROJECTOR = "kill_projector"
    """SIGKILL a projector that holds partitions of ``chaos_parts`` (one that may
    lead the ledger too), then start it again: the other takes its partitions
    once their leases expire, and gives them back when it returns."""


DECK: Final = (
    FaultKind.KILL,
    FaultKind.KILL,
    FaultKind.KILL_PROJECTOR,
    FaultKind.KILL_PROJECTOR,
    FaultKind.TERMINATE,
    FaultKind.TERMINATE,
    FaultKind.RESTART,
    FaultKind.POSTMASTER,
    FaultKind.HANG,
)
"""Faults are dealt from shuffled decks of these: every kind comes up early, in fixed proportions."""

OWN_SERVER: Final = frozenset({FaultKind.RESTART, FaultKind.POSTMASTER})
"""Faults only a server of the run's own suffers."""

FIRST_START_DECK: Final = (FaultKind.FIRST_START,)
"""Added to the deck when first starts are to be killed (``--first-start-faults``)."""

FIRST_START_SIGNALS: Final = ("SIGKILL", "SIGTERM")
"""How a first start is killed: as the OOM killer does, as ``docker stop`` and systemd do."""


@attrs.frozen
class Fault:
    """One fault of the schedule.

    Attributes:
        at: seconds after the load began.
        kind: what to do.
        slot: the simulator to kill (``KILL`` only).
        group: the description of the connections to end (``TERMINATE`` only),
            a key of ``CONNECTION_GROUPS``.
        signal: the signal's name (``FIRST_START`` only), one of ``FIRST_START_SIGNALS``.
    """

    at: float
    kind: FaultKind
    slot: int | None = None
    group: str | None = None
    signal: str | None = None

    def describe(self) -> str:
        """The fault in a few words, for the run's log."""
        match self.kind:
            case FaultKind.KILL:
                return f"kill simulator {self.slot}"
            case FaultKind.RESTART:
                return "restart the server (immediate mode)"
            case FaultKind.TERMINATE:
                return f"terminate {self.group}"
            case FaultKind.HANG:
                return "hang the ledger's handler in the projector that leads it"
            case FaultKind.POSTMASTER:
                return "kill the server's postmaster (SIGKILL)"
            case FaultKind.FIRST_START:
                return f"kill a first start during initdb ({self.signal})"
            case FaultKind.STANDBY:
                return "restart the hot standby (immediate mode)"
            case FaultKind.KILL_PROJECTOR:
                return "kill a projector that holds partitions"


def make_schedule(
    seed: int,
    *,
    start: float,
    end: float,
    mean_interval: float,
    slots: int,
    server_restarts: bool,
    first_starts: bool = False,
    standby: bool = False,
) -> list[Fault]:
    """The faults of a run, in time order, between ``start`` and ``end`` seconds.

    Gaps between faults are uniform between half and one and a half
    ``mean_interval``. Without ``server_restarts`` (an external server) the
    deck holds none of ``OWN_SERVER``; with ``first_starts`` it also holds
    ``FIRST_START_DECK``; with ``standby`` (the run has a hot standby) it
    holds one standby restart too.
    """
    if mean_interval <= 0 or slots < 1:
        raise ValueError("mean_interval must be positive and there must be a simulator to kill")
    rng = random.Random(seed)  # noqa: S311 - a schedule, not secrecy
    kinds = [kind for kind in DECK if server_restarts or kind not in OWN_SERVER]
    if first_starts:
        kinds += FIRST_START_DECK
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
        elif kind is FaultKind.FIRST_START:
            faults.append(Fault(moment, kind, signal=rng.choice(FIRST_START_SIGNALS)))
        else:
            faults.append(Fault(moment, kind))
    return faults
