"""List accounts: the ``accounts`` projection and the queries that read it.

The projection applies each batch with set-based SQL: the batch is folded in
Python into one change per account (see ``core.summarize``), then ONE
``INSERT ... SELECT FROM unnest(...)`` adds the accounts the batch opens and
ONE ``UPDATE ... FROM unnest(...)`` moves the balances, times and statuses of
the others. Two round trips per batch, whatever its size.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, Final

from apps.banking.domain import (
    ACCOUNT_EVENT_TYPES,
    AccountStatus,
    MalformedEvent,
    parse_account_id,
    parse_account_type,
    parse_currency,
)
from eventbus import Bus, EventRecord, Projection, Transaction

from .core import summarize
from .types import AccountChange, AccountRow, CurrencyTotal

NAME: Final = "accounts"
"""The projection's name; its table lives in schema ``projection_accounts``."""

BATCH_SIZE: Final = 1000
"""Events folded into one transaction, at most."""

_SETUP = """
CREATE TABLE IF NOT EXISTS accounts (
    id         text PRIMARY KEY,
    owner      text NOT NULL,
    type       text NOT NULL,
    currency   text NOT NULL,
    balance    numeric(20, 2) NOT NULL,
    opened_at  timestamptz NOT NULL,
    updated_at timestamptz NOT NULL,
    status     text NOT NULL
);
CREATE INDEX IF NOT EXISTS accounts_by_opening ON accounts (opened_at, id);
"""

_INSERT = """
INSERT INTO accounts (id, owner, type, currency, balance, opened_at, updated_at, status)
SELECT * FROM unnest($1::text[], $2::text[], $3::text[], $4::text[], $5::numeric[],
                     $6::timestamptz[], $7::timestamptz[], $8::text[])
ON CONFLICT (id) DO NOTHING
"""

_EXISTING = "SELECT id FROM accounts WHERE id = ANY($1::text[])"

_UPDATE = """
UPDATE accounts AS a
SET balance = a.balance + c.delta,
    updated_at = c.updated_at,
    status = CASE WHEN c.closed THEN 'closed' ELSE a.status END
FROM unnest($1::text[], $2::numeric[], $3::timestamptz[], $4::bool[]) AS c (id, delta, updated_at, closed)
WHERE a.id = c.id
"""

_COLUMNS = "id, owner, type, currency, balance, opened_at, updated_at, status"


async def setup(tx: Transaction) -> None:
    """Create the ``accounts`` table if missing."""
    await tx.execute(_SETUP)


async def apply_batch(tx: Transaction, records: list[EventRecord]) -> None:
    """Apply a batch of events: one insert for new accounts, one update for the rest.

    Raises:
        MalformedEvent: an event that is not the bank's, or not as the bank
            writes it (the projection sends it to the dead letters with this
            reason, see ``PROJECTION``): without the bank's payload fields, of
            an account that was never opened, or opening one that is open already.
    """
    changes = summarize(records)
    opened = [change for change in changes.values() if change.opening is not None]
    changed = [change for change in changes.values() if change.opening is None]
    if opened:
        status = await tx.execute(_INSERT, *_insert_columns(opened))
        if status != f"INSERT 0 {len(opened)}":
            taken = await tx.fetch(_EXISTING, [change.account_id for change in opened])
            raise MalformedEvent(_foreign(records, {row["id"] for row in taken}, "opens account", "open already"))
    if changed:
        status = await tx.execute(_UPDATE, *_update_columns(changed))
        if status != f"UPDATE {len(changed)}":
            ids = [change.account_id for change in changed]
            known = {row["id"] for row in await tx.fetch(_EXISTING, ids)}
            unknown = {account_id for account_id in ids if account_id not in known}
            raise MalformedEvent(_foreign(records, unknown, "is about account", "never opened"))


def _foreign(records: list[EventRecord], accounts: set[str], verb: str, state: str) -> str:
    """Why a batch cannot be applied: the first event about ``accounts``, which are ``state``."""
    for record in records:
        payload = record.payload
        for key in ("accountId", "fromAccountId", "toAccountId"):
            account = payload.get(key)
            if isinstance(account, str) and account in accounts:
                return (
                    f"{record.event_type} event {record.event_id} at position {record.sequence_number} "
                    f"{verb} {account!r}, which was {state}: not an event the bank wrote"
                )
    return f"events about accounts {', '.join(sorted(accounts)[:5])}, which were {state}"


