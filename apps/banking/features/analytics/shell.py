"""Analytics: the ``analytics`` projection and the query that reads it.

Each batch of events is folded in Python into one set of figures per month
and currency (``core.fold_figures``), then added to the table with ONE upsert
over ``unnest`` arrays: a batch of a thousand events is a single statement of
a few rows.
"""

from __future__ import annotations

from typing import Any, Final

from apps.banking.domain import parse_currency
from eventbus import Bus, EventRecord, Projection, Transaction

from .core import EVENT_TYPES, fold_figures
from .types import MonthlyFigures

NAME: Final = "analytics"
"""The projection's name; its table lives in schema ``projection_analytics``."""

_SETUP = """
CREATE TABLE IF NOT EXISTS monthly (
    month           date NOT NULL,
    currency        text NOT NULL,
    accounts_opened bigint NOT NULL DEFAULT 0,
    deposits        bigint NOT NULL DEFAULT 0,
    deposited       numeric(20, 2) NOT NULL DEFAULT 0,
    withdrawals     bigint NOT NULL DEFAULT 0,
    withdrawn       numeric(20, 2) NOT NULL DEFAULT 0,
    transfers       bigint NOT NULL DEFAULT 0,
    transferred     numeric(20, 2) NOT NULL DEFAULT 0,
    PRIMARY KEY (month, currency)
)
"""

_FIGURES = "accounts_opened, deposits, deposited, withdrawals, withdrawn, transfers, transferred"

_UPSERT = f"""
INSERT INTO monthly (month, currency, {_FIGURES})
SELECT * FROM unnest($1::date[], $2::text[], $3::bigint[], $4::bigint[], $5::numeric[], $6::bigint[],
                     $7::numeric[], $8::bigint[], $9::numeric[])
ON CONFLICT (month, currency) DO UPDATE SET
    accounts_opened = monthly.accounts_opened + excluded.accounts_opened,
    deposits = monthly.deposits + excluded.deposits,
    deposited = monthly.deposited + excluded.deposited,
    withdrawals = monthly.withdrawals + excluded.withdrawals,
    withdrawn = monthly.withdrawn + excluded.withdrawn,
    transfers = monthly.transfers + excluded.transfers,
    transferred = monthly.transferred + excluded.transferred
"""


async def setup(tx: Transaction) -> None:
    """Create the ``monthly`` table if missing."""
    await tx.execute(_SETUP)


async def apply_batch(tx: Transaction, records: list[EventRecord]) -> None:
    """Add a batch of events to their months' figures, in one statement.

    Raises:
        MalformedEvent: a counted event without its currency or amount.
    """
    figures = fold_figures(records)
    if figures:
        await tx.execute(
            _UPSERT,
            [f.month for f in figures],
            [f.currency.value for f in figures],
            [f.accounts_opened for f in figures],
            [f.deposits for f in figures],
            [f.deposited for f in figures],
            [f.withdrawals for f in figures],
            [f.withdrawn for f in figures],
            [f.transfers for f in figures],
            [f.transferred for f in figures],
        )


BATCH_SIZE: Final = 1000
"""Events folded into one transaction, at most."""

PROJECTION: Final = Projection(
    name=NAME, setup=setup, batch_size=BATCH_SIZE, batch_handler=apply_batch, event_types=EVENT_TYPES, on_error="skip"
)
"""The ``analytics`` read model; start it with ``bus.projections.start(PROJECTION)``.

An event it cannot count (without the bank's currency or amount) goes to the
dead letters with the reason, and the read model goes on with the next."""


def _figures(row: Any) -> MonthlyFigures:
    return MonthlyFigures(
        month=row["month"],
        currency=parse_currency(row["currency"]),
        accounts_opened=row["accounts_opened"],
        deposits=row["deposits"],
        deposited=row["deposited"],
        withdrawals=row["withdrawals"],
        withdrawn=row["withdrawn"],
        transfers=row["transfers"],
        transferred=row["transferred"],
    )


async def monthly_figures(bus: Bus) -> list[MonthlyFigures]:
    """Every month's figures per currency, oldest first, as the read model holds them now.

    Blocks for one query on a pooled connection.
    """
    async with bus.projections.reader(NAME) as tx:
        rows = await tx.fetch(f"SELECT month, currency, {_FIGURES} FROM monthly ORDER BY month, currency")
    return [_figures(row) for row in rows]
