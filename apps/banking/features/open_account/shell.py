"""Open an account: the shell. Reads whether the id is taken, decides, appends on what it read."""

from __future__ import annotations

from apps.banking.execution import Decider, EventLog, execute
from eventbus import EventRecord

from . import core
from .types import OpenAccount, OpenAccountState

DECIDER: Decider[OpenAccount, OpenAccountState] = Decider(core.boundary, core.initial_state, core.evolve, core.decide)
"""The slice's pure core, as :func:`~apps.banking.execution.execute` takes it."""


async def open_account(log: EventLog, command: OpenAccount) -> list[EventRecord]:
    """Open the account of ``command``, with its first deposit if it has one.

    Blocks for a query and an append (more when another command opens the
    same id at once). Running the same command again returns the stored
    records and stores nothing.

    Returns:
        The ``BankAccountOpened`` record, then the ``MoneyDeposited`` one if any.

    Raises:
        AccountAlreadyExists: another command opened this id.
        Contention, StoreUnavailable: see :func:`apps.banking.execution.execute`.
    """
    return await execute(log, DECIDER, command)
