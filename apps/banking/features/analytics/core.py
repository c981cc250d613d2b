"""Analytics: what one event adds to its month's figures, and the fold of many.

Months are calendar months in UTC of the time each event committed
(``occurred_at``). Sums are kept per currency: euros and dollars do not add up.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, date, datetime
from typing import Final

from apps.banking.domain import (
    BANK_ACCOUNT_OPENED,
    MONEY_DEPOSITED,
    MONEY_TRANSFERRED,
    MONEY_WITHDRAWN,
    payload_amount,
    payload_currency,
)
from eventbus.values import EventRecord

from .types import MonthlyFigures

EVENT_TYPES: Final = (BANK_ACCOUNT_OPENED, MONEY_DEPOSITED, MONEY_WITHDRAWN, MONEY_TRANSFERRED)
"""The event types that count in the figures."""


def month_of(moment: datetime) -> date:
    """The first day of the UTC month of ``moment`` (which must be timezone-aware)."""
    return moment.astimezone(UTC).date().replace(day=1)


def contribution(record: EventRecord) -> MonthlyFigures | None:
    """What one event adds to its month's figures; None for other event types.

    Raises:
        MalformedEvent: an event of a counted type without its currency or amount.
    """
    kind = record.event_type
    if kind not in EVENT_TYPES:
        return None
    month, currency = month_of(record.occurred_at), payload_currency(record)
    if kind == BANK_ACCOUNT_OPENED:
        return MonthlyFigures(month, currency, accounts_opened=1)
    amount = payload_amount(record)
    if kind == MONEY_DEPOSITED:
        return MonthlyFigures(month, currency, deposits=1, deposited=amount)
    if kind == MONEY_WITHDRAWN:
        return MonthlyFigures(month, currency, withdrawals=1, withdrawn=amount)
    return MonthlyFigures(month, currency, transfers=1, transferred=amount)


def fold_figures(records: Iterable[EventRecord]) -> list[MonthlyFigures]:
    """The figures of every month and currency with events, by month then currency."""
    figures: dict[tuple[date, str], MonthlyFigures] = {}
    for record in records:
        part = contribution(record)
        if part is None:
            continue
        key = (part.month, part.currency.value)
        figures[key] = figures[key] + part if key in figures else part
    return [figures[key] for key in sorted(figures)]
