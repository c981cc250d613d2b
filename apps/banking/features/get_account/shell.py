"""Read one account: the shell. Queries every event of the account and folds them."""

from __future__ import annotations

from apps.banking.domain import parse_account_id
from apps.banking.execution import EventLog

from .core import query_filter, view_account
from .types import AccountView


async def get_account(log: EventLog, account_id: str) -> AccountView:
    """The account's balance, status and history, straight from its events.

    Blocks for one query. Always current: it reads the events, not a
    projection.

    Raises:
        InvalidAccountId: ``account_id`` cannot be an account id.
        UnknownAccount: no account was opened with it.
        StoreUnavailable: the database could not be reached.
    """
    account_id = parse_account_id(account_id)
    result = await log.query(query_filter(account_id))
    return view_account(account_id, result.events)
