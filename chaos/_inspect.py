"""After the load: read what the store holds and what the read models say,
once the bank's projections have caught up in a bus of the harness's own."""

from __future__ import annotations

from typing import Final

import attrs
import trio

from apps.banking.app import PROJECTIONS, open_bank
from apps.banking.features.analytics.types import MonthlyFigures
from apps.banking.features.list_accounts.types import AccountRow, CurrencyTotal
from eventbus import EventBusError, EventQuery, EventRecord, EventStore, create_filter

PAGE: Final = 50_000
"""Events read per query."""

CATCH_UP_TIMEOUT: Final = 300.0
"""Seconds each projection has to reach the head."""

CHECKPOINT_TIMEOUT: Final = 30.0
"""Seconds the stored checkpoints have to reach the head once the projections have."""

CHECKPOINT_POLL: Final = 0.1
"""Seconds between reads of the checkpoints while they move to the head."""

_MAX_PAGES: Final = 1_000_000


@attrs.frozen
class StoreState:
    """The store and the read models at the end of a run.

    Attributes:
        records: every stored event, in position order.
        head: the highest position.
        rows, figures, totals: the read models' contents.
        checkpoints: each projection's checkpoint, as stored.
        not_caught_up: projections that did not reach the head, with why.
    """

    records: list[EventRecord]
    head: int
    rows: list[AccountRow]
    figures: list[MonthlyFigures]
    totals: list[CurrencyTotal]
    checkpoints: dict[str, int | None]
    not_caught_up: dict[str, str]


async def _everything(store: EventStore) -> list[EventRecord]:
    records: list[EventRecord] = []
    after = 0
    for _ in range(_MAX_PAGES):
        page = (await store.query(EventQuery([create_filter([])], after=after, limit=PAGE))).events
        records += page
        if len(page) < PAGE:
            break
        after = page[-1].sequence_number
    return records


async def _checkpoints(store: EventStore) -> dict[str, int | None]:
    rows = await store.pool.fetch("SELECT name, checkpoint FROM eventbus.projections WHERE name = ANY($1::text[])",
                                  list(PROJECTIONS))  # fmt: skip
    found: dict[str, int | None] = dict.fromkeys(PROJECTIONS)
    found.update({name: int(checkpoint) for name, checkpoint in rows})
    return found


async def inspect(dsn: str) -> StoreState:
    """Open the bank on ``dsn`` with its projections, wait until they reach the
    head and their checkpoints are stored there, and read everything.

    Blocks for up to ``CATCH_UP_TIMEOUT`` per projection, then as long as the
    reads take.

    Raises:
        StoreUnavailable: the database could not be reached.
    """
    async with open_bank(dsn, projections=True) as bank:
        store = bank.bus.store
        records = await _everything(store)
        head = await store.head()
        not_caught_up: dict[str, str] = {}
        for name in PROJECTIONS:
            try:
                if not await bank.wait_until_current(name, timeout=CATCH_UP_TIMEOUT):
                    not_caught_up[name] = f"not at the head after {CATCH_UP_TIMEOUT:.0f} s"
            except EventBusError as exc:
                not_caught_up[name] = str(exc)
        # The stored checkpoint may trail the projection's position for a moment
        # (it moves past events of other types once the projection is idle).
        checkpoints = await _checkpoints(store)
        with trio.move_on_after(CHECKPOINT_TIMEOUT):
            while any(checkpoint != head for checkpoint in checkpoints.values()):
                await trio.sleep(CHECKPOINT_POLL)
                checkpoints = await _checkpoints(store)
        rows = await bank.list_accounts(wait=False)
        figures = await bank.analytics(wait=False)
        totals = await bank.totals(wait=False)
    return StoreState(records, head, rows, figures, totals, checkpoints, not_caught_up)
