"""Withdraw: the shell. Reads every event of the account, decides, appends on what it read."""

from __future__ import annotations

from apps.banking.execution import Decider, EventLog, execute
from eventbus import EventRecord

from . import core
from .types import Withdraw, WithdrawState

DECIDER: Decider[Withdraw, WithdrawState] = Decider(core.boundary, core.initial_state, core.evolve, core.decide)
"""The slice's pure core, as :func:`~apps.banking.execution.execute` takes it."""


async def withdraw(log: EventLog, command: Withdraw) -> list[EventRecord]:
    """Withdraw from the account of ``command``, never below zero.

    Blocks for a query and an append per attempt; any change to the account
    between the two makes it decide again on the new balance.

    Returns:
        The ``MoneyWithdrawn`` record.

    Raises:
        UnknownAccount, AccountClosed, CurrencyMismatch, InsufficientFunds:
            refused; nothing is written.
        Contention, StoreUnavailable: see :func:`apps.banking.execution.execute`.
    """
    return await execute(log, DECIDER, command)
