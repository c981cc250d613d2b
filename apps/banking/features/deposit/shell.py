"""Deposit: the shell. Reads the account's opening and closing, decides, appends on what it read."""

from __future__ import annotations

from apps.banking.execution import Decider, EventLog, execute
from eventbus import EventRecord

from . import core
from .types import Deposit, DepositState

DECIDER: Decider[Deposit, DepositState] = Decider(core.boundary, core.initial_state, core.evolve, core.decide)
"""The slice's pure core, as :func:`~apps.banking.execution.execute` takes it."""


async def deposit(log: EventLog, command: Deposit) -> list[EventRecord]:
    """Deposit into the account of ``command``.

    Blocks for a query and an append. Deposits never conflict with each
    other: only an opening or a closing of the account makes one decide again.

    Returns:
        The ``MoneyDeposited`` record.

    Raises:
        UnknownAccount, AccountClosed, CurrencyMismatch: refused; nothing is written.
        Contention, StoreUnavailable: see :func:`apps.banking.execution.execute`.
    """
    return await execute(log, DECIDER, command)