def _insert_columns(opened: Sequence[AccountChange]) -> list[list[Any]]:
    columns: list[list[Any]] = [[] for _ in range(8)]
    for change in opened:
        opening = change.opening
        assert opening is not None
        values = (
            change.account_id,
            opening.owner,
            opening.account_type.value,
            opening.currency.value,
            change.delta,
            opening.opened_at,
            change.updated_at,
            (AccountStatus.CLOSED if change.closed else AccountStatus.OPEN).value,
        )
        for column, value in zip(columns, values, strict=True):
            column.append(value)
    return columns


def _update_columns(changed: Sequence[AccountChange]) -> list[list[Any]]:
    return [
        [change.account_id for change in changed],
        [change.delta for change in changed],
        [change.updated_at for change in changed],
        [change.closed for change in changed],
    ]


PROJECTION: Final = Projection(
    name=NAME,
    setup=setup,
    batch_size=BATCH_SIZE,
    batch_handler=apply_batch,
    event_types=ACCOUNT_EVENT_TYPES,
    on_error="skip",
)
"""The ``accounts`` read model; start it with ``bus.projections.start(PROJECTION)``.

An event it cannot apply (not the bank's, or not as the bank writes it) goes
to the dead letters (``eventbus.dead_letters``) with the reason, and the read
model goes on with the next: one stray event never stops it."""


# ------------------------------------------------------------------ queries


def _row(record: Any) -> AccountRow:
    return AccountRow(
        account_id=record["id"],
        owner=record["owner"],
        account_type=parse_account_type(record["type"]),
        currency=parse_currency(record["currency"]),
        balance=record["balance"],
        opened_at=record["opened_at"],
        updated_at=record["updated_at"],
        status=AccountStatus(record["status"]),
    )


async def list_accounts(
    bus: Bus, *, status: AccountStatus | None = None, limit: int | None = None, offset: int = 0
) -> list[AccountRow]:
    """Accounts in the order they were opened, as the read model holds them now.

    The read model follows the events a moment behind; wait with
    ``bus.projections.wait_until_caught_up("accounts")`` to see your own
    writes. Blocks for one query on a pooled connection.

    Args:
        status: only open (or only closed) accounts; None for all.
        limit: at most this many; None for all.
        offset: skip this many first.
    """
    async with bus.projections.reader(NAME) as tx:
        rows = await tx.fetch(
            f"SELECT {_COLUMNS} FROM accounts WHERE ($1::text IS NULL OR status = $1) "
            "ORDER BY opened_at, id LIMIT $2 OFFSET $3",
            None if status is None else status.value,
            limit,
            offset,
        )
    return [_row(row) for row in rows]


async def latest_accounts(bus: Bus, count: int) -> list[AccountRow]:
    """The ``count`` accounts opened last, in the order they were opened.

    Blocks for one query on a pooled connection, which reads ``count`` rows
    of the opening index from its end, however many accounts there are.
    """
    async with bus.projections.reader(NAME) as tx:
        rows = await tx.fetch(f"SELECT {_COLUMNS} FROM accounts ORDER BY opened_at DESC, id DESC LIMIT $1", count)
    return [_row(row) for row in reversed(rows)]


async def get(bus: Bus, account_id: str) -> AccountRow | None:
    """One account as the read model holds it now, or None if it holds no such account.

    Blocks for one query on a pooled connection.

    Raises:
        InvalidAccountId: ``account_id`` cannot be an account id.
    """
    account_id = parse_account_id(account_id)
    async with bus.projections.reader(NAME) as tx:
        row = await tx.fetchrow(f"SELECT {_COLUMNS} FROM accounts WHERE id = $1", account_id)
    return None if row is None else _row(row)


async def totals(bus: Bus) -> list[CurrencyTotal]:
    """Per currency: accounts, open accounts and the money they hold, from the read model.

    Blocks for one query on a pooled connection.
    """
    async with bus.projections.reader(NAME) as tx:
        rows = await tx.fetch(
            "SELECT currency, count(*) AS accounts, count(*) FILTER (WHERE status = 'open') AS open_accounts, "
            "sum(balance) AS balance FROM accounts GROUP BY currency ORDER BY currency"
        )
    return [
        CurrencyTotal(currency=parse_currency(currency), accounts=accounts, open_accounts=open_, balance=balance)
        for currency, accounts, open_, balance in rows
    ]
