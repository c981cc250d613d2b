"""Transfer: the shell. Reads every event of both accounts, decides, appends on what it read."""

from __future__ import annotations

from apps.banking.execution import Decider, EventLog, execute
from eventbus import EventRecord

from . import core
from .types import Transfer, TransferState

DECIDER: Decider[Transfer, TransferState] = Decider(core.boundary, core.initial_state, core.evolve, core.decide)
"""The slice's pure core, as :func:`~apps.banking.execution.execute` takes it."""


async def transfer(log: EventLog, command: Transfer) -> list[EventRecord]:
    """Move money between the two accounts of ``command``.

    Blocks for a query and an append per attempt; any change to either
    account between the two makes it decide again.

    Returns:
        The ``MoneyTransferred`` record.

    Raises:
        UnknownAccount, AccountClosed, CurrencyMismatch, InsufficientFunds:
            refused; nothing is written.
        Contention, StoreUnavailable: see :func:`apps.banking.execution.execute`.
    """
    return await execute(log, DECIDER, command)
