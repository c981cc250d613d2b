"""An accounts-style read model, shared by the projection benchmark and its baseline."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from decimal import Decimal
from typing import Any

SETUP_SQL = """
CREATE TABLE IF NOT EXISTS accounts (
    id text PRIMARY KEY,
    balance numeric(20, 2) NOT NULL,
    events integer NOT NULL
)
"""

UPSERT_SQL = """
INSERT INTO accounts (id, balance, events)
SELECT * FROM unnest($1::text[], $2::numeric[], $3::integer[])
ON CONFLICT (id) DO UPDATE
SET balance = accounts.balance + excluded.balance, events = accounts.events + excluded.events
"""

SIGN = {"MoneyDeposited": 1, "MoneyWithdrawn": -1}


def deltas(events: Iterable[tuple[str, Mapping[str, Any]]]) -> tuple[list[str], list[Decimal], list[int]]:
    """Per account: the change of balance and the number of events."""
    balance: dict[str, Decimal] = {}
    count: dict[str, int] = {}
    for event_type, payload in events:
        account = payload["accountId"]
        balance[account] = balance.get(account, Decimal(0)) + SIGN[event_type] * Decimal(payload["amount"])
        count[account] = count.get(account, 0) + 1
    ids = list(balance)
    return ids, [balance[i] for i in ids], [count[i] for i in ids]
