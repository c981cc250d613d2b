"""Chaos: the banking simulator in several processes under faults, and the proof
that nothing was lost, doubled or let in.

``just chaos`` runs the short form (about a minute), ``just chaos --minutes N``
the long form. While two or more ``banking simulate`` processes append to one
database, the harness strikes at seeded moments: it kills a simulator with
SIGKILL and starts it again, crashes the PostgreSQL server (immediate mode)
and starts it again, terminates the bus's connections, and makes the handler
of a projection hang in the process that leads it. Afterwards it
checks that every acknowledged command's events are stored at the positions
acknowledged, that no event id is stored twice, that positions only grow and
no gap was filled later, that no balance was ever negative and the money adds
up, that every read model equals a replay from scratch with its checkpoint
at the head, and that a hung handler was cut off at its deadline. It prints
the counts and a table of the checks, and exits 1 on any violation.
"""

from ._checks import Check
from ._config import ChaosConfig
from ._harness import ChaosResult, run_chaos
from ._schedule import Fault, FaultKind, make_schedule

__all__ = ["ChaosConfig", "ChaosResult", "Check", "Fault", "FaultKind", "make_schedule", "run_chaos"]
