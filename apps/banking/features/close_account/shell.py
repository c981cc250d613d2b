"""Close an account: the shell. Reads every event of the account, decides, appends on what it read."""

from __future__ import annotations

from apps.banking.execution import Decider, EventLog, execute
from eventbus import EventRecord

from . import core
from .types import CloseAccount, CloseAccountState

DECIDER: Decider[CloseAccount, CloseAccountState] = Decider(core.boundary, core.initial_state, core.evolve, core.decide)
"""The slice's pure core, as :func:`~apps.banking.execution.execute` takes it."""


async def close_account(log: EventLog, command: CloseAccount) -> list[EventRecord]:
    """Close the account of ``command``; only a zero balance closes.

    Blocks for a query and an append per attempt; money arriving between the
    two makes it decide again (and refuse).

    Returns:
        The ``BankAccountClosed`` record.

    Raises:
        UnknownAccount, AccountClosed, AccountNotEmpty: refused; nothing is written.
        Contention, StoreUnavailable: see :func:`apps.banking.execution.execute`.
    """
    return await execute(log, DECIDER, command)
