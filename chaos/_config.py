"""What a chaos run does: how long, how many simulators, how hard, which seed."""

from __future__ import annotations

from pathlib import Path
from typing import Final

import attrs

SHORT_LOAD: Final = 40.0
"""Seconds of load in the short form (``just chaos``): about a minute in all."""

SHORT_QUIET: Final = 10.0
"""Seconds at the end of the short form's load without faults, for the system to settle."""

LONG_QUIET: Final = 20.0
"""The same for the long form (``--minutes N``)."""

WARM_UP: Final = 2.0
"""Seconds of load before the first fault can strike."""

SHORT_FAULT_INTERVAL: Final = 3.0
"""Mean seconds between faults in the short form."""

LONG_FAULT_INTERVAL: Final = 5.0
"""Mean seconds between faults in the long form."""


@attrs.frozen(kw_only=True)
class ChaosConfig:
    """One chaos run.

    Attributes:
        seed: every random choice of the run follows from it (the faults'
            moments and targets, the simulators' seeds).
        load_seconds: how long the simulators run.
        quiet_seconds: the end of the load, without faults.
        mean_fault_interval: mean seconds between faults.
        processes: simulator processes (all but the first are killed and started again).
        rate: commands per second each simulator issues.
        accounts: accounts each simulator opens when it starts.
        admin_dsn: a server to use (a fresh database is made on it and the
            server is never restarted); None runs an embedded server of the
            run's own.
        workdir: where journals, logs and the embedded server's data go;
            None for a temporary folder, removed after a run without violations.
        keep: keep the folder (and the database) even when nothing was found.
        first_start_faults: also kill first starts of the embedded server
            during initdb, aside from the run's server (see ``_first_start``).
    """

    seed: int
    load_seconds: float = attrs.field(default=SHORT_LOAD, validator=attrs.validators.gt(0))
    quiet_seconds: float = attrs.field(default=SHORT_QUIET, validator=attrs.validators.ge(0))
    mean_fault_interval: float = attrs.field(default=SHORT_FAULT_INTERVAL, validator=attrs.validators.gt(0))
    processes: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    rate: float = attrs.field(default=80.0, validator=attrs.validators.gt(0))
    accounts: int = attrs.field(default=20, validator=attrs.validators.ge(1))
    admin_dsn: str | None = None
    workdir: Path | None = None
    keep: bool = False
    first_start_faults: bool = False

    def for_minutes(self, minutes: float) -> ChaosConfig:
        """The long form of this run: ``minutes`` of load, a fault every few seconds."""
        load = minutes * 60.0
        return attrs.evolve(
            self,
            load_seconds=load,
            quiet_seconds=min(LONG_QUIET, load / 4),
            mean_fault_interval=LONG_FAULT_INTERVAL,
        )

    @property
    def fault_window(self) -> tuple[float, float]:
        """Seconds after the load began between which faults strike."""
        return WARM_UP, max(WARM_UP, self.load_seconds - self.quiet_seconds)
